//! Lossless round trips (property tests), the two merge strategies agreeing, and big or empty inputs.

use std::path::PathBuf;
use std::sync::OnceLock;

use nanochat::tokenizer::{files, pattern, Tokenizer, SPECIAL_TOKENS};
use proptest::prelude::*;

/// rustbpe's 600-merge vocabulary from the reference fixtures.
fn tok() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/rustbpe_ranks.tiktoken");
        let specials = SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect();
        files::import_tiktoken(&path, pattern::SPLIT_PATTERN, specials).unwrap()
    })
}

/// Characters from the hard corners of Unicode: emoji (with ZWJ and flags), combining marks, CJK, RTL
/// scripts, controls, every kind of whitespace, apostrophes and digits of several scripts.
fn tricky_char() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z]{1,6}",
        2 => "[ \t\n\r]{1,8}",
        1 => "[ \t]{20,200}",
        1 => Just("\u{a0}".to_string()),
        1 => Just("\u{3000}".to_string()),
        1 => Just("\u{2028}".to_string()),
        1 => Just("'".to_string()),
        1 => "'(s|t|ll|ve|re|S|LL|VE)",
        1 => "[0-9]{1,5}",
        1 => "[\u{660}-\u{669}]{1,3}",
        1 => "[\u{1F600}-\u{1F64F}]",
        1 => Just("\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}".to_string()),
        1 => Just("\u{1F1FA}\u{1F1F8}".to_string()),
        1 => "[\u{300}-\u{36F}]{1,3}",
        1 => "[\u{4E00}-\u{9FFF}]{1,4}",
        1 => "[\u{5D0}-\u{5EA}]{1,4}",
        1 => "[\u{627}-\u{64A}]{1,4}",
        1 => "[\u{0}-\u{1F}\u{7F}]",
        1 => "[!-/:-@\\[-`{-~]{1,4}",
        1 => any::<char>().prop_map(|c| c.to_string()),
    ]
}

fn tricky_text() -> impl Strategy<Value = String> {
    prop::collection::vec(tricky_char(), 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn unicode_text_round_trips(text in tricky_text()) {
        let ids = tok().encode_ordinary(&text);
        prop_assert_eq!(tok().decode(&ids), text.as_bytes());
        prop_assert_eq!(tok().decode_lossy(&ids), text);
    }

    #[test]
    fn any_string_round_trips(text in any::<String>()) {
        let ids = tok().encode_ordinary(&text);
        prop_assert_eq!(tok().decode(&ids), text.as_bytes());
    }

    #[test]
    fn arbitrary_bytes_round_trip(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let ids = tok().encode_ordinary_bytes(&bytes);
        prop_assert_eq!(tok().decode(&ids), bytes);
    }

    #[test]
    fn split_pieces_concatenate_to_the_input(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let s = pattern::Splitter::nanochat();
        let joined: Vec<u8> = s.split(&bytes).flatten().copied().collect();
        prop_assert_eq!(&joined, &bytes);
        prop_assert!(s.split(&bytes).all(|p| !p.is_empty()));
    }

    #[test]
    fn heap_merge_equals_scan_merge(piece in "[ a-e]{2,300}") {
        let v = tok().vocab();
        prop_assert_eq!(v.merge_with(piece.as_bytes(), true), v.merge_with(piece.as_bytes(), false));
    }
}

#[test]
fn empty_input() {
    let t = tok();
    assert!(t.encode_ordinary("").is_empty());
    assert!(t.encode_ordinary_batch(&[]).is_empty());
    assert_eq!(t.encode_ordinary_batch(&["", ""]), vec![Vec::<u32>::new(), Vec::new()]);
    assert!(t.decode(&[]).is_empty());
    // Training on nothing gives the 256 bytes and the specials.
    let empty = Tokenizer::train(Vec::<String>::new(), 1000, 16, &mut |_, _| {}).unwrap();
    assert_eq!(empty.vocab_size(), 256 + 9);
    assert_eq!(empty.decode(&empty.encode_ordinary("héllo")), "héllo".as_bytes());
}

#[test]
fn single_100mb_document() {
    let t = tok();
    let docs: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/train_docs.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let unit = docs.join("\n");
    let text = unit.repeat(100_000_000 / unit.len() + 1);
    assert!(text.len() >= 100_000_000);
    let ids = t.encode_ordinary(&text);
    assert!(ids.len() > text.len() / 10, "{} ids", ids.len());
    assert!(t.decode(&ids) == text.as_bytes(), "100 MB document does not round-trip");
}

#[test]
fn long_single_piece_is_not_quadratic() {
    // One letter repeated is a single piece; a vocabulary trained on it has the doubling merges.
    let t = Tokenizer::train(vec!["a".repeat(4096)], 256 + 9 + 12, 16, &mut |_, _| {}).unwrap();
    let short = "a".repeat(1000);
    assert_eq!(
        t.vocab().merge_with(short.as_bytes(), true),
        t.vocab().merge_with(short.as_bytes(), false)
    );
    let huge = "a".repeat(4 << 20);
    let ids = t.encode_ordinary(&huge);
    assert_eq!(t.decode(&ids), huge.as_bytes());
    // 2^12 = 4096 is the longest token: 4 MiB are exactly 1024 copies of it.
    assert_eq!(ids.len(), 1024);
}
