//! The conversation loader of mid_train and chat_sft (upstream's `sft_data_generator_bos_bestfit`).
//!
//! Conversations are fetched at `rank, rank + W, rank + 2W, ...` (wrapping around the dataset is a new epoch)
//! and rendered with the chat template and its mask into a buffer of 100. A row of `T+1` tokens is filled by
//! repeatedly appending the longest buffered conversation that fits whole (the earliest among equals); when
//! none fits, the rest of the row is padded with BOS. Nothing is cropped in packing; a conversation longer than
//! a whole row is truncated when rendered (upstream's render truncates at 2048 tokens, which always fits its
//! 2049-token rows; at a shorter `T` this keeps the loader from stalling on a conversation that never fits).
//!
//! Targets are the row shifted by one, set to -1 at padding (from `content_len - 1` on) and, when training on
//! assistant tokens only (chat_sft), wherever the mask of the target token is 0. Midtraining trains on every
//! token but the padding. A row can end up with no supervised target at all (every conversation in it has an
//! all-zero mask): the loss of such a micro-batch is 0 with zero gradient, and [`SftStats`] counts the rows.
//!
//! Resume is exact: the state is the cursor, the epoch, the counters and the dataset indices of the buffered
//! conversations (re-rendered on resume: rendering is deterministic).

use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Conversations as the loader sees them: a count and a rendering of each (ids and 0/1 mask, same length).
pub trait ConversationSource: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The rendered conversation `i`, at most `max_tokens` long.
    fn render(&self, i: usize, max_tokens: usize) -> Result<(Vec<u32>, Vec<u8>), String>;
}

/// Which targets are trained on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Supervision {
    /// Only tokens whose mask is 1 (assistant content, tool calls, `<|assistant_end|>`): chat_sft.
    Masked,
    /// Every token but the padding: mid_train.
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SftConfig {
    /// Rows per batch (B).
    pub batch_size: usize,
    /// Tokens per row of inputs (T); rows hold T+1 tokens.
    pub seq_len: usize,
    pub rank: usize,
    pub world_size: usize,
    /// Rendered conversations kept for best fit (upstream: 100).
    pub buffer: usize,
    /// Render limit (upstream: 2048); the row capacity T+1 caps it further.
    pub max_tokens: usize,
    pub bos: u32,
    pub supervision: Supervision,
}

impl SftConfig {
    /// Upstream's buffer and render limit, one rank.
    pub fn new(batch_size: usize, seq_len: usize, bos: u32, supervision: Supervision) -> SftConfig {
        SftConfig {
            batch_size,
            seq_len,
            rank: 0,
            world_size: 1,
            buffer: 100,
            max_tokens: crate::tokenizer::chat::DEFAULT_MAX_TOKENS,
            bos,
            supervision,
        }
    }
}

/// Everything needed to continue exactly where a loader stopped (serialised into checkpoints).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SftState {
    pub rank: usize,
    pub world_size: usize,
    /// The next conversation to fetch.
    pub cursor: usize,
    /// Epochs count from 1; a wrap of the cursor starts the next.
    pub epoch: u64,
    /// Conversations placed in rows, counted as upstream (starts at `rank`, grows by `world_size`).
    pub consumed: u64,
    /// Batches yielded.
    pub batches: u64,
    /// Dataset indices of the buffered conversations, in buffer order.
    pub buffer: Vec<usize>,
}

/// What packing did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SftStats {
    pub rows: u64,
    pub conversations: u64,
    /// BOS tokens added as padding.
    pub padding_tokens: u64,
    /// Targets that are trained on.
    pub supervised_targets: u64,
    /// Rows without a single supervised target.
    pub all_masked_rows: u64,
    /// Conversations longer than a row, truncated when rendered.
    pub truncated: u64,
}

/// A batch: `inputs (B, T)` token ids, `targets (B, T)` next-token ids or -1 (ignored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SftBatch {
    pub batch_size: usize,
    pub seq_len: usize,
    pub inputs: Vec<u32>,
    pub targets: Vec<i32>,
}

impl SftBatch {
    /// Targets that are trained on.
    pub fn supervised(&self) -> usize {
        self.targets.iter().filter(|&&y| y >= 0).count()
    }
}

/// The best-fit conversation loader of one rank.
pub struct SftLoader {
    source: Arc<dyn ConversationSource>,
    cfg: SftConfig,
    state: SftState,
    /// Buffered conversations: dataset index, ids, mask.
    rendered: Vec<(usize, Vec<u32>, Vec<u8>)>,
    stats: SftStats,
}

impl SftLoader {
    /// A loader at the start of the dataset (epoch 1).
    pub fn new(source: Arc<dyn ConversationSource>, cfg: SftConfig) -> Result<SftLoader, String> {
        let state = SftState {
            rank: cfg.rank,
            world_size: cfg.world_size,
            cursor: cfg.rank,
            epoch: 1,
            consumed: cfg.rank as u64,
            batches: 0,
            buffer: Vec::new(),
        };
        SftLoader::resume(source, cfg, &state)
    }

    /// A loader that continues exactly from `state` (taken from a loader over the same conversations).
    pub fn resume(source: Arc<dyn ConversationSource>, cfg: SftConfig, state: &SftState) -> Result<SftLoader, String> {
        let n = source.len();
        if cfg.batch_size == 0 || cfg.seq_len == 0 || cfg.buffer == 0 || cfg.max_tokens == 0 {
            return Err(format!("the conversation loader needs positive sizes, got {cfg:?}"));
        }
        if cfg.world_size == 0 || cfg.rank >= cfg.world_size {
            return Err(format!(
                "rank {} is outside a world of {} ranks",
                cfg.rank, cfg.world_size
            ));
        }
        if n == 0 {
            return Err("the conversation mixture is empty".into());
        }
        if state.rank != cfg.rank || state.world_size != cfg.world_size {
            return Err(format!(
                "loader state is for rank {} of {}, this loader is rank {} of {}",
                state.rank, state.world_size, cfg.rank, cfg.world_size
            ));
        }
        if state.cursor >= n.max(cfg.world_size) || state.buffer.iter().any(|&i| i >= n) {
            return Err(format!(
                "loader state names conversations beyond the {n} of this mixture"
            ));
        }
        let mut loader = SftLoader {
            source,
            cfg,
            state: SftState {
                buffer: Vec::new(),
                ..state.clone()
            },
            rendered: Vec::new(),
            stats: SftStats::default(),
        };
        for &i in &state.buffer {
            let (ids, mask) = loader.render(i)?;
            loader.rendered.push((i, ids, mask));
        }
        Ok(loader)
    }

    pub fn config(&self) -> SftConfig {
        self.cfg
    }

    pub fn stats(&self) -> SftStats {
        self.stats
    }

    /// Continues the counters of a resumed run.
    pub fn restore_stats(&mut self, stats: SftStats) {
        self.stats = stats;
    }

    pub fn dataset_size(&self) -> usize {
        self.source.len()
    }

    /// The exact resume state before the next batch.
    pub fn state(&self) -> SftState {
        SftState {
            buffer: self.rendered.iter().map(|(i, _, _)| *i).collect(),
            ..self.state.clone()
        }
    }

    /// Upstream's progress: batches over `num_iterations` when one is set, else conversations consumed over
    /// the dataset size.
    pub fn progress(&self, num_iterations: Option<usize>) -> f64 {
        match num_iterations {
            Some(n) if n > 0 => self.state.batches as f64 / n as f64,
            _ => self.state.consumed as f64 / self.source.len() as f64,
        }
    }

    /// One pass over the mixture is done (upstream's `consumed >= dataset_size`).
    pub fn epoch_done(&self) -> bool {
        self.state.consumed >= self.source.len() as u64
    }

    fn render(&mut self, i: usize) -> Result<(Vec<u32>, Vec<u8>), String> {
        let limit = self.cfg.max_tokens.min(self.cfg.seq_len + 1);
        let (mut ids, mut mask) = self.source.render(i, self.cfg.max_tokens)?;
        if ids.len() != mask.len() || ids.is_empty() {
            return Err(format!(
                "conversation {i}: {} ids but {} mask entries",
                ids.len(),
                mask.len()
            ));
        }
        if ids.len() > limit {
            ids.truncate(limit);
            mask.truncate(limit);
            self.stats.truncated += 1;
        }
        Ok((ids, mask))
    }

    fn refill(&mut self) -> Result<(), String> {
        let n = self.source.len();
        while self.rendered.len() < self.cfg.buffer {
            let i = self.state.cursor % n;
            let (ids, mask) = self.render(i)?;
            self.rendered.push((i, ids, mask));
            self.state.cursor += self.cfg.world_size;
            if self.state.cursor >= n {
                self.state.cursor %= n;
                self.state.epoch += 1;
            }
        }
        Ok(())
    }

    /// The next batch.
    pub fn next_batch(&mut self) -> Result<SftBatch, String> {
        let (b, t) = (self.cfg.batch_size, self.cfg.seq_len);
        let capacity = t + 1;
        let mut batch = SftBatch {
            batch_size: b,
            seq_len: t,
            inputs: Vec::with_capacity(b * t),
            targets: Vec::with_capacity(b * t),
        };
        let (mut row, mut mask) = (Vec::with_capacity(capacity), Vec::with_capacity(capacity));
        for _ in 0..b {
            row.clear();
            mask.clear();
            while row.len() < capacity {
                self.refill()?;
                let remaining = capacity - row.len();
                // Longest conversation that fits whole; strict `>` keeps the earliest of equal lengths.
                let mut best: Option<(usize, usize)> = None;
                for (k, (_, ids, _)) in self.rendered.iter().enumerate() {
                    if ids.len() <= remaining && best.is_none_or(|(_, l)| ids.len() > l) {
                        best = Some((k, ids.len()));
                    }
                }
                let Some((k, _)) = best else { break };
                // `remove` (not swap_remove) keeps buffer order, which decides ties.
                let (_, ids, m) = self.rendered.remove(k);
                row.extend_from_slice(&ids);
                mask.extend_from_slice(&m);
                self.state.consumed += self.cfg.world_size as u64;
                self.stats.conversations += 1;
            }
            let content_len = row.len();
            row.resize(capacity, self.cfg.bos);
            mask.resize(capacity, 0);
            self.stats.padding_tokens += (capacity - content_len) as u64;
            let mut supervised = 0;
            batch.inputs.extend_from_slice(&row[..t]);
            for j in 0..t {
                // Target j is token j+1; in a padded row nothing is predicted from the last real token on.
                let padding = content_len < capacity && j + 1 >= content_len;
                let masked = self.cfg.supervision == Supervision::Masked && mask[j + 1] == 0;
                let y = if padding || masked { -1 } else { row[j + 1] as i32 };
                supervised += (y >= 0) as u64;
                batch.targets.push(y);
            }
            self.stats.rows += 1;
            self.stats.supervised_targets += supervised;
            self.stats.all_masked_rows += (supervised == 0) as u64;
        }
        self.state.batches += 1;
        Ok(batch)
    }
}

/// Rendered conversations held in memory (tests, small fixed sets).
pub struct RenderedConversations(pub Vec<(Vec<u32>, Vec<u8>)>);

impl ConversationSource for RenderedConversations {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn render(&self, i: usize, max_tokens: usize) -> Result<(Vec<u32>, Vec<u8>), String> {
        let (ids, mask) = &self.0[i];
        let n = ids.len().min(max_tokens);
        Ok((ids[..n].to_vec(), mask[..n].to_vec()))
    }
}
