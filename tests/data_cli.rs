//! The data commands as a user runs them: `tokenize_data` on a base directory, and their errors.

use std::process::Command;

use nanochat::data::parquet::write_text_parquet;
use nanochat::data::shards::Manifest;

fn run(bin: &str, base: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin)
        .args(args)
        .env("NANOCHAT_BASE_DIR", base)
        .output()
        .expect("command runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn tokenize_data_on_a_base_dir() {
    let tokenize = env!("CARGO_BIN_EXE_tokenize_data");
    let base = tempfile::tempdir().expect("tempdir");

    let (ok, text) = run(tokenize, base.path(), &["--byte-level"]);
    assert!(!ok, "no dataset must fail");
    assert!(
        text.contains("no parquet shards") && text.contains("download_data"),
        "{text}"
    );

    let (ok, text) = run(tokenize, base.path(), &[]);
    assert!(!ok);
    assert!(text.contains("tokenize_data:"), "{text}");

    let dir = base.path().join("base_data_default");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for s in 0..2 {
        let docs: Vec<String> = (0..300).map(|i| format!("shard {s} doc {i}")).collect();
        let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
        write_text_parquet(&dir.join(format!("shard_{s:05}.parquet")), &refs, 1024).expect("write");
    }
    let (ok, text) = run(tokenize, base.path(), &["--byte-level"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("offline default corpus")
            && text.contains("tokens/s")
            && text.contains("ETA"),
        "{text}"
    );
    let manifest = Manifest::load(&base.path().join("base_data_default_tokens"))
        .expect("load")
        .expect("manifest");
    assert_eq!(manifest.shards.len(), 2);
    assert_eq!(manifest.shards[1].num_docs, 300);

    // A tokenizer file that is not one is a clear error naming it.
    let bogus = base.path().join("bogus.bin");
    std::fs::write(&bogus, b"not a tokenizer").expect("write");
    let (ok, text) = run(
        tokenize,
        base.path(),
        &["--tokenizer", bogus.to_str().expect("utf8 path")],
    );
    assert!(!ok);
    assert!(text.contains("bogus.bin"), "{text}");
}

#[test]
fn download_data_default_corpus_reports_missing_packages_or_builds() {
    // Either the Debian packages are installed (the corpus is built) or the error says what to install.
    let download = env!("CARGO_BIN_EXE_download_data");
    let base = tempfile::tempdir().expect("tempdir");
    let (ok, text) = run(
        download,
        base.path(),
        &["--default-corpus", "--corpus-shards", "3"],
    );
    if ok {
        assert!(text.contains("default corpus:"), "{text}");
        let shards =
            nanochat::data::list_parquet(&base.path().join("base_data_default")).expect("list");
        assert!(shards.len() >= 2, "{text}");
    } else {
        assert!(text.contains("apt-get install"), "{text}");
    }
}
