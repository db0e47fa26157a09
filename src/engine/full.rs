//! Generation on any [`ModelDevice`] (the kernel devices included) without a KV cache: the "cache" is each
//! row's tokens so far, and every step runs the full forward over them and keeps the last position. Quadratic
//! in the length, so meant for evaluation of small models and for checking the kernels' generation against the
//! CPU reference; the CPU reference's own [`crate::cpu::infer::CpuInfer`] is the fast path.

use std::sync::Mutex;

use super::InferModel;
use crate::config::ModelConfig;
use crate::model::ModelDevice;

pub struct FullForward<'a> {
    model: Mutex<Held<'a>>,
    config: ModelConfig,
}

/// The model, owned (chat_eval) or borrowed (ChatCORE in the middle of a training run).
enum Held<'a> {
    Owned(Box<dyn ModelDevice + Send + 'a>),
    Borrowed(&'a mut (dyn ModelDevice + Send)),
}

impl FullForward<'_> {
    pub fn new<'a>(model: Box<dyn ModelDevice + Send + 'a>) -> FullForward<'a> {
        let config = model.config().clone();
        FullForward {
            model: Mutex::new(Held::Owned(model)),
            config,
        }
    }

    /// Generation on a model the caller keeps (e.g. the model being trained).
    pub fn borrowed<'a>(model: &'a mut (dyn ModelDevice + Send)) -> FullForward<'a> {
        let config = model.config().clone();
        FullForward {
            model: Mutex::new(Held::Borrowed(model)),
            config,
        }
    }
}

impl FullForward<'_> {
    /// Runs `f` on the model (for the full-batch forwards of categorical evaluation).
    pub fn with_model<R>(&self, f: impl FnOnce(&mut dyn ModelDevice) -> R) -> Result<R, String> {
        let mut m = self
            .model
            .lock()
            .map_err(|_| "the model lock is poisoned".to_string())?;
        Ok(match &mut *m {
            Held::Owned(b) => f(b.as_mut()),
            Held::Borrowed(r) => f(&mut **r),
        })
    }
}

/// Each row's tokens so far, and the length the rows may reach.
pub struct TokenRows {
    rows: Vec<Vec<u32>>,
    t_max: usize,
}

impl InferModel for FullForward<'_> {
    type Cache = TokenRows;
    fn config(&self) -> &ModelConfig {
        &self.config
    }
    fn new_cache(&self, rows: usize, t_max: usize) -> Result<TokenRows, String> {
        Ok(TokenRows {
            rows: vec![Vec::new(); rows],
            t_max,
        })
    }
    fn row_len(&self, cache: &TokenRows, row: usize) -> usize {
        cache.rows.get(row).map_or(0, Vec::len)
    }
    fn clear_row(&self, cache: &mut TokenRows, row: usize) -> Result<(), String> {
        let n = cache.rows.len();
        cache
            .rows
            .get_mut(row)
            .ok_or_else(|| format!("row {row} does not exist: the cache has {n} rows"))?
            .clear();
        Ok(())
    }
    fn copy_row(&self, cache: &mut TokenRows, src: usize, dst: usize) -> Result<(), String> {
        let n = cache.rows.len();
        if src >= n || dst >= n {
            return Err(format!("cannot copy row {src} into row {dst}: the cache has {n} rows"));
        }
        cache.rows[dst] = cache.rows[src].clone();
        Ok(())
    }
    /// Rows of equal new length run as one full forward; each group of lengths is its own forward.
    fn forward_rows(
        &self,
        cache: &mut TokenRows,
        rows: &[usize],
        lens: &[usize],
        ids: &[u32],
    ) -> Result<Vec<f32>, String> {
        let n = cache.rows.len();
        if rows.is_empty() || rows.len() != lens.len() || lens.contains(&0) || ids.len() != lens.iter().sum::<usize>() {
            return Err(format!(
                "expected one chunk of at least one token per row ({} rows, lengths {lens:?}, {} ids)",
                rows.len(),
                ids.len()
            ));
        }
        let mut seen = vec![false; n];
        for (&r, &t) in rows.iter().zip(lens) {
            if r >= n || std::mem::replace(&mut seen[r], true) {
                return Err(format!("row {r} is out of range ({n} rows) or listed twice"));
            }
            if cache.rows[r].len() + t > cache.t_max {
                return Err(format!(
                    "the cache holds {} positions, {} needed",
                    cache.t_max,
                    cache.rows[r].len() + t
                ));
            }
        }
        let mut off = 0;
        for (&r, &t) in rows.iter().zip(lens) {
            cache.rows[r].extend_from_slice(&ids[off..off + t]);
            off += t;
        }
        let v = self.config.vocab_size;
        let mut out = vec![0.0; rows.len() * v];
        let mut by_len: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for (i, &r) in rows.iter().enumerate() {
            by_len.entry(cache.rows[r].len()).or_default().push(i);
        }
        for (len, group) in by_len {
            let flat: Vec<u32> = group
                .iter()
                .flat_map(|&i| cache.rows[rows[i]].iter().copied())
                .collect();
            let logits = self.with_model(|m| m.last_logits(&flat, group.len(), len))??;
            for (j, &i) in group.iter().enumerate() {
                out[i * v..(i + 1) * v].copy_from_slice(&logits[j * v..(j + 1) * v]);
            }
        }
        Ok(out)
    }
}
