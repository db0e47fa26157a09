//! The pretraining loader: BOS-aligned best-fit packing over memory-mapped token shards (spec §4.2, §4.3).
//!
//! Documents flow in a fixed order: shard by shard, and inside a shard in blocks of 1024 documents (the row
//! groups of upstream's parquet files), rank `r` of `W` taking blocks `r, r+W, r+2W, ...`; each block is
//! handed out in refills of 128 documents; after the last shard the next epoch starts at the first one.
//!
//! Packing (upstream's `tokenizing_distributed_data_loader_with_state_bos_bestfit`): a buffer holds at least
//! 1000 documents, topped up before each document is placed. A row of `T+1` tokens is filled by repeatedly
//! taking the longest buffered document that still fits whole (the earliest among equals); when none fits,
//! the shortest document (earliest among equals) is cropped to the remaining space and its rest discarded.
//! Every row therefore starts with BOS and has no padding.
//!
//! Resume is exact: the state is the stream position plus the identities of the buffered documents (always
//! whole documents, since cropped remainders are discarded), so a resumed loader yields the very next batch.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::shards::{open_token_dir, Manifest, TokenShard, TokenizerId};
use super::{list_parquet, resolve_dataset_dir, split_files, tokens_dir_for, Result, Split};

/// Loader geometry and sharding. `Default` gives upstream's constants with one rank; set the batch shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoaderConfig {
    /// Rows per batch (B).
    pub batch_size: usize,
    /// Tokens per row of inputs (T); rows are packed to T+1 so targets are inputs shifted by one.
    pub seq_len: usize,
    pub rank: usize,
    pub world_size: usize,
    /// Documents kept in the best-fit buffer (upstream: 1000).
    pub buffer_docs: usize,
    /// Documents added per refill (upstream's tokenizer batch: 128).
    pub refill_docs: usize,
    /// Documents per block, the unit dealt round-robin to ranks (upstream's row group: 1024).
    pub block_docs: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 1,
            seq_len: 2048,
            rank: 0,
            world_size: 1,
            buffer_docs: 1000,
            refill_docs: 128,
            block_docs: super::parquet::ROW_GROUP_DOCS,
        }
    }
}

/// One document of the stream: shard index (within the split) and document index within the shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DocRef {
    pub shard: u32,
    pub doc: u32,
}

/// Where a rank's document stream stands: the next document to read. Epochs count from 1, as upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPos {
    pub epoch: u64,
    pub shard: usize,
    pub doc: usize,
}

/// The document stream of one rank.
pub struct DocStream {
    shards: Arc<[TokenShard]>,
    cfg: LoaderConfig,
    pos: StreamPos,
}

impl DocStream {
    /// A stream positioned at `pos` (normalised to the next document this rank owns). Fails when the rank
    /// owns no document at all, which would otherwise loop forever.
    pub fn new(shards: Arc<[TokenShard]>, cfg: LoaderConfig, pos: StreamPos) -> Result<DocStream> {
        if cfg.world_size == 0 || cfg.rank >= cfg.world_size {
            return Err(data_err!(
                "rank {} is outside a world of {} ranks",
                cfg.rank,
                cfg.world_size
            ));
        }
        if cfg.block_docs == 0 || cfg.refill_docs == 0 {
            return Err(data_err!("block_docs and refill_docs must be positive"));
        }
        let owns_any = shards.iter().any(|s| s.num_docs() > cfg.rank * cfg.block_docs);
        if !owns_any {
            let docs: usize = shards.iter().map(TokenShard::num_docs).sum();
            return Err(data_err!(
                "rank {} of {} gets no documents: {} shards with {docs} documents in all, dealt in blocks of {}",
                cfg.rank,
                cfg.world_size,
                shards.len(),
                cfg.block_docs
            ));
        }
        if pos.shard > shards.len() {
            return Err(data_err!(
                "stream position names shard {} of only {}",
                pos.shard,
                shards.len()
            ));
        }
        let mut stream = DocStream { shards, cfg, pos };
        stream.normalise();
        Ok(stream)
    }

    pub fn pos(&self) -> StreamPos {
        self.pos
    }

    /// Moves `pos` forward to the next document this rank owns (possibly in a later shard or epoch).
    fn normalise(&mut self) {
        let (rank, world, block) = (self.cfg.rank, self.cfg.world_size, self.cfg.block_docs);
        loop {
            if self.pos.shard >= self.shards.len() {
                self.pos = StreamPos {
                    epoch: self.pos.epoch + 1,
                    shard: 0,
                    doc: 0,
                };
            }
            let b = self.pos.doc / block;
            let owned = b + (rank + world - b % world) % world;
            if owned != b {
                self.pos.doc = owned * block;
            }
            if self.pos.doc < self.shards[self.pos.shard].num_docs() {
                return;
            }
            self.pos = StreamPos {
                epoch: self.pos.epoch,
                shard: self.pos.shard + 1,
                doc: 0,
            };
        }
    }

    /// The next refill: up to `refill_docs` documents, never crossing a block boundary.
    pub fn next_refill(&mut self) -> Vec<DocRef> {
        let block = self.cfg.block_docs;
        let start = self.pos.doc;
        let block_end = (start / block + 1) * block;
        let end = (start + self.cfg.refill_docs)
            .min(block_end)
            .min(self.shards[self.pos.shard].num_docs());
        let shard = self.pos.shard as u32;
        let docs = (start..end).map(|d| DocRef { shard, doc: d as u32 }).collect();
        self.pos.doc = end;
        self.normalise();
        docs
    }
}

/// Everything needed to continue exactly where a loader stopped; serialise it into a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    pub rank: usize,
    pub world_size: usize,
    /// The next document the stream will read.
    pub pos: StreamPos,
    /// The buffered documents, in buffer order.
    pub buffer: Vec<DocRef>,
}

/// Counters of what packing did to the documents it consumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackStats {
    pub rows: u64,
    pub docs: u64,
    /// Tokens of consumed documents that ended up in rows.
    pub tokens_used: u64,
    /// Tokens of cropped documents that were discarded.
    pub tokens_cropped: u64,
}

impl PackStats {
    /// Fraction of the consumed documents' tokens that were discarded by cropping (upstream: ~35% at T=2048).
    pub fn crop_fraction(&self) -> f64 {
        let total = self.tokens_used + self.tokens_cropped;
        if total == 0 {
            0.0
        } else {
            self.tokens_cropped as f64 / total as f64
        }
    }
}

/// A batch: `inputs` and `targets` are row-major (B, T); `targets` is `inputs` shifted left by one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub batch_size: usize,
    pub seq_len: usize,
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
}

/// The BOS-aligned best-fit loader of one rank.
pub struct DataLoader {
    shards: Arc<[TokenShard]>,
    cfg: LoaderConfig,
    stream: DocStream,
    /// Buffered documents with their lengths (cached so the best-fit scan touches one array).
    buffer: Vec<(DocRef, usize)>,
    row: Vec<u32>,
    stats: PackStats,
}

impl DataLoader {
    /// A loader at the start of the stream (epoch 1, first shard).
    pub fn new(shards: Arc<[TokenShard]>, cfg: LoaderConfig) -> Result<DataLoader> {
        let pos = StreamPos {
            epoch: 1,
            shard: 0,
            doc: 0,
        };
        DataLoader::build(shards, cfg, pos, Vec::new())
    }

    /// A loader that continues exactly from `state` (taken from a loader over the same shards).
    pub fn resume(shards: Arc<[TokenShard]>, cfg: LoaderConfig, state: &LoaderState) -> Result<DataLoader> {
        if state.rank != cfg.rank || state.world_size != cfg.world_size {
            return Err(data_err!(
                "loader state is for rank {} of {}, but this loader is rank {} of {}",
                state.rank,
                state.world_size,
                cfg.rank,
                cfg.world_size
            ));
        }
        DataLoader::build(shards, cfg, state.pos, state.buffer.clone())
    }

    fn build(shards: Arc<[TokenShard]>, cfg: LoaderConfig, pos: StreamPos, buffer: Vec<DocRef>) -> Result<DataLoader> {
        if cfg.batch_size == 0 || cfg.seq_len == 0 || cfg.buffer_docs == 0 {
            return Err(data_err!(
                "loader needs positive batch_size, seq_len and buffer_docs, got {cfg:?}"
            ));
        }
        let mut lengths = Vec::with_capacity(buffer.len());
        for r in buffer {
            let shard = shards.get(r.shard as usize).ok_or_else(|| {
                data_err!(
                    "loader state names shard {} but there are {} shards",
                    r.shard,
                    shards.len()
                )
            })?;
            if r.doc as usize >= shard.num_docs() {
                return Err(data_err!(
                    "loader state names document {} of {}, which has {} documents",
                    r.doc,
                    shard.path().display(),
                    shard.num_docs()
                ));
            }
            lengths.push((r, shard.doc_len(r.doc as usize)));
        }
        let stream = DocStream::new(shards.clone(), cfg, pos)?;
        let row = Vec::with_capacity(cfg.seq_len + 1);
        Ok(DataLoader {
            shards,
            cfg,
            stream,
            buffer: lengths,
            row,
            stats: PackStats::default(),
        })
    }

    pub fn config(&self) -> LoaderConfig {
        self.cfg
    }

    pub fn stats(&self) -> PackStats {
        self.stats
    }

    /// The exact resume state before the next batch.
    pub fn state(&self) -> LoaderState {
        LoaderState {
            rank: self.cfg.rank,
            world_size: self.cfg.world_size,
            pos: self.stream.pos(),
            buffer: self.buffer.iter().map(|&(r, _)| r).collect(),
        }
    }

    /// The next batch, freshly allocated.
    pub fn next_batch(&mut self) -> Batch {
        let (b, t) = (self.cfg.batch_size, self.cfg.seq_len);
        let mut batch = Batch {
            batch_size: b,
            seq_len: t,
            inputs: vec![0; b * t],
            targets: vec![0; b * t],
        };
        self.next_batch_into(&mut batch.inputs, &mut batch.targets);
        batch
    }

    /// Fills caller-owned (B, T) buffers with the next batch (e.g. a pinned staging buffer).
    ///
    /// Panics if the slices are not B·T long: that is a programming error of the caller, not a data error.
    pub fn next_batch_into(&mut self, inputs: &mut [u32], targets: &mut [u32]) {
        let (b, t) = (self.cfg.batch_size, self.cfg.seq_len);
        assert!(
            inputs.len() == b * t && targets.len() == b * t,
            "batch buffers must hold B*T = {} ids",
            b * t
        );
        for r in 0..b {
            self.pack_row();
            inputs[r * t..(r + 1) * t].copy_from_slice(&self.row[..t]);
            targets[r * t..(r + 1) * t].copy_from_slice(&self.row[1..]);
        }
    }

    /// Fills `self.row` with exactly T+1 tokens by best-fit.
    fn pack_row(&mut self) {
        let capacity = self.cfg.seq_len + 1;
        self.row.clear();
        while self.row.len() < capacity {
            while self.buffer.len() < self.cfg.buffer_docs {
                for r in self.stream.next_refill() {
                    self.buffer
                        .push((r, self.shards[r.shard as usize].doc_len(r.doc as usize)));
                }
            }
            let remaining = capacity - self.row.len();
            // Longest document that fits whole; strict `>` keeps the earliest of equal lengths.
            let mut best: Option<(usize, usize)> = None;
            for (i, &(_, len)) in self.buffer.iter().enumerate() {
                if len <= remaining && best.is_none_or(|(_, l)| len > l) {
                    best = Some((i, len));
                }
            }
            let (i, take) = match best {
                Some((i, len)) => (i, len),
                None => {
                    // Nothing fits: crop the shortest document (earliest of ties) to the remaining space.
                    let mut shortest = 0;
                    for (i, &(_, len)) in self.buffer.iter().enumerate() {
                        if len < self.buffer[shortest].1 {
                            shortest = i;
                        }
                    }
                    (shortest, remaining)
                }
            };
            // `remove` (not swap_remove) keeps buffer order, which decides ties.
            let (r, len) = self.buffer.remove(i);
            self.shards[r.shard as usize].extend_doc(r.doc as usize, take, &mut self.row);
            self.stats.docs += 1;
            self.stats.tokens_used += take as u64;
            self.stats.tokens_cropped += (len - take) as u64;
        }
        self.stats.rows += 1;
    }
}

/// The token shards of `split` for training under `base`: resolves the dataset directory (ClimbMix, legacy,
/// default), checks its token shards were made with `tokenizer` from every parquet shard present, and maps
/// them. The last shard is the validation split.
pub fn open_split(base: &Path, tokenizer: &TokenizerId, split: Split) -> Result<Arc<[TokenShard]>> {
    let dataset = resolve_dataset_dir(base)?;
    let tokens = tokens_dir_for(&dataset);
    let manifest = Manifest::load(&tokens)?.ok_or_else(|| {
        data_err!(
            "{} has no token shards ({} missing): run `tokenize_data`",
            dataset.display(),
            tokens.join(super::shards::MANIFEST).display()
        )
    })?;
    let sources: Vec<String> = list_parquet(&dataset)?
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let tokenized: Vec<&str> = manifest.shards.iter().map(|s| s.source.as_str()).collect();
    if sources.iter().map(String::as_str).ne(tokenized.iter().copied()) {
        return Err(data_err!(
            "token shards in {} are out of date: {} parquet shards in {}, {} tokenized; run `tokenize_data`",
            tokens.display(),
            sources.len(),
            dataset.display(),
            tokenized.len()
        ));
    }
    let shards = open_token_dir(&tokens, tokenizer)?;
    Ok(split_files(shards, split, &tokens.display().to_string())?.into())
}
