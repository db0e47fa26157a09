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
    fn new_cache(&self, rows: usize, t_max: usize) -> TokenRows {
        TokenRows {
            rows: vec![Vec::new(); rows],
            t_max,
        }
    }
    fn expand(&self, one: &TokenRows, rows: usize, t_max: usize) -> Result<TokenRows, String> {
        if one.rows.len() != 1 || t_max < one.rows[0].len() {
            return Err(format!(
                "cannot expand a {}-row cache of {} positions into {rows} rows of {t_max}",
                one.rows.len(),
                one.rows.first().map_or(0, Vec::len)
            ));
        }
        Ok(TokenRows {
            rows: vec![one.rows[0].clone(); rows],
            t_max,
        })
    }
    fn forward_last(&self, cache: &mut TokenRows, ids: &[u32], t: usize) -> Result<Vec<f32>, String> {
        let b = cache.rows.len();
        if ids.len() != b * t {
            return Err(format!("expected {b}x{t} ids, got {}", ids.len()));
        }
        let len = cache.rows.first().map_or(0, Vec::len) + t;
        if len > cache.t_max {
            return Err(format!("the cache holds {} positions, {len} needed", cache.t_max));
        }
        for (r, row) in cache.rows.iter_mut().enumerate() {
            row.extend_from_slice(&ids[r * t..(r + 1) * t]);
        }
        let flat: Vec<u32> = cache.rows.concat();
        self.with_model(|m| m.last_logits(&flat, b, len))?
    }
}
