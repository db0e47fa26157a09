//! The inference engine (spec §6): prefill the prompt once in row 0, copy its cache into the other of
//! `num_samples` rows, then decode all rows together with temperature / top-k sampling from one seeded RNG,
//! forcing the calculator's output tokens into a row after it closes a `<|python_start|>`..`<|python_end|>`
//! block. [`batch`] runs many different prompts at once (continuous batching), each with its own RNG.
//!
//! The model is anything implementing [`InferModel`]; the CPU reference implements it here, kernel devices
//! implement it with their own cache type.

pub mod batch;
pub mod calc;
pub mod full;
pub mod load;

use std::collections::VecDeque;

use crate::config::ModelConfig;
use crate::cpu::infer::{CpuInfer, KvCache};
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;

/// A model that runs with a KV cache of independent rows.
///
/// A cache holds a fixed number of rows (sequences), each of up to `t_max` positions, allocated once by
/// [`new_cache`](InferModel::new_cache). Every row has its own length. A forward step feeds any subset of the
/// rows, each its own number of new tokens written at that row's current length, so one step can mix prefills
/// of different prompt lengths with one-token decodes, and a row can be cleared and start a new sequence while
/// the others go on (continuous batching). A row's logits depend on its own tokens only, never on which other
/// rows share the step (up to the rounding of a batched matrix product on devices that have one).
///
/// Smear (spec §1.5): a chunk of more than one token smears within itself only (its first position is not
/// smeared, as upstream's prefill); a one-token chunk on a non-empty row smears with that row's previous
/// token's embedding, kept in the cache.
pub trait InferModel: Send {
    type Cache: Send;
    fn config(&self) -> &ModelConfig;
    /// A cache of `rows` empty rows of up to `t_max` positions each.
    fn new_cache(&self, rows: usize, t_max: usize) -> Result<Self::Cache, String>;
    /// Positions filled in `row` (0 for a row out of range).
    fn row_len(&self, cache: &Self::Cache, row: usize) -> usize;
    /// Empties `row` (length 0) for a new sequence; the other rows are untouched.
    fn clear_row(&self, cache: &mut Self::Cache, row: usize) -> Result<(), String>;
    /// Makes row `dst` a copy of row `src`: length, keys, values and smear state (upstream's
    /// `KVCache.prefill`, row by row: one prefill shared by several samples).
    fn copy_row(&self, cache: &mut Self::Cache, src: usize, dst: usize) -> Result<(), String>;
    /// One forward step over the distinct rows `rows`: row `rows[i]` gets the next `lens[i] >= 1` ids of `ids`
    /// (`ids.len()` is the sum of `lens`, chunks in the order of `rows`) at positions
    /// `row_len..row_len + lens[i]`, and its length grows by `lens[i]`. Rows not listed are untouched. Returns
    /// the softcapped logits of each listed row's last new position, `(rows.len(), vocab_size)`. Checks its
    /// arguments (rows in range and distinct, lengths fitting `t_max`, ids in the vocabulary) before changing
    /// anything.
    fn forward_rows(
        &self,
        cache: &mut Self::Cache,
        rows: &[usize],
        lens: &[usize],
        ids: &[u32],
    ) -> Result<Vec<f32>, String>;
    /// `forward_rows` over rows `0..ids.len() / t` with `t` tokens each (`ids` is `(rows, t)`).
    fn forward_last(&self, cache: &mut Self::Cache, ids: &[u32], t: usize) -> Result<Vec<f32>, String> {
        if t == 0 || ids.is_empty() || ids.len() % t != 0 {
            return Err(format!("expected (rows, {t}) token ids, got {}", ids.len()));
        }
        let rows = ids.len() / t;
        let all: Vec<usize> = (0..rows).collect();
        self.forward_rows(cache, &all, &vec![t; rows], ids)
    }
}

/// A borrowed model runs as the model itself (e.g. the rollouts of a model in training, on its own device).
impl<M: InferModel + Sync> InferModel for &M {
    type Cache = M::Cache;
    fn config(&self) -> &ModelConfig {
        (**self).config()
    }
    fn new_cache(&self, rows: usize, t_max: usize) -> Result<M::Cache, String> {
        (**self).new_cache(rows, t_max)
    }
    fn row_len(&self, cache: &M::Cache, row: usize) -> usize {
        (**self).row_len(cache, row)
    }
    fn clear_row(&self, cache: &mut M::Cache, row: usize) -> Result<(), String> {
        (**self).clear_row(cache, row)
    }
    fn copy_row(&self, cache: &mut M::Cache, src: usize, dst: usize) -> Result<(), String> {
        (**self).copy_row(cache, src, dst)
    }
    fn forward_rows(
        &self,
        cache: &mut M::Cache,
        rows: &[usize],
        lens: &[usize],
        ids: &[u32],
    ) -> Result<Vec<f32>, String> {
        (**self).forward_rows(cache, rows, lens, ids)
    }
}

impl InferModel for CpuInfer {
    type Cache = KvCache;
    fn config(&self) -> &ModelConfig {
        &self.config
    }
    fn new_cache(&self, rows: usize, t_max: usize) -> Result<KvCache, String> {
        Ok(KvCache::new(&self.config, rows, t_max))
    }
    fn row_len(&self, cache: &KvCache, row: usize) -> usize {
        if row < cache.rows {
            cache.len(row)
        } else {
            0
        }
    }
    fn clear_row(&self, cache: &mut KvCache, row: usize) -> Result<(), String> {
        cache.clear_row(row)
    }
    fn copy_row(&self, cache: &mut KvCache, src: usize, dst: usize) -> Result<(), String> {
        cache.copy_row(src, dst)
    }
    fn forward_rows(
        &self,
        cache: &mut KvCache,
        rows: &[usize],
        lens: &[usize],
        ids: &[u32],
    ) -> Result<Vec<f32>, String> {
        self.forward_ragged(cache, rows, lens, ids, false)
    }
}

/// Sampling settings of one generation.
#[derive(Clone, Debug)]
pub struct GenConfig {
    pub num_samples: usize,
    /// None: until the context is full.
    pub max_tokens: Option<usize>,
    /// 0 is greedy (argmax).
    pub temperature: f64,
    /// None or 0: no top-k.
    pub top_k: Option<usize>,
    pub seed: u64,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            num_samples: 1,
            max_tokens: None,
            temperature: 1.0,
            top_k: None,
            seed: 42,
        }
    }
}

/// Draws the next token from one row of logits: argmax at temperature 0, else softmax(logits / temperature)
/// over all tokens or the top k ([`top_k_ids`]: one pass over the vocabulary). Runs on the host: see
/// docs/engine.md (sampling on the host) for why and what it costs per token.
pub fn sample_next_token(logits: &[f32], rng: &mut Rng, temperature: f64, top_k: Option<usize>) -> Result<u32, String> {
    if temperature.is_nan() || temperature < 0.0 {
        return Err(format!("temperature must be >= 0, got {temperature}"));
    }
    if logits.is_empty() {
        return Err("no logits to sample from".into());
    }
    let argmax = |idx: &mut dyn Iterator<Item = usize>| {
        idx.fold(None, |best: Option<usize>, i| match best {
            Some(b) if logits[b] >= logits[i] => Some(b),
            _ => Some(i),
        })
        .unwrap_or(0) as u32
    };
    if temperature == 0.0 {
        return Ok(argmax(&mut (0..logits.len())));
    }
    let cand: Vec<usize> = match top_k.filter(|&k| k > 0 && k < logits.len()) {
        Some(k) => top_k_ids(logits, k),
        None => (0..logits.len()).collect(),
    };
    let mx = cand.iter().map(|&i| logits[i] as f64).fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = cand
        .iter()
        .map(|&i| ((logits[i] as f64 - mx) / temperature).exp())
        .collect();
    let total: f64 = w.iter().sum();
    if !total.is_finite() || total <= 0.0 {
        return Ok(argmax(&mut cand.into_iter()));
    }
    let mut u = rng.next_f64() * total;
    for (j, &wj) in w.iter().enumerate() {
        if u < wj {
            return Ok(cand[j] as u32);
        }
        u -= wj;
    }
    Ok(cand[cand.len() - 1] as u32)
}

/// A candidate of [`top_k_ids`], ordered worst first: a smaller logit (in `total_cmp`'s order), or an equal
/// logit and a larger id.
#[derive(Clone, Copy)]
struct Cand {
    logit: f32,
    id: usize,
}

impl Ord for Cand {
    fn cmp(&self, o: &Cand) -> std::cmp::Ordering {
        o.logit.total_cmp(&self.logit).then(self.id.cmp(&o.id))
    }
}
impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Cand) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl PartialEq for Cand {
    fn eq(&self, o: &Cand) -> bool {
        self.cmp(o).is_eq()
    }
}
impl Eq for Cand {}

/// The ids of the `k` (< V) largest logits, largest first and by id among equal logits (a stable top-k):
/// one pass over the vocabulary keeping the k best in a heap whose top is the worst of them (a logit enters
/// only when it beats that one: rarely, after the first few thousand), then a sort of the k. The same ids in
/// the same order as sorting the whole vocabulary, in O(V + k log k · entries) instead of O(V log V).
pub fn top_k_ids(logits: &[f32], k: usize) -> Vec<usize> {
    let mut heap = std::collections::BinaryHeap::with_capacity(k);
    for (id, &logit) in logits.iter().enumerate() {
        let c = Cand { logit, id };
        if heap.len() < k {
            heap.push(c);
        } else if let Some(mut worst) = heap.peek_mut() {
            // Ids rise through the scan, so an equal logit never beats the worst kept.
            if logit.total_cmp(&worst.logit).is_gt() {
                *worst = c;
            }
        }
    }
    heap.into_sorted_vec().into_iter().map(|c| c.id).collect()
}

/// Special token ids the engine reacts to.
#[derive(Clone, Copy, Debug)]
struct Specials {
    bos: u32,
    assistant_end: u32,
    python_start: Option<u32>,
    python_end: Option<u32>,
    output_start: Option<u32>,
    output_end: Option<u32>,
}

impl Specials {
    fn of(tok: &Tokenizer) -> Result<Specials, String> {
        let need = |name: &str| {
            tok.special_id(name)
                .ok_or_else(|| format!("the tokenizer has no special token {name}"))
        };
        Ok(Specials {
            bos: tok.bos_id(),
            assistant_end: need("<|assistant_end|>")?,
            python_start: tok.special_id("<|python_start|>"),
            python_end: tok.special_id("<|python_end|>"),
            output_start: tok.special_id("<|output_start|>"),
            output_end: tok.special_id("<|output_end|>"),
        })
    }
}

/// Per-row state of the tool-use state machine.
#[derive(Default)]
struct RowState {
    forced: VecDeque<u32>,
    in_python: bool,
    expr: Vec<u32>,
    completed: bool,
}

impl RowState {
    /// The row's next token, a forced one before the sampled one, with its mask (1 sampled, 0 forced), and the
    /// tool state machine advanced past it.
    fn next(&mut self, sampled: u32, sp: &Specials, tok: &Tokenizer) -> (u32, u8) {
        let (t, m) = match self.forced.pop_front() {
            Some(f) => (f, 0),
            None => (sampled, 1),
        };
        if t == sp.assistant_end || t == sp.bos {
            self.completed = true;
        }
        if Some(t) == sp.python_start {
            self.in_python = true;
            self.expr.clear();
        } else if Some(t) == sp.python_end && self.in_python {
            self.in_python = false;
            let expr = tok.decode_lossy(&self.expr);
            if let (Some(result), Some(os), Some(oe)) = (calc::use_calculator(&expr), sp.output_start, sp.output_end) {
                self.forced.push_back(os);
                self.forced.extend(tok.encode_ordinary(&result));
                self.forced.push_back(oe);
            }
        } else if self.in_python {
            self.expr.push(t);
        }
        (t, m)
    }
}

/// Sequences and their masks, one per row.
pub type Batch = (Vec<Vec<u32>>, Vec<Vec<u8>>);

/// A model and its tokenizer.
pub struct Engine<M: InferModel> {
    pub model: M,
    pub tokenizer: Tokenizer,
}

impl<M: InferModel> Engine<M> {
    pub fn new(model: M, tokenizer: Tokenizer) -> Engine<M> {
        Engine { model, tokenizer }
    }

    /// Streams generation: calls `on_column(tokens, masks)` once per step with one token per row (mask 1 sampled,
    /// 0 forced by the tool). Stops after `max_tokens` steps, when every row has produced `<|assistant_end|>` or
    /// `<|bos|>` (rows keep being fed until all finish), or when `on_column` returns false.
    pub fn generate(
        &self,
        prompt: &[u32],
        cfg: &GenConfig,
        on_column: &mut dyn FnMut(&[u32], &[u8]) -> bool,
    ) -> Result<(), String> {
        let mc = self.model.config();
        let ctx = mc.sequence_len * 10;
        if prompt.is_empty() {
            return Err("the prompt is empty".into());
        }
        if cfg.num_samples == 0 {
            return Err("num_samples must be at least 1".into());
        }
        let max_tokens = cfg.max_tokens.unwrap_or(mc.sequence_len.saturating_sub(prompt.len()));
        if prompt.len() + max_tokens > ctx {
            return Err(format!(
                "prompt of {} tokens plus {max_tokens} new ones exceeds the model's {ctx} positions",
                prompt.len()
            ));
        }
        let sp = Specials::of(&self.tokenizer)?;
        let rows = cfg.num_samples;
        let mut rng = Rng::new(cfg.seed);

        // 1. Prefill row 0 once; its last logits are shared by all rows, and its cache is copied into the others.
        let mut cache = self.model.new_cache(rows, prompt.len() + max_tokens)?;
        let last = self.model.forward_rows(&mut cache, &[0], &[prompt.len()], prompt)?;
        for r in 1..rows {
            self.model.copy_row(&mut cache, 0, r)?;
        }
        let mut logits: Vec<f32> = last.repeat(rows);
        let v = last.len();
        let mut state: Vec<RowState> = (0..rows).map(|_| RowState::default()).collect();
        let (mut col, mut mask) = (vec![0u32; rows], vec![0u8; rows]);
        for step in 0..max_tokens {
            if state.iter().all(|s| s.completed) {
                break;
            }
            for r in 0..rows {
                let sampled = sample_next_token(&logits[r * v..(r + 1) * v], &mut rng, cfg.temperature, cfg.top_k)?;
                (col[r], mask[r]) = state[r].next(sampled, &sp, &self.tokenizer);
            }
            if !on_column(&col, &mask) {
                break;
            }
            // The last column needs no forward: nothing samples from it.
            if step + 1 < max_tokens && !state.iter().all(|s| s.completed) {
                logits = self.model.forward_last(&mut cache, &col, 1)?;
            }
        }
        Ok(())
    }

    /// Runs `generate` to the end: per row the prompt plus its tokens up to (excluding) the first
    /// `<|assistant_end|>` / `<|bos|>`, and masks (0 prompt, 1 sampled, 0 forced).
    pub fn generate_batch(&self, prompt: &[u32], cfg: &GenConfig) -> Result<Batch, String> {
        let sp = Specials::of(&self.tokenizer)?;
        let rows = cfg.num_samples;
        let mut seqs = vec![prompt.to_vec(); rows];
        let mut masks = vec![vec![0u8; prompt.len()]; rows];
        let mut done = vec![false; rows];
        self.generate(prompt, cfg, &mut |col, m| {
            for r in 0..rows {
                if done[r] {
                    continue;
                }
                if col[r] == sp.assistant_end || col[r] == sp.bos {
                    done[r] = true;
                } else {
                    seqs[r].push(col[r]);
                    masks[r].push(m[r]);
                }
            }
            !done.iter().all(|&d| d)
        })?;
        Ok((seqs, masks))
    }
}

/// Incremental UTF-8-safe detokenizer for streaming: re-decodes all tokens so far and hands out only the new
/// text, holding it back while the decoded bytes end in an incomplete character (upstream's U+FFFD rule).
pub struct TextStream {
    ids: Vec<u32>,
    emitted: usize,
}

impl Default for TextStream {
    fn default() -> Self {
        Self::new()
    }
}

impl TextStream {
    pub fn new() -> TextStream {
        TextStream {
            ids: Vec::new(),
            emitted: 0,
        }
    }

    /// Adds a token; returns the newly complete text (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.ids.push(id);
        let text = tok.decode_lossy(&self.ids);
        if text.ends_with('\u{FFFD}') || text.len() <= self.emitted {
            return String::new();
        }
        let new = text.get(self.emitted..).unwrap_or("").to_string();
        self.emitted = text.len();
        new
    }

    pub fn tokens(&self) -> &[u32] {
        &self.ids
    }
}
