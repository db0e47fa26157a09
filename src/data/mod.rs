//! Pretraining data: parquet text shards in, memory-mapped token shards out, BOS-aligned best-fit batches.
//!
//! The pipeline, in the order data flows through it:
//! - [`download`] fetches parquet shards of the real datasets (ClimbMix, or legacy FineWeb-Edu);
//!   [`corpus`] builds an offline default corpus in the same parquet format from locally installed text.
//! - [`parquet`] streams the `text` column of those files, one row group at a time.
//! - [`tokenize`] encodes every document (BOS first) into [`shards`]: small versioned binary files that
//!   training memory-maps, listed in a manifest that names the tokenizer they were made with.
//! - [`loader`] packs rows BOS-aligned with best-fit (nanochat's loader), shards documents across ranks and
//!   keeps an exact resume state.

/// Builds a [`DataError`] with `format!` syntax (defined before the submodules so they can use it).
macro_rules! data_err {
    ($($arg:tt)*) => { $crate::data::DataError(format!($($arg)*)) };
}

pub mod corpus;
pub mod download;
pub mod loader;
pub mod parquet;
pub mod sft;
pub mod shards;
pub mod tokenize;

use std::fmt;
use std::path::{Path, PathBuf};

/// An error of the data pipeline; the message names the file and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataError(pub String);

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DataError {}

pub type Result<T> = std::result::Result<T, DataError>;

/// What the data pipeline needs from a tokenizer. Kept this small so that the shard writer and loader can be
/// tested with a trivial byte-level encoder, independently of the BPE tokenizer.
pub trait DocEncoder: Sync {
    /// Encodes each document without special tokens (the caller prepends BOS).
    fn encode_batch(&self, docs: &[&str]) -> Vec<Vec<u32>>;
    /// The id of the beginning-of-sequence token that starts every document.
    fn bos_id(&self) -> u32;
    /// Number of token ids; every id is below it.
    fn vocab_size(&self) -> usize;
}

pub use crate::common::base_dir;

/// Directory of the ClimbMix parquet shards (upstream's current dataset).
pub const CLIMBMIX_DIR: &str = "base_data_climbmix";
/// Directory of the legacy FineWeb-Edu parquet shards.
pub const LEGACY_DIR: &str = "base_data";
/// Directory of the offline default corpus built from locally installed packages.
pub const DEFAULT_DIR: &str = "base_data_default";

/// The parquet dataset directory to use under `base`: ClimbMix, else legacy FineWeb-Edu, else the offline
/// default corpus; the first that holds at least one `.parquet` file. Prints which one is used.
pub fn resolve_dataset_dir(base: &Path) -> Result<PathBuf> {
    for (name, what) in [
        (CLIMBMIX_DIR, "ClimbMix"),
        (LEGACY_DIR, "legacy FineWeb-Edu"),
        (DEFAULT_DIR, "offline default corpus"),
    ] {
        let dir = base.join(name);
        if !list_parquet(&dir)?.is_empty() {
            println!("data: using the {what} dataset in {}", dir.display());
            return Ok(dir);
        }
    }
    Err(data_err!(
        "no parquet shards in {}/{{{CLIMBMIX_DIR},{LEGACY_DIR},{DEFAULT_DIR}}}: run `download_data` \
         (ClimbMix, needs the network) or `download_data --default-corpus` (offline default corpus)",
        base.display()
    ))
}

/// The token-shard directory that belongs to a parquet dataset directory: `<dataset>_tokens` beside it.
pub fn tokens_dir_for(dataset_dir: &Path) -> PathBuf {
    let name = dataset_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dataset_dir.with_file_name(format!("{name}_tokens"))
}

/// Sorted `*.parquet` files of a directory (empty when the directory does not exist). Upstream's split rule
/// applies to this list: the last file is validation, all others are training.
pub fn list_parquet(dir: &Path) -> Result<Vec<PathBuf>> {
    list_with_extension(dir, "parquet")
}

/// Sorted files of `dir` with the given extension; empty when `dir` does not exist.
pub fn list_with_extension(dir: &Path, ext: &str) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let entries = std::fs::read_dir(dir).map_err(|e| data_err!("cannot list {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| data_err!("cannot list {}: {e}", dir.display()))?
            .path();
        if path.is_file() && path.extension().is_some_and(|x| x == ext) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Which part of a dataset: the last shard is validation, all the others training (upstream's rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
}

/// Applies the split rule to a sorted list of shards. Fails when there are fewer than two shards, since the
/// split would then be empty.
pub fn split_files<T>(mut files: Vec<T>, split: Split, what: &str) -> Result<Vec<T>> {
    if files.len() < 2 {
        return Err(data_err!(
            "{what}: need at least 2 shards (the last one is the validation split), found {}",
            files.len()
        ));
    }
    let val = files.split_off(files.len() - 1);
    Ok(match split {
        Split::Train => files,
        Split::Val => val,
    })
}
