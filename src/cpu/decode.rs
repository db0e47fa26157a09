//! CPU references of the KV-cached step kernels (`cuda/decode.cu`), built from the ops of the reference
//! forward: a cache whose rows hold sequences of different lengths and a step of `n` new tokens, any number
//! per row, token `j` going to cache row `rows[j]` at position `pos[j]`. Cache layout per layer:
//! `k, v (cache rows, t_max, hkv, d)`.

use super::ops;

/// The shape of a cached step: `n` tokens, `h` query heads and `hkv` kv heads of `d`, caches of `t_max`
/// positions per row, a left window of `window` keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepShape {
    pub n: usize,
    pub h: usize,
    pub hkv: usize,
    pub d: usize,
    pub t_max: usize,
    pub window: usize,
}

impl StepShape {
    /// Offset of position `p` of cache row `r` in a layer's k or v cache.
    pub fn at(&self, r: usize, p: usize) -> usize {
        (r * self.t_max + p) * self.hkv * self.d
    }
}

/// RoPE at each token's position, QK-norm and ×1.2 of the step's q and k (`qk` rows of `x_stride`, q heads
/// then k heads); q to `q_out (n, h, d)`, k into `k_cache` at each token's (row, position), `v (n, hkv·d)`
/// into `v_cache` likewise.
#[allow(clippy::too_many_arguments)]
pub fn kv_rope_append(
    q_out: &mut [f32],
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    qk: &[f32],
    v: &[f32],
    cos: &[f32],
    sin: &[f32],
    rows: &[usize],
    pos: &[usize],
    s: StepShape,
    x_stride: usize,
) {
    let (h, hkv, d) = (s.h, s.hkv, s.d);
    for j in 0..s.n {
        let (r, p) = (rows[j], pos[j]);
        let x = &qk[j * x_stride..];
        let mut q = x[..h * d].to_vec();
        let mut k = x[h * d..(h + hkv) * d].to_vec();
        ops::rope_forward(&mut q, cos, sin, 1, h, d, p);
        ops::rope_forward(&mut k, cos, sin, 1, hkv, d, p);
        let mut rstd = vec![0.0; h];
        ops::qk_norm_forward(&mut q_out[j * h * d..(j + 1) * h * d], &mut rstd, &q, d);
        let dst = s.at(r, p);
        ops::qk_norm_forward(&mut k_cache[dst..dst + hkv * d], &mut rstd[..hkv], &k, d);
        v_cache[dst..dst + hkv * d].copy_from_slice(&v[j * hkv * d..(j + 1) * hkv * d]);
    }
}

/// Attention of the step's queries `q (n, h, d)` listed in `sel` against one layer's cache: query `j` of
/// head `hi` sees the keys `[pos[j] − window, pos[j]]` of cache row `rows[j]`, kv head `hi / (h / hkv)`,
/// scores scaled by `1 / sqrt(d)`. Returns `(n, h, d)`, zero for the tokens not in `sel`.
pub fn cached_attention(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    rows: &[usize],
    pos: &[usize],
    sel: &[usize],
    s: StepShape,
) -> Vec<f32> {
    let (h, hkv, d) = (s.h, s.hkv, s.d);
    let group = h / hkv;
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0.0f32; s.n * h * d];
    for &j in sel {
        let (r, p) = (rows[j], pos[j]);
        let lo = p.saturating_sub(s.window);
        for hi in 0..h {
            let kh = hi / group;
            let qv = &q[(j * h + hi) * d..][..d];
            let key = |t: usize| s.at(r, t) + kh * d;
            let scores: Vec<f32> = (lo..=p)
                .map(|t| {
                    let kv = &k_cache[key(t)..][..d];
                    qv.iter().zip(kv).map(|(a, b)| a * b).sum::<f32>() * scale
                })
                .collect();
            let mx = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let w: Vec<f32> = scores.iter().map(|z| (z - mx).exp()).collect();
            let total: f32 = w.iter().sum();
            let o = &mut out[(j * h + hi) * d..][..d];
            for (wt, t) in w.iter().zip(lo..=p) {
                let vv = &v_cache[key(t)..][..d];
                o.iter_mut().zip(vv).for_each(|(o, v)| *o += wt / total * v);
            }
        }
    }
    out
}

/// The smear of a step: token `j` of `x (n, c)` is the second position of the sequence `[source, x[j]]`
/// (gate `w (k)`, `lambda`), the source being `x[src_tok[j]]`, else `prev[src_row[j]]`, else none
/// (`out = x`); then `prev[last_row[j]] = x[j]`. Negative entries mean none.
#[allow(clippy::too_many_arguments)]
pub fn decode_smear(
    out: &mut [f32],
    prev: &mut [f32],
    x: &[f32],
    w: &[f32],
    lambda: f32,
    src_tok: &[i32],
    src_row: &[i32],
    last_row: &[i32],
    c: usize,
) {
    let (mut pair, mut o, mut g) = (vec![0.0; 2 * c], vec![0.0; 2 * c], [0.0; 2]);
    let n = src_tok.len();
    for j in 0..n {
        let xj = &x[j * c..(j + 1) * c];
        let src = if src_tok[j] >= 0 {
            Some(&x[src_tok[j] as usize * c..][..c])
        } else if src_row[j] >= 0 {
            Some(&prev[src_row[j] as usize * c..][..c])
        } else {
            None
        };
        match src {
            Some(src) => {
                pair[..c].copy_from_slice(src);
                pair[c..].copy_from_slice(xj);
                ops::smear_forward(&mut o, &mut g, &pair, w, lambda, 1, 2, c);
                out[j * c..(j + 1) * c].copy_from_slice(&o[c..]);
            }
            None => out[j * c..(j + 1) * c].copy_from_slice(xj),
        }
    }
    for j in 0..n {
        if last_row[j] >= 0 {
            let r = last_row[j] as usize;
            prev[r * c..(r + 1) * c].copy_from_slice(&x[j * c..(j + 1) * c]);
        }
    }
}
