//! Our tokenizer against outputs of the reference libraries (fixtures written by
//! `bench/tokenizer/run.sh fixtures`): the split equals fancy-regex's (the engine of tiktoken and
//! rustbpe) on an edge-case corpus, training equals rustbpe's merges, and encoding equals tiktoken's ids.

use std::path::PathBuf;

use nanochat::tokenizer::{files, pattern, Tokenizer, SPECIAL_TOKENS};
use serde::Deserialize;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tokenizer")
        .join(name)
}

fn read_json<T: for<'a> Deserialize<'a>>(name: &str) -> T {
    let text = std::fs::read_to_string(fixture(name)).expect("fixture is readable");
    serde_json::from_str(&text).expect("fixture is valid JSON")
}

#[derive(Deserialize)]
struct SplitCase {
    text: String,
    pieces: Vec<String>,
}

#[derive(Deserialize)]
struct Encoded {
    text: String,
    ids: Vec<u32>,
}

fn specials() -> Vec<String> {
    SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect()
}

fn reference_tokenizer() -> Tokenizer {
    files::import_tiktoken(&fixture("rustbpe_ranks.tiktoken"), pattern::SPLIT_PATTERN, specials())
        .expect("fixture ranks import")
}

#[test]
fn split_equals_reference_regex_on_edge_cases() {
    let cases: Vec<SplitCase> = read_json("split_cases.json");
    assert!(cases.len() > 500);
    let s = pattern::Splitter::nanochat();
    let mut bad = Vec::new();
    for c in &cases {
        let ours = s.split_str(&c.text);
        if ours != c.pieces {
            bad.push(format!("{:?}: ours {:?} reference {:?}", c.text, ours, c.pieces));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} differ:\n{}",
        bad.len(),
        cases.len(),
        bad.join("\n")
    );
}

#[test]
fn split_examples_with_expected_pieces() {
    let s = pattern::Splitter::nanochat();
    // Contractions in any case; a curly apostrophe is not one.
    assert_eq!(
        s.split_str("DON'T you'Ll it\u{2019}s"),
        ["DON", "'T", " you", "'Ll", " it", "\u{2019}s"]
    );
    // Digits in runs of at most two (GPT-4's pattern allows three).
    assert_eq!(s.split_str("12345"), ["12", "34", "5"]);
    let gpt4 = pattern::Splitter::for_pattern(pattern::GPT4_SPLIT_PATTERN).unwrap();
    assert_eq!(gpt4.split_str("12345"), ["123", "45"]);
    // Whitespace before a word leaves its last space to the word; newlines end a whitespace piece.
    assert_eq!(s.split_str("a   b\r\n\r\nc"), ["a", "  ", " b", "\r\n\r\n", "c"]);
    // Punctuation runs take trailing newlines.
    assert_eq!(s.split_str("Hi!!\n\nYo"), ["Hi", "!!\n\n", "Yo"]);
    // Non-Latin letters are letters; combining marks are not.
    assert_eq!(s.split_str("你好 мир e\u{301}"), ["你好", " мир", " e", "\u{301}"]);
}

#[test]
fn training_equals_rustbpe_merges() {
    let docs: Vec<String> = read_json("train_docs.json");
    let reference = reference_tokenizer();
    let vocab = reference.vocab_size();
    let ours = Tokenizer::train(docs, vocab, 512, &mut |_, _| {}).expect("training succeeds");
    assert_eq!(ours.vocab_size(), vocab);
    let (a, b) = (ours.mergeable_tokens(), reference.mergeable_tokens());
    let first_diff = a.iter().zip(b).position(|(x, y)| x != y);
    assert_eq!(first_diff, None, "first differing id");
    assert_eq!(a.len(), b.len());
}

#[test]
fn encoding_equals_tiktoken_ids() {
    let cases: Vec<Encoded> = read_json("heldout.json");
    let tok = reference_tokenizer();
    for c in &cases {
        assert_eq!(tok.encode_ordinary(&c.text), c.ids, "text {:?}", c.text);
    }
    // The batch path gives the same ids.
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let batch = tok.encode_ordinary_batch(&texts);
    assert!(batch.iter().zip(&cases).all(|(ids, c)| *ids == c.ids));
}

#[test]
fn exported_rank_file_equals_reference_file() {
    let tok = reference_tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.tiktoken");
    files::export_tiktoken(&tok, &out).unwrap();
    let ours = std::fs::read_to_string(&out).unwrap();
    let reference = std::fs::read_to_string(fixture("rustbpe_ranks.tiktoken")).unwrap();
    assert_eq!(ours, reference);
}
