//! Tokenizer files: save/load round trip, clear errors on corrupt or truncated files, tiktoken rank files
//! and the token-bytes table.

use std::path::Path;

use nanochat::tokenizer::{files, pattern, Tokenizer, TokenizerError, SPECIAL_TOKENS};
use proptest::prelude::*;

fn small() -> Tokenizer {
    let docs = vec!["hello hello world, the world is wide; hello again 12345 héllo".to_string(); 10];
    Tokenizer::train(docs, 256 + 9 + 20, 4, &mut |_, _| {}).unwrap()
}

fn specials() -> Vec<String> {
    SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect()
}

#[test]
fn save_load_round_trip() {
    let tok = small();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/dir/tokenizer.bin");
    tok.save(&path).unwrap();
    let back = Tokenizer::load(&path).unwrap();
    assert_eq!(back.mergeable_tokens(), tok.mergeable_tokens());
    assert_eq!(back.specials(), tok.specials());
    assert_eq!(back.pattern(), pattern::SPLIT_PATTERN);
    let text = "hello world 12345 héllo";
    assert_eq!(back.encode_ordinary(text), tok.encode_ordinary(text));
    // No temporary file is left behind by the atomic write.
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("tokenizer.bin")]);
}

fn load_err(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.bin");
    std::fs::write(&path, bytes).unwrap();
    match Tokenizer::load(&path) {
        Err(e @ TokenizerError::Format { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("bad.bin"), "error names the file: {msg}");
            msg
        }
        Err(e) => panic!("expected a format error, got {e}"),
        Ok(_) => panic!("a bad file loaded"),
    }
}

#[test]
fn corrupt_and_truncated_files_are_clear_errors() {
    let good = files::to_bytes(&small());
    assert!(load_err(&[]).contains("magic"));
    assert!(load_err(b"PK\x03\x04 not a tokenizer").contains("magic"));
    assert!(load_err(&good[..10]).contains("truncated"));
    for cut in [good.len() / 2, good.len() - 1, 30] {
        assert!(load_err(&good[..cut]).contains("corrupt or truncated"));
    }
    let mut flipped = good.clone();
    flipped[good.len() / 3] ^= 0x40;
    assert!(load_err(&flipped).contains("checksum"));
    let mut version = good.clone();
    version[8] = 99;
    assert!(load_err(&version).contains("version 99"));
    let mut longer = good.clone();
    longer.push(0);
    assert!(load_err(&longer).contains("checksum"));
}

#[test]
fn missing_file_is_an_io_error_naming_the_path() {
    let e = Tokenizer::load(Path::new("/nonexistent/tokenizer.bin")).unwrap_err();
    assert!(matches!(e, TokenizerError::Io { .. }));
    assert!(e.to_string().contains("/nonexistent/tokenizer.bin"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// Any single-byte corruption or truncation is rejected, never a panic or a silently different tokenizer.
    #[test]
    fn any_damage_is_rejected(pos in 0usize..10_000, bit in 0u8..8, cut in 0usize..10_000) {
        let good = files::to_bytes(&small());
        let mut bad = good.clone();
        let i = pos % good.len();
        bad[i] ^= 1 << bit;
        prop_assert!(files::from_bytes(&bad, Path::new("x")).is_err());
        let cut = cut % good.len();
        prop_assert!(files::from_bytes(&good[..cut], Path::new("x")).is_err());
    }

    #[test]
    fn base64_round_trips(bytes in prop::collection::vec(any::<u8>(), 0..40)) {
        let s = files::base64_encode(&bytes);
        prop_assert_eq!(files::base64_decode(&s).unwrap(), bytes);
    }
}

#[test]
fn base64_known_values_and_errors() {
    assert_eq!(files::base64_encode(b"hello"), "aGVsbG8=");
    assert_eq!(files::base64_encode(b" the"), "IHRoZQ==");
    assert!(files::base64_decode("aGVsbG8").is_err());
    assert!(files::base64_decode("a===").is_err());
    assert!(files::base64_decode("aG=sbG8=").is_err());
    assert!(files::base64_decode("aGV*bG8=").is_err());
}

#[test]
fn tiktoken_export_import_round_trip() {
    let tok = small();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.tiktoken");
    files::export_tiktoken(&tok, &path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), tok.n_mergeable());
    assert_eq!(
        text.lines().nth(b'a' as usize).unwrap(),
        format!("{} 97", files::base64_encode(b"a"))
    );
    let back = files::import_tiktoken(&path, pattern::SPLIT_PATTERN, specials()).unwrap();
    assert_eq!(back.mergeable_tokens(), tok.mergeable_tokens());
    assert_eq!(back.vocab_size(), tok.vocab_size());
}

#[test]
fn bad_tiktoken_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str); 5] = [
        ("QQ== 0\nQQ== 1\n", "same bytes"),
        ("QQ== 1\n", "rank 0 is missing"),
        ("QQ==\n", "expected `base64 rank`"),
        ("Q!== 0\n", "invalid base64"),
        ("QQ== x\n", "not a number"),
    ];
    for (i, (content, expect)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("{i}.tiktoken"));
        std::fs::write(&path, content).unwrap();
        let e = files::import_tiktoken(&path, pattern::SPLIT_PATTERN, specials()).unwrap_err();
        assert!(e.to_string().contains(expect), "{content:?}: {e}");
    }
    // A vocabulary without every single byte cannot encode arbitrary text.
    let path = dir.path().join("partial.tiktoken");
    std::fs::write(&path, "QQ== 0\n").unwrap();
    let e = files::import_tiktoken(&path, pattern::SPLIT_PATTERN, specials()).unwrap_err();
    assert!(e.to_string().contains("has no token"), "{e}");
    // Only the patterns we implement are accepted.
    let e = files::import_tiktoken(&path, r"\w+", specials()).unwrap_err();
    assert!(e.to_string().contains("unsupported split pattern"), "{e}");
}

#[test]
fn token_bytes_table() {
    let tok = small();
    let tb = tok.token_bytes();
    assert_eq!(tb.len(), tok.vocab_size());
    for id in 0..tok.n_mergeable() as u32 {
        assert_eq!(tb[id as usize] as usize, tok.token(id).unwrap().len());
    }
    assert!(tb[tok.n_mergeable()..].iter().all(|&b| b == 0));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token_bytes.bin");
    files::save_token_bytes(&tok, &path).unwrap();
    assert_eq!(files::load_token_bytes(&path).unwrap(), tb);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 2]).unwrap();
    assert!(files::load_token_bytes(&path)
        .unwrap_err()
        .to_string()
        .contains("entries"));
}

#[test]
fn decode_of_unknown_ids() {
    let tok = small();
    let n = tok.vocab_size() as u32;
    assert_eq!(tok.decode(&[104, n, 105]), "h\u{FFFD}i".as_bytes());
    let e = tok.try_decode(&[104, n]).unwrap_err();
    assert!(e.to_string().contains(&format!("id {n} at position 1")), "{e}");
    assert_eq!(tok.try_decode(&[104, 105]).unwrap(), b"hi");
}
