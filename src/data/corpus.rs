//! The offline default corpus: real English text from Debian packages, written as parquet shards.
//!
//! On a machine with no network but the package registries, pretraining must still have real text. The
//! set-up installs (`tools/setup_default_data.sh`) `fortunes`, `fortunes-min`, `fortune-anarchism`,
//! `fortunes-bofh-excuses` (fortune cookies: quotes, jokes, poems), `bible-kjv` with `bible-kjv-text` (the
//! King James Bible), `dict-jargon` (the Jargon File) and `dict-devil` (Bierce's Devil's Dictionary): about
//! 10 MB of English. Documents are one fortune, one Bible chapter, or one dictionary entry; they are shuffled
//! with a fixed seed and written in upstream's parquet format, the last shard being the validation split.
//! Nothing of the text is part of this repository.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::parquet::{write_text_parquet, ROW_GROUP_DOCS};
use super::Result;
use crate::rng::Rng;

/// Where the corpus text comes from. `Default` is the locations the Debian packages install to.
#[derive(Debug, Clone)]
pub struct CorpusSources {
    /// Directories of fortune files (fortunes separated by lines holding only `%`).
    pub fortune_dirs: Vec<PathBuf>,
    /// Fortune files to leave out: not English, or pictures rather than text.
    pub fortune_skip: Vec<String>,
    /// dictd dictionaries as (`.dict.dz` gzip data, `.index`) pairs.
    pub dictionaries: Vec<(PathBuf, PathBuf)>,
    /// The `bible` program of `bible-kjv`, which prints the whole text; `None` to leave the Bible out.
    pub bible_program: Option<String>,
}

impl Default for CorpusSources {
    fn default() -> Self {
        let dict = |name: &str| {
            let dir = Path::new("/usr/share/dictd");
            (dir.join(format!("{name}.dict.dz")), dir.join(format!("{name}.index")))
        };
        CorpusSources {
            fortune_dirs: vec![PathBuf::from("/usr/share/games/fortunes")],
            fortune_skip: vec!["ascii-art".into(), "translate-me".into(), "mario.".into()],
            dictionaries: vec![dict("jargon"), dict("devil")],
            bible_program: Some("bible".into()),
        }
    }
}

/// The packages `CorpusSources::default()` reads from.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "fortunes",
    "fortunes-min",
    "fortune-anarchism",
    "fortunes-bofh-excuses",
    "bible-kjv",
    "bible-kjv-text",
    "dict-jargon",
    "dict-devil",
];

/// Splits a fortune file into its fortunes.
pub fn split_fortunes(text: &str) -> Vec<String> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        if line.trim_end() == "%" {
            push_doc(&mut docs, &cur);
            cur.clear();
        } else {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    push_doc(&mut docs, &cur);
    docs
}

fn push_doc(docs: &mut Vec<String>, text: &str) {
    let t = text.trim();
    if !t.is_empty() {
        docs.push(t.to_string());
    }
}

fn read_fortunes(sources: &CorpusSources, notes: &mut Vec<String>) -> Vec<String> {
    let mut docs = Vec::new();
    for dir in &sources.fortune_dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            notes.push(format!(
                "no fortunes in {} (package fortunes not installed?)",
                dir.display()
            ));
            continue;
        };
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for path in files {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            // `.dat` are strfile indexes and `.u8` symlinks to the same text; directories hold offensive
            // or foreign-language sets.
            let skipped = sources.fortune_skip.iter().any(|s| name.starts_with(s.as_str()));
            if !path.is_file() || path.is_symlink() || path.extension().is_some() || skipped {
                continue;
            }
            if let Ok(bytes) = std::fs::read(&path) {
                docs.extend(split_fortunes(&String::from_utf8_lossy(&bytes)));
            }
        }
    }
    docs
}

/// Decodes a number in dictd's base64 index alphabet.
fn dict_b64(s: &str) -> Option<usize> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    s.bytes()
        .try_fold(0usize, |acc, c| Some(acc * 64 + ALPHABET.iter().position(|&a| a == c)?))
}

/// Splits a dictd dictionary into entries using its index (one document per distinct entry, in file
/// order); the `00-database-*` entries describe the dictionary itself and are left out.
pub fn split_dict(data: &[u8], index: &str) -> Vec<String> {
    let mut spans: Vec<(usize, usize)> = index
        .lines()
        .filter_map(|line| {
            let mut f = line.split('\t');
            let word = f.next()?;
            if word.starts_with("00-database") || word.starts_with("00database") {
                return None;
            }
            Some((dict_b64(f.next()?)?, dict_b64(f.next()?)?))
        })
        .collect();
    spans.sort_unstable();
    spans.dedup();
    let mut docs = Vec::new();
    for (off, len) in spans {
        if let Some(entry) = data.get(off..off + len) {
            push_doc(&mut docs, &String::from_utf8_lossy(entry));
        }
    }
    docs
}

fn read_dicts(sources: &CorpusSources, notes: &mut Vec<String>) -> Vec<String> {
    let mut docs = Vec::new();
    for (dz, index) in &sources.dictionaries {
        // `.dict.dz` is gzip with random-access extras; the system gzip reads it, no extra crate needed.
        let data = Command::new("gzip").arg("-dc").arg(dz).output();
        let index_text = std::fs::read(index);
        match (data, index_text) {
            (Ok(out), Ok(index_text)) if out.status.success() => {
                // Index offsets are byte offsets: the text stays bytes until split.
                docs.extend(split_dict(&out.stdout, &String::from_utf8_lossy(&index_text)));
            }
            _ => notes.push(format!("no dictionary {} (package not installed?)", dz.display())),
        }
    }
    docs
}

/// Splits the output of `bible -l 0 Gen1:1-Rev22:21` into chapters ("Genesis 1" headers, numbered verses).
pub fn split_bible(text: &str) -> Vec<String> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if !line.starts_with(' ') {
            push_doc(&mut docs, &cur);
            cur.clear();
            cur.push_str(line.trim());
            cur.push_str("\n\n");
        } else {
            cur.push_str(line.trim());
            cur.push('\n');
        }
    }
    push_doc(&mut docs, &cur);
    docs
}

fn read_bible(sources: &CorpusSources, notes: &mut Vec<String>) -> Vec<String> {
    let Some(program) = &sources.bible_program else {
        return Vec::new();
    };
    match Command::new(program).args(["-l", "0", "Gen1:1-Rev22:21"]).output() {
        Ok(out) if out.status.success() => split_bible(&String::from_utf8_lossy(&out.stdout)),
        _ => {
            notes.push(format!(
                "no Bible text (`{program}` from bible-kjv/bible-kjv-text not installed?)"
            ));
            Vec::new()
        }
    }
}

/// Collects every document of the sources; `notes` receives one line per missing source.
pub fn collect_documents(sources: &CorpusSources, notes: &mut Vec<String>) -> Vec<String> {
    let mut docs = read_fortunes(sources, notes);
    docs.extend(read_bible(sources, notes));
    docs.extend(read_dicts(sources, notes));
    docs
}

/// Deterministic Fisher-Yates shuffle, so every machine builds the same corpus from the same packages.
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut rng = Rng::new(seed);
    for i in (1..items.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// Writes `docs` as `num_shards` parquet shards `shard_00000.parquet`, ... in `out_dir`: every shard but the
/// last holds a whole number of 1024-document row groups (as upstream's do); the last, the validation split,
/// takes the rest. Returns the shard paths.
pub fn write_shards(out_dir: &Path, docs: &[String], num_shards: usize) -> Result<Vec<PathBuf>> {
    if docs.len() < 2 {
        return Err(data_err!(
            "corpus has {} documents; need at least 2 for a train and a val shard",
            docs.len()
        ));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| data_err!("cannot create {}: {e}", out_dir.display()))?;
    let num_shards = num_shards.max(2);
    let mut per = docs.len().div_ceil(num_shards).div_ceil(ROW_GROUP_DOCS) * ROW_GROUP_DOCS;
    if per >= docs.len() {
        per = docs.len().div_ceil(2); // a tiny corpus: two shards, whatever their sizes
    }
    let mut paths = Vec::new();
    for (i, chunk) in docs.chunks(per).enumerate() {
        let path = out_dir.join(format!("shard_{i:05}.parquet"));
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        write_text_parquet(&path, &refs, ROW_GROUP_DOCS)?;
        paths.push(path);
    }
    Ok(paths)
}

/// Summary of a corpus build.
#[derive(Debug, Clone)]
pub struct CorpusReport {
    pub docs: usize,
    pub bytes: usize,
    pub shards: Vec<PathBuf>,
    pub notes: Vec<String>,
}

/// Builds the default corpus from `sources` into `out_dir` (replacing any parquet shards there).
pub fn build_default_corpus(out_dir: &Path, sources: &CorpusSources, num_shards: usize) -> Result<CorpusReport> {
    let mut notes = Vec::new();
    let mut docs = collect_documents(sources, &mut notes);
    if docs.is_empty() {
        return Err(data_err!(
            "no text found for the default corpus ({}); install the packages: apt-get install {}",
            notes.join("; "),
            DEBIAN_PACKAGES.join(" ")
        ));
    }
    shuffle(&mut docs, 42);
    for old in super::list_parquet(out_dir)? {
        std::fs::remove_file(&old).map_err(|e| data_err!("cannot remove old shard {}: {e}", old.display()))?;
    }
    let shards = write_shards(out_dir, &docs, num_shards)?;
    Ok(CorpusReport {
        docs: docs.len(),
        bytes: docs.iter().map(String::len).sum(),
        shards,
        notes,
    })
}
