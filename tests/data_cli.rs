//! The data commands as a user runs them: `tokenize_data` on a base directory, and their errors.

use std::path::Path;
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
        text.contains("offline default corpus") && text.contains("tokens/s") && text.contains("ETA"),
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

/// Whether any source of the default corpus is installed, judged from where the Debian packages put their
/// files (stated here, not taken from the code under test): a fortune file, a dictd dictionary, or the
/// `bible` program.
fn default_corpus_sources_present() -> bool {
    let fortunes = std::fs::read_dir("/usr/share/games/fortunes")
        .map(|mut e| e.any(|f| f.is_ok_and(|f| f.path().is_file())))
        .unwrap_or(false);
    let dicts = ["jargon", "devil"].iter().any(|d| {
        Path::new(&format!("/usr/share/dictd/{d}.dict.dz")).is_file()
            && Path::new(&format!("/usr/share/dictd/{d}.index")).is_file()
    });
    let bible = std::process::Command::new("bible")
        .arg("--help")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    fortunes || dicts || bible
}

#[test]
fn download_data_default_corpus_builds_or_names_the_missing_packages() {
    // With any of the Debian packages installed the corpus must build; with none the error must name them all.
    let download = env!("CARGO_BIN_EXE_download_data");
    let base = tempfile::tempdir().expect("tempdir");
    let (ok, text) = run(download, base.path(), &["--default-corpus", "--corpus-shards", "3"]);
    assert!(!text.contains("panicked"), "{text}");
    if default_corpus_sources_present() {
        assert!(ok, "sources are installed but the corpus did not build: {text}");
        assert!(text.contains("default corpus:"), "{text}");
        let shards = nanochat::data::list_parquet(&base.path().join("base_data_default")).expect("list");
        // 3 asked for; a small corpus (few packages) may come out as 2.
        assert!((2..=3).contains(&shards.len()), "{text}");
        // An installed fortune file is in it: its third fortune (split on "%" lines here) is a document.
        let fortunes = Path::new("/usr/share/games/fortunes/fortunes");
        if let Ok(f) = std::fs::read_to_string(fortunes) {
            let third = f.split("\n%\n").nth(2).expect("a fortune").trim();
            let mut found = false;
            for shard in &shards {
                let pq = nanochat::data::parquet::TextParquet::open(shard).expect("shard");
                for rg in 0..pq.num_row_groups() {
                    found |= pq.read_row_group(rg).expect("rows").iter().any(|d| d == third);
                }
            }
            assert!(found, "{third:?} from {} not in the corpus", fortunes.display());
        }
    } else {
        assert!(!ok, "no sources installed, yet it succeeded: {text}");
        assert!(text.contains("apt-get install"), "{text}");
        for p in nanochat::data::corpus::DEBIAN_PACKAGES {
            assert!(text.contains(p), "{p} not named: {text}");
        }
    }
}
