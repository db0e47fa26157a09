//! Data pipeline throughput: parquet reading, tokenize-to-shards, and best-fit packing from the mapped
//! shards, compared with the token rate pretraining consumes (d26 on 8 H100s: about 1M tokens/s in all).
//!
//! Run with `cargo bench --bench data_pipeline` after `download_data` (or `download_data --default-corpus`)
//! and `tok_train`; it reads `$NANOCHAT_BASE_DIR`. Without a trained tokenizer it falls back to the
//! byte-level encoder and says so. Token shards are written to a temporary directory.

use std::sync::Arc;
use std::time::Instant;

use nanochat::data::loader::{DataLoader, LoaderConfig};
use nanochat::data::parquet::TextParquet;
use nanochat::data::shards::TokenShard;
use nanochat::data::tokenize::{tokenize_dir, ByteEncoder};
use nanochat::data::{base_dir, list_parquet, resolve_dataset_dir, DocEncoder};
use nanochat::tokenizer::{Tokenizer, TOKENIZER_FILE};

/// Tokens per second pretraining consumes at depth 26 on 8 H100s (upstream's speedrun class), all ranks.
const TRAINING_TOKENS_PER_SEC: f64 = 1.0e6;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = base_dir();
    let dataset = resolve_dataset_dir(&base)?;
    let files = list_parquet(&dataset)?;
    let threads = rayon::current_num_threads();
    println!(
        "data_pipeline: {} parquet shards in {}, {threads} threads",
        files.len(),
        dataset.display()
    );

    // 1. Parquet decoding alone (one thread, all row groups of every file).
    let t0 = Instant::now();
    let mut bytes = 0usize;
    for f in &files {
        let p = TextParquet::open(f)?;
        for rg in 0..p.num_row_groups() {
            bytes += p.read_row_group(rg)?.iter().map(String::len).sum::<usize>();
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "parquet read (1 thread):  {:8.1} MB/s  ({:.1} MB of text in {secs:.2}s)",
        bytes as f64 / 1e6 / secs,
        bytes as f64 / 1e6
    );

    // 2. Tokenize into shards on all cores: read + encode + write, what `tokenize_data` does.
    let tok_path = base.join("tokenizer").join(TOKENIZER_FILE);
    let tokenizer = Tokenizer::load(&tok_path).ok();
    let encoder: &dyn DocEncoder = match &tokenizer {
        Some(t) => {
            println!(
                "encoder: BPE tokenizer {} (vocab {})",
                tok_path.display(),
                t.vocab_size()
            );
            t
        }
        None => {
            println!(
                "encoder: byte-level (no tokenizer at {}; run tok_train for real figures)",
                tok_path.display()
            );
            &ByteEncoder
        }
    };
    let out = tempfile::tempdir()?;
    let t0 = Instant::now();
    let manifest = tokenize_dir(&dataset, out.path(), encoder, false)?;
    let secs = t0.elapsed().as_secs_f64();
    let tokens: usize = manifest.shards.iter().map(|s| s.num_tokens).sum();
    let text: usize = manifest.shards.iter().map(|s| s.text_bytes).sum();
    let tok_rate = tokens as f64 / secs;
    println!(
        "tokenize ({threads} threads):   {:8.1} MB/s  {:>12.0} tokens/s  ({tokens} tokens, {:.2} bytes/token)",
        text as f64 / 1e6 / secs,
        tok_rate,
        text as f64 / tokens.max(1) as f64
    );

    // 3. Best-fit packing from the mapped shards (one thread, as one rank's loader runs).
    // Opening maps and validates every shard (one pass over the tokens), as training start-up does.
    let t0 = Instant::now();
    let shards: Vec<TokenShard> = manifest
        .shards
        .iter()
        .map(|s| TokenShard::open(&out.path().join(&s.file)))
        .collect::<Result<_, _>>()?;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "open + validate shards:   {:>12.0} tokens/s  ({secs:.3}s)",
        tokens as f64 / secs
    );
    let shards: Arc<[TokenShard]> = shards.into();
    for (b, t) in [(16, 2048), (32, 2048)] {
        let cfg = LoaderConfig {
            batch_size: b,
            seq_len: t,
            ..LoaderConfig::default()
        };
        let mut loader = DataLoader::new(shards.clone(), cfg)?;
        let (mut inputs, mut targets) = (vec![0u32; b * t], vec![0u32; b * t]);
        loader.next_batch_into(&mut inputs, &mut targets); // fill the buffer outside the timing
        let n = 40;
        let t0 = Instant::now();
        for _ in 0..n {
            loader.next_batch_into(&mut inputs, &mut targets);
        }
        let secs = t0.elapsed().as_secs_f64();
        let rate = (n * b * t) as f64 / secs;
        println!(
            "pack B={b:<2} T={t} (1 thread): {:>12.0} tokens/s  crop fraction {:.1}%  ({:.0}x one rank's share of {:.0}M tokens/s over 8 GPUs)",
            rate,
            100.0 * loader.stats().crop_fraction(),
            rate / (TRAINING_TOKENS_PER_SEC / 8.0),
            TRAINING_TOKENS_PER_SEC / 1e6
        );
    }
    println!(
        "tokenize vs training: {:.2}x of {:.0}M tokens/s on {threads} threads (tokenization is done once, ahead of training)",
        tok_rate / TRAINING_TOKENS_PER_SEC,
        TRAINING_TOKENS_PER_SEC / 1e6
    );
    Ok(())
}
