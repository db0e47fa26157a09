//! The offline default corpus: splitting the package formats into documents, and building parquet shards
//! from stand-in sources (the real packages may not be installed where tests run).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use nanochat::data::corpus::{build_default_corpus, split_bible, split_dict, split_fortunes, CorpusSources};
use nanochat::data::list_parquet;
use nanochat::data::parquet::TextParquet;

#[test]
fn fortunes_split_on_percent_lines() {
    let text = "A penny saved.\n%\nTwo\nlines\n%\n%\n   \n%\nLast one, no trailing percent";
    assert_eq!(
        split_fortunes(text),
        vec!["A penny saved.", "Two\nlines", "Last one, no trailing percent"]
    );
}

#[test]
fn bible_splits_into_chapters() {
    let text = "\nGenesis 1\n\n  1 In the beginning.\n  2 And the earth.\n\nGenesis 2\n\n  1 Thus the heavens.\n";
    assert_eq!(
        split_bible(text),
        vec![
            "Genesis 1\n\n1 In the beginning.\n2 And the earth.",
            "Genesis 2\n\n1 Thus the heavens."
        ]
    );
}

/// dictd index numbers are base64 digits (A=0, B=1, ..., /=63).
fn b64(mut n: usize) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = vec![A[n % 64]];
    n /= 64;
    while n > 0 {
        s.push(A[n % 64]);
        n /= 64;
    }
    s.reverse();
    String::from_utf8(s).expect("ascii")
}

/// A small dictd dictionary: data and index, with a database entry and two headwords for one entry.
fn dictionary() -> (String, String) {
    let entries = [
        "00-database-short\n   A test dictionary\n",
        "ABBEY, n.\n   A place.\n",
        "BORE, n.\n   A person.\n",
    ];
    let mut data = String::new();
    let mut index = String::new();
    let words = [vec!["00-database-short"], vec!["abbey"], vec!["bore", "boredom"]];
    for (entry, words) in entries.iter().zip(&words) {
        for w in words {
            index.push_str(&format!("{w}\t{}\t{}\n", b64(data.len()), b64(entry.len())));
        }
        data.push_str(entry);
    }
    (data, index)
}

#[test]
fn dictionary_splits_into_entries() {
    let (data, index) = dictionary();
    assert_eq!(
        split_dict(data.as_bytes(), &index),
        vec!["ABBEY, n.\n   A place.", "BORE, n.\n   A person."]
    );
}

fn stand_in_sources(dir: &Path) -> CorpusSources {
    let fortunes = dir.join("fortunes");
    std::fs::create_dir_all(&fortunes).expect("mkdir");
    let many: Vec<String> = (0..2500).map(|i| format!("Fortune number {i}.")).collect();
    std::fs::write(fortunes.join("wisdom"), many.join("\n%\n")).expect("write");
    std::fs::write(fortunes.join("wisdom.dat"), [0u8, 1, 2]).expect("write");
    std::fs::write(fortunes.join("mario.geral"), "Não em inglês\n%\n").expect("write");
    // The dictionary goes through the system gzip, as the real `.dict.dz` files do.
    let (data, index) = dictionary();
    std::fs::write(dir.join("test.dict"), data).expect("write");
    let status = Command::new("gzip")
        .arg("-f")
        .arg(dir.join("test.dict"))
        .status()
        .expect("gzip runs");
    assert!(status.success());
    std::fs::rename(dir.join("test.dict.gz"), dir.join("test.dict.dz")).expect("rename");
    std::fs::write(dir.join("test.index"), index).expect("write");
    // A stand-in for `bible`, printing two chapters in its layout.
    let bible = dir.join("bible");
    std::fs::write(
        &bible,
        "#!/bin/sh\nprintf '\\nGenesis 1\\n\\n  1 In the beginning.\\n\\nGenesis 2\\n\\n  1 Thus.\\n'\n",
    )
    .expect("write");
    std::fs::set_permissions(&bible, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    CorpusSources {
        fortune_dirs: vec![fortunes],
        fortune_skip: vec!["mario.".into()],
        dictionaries: vec![(dir.join("test.dict.dz"), dir.join("test.index"))],
        bible_program: Some(bible.display().to_string()),
    }
}

fn read_all(dir: &Path) -> Vec<Vec<String>> {
    list_parquet(dir)
        .expect("list")
        .iter()
        .map(|p| {
            let f = TextParquet::open(p).expect("open");
            (0..f.num_row_groups())
                .flat_map(|rg| f.read_row_group(rg).expect("read"))
                .collect()
        })
        .collect()
}

#[test]
fn builds_shuffled_parquet_shards_deterministically() {
    let src = tempfile::tempdir().expect("tempdir");
    let sources = stand_in_sources(src.path());
    let out = tempfile::tempdir().expect("tempdir");
    let report = build_default_corpus(out.path(), &sources, 3).expect("build");
    assert!(report.notes.is_empty(), "{:?}", report.notes);
    assert_eq!(report.docs, 2500 + 2 + 2);
    let shards = read_all(out.path());
    assert_eq!(shards.len(), 3);
    for shard in &shards[..shards.len() - 1] {
        assert_eq!(shard.len() % 1024, 0, "training shards hold whole row groups");
    }
    let mut docs: Vec<String> = shards.concat();
    assert_ne!(docs[..10].iter().filter(|d| d.starts_with("Fortune")).count(), 0);
    assert!(
        docs[..2500]
            .iter()
            .enumerate()
            .any(|(i, d)| *d != format!("Fortune number {i}.")),
        "shuffled"
    );
    docs.sort();
    let mut expected: Vec<String> = (0..2500).map(|i| format!("Fortune number {i}.")).collect();
    expected.extend([
        "Genesis 1\n\n1 In the beginning.".to_string(),
        "Genesis 2\n\n1 Thus.".to_string(),
    ]);
    expected.extend([
        "ABBEY, n.\n   A place.".to_string(),
        "BORE, n.\n   A person.".to_string(),
    ]);
    expected.sort();
    assert_eq!(
        docs, expected,
        "every document once, the foreign-language file left out"
    );

    // Rebuilding gives the same shards, document for document.
    let again = tempfile::tempdir().expect("tempdir");
    build_default_corpus(again.path(), &sources, 3).expect("build");
    assert_eq!(read_all(again.path()), shards);
}

#[test]
fn missing_packages_are_a_clear_error() {
    let out = tempfile::tempdir().expect("tempdir");
    let sources = CorpusSources {
        fortune_dirs: vec![out.path().join("nothing")],
        fortune_skip: Vec::new(),
        dictionaries: vec![(out.path().join("none.dict.dz"), out.path().join("none.index"))],
        bible_program: Some(out.path().join("no-bible").display().to_string()),
    };
    let msg = build_default_corpus(&out.path().join("corpus"), &sources, 4)
        .expect_err("no text")
        .to_string();
    assert!(msg.contains("apt-get install") && msg.contains("fortunes"), "{msg}");
}
