//! Tokenizing a directory of parquet shards into token shards, once, on all cores.
//!
//! Each parquet shard becomes one token shard (same order, so the last is still the validation split). The
//! manifest is rewritten after every shard, which makes the command resumable: shards already listed for the
//! same tokenizer are skipped.

use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;

use super::parquet::TextParquet;
use super::shards::{self, Manifest, ShardEntry, TokenizerId};
use super::{list_parquet, DocEncoder, Result};

/// Encodes documents and prepends BOS to each.
pub fn encode_docs(encoder: &dyn DocEncoder, docs: &[&str]) -> Vec<Vec<u32>> {
    let bos = encoder.bos_id();
    encoder
        .encode_batch(docs)
        .into_iter()
        .map(|ids| {
            let mut doc = Vec::with_capacity(ids.len() + 1);
            doc.push(bos);
            doc.extend(ids);
            doc
        })
        .collect()
}

/// Tokenizes one parquet shard into a token shard at `out`. Row groups are read and encoded in parallel.
pub fn tokenize_file(parquet: &Path, out: &Path, encoder: &dyn DocEncoder) -> Result<ShardEntry> {
    let file = TextParquet::open(parquet)?;
    // Each task opens its own reader: one parquet file handle cannot serve concurrent reads.
    let groups: Vec<Result<(Vec<Vec<u32>>, usize)>> = (0..file.num_row_groups())
        .into_par_iter()
        .map(|rg| {
            let texts = TextParquet::open(parquet)?.read_row_group(rg)?;
            let bytes = texts.iter().map(String::len).sum();
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            Ok((encode_docs(encoder, &refs), bytes))
        })
        .collect();
    let mut docs = Vec::with_capacity(file.num_docs());
    let mut text_bytes = 0;
    for group in groups {
        let (d, b) = group?;
        docs.extend(d);
        text_bytes += b;
    }
    shards::write_shard(out, &docs, encoder.vocab_size(), encoder.bos_id())?;
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    Ok(ShardEntry {
        source: name(parquet),
        file: name(out),
        num_docs: docs.len(),
        num_tokens: docs.iter().map(Vec::len).sum(),
        text_bytes,
    })
}

/// Tokenizes every parquet shard of `parquet_dir` into `tokens_dir`, skipping shards already done with the
/// same tokenizer. Shards made with another tokenizer are an error unless `overwrite` is set, in which case
/// they are replaced. Prints one progress line per shard with rate and ETA.
pub fn tokenize_dir(
    parquet_dir: &Path,
    tokens_dir: &Path,
    encoder: &dyn DocEncoder,
    overwrite: bool,
) -> Result<Manifest> {
    let sources = list_parquet(parquet_dir)?;
    if sources.is_empty() {
        return Err(data_err!("no parquet shards in {}", parquet_dir.display()));
    }
    std::fs::create_dir_all(tokens_dir).map_err(|e| data_err!("cannot create {}: {e}", tokens_dir.display()))?;
    let id = TokenizerId::of(encoder);
    let mut manifest = match Manifest::load(tokens_dir)? {
        Some(m) if m.tokenizer == id => m,
        Some(m) => {
            if !overwrite {
                m.check_tokenizer(tokens_dir, &id)?;
            }
            println!(
                "tokenize: replacing {} shards made with another tokenizer",
                m.shards.len()
            );
            for entry in &m.shards {
                let _ = std::fs::remove_file(tokens_dir.join(&entry.file));
            }
            Manifest::new(id)
        }
        None => Manifest::new(id),
    };
    // Forget entries whose parquet source or token file has gone.
    manifest
        .shards
        .retain(|e| parquet_dir.join(&e.source).exists() && tokens_dir.join(&e.file).exists());
    let todo: Vec<_> = sources
        .iter()
        .filter(|p| {
            !manifest
                .shards
                .iter()
                .any(|e| p.file_name().is_some_and(|n| *n == *e.source))
        })
        .collect();
    println!(
        "tokenize: {} parquet shards in {}, {} already done, {} to go -> {}",
        sources.len(),
        parquet_dir.display(),
        sources.len() - todo.len(),
        todo.len(),
        tokens_dir.display()
    );
    let start = Instant::now();
    let (mut bytes, mut tokens) = (0usize, 0usize);
    for (i, source) in todo.iter().enumerate() {
        let out = tokens_dir.join(source.with_extension(shards::EXTENSION).file_name().unwrap_or_default());
        let entry = tokenize_file(source, &out, encoder)?;
        bytes += entry.text_bytes;
        tokens += entry.num_tokens;
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        let eta = secs / (i + 1) as f64 * (todo.len() - i - 1) as f64;
        println!(
            "tokenize: [{}/{}] {} -> {} docs, {} tokens ({:.2} bytes/token) | {:.1} MB/s, {:.0} tokens/s, ETA {:.0}s",
            i + 1,
            todo.len(),
            entry.source,
            entry.num_docs,
            entry.num_tokens,
            entry.text_bytes as f64 / entry.num_tokens.max(1) as f64,
            bytes as f64 / secs / 1e6,
            tokens as f64 / secs,
            eta
        );
        manifest.shards.push(entry);
        manifest.shards.sort_by(|a, b| a.source.cmp(&b.source));
        manifest.save(tokens_dir)?;
    }
    manifest.save(tokens_dir)?;
    Ok(manifest)
}

/// A byte-level encoder: every UTF-8 byte is one token and BOS is 256. It needs no trained tokenizer, which
/// makes it the encoder of the data tests and benchmarks (and a baseline for bytes-per-token figures).
#[derive(Debug, Clone, Copy, Default)]
pub struct ByteEncoder;

impl DocEncoder for ByteEncoder {
    fn encode_batch(&self, docs: &[&str]) -> Vec<Vec<u32>> {
        docs.iter().map(|d| d.bytes().map(u32::from).collect()).collect()
    }
    fn bos_id(&self) -> u32 {
        256
    }
    fn vocab_size(&self) -> usize {
        257
    }
}

/// The BPE tokenizer, as the pipeline sees it.
impl DocEncoder for crate::tokenizer::Tokenizer {
    fn encode_batch(&self, docs: &[&str]) -> Vec<Vec<u32>> {
        self.encode_ordinary_batch(docs)
    }
    fn bos_id(&self) -> u32 {
        crate::tokenizer::Tokenizer::bos_id(self)
    }
    fn vocab_size(&self) -> usize {
        crate::tokenizer::Tokenizer::vocab_size(self)
    }
}
