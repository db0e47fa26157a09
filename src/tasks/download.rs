//! `download_data --tasks`: the task datasets from the Hugging Face hub, as upstream's `load_hub_dataset` lists
//! them (`GET {hub}/api/datasets/{repo}/parquet/{subset}/{split}` answers a JSON list of parquet URLs), each file
//! fetched with the pretraining download's retry / resume / validate-then-rename machinery into
//! `task_data/{owner--name}/{subset}/{split}/NNNNN.parquet`, and `manifest.json` written last (a folder with a
//! manifest is complete; one without is resumed). Also upstream's spelling word list and the project's identity
//! conversations.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::customjson::{IDENTITY_CONVERSATIONS, IDENTITY_FILE};
use super::hub;
use super::spelling::{WORD_LIST_FILE, WORD_LIST_URL};
use crate::data::download::{self, DownloadOptions};
use crate::data::DataError;

pub const DEFAULT_HUB: &str = "https://huggingface.co";
pub const MANIFEST: &str = "manifest.json";

/// A dataset split on the hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HubSplit {
    pub repo: &'static str,
    pub subset: &'static str,
    pub split: &'static str,
}

const fn hs(repo: &'static str, subset: &'static str, split: &'static str) -> HubSplit {
    HubSplit { repo, subset, split }
}

/// Every split the product's SFT, midtraining and chat_eval read.
pub const TASK_SPLITS: [HubSplit; 9] = [
    hs("allenai/ai2_arc", "ARC-Easy", "test"),
    hs("allenai/ai2_arc", "ARC-Challenge", "test"),
    hs("cais/mmlu", "all", "auxiliary_train"),
    hs("cais/mmlu", "all", "test"),
    hs("openai/gsm8k", "main", "train"),
    hs("openai/gsm8k", "main", "test"),
    hs("openai/openai_humaneval", "openai_humaneval", "test"),
    hs("HuggingFaceTB/smol-smoltalk", "default", "train"),
    hs("HuggingFaceTB/smol-smoltalk", "default", "test"),
];

/// `manifest.json` of a downloaded split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub repo: String,
    pub subset: String,
    pub split: String,
    pub files: Vec<ManifestFile>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestFile {
    pub name: String,
    pub url: String,
    pub bytes: u64,
    pub rows: u64,
}

/// What happened to one split.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Already complete (a manifest whose files are all present).
    Present,
    Downloaded {
        files: usize,
        bytes: u64,
    },
}

fn err(e: impl std::fmt::Display) -> DataError {
    DataError(e.to_string())
}

/// Reads a complete split's manifest, if there is one and every file it names exists.
pub fn complete_manifest(dir: &Path) -> Option<Manifest> {
    let text = std::fs::read_to_string(dir.join(MANIFEST)).ok()?;
    let m: Manifest = serde_json::from_str(&text).ok()?;
    m.files.iter().all(|f| dir.join(&f.name).is_file()).then_some(m)
}

/// The parquet URLs the hub lists for a split, with the download's retries.
pub fn list_parquet_urls(
    agent: &ureq::Agent,
    hub: &str,
    s: &HubSplit,
    opts: &DownloadOptions,
) -> Result<Vec<String>, DataError> {
    let url = format!(
        "{}/api/datasets/{}/parquet/{}/{}",
        hub.trim_end_matches('/'),
        s.repo,
        s.subset,
        s.split
    );
    let mut last = err("no attempt made");
    for attempt in 1..=opts.attempts.max(1) {
        let got = agent
            .get(&url)
            .call()
            .map_err(|e| err(format!("{url}: {e}")))
            .and_then(|r| r.into_string().map_err(|e| err(format!("{url}: {e}"))))
            .and_then(|body| {
                serde_json::from_str::<Vec<String>>(&body)
                    .map_err(|e| err(format!("{url}: expected a JSON list of parquet URLs: {e}")))
            });
        match got {
            Ok(urls) if urls.is_empty() => return Err(err(format!("{url}: no parquet files"))),
            Ok(urls) => return Ok(urls),
            Err(e) => {
                if attempt < opts.attempts {
                    std::thread::sleep(opts.backoff * 2u32.pow(attempt));
                }
                last = e;
            }
        }
    }
    Err(last)
}

/// A downloaded file must be a parquet file with at least one row.
fn validate_parquet(path: &Path) -> crate::data::Result<()> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
    let r = SerializedFileReader::new(file).map_err(|e| err(format!("{}: not a parquet file: {e}", path.display())))?;
    if r.metadata().file_metadata().num_rows() <= 0 {
        return Err(err(format!("{}: the parquet file has no rows", path.display())));
    }
    Ok(())
}

fn parquet_rows(path: &Path) -> u64 {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    std::fs::File::open(path)
        .ok()
        .and_then(|f| SerializedFileReader::new(f).ok())
        .map_or(0, |r| r.metadata().file_metadata().num_rows() as u64)
}

/// Downloads one split into `<base>/task_data/...` unless it is complete; the manifest is written last.
pub fn download_split(base: &Path, hub: &str, s: &HubSplit, opts: &DownloadOptions) -> Result<Outcome, DataError> {
    let dir = hub::dataset_dir(base, s.repo, s.subset, s.split);
    if complete_manifest(&dir).is_some() {
        return Ok(Outcome::Present);
    }
    std::fs::create_dir_all(&dir).map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
    let agent = download::agent(opts);
    let urls = list_parquet_urls(&agent, hub, s, opts)?;
    let (mut files, mut bytes) = (Vec::new(), 0);
    for (i, url) in urls.iter().enumerate() {
        let name = format!("{i:05}.parquet");
        let path = dir.join(&name);
        let size = if path.is_file() {
            std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
        } else {
            let n = download::download_validated(&agent, url, &path, opts, &validate_parquet)?;
            bytes += n;
            if opts.verbose {
                println!("download: {} ({:.1} MB)", path.display(), n as f64 / 1e6);
            }
            n
        };
        files.push(ManifestFile {
            rows: parquet_rows(&path),
            name,
            url: url.clone(),
            bytes: size,
        });
    }
    let n = files.len();
    let manifest = Manifest {
        repo: s.repo.into(),
        subset: s.subset.into(),
        split: s.split.into(),
        files,
    };
    write_atomic(
        &dir.join(MANIFEST),
        serde_json::to_string_pretty(&manifest).map_err(err)?.as_bytes(),
    )?;
    Ok(Outcome::Downloaded { files: n, bytes })
}

/// Writes through a `.tmp` file and a rename, so a reader never sees half a file.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), DataError> {
    let tmp = download::tmp_path(path);
    std::fs::write(&tmp, data).map_err(|e| err(format!("cannot write {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| err(format!("cannot rename {}: {e}", tmp.display())))
}

/// A word list must be non-empty lines of lowercase letters (a server error page is not).
fn validate_words(path: &Path) -> crate::data::Result<()> {
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
    let ok = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .all(|l| l.bytes().all(|b| b.is_ascii_lowercase()));
    if !ok || text.trim().is_empty() {
        return Err(err(format!(
            "{}: not a word list (one lowercase word per line)",
            path.display()
        )));
    }
    Ok(())
}

/// Upstream's spelling word list into `<base>/words_alpha.txt` (`url` overrides its address).
pub fn download_words(base: &Path, url: Option<&str>, opts: &DownloadOptions) -> Result<Outcome, DataError> {
    let path = base.join(WORD_LIST_FILE);
    if path.is_file() {
        return Ok(Outcome::Present);
    }
    std::fs::create_dir_all(base).map_err(|e| err(format!("cannot create {}: {e}", base.display())))?;
    let agent = download::agent(opts);
    let bytes = download::download_validated(&agent, url.unwrap_or(WORD_LIST_URL), &path, opts, &validate_words)?;
    Ok(Outcome::Downloaded { files: 1, bytes })
}

/// Writes the shipped identity conversations to `<base>/identity_conversations.jsonl` unless a file is there
/// (a user's own conversations are kept). Returns its path.
pub fn write_identity(base: &Path) -> Result<PathBuf, DataError> {
    let path = base.join(IDENTITY_FILE);
    if !path.exists() {
        std::fs::create_dir_all(base).map_err(|e| err(format!("cannot create {}: {e}", base.display())))?;
        write_atomic(&path, IDENTITY_CONVERSATIONS.as_bytes())?;
    }
    Ok(path)
}
