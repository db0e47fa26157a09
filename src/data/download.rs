//! Downloading the parquet shards of the real pretraining datasets (spec §4.1).
//!
//! As upstream: shards `0..n` plus the fixed validation shard (the dataset's last), several workers in
//! parallel, a 30 s timeout, up to 5 attempts with exponential backoff, and every file written to `.tmp`
//! then renamed. On top of that a partial `.tmp` left by an interrupted run is continued with an HTTP range
//! request, and a downloaded file must open as a parquet file with a `text` column before it is renamed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::parquet::TextParquet;
use super::Result;

/// The datasets upstream trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dataset {
    /// NVIDIA ClimbMix, reshuffled by upstream (6543 shards); the default.
    Climbmix,
    /// FineWeb-Edu 100B, upstream's previous dataset (1823 shards).
    FinewebEdu,
}

impl Dataset {
    pub fn base_url(self) -> &'static str {
        match self {
            Dataset::Climbmix => "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main",
            Dataset::FinewebEdu => "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main",
        }
    }

    /// Index of the last shard, which is the validation shard.
    pub fn max_shard(self) -> usize {
        match self {
            Dataset::Climbmix => 6542,
            Dataset::FinewebEdu => 1822,
        }
    }

    /// Directory under the base dir.
    pub fn dir_name(self) -> &'static str {
        match self {
            Dataset::Climbmix => super::CLIMBMIX_DIR,
            Dataset::FinewebEdu => super::LEGACY_DIR,
        }
    }
}

/// File name of shard `index`.
pub fn shard_name(index: usize) -> String {
    format!("shard_{index:05}.parquet")
}

/// Shards to fetch for `-n num_shards`: `0..num_shards` (all training shards when `None`) plus the
/// validation shard `max_shard`, which is always fetched so that "last file = validation" holds.
pub fn shard_indices(num_shards: Option<usize>, max_shard: usize) -> Vec<usize> {
    let n = num_shards.unwrap_or(max_shard).min(max_shard);
    (0..n).chain(std::iter::once(max_shard)).collect()
}

/// How to download.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Parallel downloads (upstream: 4).
    pub workers: usize,
    /// Attempts per file before giving up (upstream: 5).
    pub attempts: u32,
    /// Wait before retry `k` (1-based) is `backoff · 2^k` (upstream: 1 s).
    pub backoff: Duration,
    /// Connect and read timeout (upstream: 30 s).
    pub timeout: Duration,
    /// Print a line per file.
    pub verbose: bool,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            workers: 4,
            attempts: 5,
            backoff: Duration::from_secs(1),
            timeout: Duration::from_secs(30),
            verbose: true,
        }
    }
}

/// What a download run did.
#[derive(Debug, Default)]
pub struct DownloadReport {
    pub downloaded: Vec<usize>,
    /// Already present, not requested.
    pub skipped: Vec<usize>,
    pub failed: Vec<(usize, String)>,
    pub bytes: u64,
}

/// Downloads shards `indices` from `base_url` into `dir`, `opts.workers` at a time. Files already present
/// are skipped. A file that fails all its attempts is reported in `failed`; the others still download.
pub fn download_shards(
    base_url: &str,
    dir: &Path,
    indices: &[usize],
    opts: &DownloadOptions,
) -> Result<DownloadReport> {
    std::fs::create_dir_all(dir).map_err(|e| data_err!("cannot create {}: {e}", dir.display()))?;
    let agent = agent(opts);
    let next = AtomicUsize::new(0);
    let report = Mutex::new(DownloadReport::default());
    let record = |f: &dyn Fn(&mut DownloadReport)| {
        if let Ok(mut r) = report.lock() {
            f(&mut r)
        }
    };
    std::thread::scope(|scope| {
        for _ in 0..opts.workers.max(1).min(indices.len().max(1)) {
            scope.spawn(|| loop {
                let Some(&index) = indices.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    return;
                };
                let path = dir.join(shard_name(index));
                if path.exists() {
                    record(&|r| r.skipped.push(index));
                    continue;
                }
                let url = format!("{}/{}", base_url.trim_end_matches('/'), shard_name(index));
                match download_with_retries(&agent, &url, &path, opts) {
                    Ok(bytes) => {
                        if opts.verbose {
                            println!("download: {} ({:.1} MB)", path.display(), bytes as f64 / 1e6);
                        }
                        record(&|r| {
                            r.downloaded.push(index);
                            r.bytes += bytes;
                        })
                    }
                    Err(e) => {
                        eprintln!("download: giving up on {url}: {e}");
                        record(&|r| r.failed.push((index, e.to_string())));
                    }
                }
            });
        }
    });
    let mut report = report
        .into_inner()
        .map_err(|_| data_err!("a download worker panicked"))?;
    report.downloaded.sort_unstable();
    report.skipped.sort_unstable();
    report.failed.sort_unstable();
    Ok(report)
}

/// An HTTP agent with the options' timeouts.
pub fn agent(opts: &DownloadOptions) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(opts.timeout)
        .timeout_read(opts.timeout)
        .build()
}

/// Downloads `url` to `path` with retries and exponential backoff; returns the file size. The file must open as
/// a text parquet shard.
pub fn download_with_retries(agent: &ureq::Agent, url: &str, path: &Path, opts: &DownloadOptions) -> Result<u64> {
    download_validated(agent, url, path, opts, &|p| TextParquet::open(p).map(|_| ()))
}

/// How a downloaded file is judged usable before it is renamed into place.
pub type Validator<'a> = &'a (dyn Fn(&Path) -> Result<()> + Sync);

/// [`download_with_retries`] with any check of the finished file: a file that fails `validate` is deleted and
/// the next attempt starts from scratch; only a file that passes is renamed from `.tmp` to `path`.
pub fn download_validated(
    agent: &ureq::Agent,
    url: &str,
    path: &Path,
    opts: &DownloadOptions,
    validate: Validator,
) -> Result<u64> {
    let mut last = data_err!("no attempt made");
    for attempt in 1..=opts.attempts.max(1) {
        match download_once(agent, url, path, validate) {
            Ok(bytes) => return Ok(bytes),
            Err(e) => {
                if attempt < opts.attempts {
                    let wait = opts.backoff * 2u32.pow(attempt);
                    eprintln!(
                        "download: attempt {attempt}/{} of {url} failed ({e}); retrying in {wait:?}",
                        opts.attempts
                    );
                    std::thread::sleep(wait);
                }
                last = e;
            }
        }
    }
    Err(last)
}

/// Where a download in progress lives: `path` + `.tmp`.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// One attempt: continues a partial `.tmp` with a range request when the server honours it, checks the
/// result with `validate`, then renames it into place.
fn download_once(agent: &ureq::Agent, url: &str, path: &Path, validate: Validator) -> Result<u64> {
    let tmp = tmp_path(path);
    let have = std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0);
    let mut request = agent.get(url);
    if have > 0 {
        request = request.set("Range", &format!("bytes={have}-"));
    }
    let response = match request.call() {
        Ok(r) => r,
        // 416: the partial file is already complete (or bogus); start over next attempt.
        Err(ureq::Error::Status(416, _)) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(data_err!("{url}: server refused the range request (HTTP 416)"));
        }
        Err(ureq::Error::Status(code, _)) => return Err(data_err!("{url}: HTTP {code}")),
        Err(e) => return Err(data_err!("{url}: {e}")),
    };
    let append = response.status() == 206;
    let mut file = if append {
        OpenOptions::new().append(true).open(&tmp)
    } else {
        File::create(&tmp)
    }
    .map_err(|e| data_err!("cannot write {}: {e}", tmp.display()))?;
    let mut reader = response.into_reader();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| data_err!("{url}: transfer interrupted: {e}"))?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n])
            .map_err(|e| data_err!("cannot write {}: {e}", tmp.display()))?;
    }
    file.sync_all()
        .map_err(|e| data_err!("cannot write {}: {e}", tmp.display()))?;
    drop(file);
    if let Err(e) = validate(&tmp) {
        // A damaged download is not worth continuing: start the next attempt from scratch.
        let _ = std::fs::remove_file(&tmp);
        return Err(data_err!("{url}: downloaded file is not usable: {e}"));
    }
    std::fs::rename(&tmp, path).map_err(|e| data_err!("cannot rename {} to {}: {e}", tmp.display(), path.display()))?;
    Ok(std::fs::metadata(path).map(|m| m.len()).unwrap_or(0))
}
