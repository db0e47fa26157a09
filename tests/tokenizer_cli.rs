//! The `tok_train` and `tok_eval` binaries end to end: parquet shards (training split, row groups in order,
//! `--max-chars` / `--doc-cap` semantics), plain text input, default output location, and the evaluation.

use std::path::Path;
use std::process::Command;

use nanochat::data::parquet::write_text_parquet;
use nanochat::tokenizer::{files, Tokenizer};

/// Run a binary, returning stdout; panics with stderr when it fails.
fn run(bin: &str, args: &[&str], base: &Path) -> String {
    let out = Command::new(bin)
        .args(args)
        .env("NANOCHAT_BASE_DIR", base)
        .output()
        .expect("binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{bin} {args:?} failed:\n{stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// "trained on N documents, C characters" from tok_train's output.
fn docs_and_chars(stdout: &str) -> (u64, u64) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("trained on "))
        .expect("summary line");
    let words: Vec<&str> = line.split_whitespace().collect();
    (words[2].parse().unwrap(), words[4].parse().unwrap())
}

/// Three shards of 2 row groups x 10 documents of 100 characters; the last shard is validation. Documents
/// are numbered so that the set used for training is visible in the vocabulary.
fn write_shards(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for shard in 0..3 {
        let docs: Vec<String> = (0..20)
            .map(|i| {
                let tag = if shard == 2 { "validation" } else { "training" };
                let s = format!("{tag} document {shard} {i} the quick brown fox jumps over the lazy dog ");
                format!("{s:.<100}")
            })
            .collect();
        let refs: Vec<&str> = docs.iter().map(|s| s.as_str()).collect();
        write_text_parquet(&dir.join(format!("shard_{shard:05}.parquet")), &refs, 10).unwrap();
    }
}

#[test]
fn trains_from_parquet_with_upstream_budget_semantics() {
    let base = tempfile::tempdir().unwrap();
    let data = base.path().join("base_data_default");
    write_shards(&data);
    let bin = env!("CARGO_BIN_EXE_tok_train");

    // Stops after the document that crosses the budget: 10 x 100 = 1000 <= 1050, the 11th crosses it.
    let out = run(bin, &["--max-chars", "1050", "--vocab-size", "300"], base.path());
    assert_eq!(docs_and_chars(&out), (11, 1100));
    // Each document is capped first: 21 x 50 = 1050 is not past the budget, the 22nd is.
    let out = run(
        bin,
        &["--max-chars", "1050", "--doc-cap", "50", "--vocab-size", "300"],
        base.path(),
    );
    assert_eq!(docs_and_chars(&out), (22, 1100));
    // Everything: the two training shards only (40 documents), merged as far as they go.
    let out = run(bin, &["--vocab-size", "400"], base.path());
    assert_eq!(docs_and_chars(&out), (40, 4000));

    // Written to $NANOCHAT_BASE_DIR/tokenizer by default, all three files consistent.
    let dir = base.path().join("tokenizer");
    let tok = Tokenizer::load(&dir.join("tokenizer.bin")).unwrap();
    // The corpus runs out of pairs before 400: every training chunk became a token.
    assert!(tok.vocab_size() > 300 && tok.vocab_size() < 400, "{}", tok.vocab_size());
    assert_eq!(
        files::load_token_bytes(&dir.join("token_bytes.bin")).unwrap(),
        tok.token_bytes()
    );
    let imported =
        files::import_tiktoken(&dir.join("tokenizer.tiktoken"), tok.pattern(), tok.specials().to_vec()).unwrap();
    assert_eq!(imported.mergeable_tokens(), tok.mergeable_tokens());
    // The validation shard was not trained on, the training shards were.
    let has = |s: &str| tok.mergeable_tokens().iter().any(|t| t == s.as_bytes());
    assert!(has("training") && !has("validation"));

    // tok_eval reports on the default tokenizer and checks round trips.
    let report = run(env!("CARGO_BIN_EXE_tok_eval"), &[], base.path());
    assert!(report.contains("all texts round-trip losslessly"), "{report}");
    assert!(report.contains("korean") && report.contains("data-train") && report.contains("data-val"));
}

#[test]
fn trains_from_text_files() {
    let base = tempfile::tempdir().unwrap();
    let text = base.path().join("corpus.txt");
    std::fs::write(&text, "first paragraph\nstill first\n\n\nsecond paragraph\n  \nthird\n").unwrap();
    let out_dir = base.path().join("out");
    let out = run(
        env!("CARGO_BIN_EXE_tok_train"),
        &[
            "--input-text",
            text.to_str().unwrap(),
            "--vocab-size",
            "280",
            "--output-dir",
            out_dir.to_str().unwrap(),
        ],
        base.path(),
    );
    // Paragraphs without their final line break: 27 + 16 + 5 characters.
    assert_eq!(docs_and_chars(&out), (3, 48));
    let tok = Tokenizer::load(&out_dir.join("tokenizer.bin")).unwrap();
    assert_eq!(tok.vocab_size(), 280);
}

#[test]
fn clear_errors_without_data_or_with_bad_arguments() {
    let base = tempfile::tempdir().unwrap();
    let fail = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tok_train"))
            .args(args)
            .env("NANOCHAT_BASE_DIR", base.path())
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(fail(&[]).contains("no parquet shards"));
    assert!(fail(&["--input-text", "/nonexistent.txt"]).contains("/nonexistent.txt"));
    let text = base.path().join("t.txt");
    std::fs::write(&text, "hello").unwrap();
    assert!(fail(&["--input-text", text.to_str().unwrap(), "--vocab-size", "100"]).contains("vocab size 100"));
    // A tokenizer file that is not one.
    std::fs::write(base.path().join("bad.bin"), "garbage").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tok_eval"))
        .args(["--tokenizer", base.path().join("bad.bin").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid tokenizer file"));
}
