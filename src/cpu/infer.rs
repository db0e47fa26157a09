//! The KV-cached forward of the CPU reference (spec §1.5): prefill a chunk of tokens at a row's position T0, or
//! decode one token per row, attending to every cached key inside each layer's window. Rows have their own
//! lengths, so one step may mix prefills of different prompt lengths with one-token decodes.
//!
//! It is the training forward of `gpt.rs` op for op, with three differences: RoPE starts at T0, keys and values
//! are written into the cache and read back from it, and the smear of a one-token decode step mixes in the
//! previous position's embedding kept in the cache (a prefill chunk smears within itself only, so its first
//! position is never smeared, as upstream).

use rayon::prelude::*;

use super::ops;
use crate::config::{softcap, ModelConfig, ROPE_BASE};
use crate::params::{ParamTable, Slot};

/// Keys and values of every layer for `rows` sequences of up to `t_max` positions each. Every row has its own
/// length, so rows of different lengths share one cache (and one forward step). Sliding-window layers still keep
/// every position (no ring buffer), as upstream.
#[derive(Clone)]
pub struct KvCache {
    pub rows: usize,
    pub t_max: usize,
    n_layer: usize,
    kv_dim: usize,
    n_embd: usize,
    /// (n_layer, rows, t_max, kv_dim)
    k: Vec<f32>,
    v: Vec<f32>,
    /// Positions filled, per row.
    lens: Vec<usize>,
    /// (rows, C): the normalized, pre-smear embedding of each row's last position, for the smear of a decode
    /// step; meaningful where the row's length is above 0.
    prev_embedding: Vec<f32>,
}

impl KvCache {
    pub fn new(cfg: &ModelConfig, rows: usize, t_max: usize) -> KvCache {
        let kv_dim = cfg.kv_dim();
        let len = cfg.n_layer * rows * t_max * kv_dim;
        KvCache {
            rows,
            t_max,
            n_layer: cfg.n_layer,
            kv_dim,
            n_embd: cfg.n_embd,
            k: vec![0.0; len],
            v: vec![0.0; len],
            lens: vec![0; rows],
            prev_embedding: vec![0.0; rows * cfg.n_embd],
        }
    }

    /// Positions filled in row 0 (in every row while they move together, as in `CpuInfer::forward`).
    pub fn pos(&self) -> usize {
        self.lens.first().copied().unwrap_or(0)
    }

    /// Positions filled in `row`.
    pub fn len(&self, row: usize) -> usize {
        self.lens[row]
    }

    /// Whether every row is empty.
    pub fn is_empty(&self) -> bool {
        self.lens.iter().all(|&l| l == 0)
    }

    /// Empties every row.
    pub fn reset(&mut self) {
        self.lens.iter_mut().for_each(|l| *l = 0);
    }

    fn check_row(&self, row: usize) -> Result<(), String> {
        if row >= self.rows {
            return Err(format!("row {row} does not exist: the KV cache has {} rows", self.rows));
        }
        Ok(())
    }

    /// Empties `row` for a new sequence.
    pub fn clear_row(&mut self, row: usize) -> Result<(), String> {
        self.check_row(row)?;
        self.lens[row] = 0;
        Ok(())
    }

    /// Makes row `dst` a copy of row `src`: length, keys, values and smear state.
    pub fn copy_row(&mut self, src: usize, dst: usize) -> Result<(), String> {
        self.check_row(src)?;
        self.check_row(dst)?;
        if src == dst {
            return Ok(());
        }
        let n = self.lens[src] * self.kv_dim;
        for l in 0..self.n_layer {
            let (s, d) = (self.at(l, src, 0), self.at(l, dst, 0));
            self.k.copy_within(s..s + n, d);
            self.v.copy_within(s..s + n, d);
        }
        let c = self.n_embd;
        self.prev_embedding.copy_within(src * c..(src + 1) * c, dst * c);
        self.lens[dst] = self.lens[src];
        Ok(())
    }

    fn at(&self, layer: usize, row: usize, p: usize) -> usize {
        ((layer * self.rows + row) * self.t_max + p) * self.kv_dim
    }

    /// A cache of `rows` rows and `t_max` positions holding a copy of this batch-1 cache in every row
    /// (upstream `KVCache.prefill`): positions, keys, values and the smear state.
    pub fn expand(&self, rows: usize, t_max: usize) -> Result<KvCache, String> {
        if self.rows != 1 {
            return Err(format!(
                "only a batch-1 cache can be expanded (this one has {} rows)",
                self.rows
            ));
        }
        let pos = self.lens[0];
        if t_max < pos {
            return Err(format!(
                "cannot expand a cache holding {pos} positions into one of {t_max}"
            ));
        }
        let mut out = KvCache {
            rows,
            t_max,
            n_layer: self.n_layer,
            kv_dim: self.kv_dim,
            n_embd: self.n_embd,
            k: vec![0.0; self.n_layer * rows * t_max * self.kv_dim],
            v: vec![0.0; self.n_layer * rows * t_max * self.kv_dim],
            lens: vec![pos; rows],
            prev_embedding: self.prev_embedding.repeat(rows),
        };
        let n = pos * self.kv_dim;
        for l in 0..self.n_layer {
            let src = self.at(l, 0, 0);
            for r in 0..rows {
                let dst = out.at(l, r, 0);
                out.k[dst..dst + n].copy_from_slice(&self.k[src..src + n]);
                out.v[dst..dst + n].copy_from_slice(&self.v[src..src + n]);
            }
        }
        Ok(out)
    }
}

/// The model for inference on the CPU: configuration, parameters and RoPE tables.
pub struct CpuInfer {
    pub config: ModelConfig,
    table: ParamTable,
    params: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    windows: Vec<usize>,
}

impl CpuInfer {
    pub fn new(config: &ModelConfig, params: Vec<f32>) -> Result<CpuInfer, String> {
        config.validate()?;
        let table = ParamTable::new(config);
        if params.len() != table.numel {
            return Err(format!(
                "parameter buffer has {} elements, the model needs {}",
                params.len(),
                table.numel
            ));
        }
        let (cos, sin) = ops::rope_tables(10 * config.sequence_len, config.head_dim(), ROPE_BASE);
        Ok(CpuInfer {
            config: config.clone(),
            table,
            params,
            cos,
            sin,
            windows: config.window_sizes(),
        })
    }

    fn p(&self, slot: Slot, k: usize) -> &[f32] {
        &self.params[self.table.range(slot, k)]
    }

    fn scalar(&self, slot: Slot, i: usize) -> f32 {
        self.params[self.table.slot(slot).offset + i]
    }

    /// Runs `ids (rows, t)` on every row of the cache, at each row's length, and advances every row by `t`.
    /// Returns softcapped logits sliced to the vocabulary: of every position `(rows·t, V)` when `all_positions`,
    /// else of the last `(rows, V)`.
    pub fn forward(&self, cache: &mut KvCache, ids: &[u32], t: usize, all_positions: bool) -> Result<Vec<f32>, String> {
        let b = cache.rows;
        if t == 0 || ids.len() != b * t {
            return Err(format!(
                "expected {b}x{t} = {} token ids for a cache of {b} rows, got {}",
                b * t,
                ids.len()
            ));
        }
        let rows: Vec<usize> = (0..b).collect();
        self.forward_ragged(cache, &rows, &vec![t; b], ids, all_positions)
    }

    /// One step over some rows of the cache, each with its own number of new tokens: row `rows[i]` gets the next
    /// `lens[i]` ids (in the order of `rows`) at positions `len(row)..len(row) + lens[i]`. A chunk of more than
    /// one token smears within itself only (its first position is not smeared, as upstream's prefill); a
    /// one-token chunk smears with the row's cached previous embedding when the row is not empty. Rows not
    /// listed are untouched, and each row's result depends on its own tokens only. Returns softcapped logits of
    /// every new position `(Σ lens, V)` when `all_positions`, else of each row's last `(rows.len(), V)`.
    /// The arguments are checked before anything changes.
    pub fn forward_ragged(
        &self,
        cache: &mut KvCache,
        rows: &[usize],
        lens: &[usize],
        ids: &[u32],
        all_positions: bool,
    ) -> Result<Vec<f32>, String> {
        let cfg = &self.config;
        let (c, nh, nkv, d, vp, v) = (
            cfg.n_embd,
            cfg.n_head,
            cfg.n_kv_head,
            cfg.head_dim(),
            cfg.padded_vocab(),
            cfg.vocab_size,
        );
        if rows.is_empty() || rows.len() != lens.len() {
            return Err(format!(
                "a forward step needs one length per row and at least one row ({} rows, {} lengths)",
                rows.len(),
                lens.len()
            ));
        }
        let n: usize = lens.iter().sum();
        if ids.len() != n || lens.contains(&0) {
            return Err(format!(
                "expected {n} token ids for chunks of {lens:?} tokens (each at least 1), got {}",
                ids.len()
            ));
        }
        let mut seen = vec![false; cache.rows];
        for (&r, &t) in rows.iter().zip(lens) {
            cache.check_row(r)?;
            if std::mem::replace(&mut seen[r], true) {
                return Err(format!("row {r} appears twice in one forward step"));
            }
            let t0 = cache.lens[r];
            if t0 + t > cache.t_max {
                return Err(format!(
                    "the KV cache holds {} positions; {t0} are used in row {r} and {t} more do not fit",
                    cache.t_max
                ));
            }
            if t0 + t > self.cos.len() / (d / 2) {
                return Err(format!(
                    "position {} exceeds the RoPE table ({} positions)",
                    t0 + t,
                    self.cos.len() / (d / 2)
                ));
            }
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= v) {
            return Err(format!("token id {bad} is outside the vocabulary of {v}"));
        }
        // Each chunk's first token and each token's (row, absolute position).
        let starts: Vec<usize> = lens
            .iter()
            .scan(0, |o, &t| {
                let s = *o;
                *o += t;
                Some(s)
            })
            .collect();
        let tokens: Vec<(usize, usize)> = rows
            .iter()
            .zip(lens)
            .flat_map(|(&r, &t)| (0..t).map(move |i| (r, i)))
            .map(|(r, i)| (r, cache.lens[r] + i))
            .collect();

        // Embedding, norm, smear (within the chunk for t > 1; with the cached previous embedding for t = 1).
        let mut emb = vec![0.0; n * c];
        ops::embedding_forward(&mut emb, ids, self.p(Slot::Wte, 0), c);
        let (mut xe, mut rstd) = (vec![0.0; n * c], vec![0.0; n]);
        ops::rmsnorm_forward(&mut xe, &mut rstd, &emb, c);
        let (gate, lambda) = (self.p(Slot::SmearGate, 0), self.scalar(Slot::SmearLambda, 0));
        let mut x0 = vec![0.0; n * c];
        for ((&r, &t), &s) in rows.iter().zip(lens).zip(&starts) {
            let (xs, out) = (&xe[s * c..(s + t) * c], &mut x0[s * c..(s + t) * c]);
            if t > 1 {
                let mut g = vec![0.0; t];
                ops::smear_forward(out, &mut g, xs, gate, lambda, 1, t, c);
            } else if cache.lens[r] > 0 {
                // A two-position sequence [prev, x]: the smear of its second position is the decode rule.
                let (mut pair, mut both, mut g) = (vec![0.0; 2 * c], vec![0.0; 2 * c], [0.0; 2]);
                pair[..c].copy_from_slice(&cache.prev_embedding[r * c..(r + 1) * c]);
                pair[c..].copy_from_slice(xs);
                ops::smear_forward(&mut both, &mut g, &pair, gate, lambda, 1, 2, c);
                out.copy_from_slice(&both[c..]);
            } else {
                out.copy_from_slice(xs);
            }
        }

        let mut x = x0.clone();
        let mut x_mid = Vec::new();
        let (mut xa, mut xn, mut rs) = (vec![0.0; n * c], vec![0.0; n * c], vec![0.0; n]);
        let (mut q, mut k, mut vv) = (vec![0.0; n * nh * d], vec![0.0; n * nkv * d], vec![0.0; n * nkv * d]);
        let (mut qn, mut kn, mut rq, mut rk) = (
            vec![0.0; n * nh * d],
            vec![0.0; n * nkv * d],
            vec![0.0; n * nh],
            vec![0.0; n * nkv],
        );
        for i in 0..cfg.n_layer {
            ops::lambda_mix_forward(
                &mut xa,
                &x,
                &x0,
                self.scalar(Slot::ResidLambdas, i),
                self.scalar(Slot::X0Lambdas, i),
            );
            ops::rmsnorm_forward(&mut xn, &mut rs, &xa, c);
            ops::linear_forward(&mut q, &xn, self.p(Slot::AttnQ, i), n, c, nh * d);
            ops::linear_forward(&mut k, &xn, self.p(Slot::AttnK, i), n, c, nkv * d);
            ops::linear_forward(&mut vv, &xn, self.p(Slot::AttnV, i), n, c, nkv * d);
            if let Some(kv) = cfg.ve_index(i) {
                let mut ve = vec![0.0; n * nkv * d];
                ops::embedding_forward(&mut ve, ids, self.p(Slot::ValueEmbeds, kv), nkv * d);
                let mut g = vec![0.0; n * nkv];
                let wg = self.p(Slot::VeGate, kv);
                ops::ve_gate_forward(&mut vv, &mut g, &xn, &ve, wg, n, c, nkv, d);
            }
            for ((&r, &t), &s) in rows.iter().zip(lens).zip(&starts) {
                let t0 = cache.lens[r];
                ops::rope_forward(&mut q[s * nh * d..(s + t) * nh * d], &self.cos, &self.sin, t, nh, d, t0);
                ops::rope_forward(
                    &mut k[s * nkv * d..(s + t) * nkv * d],
                    &self.cos,
                    &self.sin,
                    t,
                    nkv,
                    d,
                    t0,
                );
            }
            ops::qk_norm_forward(&mut qn, &mut rq, &q, d);
            ops::qk_norm_forward(&mut kn, &mut rk, &k, d);
            // Write each chunk's keys and values at its row's positions.
            for ((&r, &t), &s) in rows.iter().zip(lens).zip(&starts) {
                let dst = cache.at(i, r, cache.lens[r]);
                let (src, len) = (s * nkv * d, t * nkv * d);
                cache.k[dst..dst + len].copy_from_slice(&kn[src..src + len]);
                cache.v[dst..dst + len].copy_from_slice(&vv[src..src + len]);
            }
            let y = self.cached_attention(cache, i, &qn, &tokens);
            let mut xb = vec![0.0; n * c];
            ops::linear_forward(&mut xb, &y, self.p(Slot::AttnProj, i), n, nh * d, c);
            xb.iter_mut().zip(&xa).for_each(|(o, r)| *o += r);

            ops::rmsnorm_forward(&mut xn, &mut rs, &xb, c);
            let mut h = vec![0.0; n * 4 * c];
            ops::linear_forward(&mut h, &xn, self.p(Slot::MlpFc, i), n, c, 4 * c);
            let mut act = vec![0.0; n * 4 * c];
            ops::relu2_forward(&mut act, &h);
            let mut out = vec![0.0; n * c];
            ops::linear_forward(&mut out, &act, self.p(Slot::MlpProj, i), n, 4 * c, c);
            out.iter_mut().zip(&xb).for_each(|(o, r)| *o += r);
            if i == cfg.backout_layer() {
                x_mid = out.clone();
            }
            x = out;
        }
        for ((&r, &t), &s) in rows.iter().zip(lens).zip(&starts) {
            let last = (s + t - 1) * c;
            cache.prev_embedding[r * c..(r + 1) * c].copy_from_slice(&xe[last..last + c]);
            cache.lens[r] += t;
        }

        // Only the positions whose logits are wanted go through the final norm and the (large) lm_head.
        let keep: Vec<usize> = if all_positions {
            (0..n).collect()
        } else {
            starts.iter().zip(lens).map(|(&s, &t)| s + t - 1).collect()
        };
        let m = keep.len();
        let backout = self.scalar(Slot::BackoutLambda, 0);
        let mut xf = vec![0.0; m * c];
        for (j, &row) in keep.iter().enumerate() {
            let (src, dst) = (&x[row * c..(row + 1) * c], &x_mid[row * c..(row + 1) * c]);
            ops::backout_forward(&mut xf[j * c..(j + 1) * c], src, dst, backout);
        }
        let (mut xnf, mut rf) = (vec![0.0; m * c], vec![0.0; m]);
        ops::rmsnorm_forward(&mut xnf, &mut rf, &xf, c);
        let mut logits = vec![0.0; m * vp];
        ops::linear_forward(&mut logits, &xnf, self.p(Slot::LmHead, 0), m, c, vp);
        Ok(logits
            .chunks_exact(vp)
            .flat_map(|r| r[..v].iter().map(|&z| softcap(z)))
            .collect())
    }

    /// Attention of the new queries `q (n, h, d)`, query j at row and absolute position `tokens[j]`, against
    /// the cached keys of layer `layer`: the query at position p sees its row's keys `[p − window, p]`.
    fn cached_attention(&self, cache: &KvCache, layer: usize, q: &[f32], tokens: &[(usize, usize)]) -> Vec<f32> {
        let (h, hkv, d) = (self.config.n_head, self.config.n_kv_head, self.config.head_dim());
        let (group, window) = (h / hkv, self.windows[layer]);
        let scale = 1.0 / (d as f32).sqrt();
        let mut out = vec![0.0f32; tokens.len() * h * d];
        // One task per new token: it owns one (h, d) block of the output.
        out.par_chunks_mut(h * d).enumerate().for_each(|(rt, orow)| {
            let (r, p) = tokens[rt];
            let k0 = p.saturating_sub(window);
            let base = cache.at(layer, r, 0);
            let mut scores = vec![0.0f32; p + 1 - k0];
            for hi in 0..h {
                let kh = hi / group;
                let qv = &q[(rt * h + hi) * d..][..d];
                let mut mx = f32::NEG_INFINITY;
                for (s, j) in scores.iter_mut().zip(k0..=p) {
                    let kv = &cache.k[base + j * cache.kv_dim + kh * d..][..d];
                    *s = qv.iter().zip(kv).map(|(a, b)| a * b).sum::<f32>() * scale;
                    mx = mx.max(*s);
                }
                let mut sum = 0.0f32;
                for s in scores.iter_mut() {
                    *s = (*s - mx).exp();
                    sum += *s;
                }
                let o = &mut orow[hi * d..(hi + 1) * d];
                for (s, j) in scores.iter().zip(k0..=p) {
                    let w = s / sum;
                    let vv = &cache.v[base + j * cache.kv_dim + kh * d..][..d];
                    o.iter_mut().zip(vv).for_each(|(o, v)| *o += w * v);
                }
            }
        });
        out
    }
}
