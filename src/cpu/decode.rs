//! CPU references of the KV-cached step kernels (`cuda/decode.cu`), built from the ops of the reference
//! forward: a cache whose rows hold sequences of different lengths, a step of `t` tokens per row, token `i`
//! of row `r` at position `pos[r] + i`. Cache layout per layer: `k, v (rows, t_max, hkv, d)`.

use super::ops;

/// The shape of a cached step: `rows` sequences, `t` new tokens each, `h` query heads and `hkv` kv heads of
/// `d`, caches of `t_max` positions per row, a left window of `window` keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepShape {
    pub rows: usize,
    pub t: usize,
    pub h: usize,
    pub hkv: usize,
    pub d: usize,
    pub t_max: usize,
    pub window: usize,
}

impl StepShape {
    /// Tokens in the step.
    pub fn n(&self) -> usize {
        self.rows * self.t
    }
    /// Offset of position `p` of row `r` in a layer's k or v cache.
    pub fn at(&self, r: usize, p: usize) -> usize {
        (r * self.t_max + p) * self.hkv * self.d
    }
}

/// RoPE at the per-row positions, QK-norm and ×1.2 of the step's q and k (`qk` rows of `x_stride`, q heads
/// then k heads); q to `q_out (n, h, d)`, k into `k_cache` at each token's position, `v (n, hkv·d)` into
/// `v_cache` likewise.
#[allow(clippy::too_many_arguments)]
pub fn kv_rope_append(
    q_out: &mut [f32],
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    qk: &[f32],
    v: &[f32],
    cos: &[f32],
    sin: &[f32],
    pos: &[usize],
    s: StepShape,
    x_stride: usize,
) {
    let (h, hkv, d) = (s.h, s.hkv, s.d);
    for row in 0..s.n() {
        let (r, p) = (row / s.t, pos[row / s.t] + row % s.t);
        let x = &qk[row * x_stride..];
        let mut q = x[..h * d].to_vec();
        let mut k = x[h * d..(h + hkv) * d].to_vec();
        ops::rope_forward(&mut q, cos, sin, 1, h, d, p);
        ops::rope_forward(&mut k, cos, sin, 1, hkv, d, p);
        let mut rstd = vec![0.0; h];
        ops::qk_norm_forward(&mut q_out[row * h * d..(row + 1) * h * d], &mut rstd, &q, d);
        let dst = s.at(r, p);
        ops::qk_norm_forward(&mut k_cache[dst..dst + hkv * d], &mut rstd[..hkv], &k, d);
        v_cache[dst..dst + hkv * d].copy_from_slice(&v[row * hkv * d..(row + 1) * hkv * d]);
    }
}

/// Attention of the step's queries `q (n, h, d)` against one layer's cache: query `p` of head `hi` sees
/// the keys `[p − window, p]` of kv head `hi / (h / hkv)`, scores scaled by `1 / sqrt(d)`. Returns
/// `(n, h, d)`.
pub fn cached_attention(q: &[f32], k_cache: &[f32], v_cache: &[f32], pos: &[usize], s: StepShape) -> Vec<f32> {
    let (h, hkv, d) = (s.h, s.hkv, s.d);
    let group = h / hkv;
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0.0f32; s.n() * h * d];
    for row in 0..s.n() {
        let (r, p) = (row / s.t, pos[row / s.t] + row % s.t);
        let lo = p.saturating_sub(s.window);
        for hi in 0..h {
            let kh = hi / group;
            let qv = &q[(row * h + hi) * d..][..d];
            let key = |j: usize| s.at(r, j) + kh * d;
            let scores: Vec<f32> = (lo..=p)
                .map(|j| {
                    let kv = &k_cache[key(j)..][..d];
                    qv.iter().zip(kv).map(|(a, b)| a * b).sum::<f32>() * scale
                })
                .collect();
            let mx = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let w: Vec<f32> = scores.iter().map(|z| (z - mx).exp()).collect();
            let total: f32 = w.iter().sum();
            let o = &mut out[(row * h + hi) * d..][..d];
            for (wj, j) in w.iter().zip(lo..=p) {
                let vv = &v_cache[key(j)..][..d];
                o.iter_mut().zip(vv).for_each(|(o, v)| *o += wj / total * v);
            }
        }
    }
    out
}

/// The smear of a one-token step: row `r` of `x (rows, c)` mixed with `prev[r]` as the second position of
/// the sequence `[prev[r], x[r]]` (gate `w (k)`, `lambda`), then `prev = x`. A zero `prev` leaves `x` as is.
pub fn decode_smear(out: &mut [f32], prev: &mut [f32], x: &[f32], w: &[f32], lambda: f32, rows: usize, c: usize) {
    let (mut pair, mut o, mut g) = (vec![0.0; 2 * c], vec![0.0; 2 * c], [0.0; 2]);
    for r in 0..rows {
        pair[..c].copy_from_slice(&prev[r * c..(r + 1) * c]);
        pair[c..].copy_from_slice(&x[r * c..(r + 1) * c]);
        ops::smear_forward(&mut o, &mut g, &pair, w, lambda, 1, 2, c);
        out[r * c..(r + 1) * c].copy_from_slice(&o[c..]);
    }
    prev.copy_from_slice(x);
}
