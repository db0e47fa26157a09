//! Tokenize the parquet shards of the pretraining dataset into memory-mappable token shards, on all cores.
//!
//! `tokenize_data` picks the dataset as training does (ClimbMix, else legacy FineWeb-Edu, else the offline
//! default corpus), encodes every document with the trained tokenizer (BOS first) and writes one token shard
//! per parquet shard into `<dataset>_tokens/`, with a manifest naming the tokenizer. Re-running continues
//! where it stopped; shards made with another tokenizer are refused unless `--overwrite` is given.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use nanochat::data::tokenize::{tokenize_dir, ByteEncoder};
use nanochat::data::{base_dir, resolve_dataset_dir, tokens_dir_for, DocEncoder};
use nanochat::tokenizer::{Tokenizer, TOKENIZER_FILE};

#[derive(Parser, Debug)]
#[command(about = "Tokenize parquet shards into token shards for pretraining")]
struct Args {
    /// Tokenizer file (default: $NANOCHAT_BASE_DIR/tokenizer/tokenizer.bin, made by tok_train).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Use the byte-level encoder (vocabulary 257, BOS 256) instead of a trained tokenizer: for smoke tests.
    #[arg(long, conflicts_with = "tokenizer")]
    byte_level: bool,
    /// Directory of parquet shards (default: the dataset training would use under $NANOCHAT_BASE_DIR).
    #[arg(long)]
    dataset_dir: Option<PathBuf>,
    /// Where the token shards go (default: `<dataset dir>_tokens` beside it).
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Replace token shards that were made with a different tokenizer.
    #[arg(long)]
    overwrite: bool,
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let dataset = match args.dataset_dir {
        Some(dir) => dir,
        None => resolve_dataset_dir(&base_dir())?,
    };
    let out = args.output_dir.unwrap_or_else(|| tokens_dir_for(&dataset));
    let tokenizer;
    let encoder: &dyn DocEncoder = if args.byte_level {
        &ByteEncoder
    } else {
        let path = args
            .tokenizer
            .unwrap_or_else(|| base_dir().join("tokenizer").join(TOKENIZER_FILE));
        tokenizer = Tokenizer::load(&path).map_err(|e| format!("{e} (train one with `tok_train`)"))?;
        println!(
            "tokenize: tokenizer {} (vocabulary {})",
            path.display(),
            tokenizer.vocab_size()
        );
        &tokenizer
    };
    let start = Instant::now();
    let manifest = tokenize_dir(&dataset, &out, encoder, args.overwrite)?;
    let tokens: usize = manifest.shards.iter().map(|s| s.num_tokens).sum();
    let bytes: usize = manifest.shards.iter().map(|s| s.text_bytes).sum();
    println!(
        "tokenize: done in {:.1}s: {} shards, {} tokens, {:.1} MB of text ({:.2} bytes/token); the last shard is validation",
        start.elapsed().as_secs_f64(),
        manifest.shards.len(),
        tokens,
        bytes as f64 / 1e6,
        bytes as f64 / tokens.max(1) as f64
    );
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokenize_data: {e}");
            ExitCode::FAILURE
        }
    }
}
