//! Fetch pretraining data: parquet shards of the real datasets, or the offline default corpus.
//!
//! `download_data -n 8` fetches ClimbMix shards 0..7 plus the validation shard (the dataset's last) into
//! `$NANOCHAT_BASE_DIR/base_data_climbmix/`, as upstream's `python -m nanochat.dataset -n 8`.
//! `download_data --default-corpus` needs no network: it builds a small corpus of real English text from
//! Debian packages (see `tools/setup_default_data.sh`) into `base_data_default/`.
//! `download_data --tasks` fetches the chat tasks' datasets from the Hugging Face hub into `task_data/`, the
//! spelling word list, and writes the identity conversations.
//! `download_data --eval-bundle` fetches the CORE evaluation bundle and unpacks it into `eval_bundle/`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use nanochat::data::corpus::{build_default_corpus, CorpusSources};
use nanochat::data::download::{download_shards, shard_indices, Dataset, DownloadOptions};
use nanochat::data::{base_dir, DEFAULT_DIR};

#[derive(Parser, Debug)]
#[command(about = "Download parquet shards of the pretraining dataset, or build the offline default corpus")]
struct Args {
    /// Number of training shards to fetch, starting at 0 (-1: all); the validation shard is always fetched.
    #[arg(short = 'n', long, default_value_t = -1, allow_negative_numbers = true)]
    num_shards: i64,
    /// Parallel downloads.
    #[arg(short = 'w', long, default_value_t = 4)]
    workers: usize,
    /// Which dataset: ClimbMix (upstream's current) or FineWeb-Edu (its previous one).
    #[arg(long, value_enum, default_value_t = Dataset::Climbmix)]
    dataset: Dataset,
    /// Attempts per file, with exponential backoff between them.
    #[arg(long, default_value_t = 5)]
    attempts: u32,
    /// Connect/read timeout in seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Serve the shards from this URL instead of the dataset's (a mirror).
    #[arg(long)]
    base_url: Option<String>,
    /// Write here instead of the dataset's directory under $NANOCHAT_BASE_DIR (with --tasks: the base directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Build the offline default corpus from installed Debian packages instead of downloading.
    #[arg(long)]
    default_corpus: bool,
    /// Number of parquet shards of the default corpus (the last is validation).
    #[arg(long, default_value_t = 8)]
    corpus_shards: usize,
    /// Fetch the chat tasks' data instead (ARC, MMLU, GSM8K, HumanEval, SmolTalk from the Hugging Face hub,
    /// the spelling word list) into $NANOCHAT_BASE_DIR/task_data, and write the identity conversations.
    #[arg(long)]
    tasks: bool,
    /// The Hugging Face hub to list and fetch task data from (a mirror).
    #[arg(long, default_value = nanochat::tasks::download::DEFAULT_HUB)]
    hub_url: String,
    /// Fetch the spelling word list from this URL instead of upstream's.
    #[arg(long)]
    words_url: Option<String>,
    /// With --tasks: no network; write the identity conversations and say which tasks have their data.
    #[arg(long)]
    offline: bool,
    /// With --tasks: only the evaluation splits chat_eval reads (ARC, MMLU, GSM8K and HumanEval test), not the
    /// training data (SmolTalk, MMLU auxiliary_train, GSM8K train).
    #[arg(long)]
    eval_only: bool,
    /// Fetch the CORE evaluation bundle (`eval_bundle.zip`, the DCLM tasks) and unpack it into
    /// $NANOCHAT_BASE_DIR/eval_bundle (or under --dir).
    #[arg(long)]
    eval_bundle: bool,
    /// With --eval-bundle: fetch the zip from this URL instead of upstream's (a mirror).
    #[arg(long, default_value = nanochat::core_eval::EVAL_BUNDLE_URL)]
    eval_bundle_url: String,
}

/// `--tasks`: every split, the word list and the identity conversations; failures are listed at the end.
fn download_tasks(args: &Args, opts: &DownloadOptions) -> Result<(), Box<dyn std::error::Error>> {
    use nanochat::tasks::download::{download_split, download_words, write_identity, Outcome, TASK_SPLITS};
    let base = args.dir.clone().unwrap_or_else(base_dir);
    if args.offline {
        let identity = write_identity(&base)?;
        println!("download_data: identity conversations: {}", identity.display());
        for line in nanochat::tasks::registry::availability(&base) {
            println!("download_data: {line}");
        }
        return Ok(());
    }
    let mut failed = Vec::new();
    let say = |what: &str, o: &Outcome| match o {
        Outcome::Present => println!("download_data: {what}: already present"),
        Outcome::Downloaded { files, bytes } => {
            println!("download_data: {what}: {files} file(s), {:.1} MB", *bytes as f64 / 1e6)
        }
    };
    let eval_split = |s: &&nanochat::tasks::download::HubSplit| s.split == "test" && !s.repo.contains("smol-smoltalk");
    for s in TASK_SPLITS.iter().filter(|s| !args.eval_only || eval_split(s)) {
        let what = format!("{} {} {}", s.repo, s.subset, s.split);
        match download_split(&base, &args.hub_url, s, opts) {
            Ok(o) => say(&what, &o),
            Err(e) => failed.push(format!("{what}: {e}")),
        }
    }
    match download_words(&base, args.words_url.as_deref(), opts) {
        Ok(o) => say("spelling word list", &o),
        Err(e) => failed.push(format!("spelling word list: {e}")),
    }
    let identity = write_identity(&base)?;
    println!("download_data: identity conversations: {}", identity.display());
    if !failed.is_empty() {
        return Err(format!("some task data failed (re-run to resume):\n  {}", failed.join("\n  ")).into());
    }
    Ok(())
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    if args.eval_bundle {
        use nanochat::core_eval::{download_eval_bundle, BundleOutcome, EVAL_BUNDLE_DIR};
        let base = args.dir.clone().unwrap_or_else(base_dir);
        let opts = DownloadOptions {
            attempts: args.attempts,
            timeout: Duration::from_secs(args.timeout),
            ..DownloadOptions::default()
        };
        let dir = base.join(EVAL_BUNDLE_DIR);
        match download_eval_bundle(&base, &args.eval_bundle_url, &opts)? {
            BundleOutcome::Present => println!("download_data: eval bundle: already present in {}", dir.display()),
            BundleOutcome::Downloaded { bytes } => println!(
                "download_data: eval bundle: {:.1} MB unpacked into {} ({:.1}s)",
                bytes as f64 / 1e6,
                dir.display(),
                start.elapsed().as_secs_f64()
            ),
        }
        return Ok(());
    }
    if args.tasks {
        let opts = DownloadOptions {
            attempts: args.attempts,
            timeout: Duration::from_secs(args.timeout),
            ..DownloadOptions::default()
        };
        download_tasks(&args, &opts)?;
        println!("download_data: task data done ({:.1}s)", start.elapsed().as_secs_f64());
        return Ok(());
    }
    if args.default_corpus {
        let dir = args.dir.unwrap_or_else(|| base_dir().join(DEFAULT_DIR));
        let report = build_default_corpus(&dir, &CorpusSources::default(), args.corpus_shards)?;
        for note in &report.notes {
            println!("download_data: note: {note}");
        }
        println!(
            "download_data: default corpus: {} documents, {:.1} MB of text in {} shards in {} ({:.1}s)",
            report.docs,
            report.bytes as f64 / 1e6,
            report.shards.len(),
            dir.display(),
            start.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let dir = args.dir.unwrap_or_else(|| base_dir().join(args.dataset.dir_name()));
    let num = usize::try_from(args.num_shards).ok();
    let indices = shard_indices(num, args.dataset.max_shard());
    let base_url = args.base_url.unwrap_or_else(|| args.dataset.base_url().to_string());
    println!(
        "download_data: {} shards from {base_url} into {}",
        indices.len(),
        dir.display()
    );
    let opts = DownloadOptions {
        workers: args.workers,
        attempts: args.attempts,
        timeout: Duration::from_secs(args.timeout),
        ..DownloadOptions::default()
    };
    let report = download_shards(&base_url, &dir, &indices, &opts)?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "download_data: {} downloaded ({:.1} MB, {:.1} MB/s), {} already present, {} failed",
        report.downloaded.len(),
        report.bytes as f64 / 1e6,
        report.bytes as f64 / 1e6 / secs.max(1e-9),
        report.skipped.len(),
        report.failed.len()
    );
    if !report.failed.is_empty() {
        let list: Vec<String> = report.failed.iter().map(|(i, e)| format!("shard {i}: {e}")).collect();
        return Err(format!("some shards failed (re-run to retry):\n  {}", list.join("\n  ")).into());
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("download_data: {e}");
            ExitCode::FAILURE
        }
    }
}
