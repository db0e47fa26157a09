//! The CPU reference of every op of the model, fp32, forward and backward side by side.
//!
//! Conventions (the CUDA kernels follow the same argument order: outputs, saved statistics, inputs, weights,
//! sizes): activations are row-major `(N, C)` with `N = B·T` rows; linear weights are `(out, in)`.
//! Every backward **adds** into the gradients of its inputs (`+=`), so a tensor consumed twice simply receives
//! both contributions; callers zero gradient buffers before a backward pass.

use super::gemm::{gemm, Trans};
use super::simd;
use crate::config::{QK_SCALE, SOFTCAP};
use rayon::prelude::*;

/// PyTorch's default RMSNorm epsilon for fp32/bf16 inputs: the fp32 machine epsilon.
pub const RMS_EPS: f32 = f32::EPSILON; // `RMS_EPS` in cuda/kernel_common.cuh

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Dot product with 8 independent partial sums, so the compiler can keep them in one SIMD register (a single
/// running sum is a serial dependency chain that cannot be vectorised without reordering).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]) + tail
}

// ------------------------------------------------------------------------------------------------------------
// Linear (no bias): y = x · Wᵀ

/// `out (n, o) = x (n, i) · wᵀ` with `w (o, i)`.
pub fn linear_forward(out: &mut [f32], x: &[f32], w: &[f32], n: usize, i: usize, o: usize) {
    let _prof = super::profile::span("linear");
    gemm(Trans::N, Trans::T, n, o, i, 1.0, x, w, 0.0, out);
}

/// `dx (n, i) += dy · w`, `dw (o, i) += dyᵀ · x`.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    n: usize,
    i: usize,
    o: usize,
) {
    let _prof = super::profile::span("linear");
    if let Some(dx) = dx {
        gemm(Trans::N, Trans::N, n, i, o, 1.0, dy, w, 1.0, dx);
    }
    gemm(Trans::T, Trans::N, o, i, n, 1.0, dy, x, 1.0, dw);
}

// ------------------------------------------------------------------------------------------------------------
// Embedding gather

/// `out (n, c) = table[ids]`.
pub fn embedding_forward(out: &mut [f32], ids: &[u32], table: &[f32], c: usize) {
    let _prof = super::profile::span("embedding");
    for (row, &id) in out.chunks_exact_mut(c).zip(ids) {
        let id = id as usize;
        row.copy_from_slice(&table[id * c..(id + 1) * c]);
    }
}

/// `dtable[ids] += dout`, rows in order (deterministic).
pub fn embedding_backward(dtable: &mut [f32], dout: &[f32], ids: &[u32], c: usize) {
    let _prof = super::profile::span("embedding");
    for (row, &id) in dout.chunks_exact(c).zip(ids) {
        let id = id as usize;
        dtable[id * c..(id + 1) * c]
            .iter_mut()
            .zip(row)
            .for_each(|(d, g)| *d += g);
    }
}

// ------------------------------------------------------------------------------------------------------------
// RMSNorm without weight: y = x / sqrt(mean(x²) + eps), over the last dimension `c`

/// `out (n, c)`, `rstd (n)` saved for backward.
pub fn rmsnorm_forward(out: &mut [f32], rstd: &mut [f32], x: &[f32], c: usize) {
    let _prof = super::profile::span("rmsnorm");
    out.par_chunks_mut(c)
        .zip(rstd.par_iter_mut())
        .zip(x.par_chunks(c))
        .for_each(|((o, r), x)| {
            let ms = x.iter().map(|v| v * v).sum::<f32>() / c as f32;
            *r = 1.0 / (ms + RMS_EPS).sqrt();
            o.iter_mut().zip(x).for_each(|(o, v)| *o = v * *r);
        });
}

/// `dx += rstd · (dy − y · mean(dy · y))` with `y = x · rstd`.
pub fn rmsnorm_backward(dx: &mut [f32], dy: &[f32], x: &[f32], rstd: &[f32], c: usize) {
    let _prof = super::profile::span("rmsnorm");
    dx.par_chunks_mut(c)
        .zip(dy.par_chunks(c))
        .zip(x.par_chunks(c))
        .zip(rstd.par_iter())
        .for_each(|(((dx, dy), x), &r)| {
            let m = x.iter().zip(dy).map(|(x, g)| x * r * g).sum::<f32>() / c as f32;
            for ((d, g), x) in dx.iter_mut().zip(dy).zip(x) {
                *d += r * (g - x * r * m);
            }
        });
}

// ------------------------------------------------------------------------------------------------------------
// Smear: x_t += smear_lambda · sigmoid(gate · x_t[:24]) · x_{t-1} for t ≥ 1 (pre-smear x_{t-1})

/// `out (b, t, c)`, `g (b, t)` saved gate values (0 at t = 0).
#[allow(clippy::too_many_arguments)]
pub fn smear_forward(
    out: &mut [f32],
    g: &mut [f32],
    x: &[f32],
    gate: &[f32],
    lambda: f32,
    b: usize,
    t: usize,
    c: usize,
) {
    let _prof = super::profile::span("residual mix");
    let k = gate.len();
    for bi in 0..b {
        for ti in 0..t {
            let r = (bi * t + ti) * c;
            let row = &x[r..r + c];
            if ti == 0 {
                g[bi * t] = 0.0;
                out[r..r + c].copy_from_slice(row);
                continue;
            }
            let gt = lambda * sigmoid(dot(gate, &row[..k]));
            g[bi * t + ti] = gt;
            let prev = &x[r - c..r];
            for j in 0..c {
                out[r + j] = row[j] + gt * prev[j];
            }
        }
    }
}

/// Gradients for x, the gate weights (24) and lambda.
#[allow(clippy::too_many_arguments)]
pub fn smear_backward(
    dx: &mut [f32],
    dgate: &mut [f32],
    dlambda: &mut f32,
    dout: &[f32],
    x: &[f32],
    gate: &[f32],
    lambda: f32,
    b: usize,
    t: usize,
    c: usize,
) {
    let _prof = super::profile::span("residual mix");
    let k = gate.len();
    for (d, g) in dx.iter_mut().zip(dout) {
        *d += g;
    }
    for bi in 0..b {
        for ti in 1..t {
            let r = (bi * t + ti) * c;
            let (row, prev, dy) = (&x[r..r + c], &x[r - c..r], &dout[r..r + c]);
            let s = sigmoid(dot(gate, &row[..k]));
            let gt = lambda * s;
            let dg = dot(dy, prev);
            for j in 0..c {
                dx[r - c + j] += gt * dy[j];
            }
            *dlambda += dg * s;
            let dz = dg * lambda * s * (1.0 - s);
            for j in 0..k {
                dgate[j] += dz * row[j];
                dx[r + j] += dz * gate[j];
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------------------
// Residual mix before each block: out = resid_lambda · x + x0_lambda · x0

pub fn lambda_mix_forward(out: &mut [f32], x: &[f32], x0: &[f32], resid_lambda: f32, x0_lambda: f32) {
    let _prof = super::profile::span("residual mix");
    out.par_iter_mut()
        .zip(x)
        .zip(x0)
        .for_each(|((o, x), x0)| *o = resid_lambda * x + x0_lambda * x0);
}

/// Returns `(d resid_lambda, d x0_lambda)`; adds into dx and dx0.
pub fn lambda_mix_backward(
    dx: &mut [f32],
    dx0: &mut [f32],
    dout: &[f32],
    x: &[f32],
    x0: &[f32],
    resid_lambda: f32,
    x0_lambda: f32,
) -> (f32, f32) {
    let _prof = super::profile::span("residual mix");
    let (mut dr, mut dz) = (0f64, 0f64);
    for i in 0..dout.len() {
        dr += (dout[i] * x[i]) as f64;
        dz += (dout[i] * x0[i]) as f64;
        dx[i] += resid_lambda * dout[i];
        dx0[i] += x0_lambda * dout[i];
    }
    (dr as f32, dz as f32)
}

// ------------------------------------------------------------------------------------------------------------
// Value-embedding gate: v (n, hkv, d) += 3·sigmoid(xn[:, :12] · Wgᵀ) (n, hkv) · ve (n, hkv, d)

/// `gate (n, hkv)` saved; `v` updated in place.
#[allow(clippy::too_many_arguments)] // the kernel launcher's argument order (outputs, saved, inputs, weights, sizes)
pub fn ve_gate_forward(
    v: &mut [f32],
    gate: &mut [f32],
    xn: &[f32],
    ve: &[f32],
    wg: &[f32],
    n: usize,
    c: usize,
    hkv: usize,
    d: usize,
) {
    let _prof = super::profile::span("value embeds");
    let k = wg.len() / hkv;
    for r in 0..n {
        for h in 0..hkv {
            let gv = 3.0 * sigmoid(dot(&wg[h * k..(h + 1) * k], &xn[r * c..r * c + k]));
            gate[r * hkv + h] = gv;
            let o = (r * hkv + h) * d;
            for j in 0..d {
                v[o + j] += gv * ve[o + j];
            }
        }
    }
}

/// Given `dv` (the gradient of the gated v), adds into dve (n, hkv·d), dwg (hkv, 12) and dxn (n, c).
#[allow(clippy::too_many_arguments)]
pub fn ve_gate_backward(
    dve: &mut [f32],
    dwg: &mut [f32],
    dxn: &mut [f32],
    dv: &[f32],
    gate: &[f32],
    xn: &[f32],
    ve: &[f32],
    wg: &[f32],
    n: usize,
    c: usize,
    hkv: usize,
    d: usize,
) {
    let _prof = super::profile::span("value embeds");
    let k = wg.len() / hkv;
    for r in 0..n {
        for h in 0..hkv {
            let o = (r * hkv + h) * d;
            let gv = gate[r * hkv + h];
            let mut dg = 0.0;
            for j in 0..d {
                dve[o + j] += gv * dv[o + j];
                dg += dv[o + j] * ve[o + j];
            }
            let s = gv / 3.0;
            let dz = dg * 3.0 * s * (1.0 - s);
            for j in 0..k {
                dwg[h * k + j] += dz * xn[r * c + j];
                dxn[r * c + j] += dz * wg[h * k + j];
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------------------
// RoPE (half split, rotation by −θ as upstream) + QK RMSNorm over the head dim + ×1.2

/// cos/sin tables `(positions, d/2)` in fp32, base θ.
pub fn rope_tables(positions: usize, d: usize, base: f32) -> (Vec<f32>, Vec<f32>) {
    let half = d / 2;
    let inv_freq: Vec<f32> = (0..half).map(|j| 1.0 / base.powf((2 * j) as f32 / d as f32)).collect();
    let mut cos = vec![0.0; positions * half];
    let mut sin = vec![0.0; positions * half];
    for t in 0..positions {
        for j in 0..half {
            let a = t as f32 * inv_freq[j];
            cos[t * half + j] = a.cos();
            sin[t * half + j] = a.sin();
        }
    }
    (cos, sin)
}

/// In place on `x (b, t, heads, d)`, positions `pos0 + ti`: `y1 = x1·cos + x2·sin`, `y2 = −x1·sin + x2·cos`.
pub fn rope_forward(x: &mut [f32], cos: &[f32], sin: &[f32], t: usize, heads: usize, d: usize, pos0: usize) {
    let _prof = super::profile::span("rope + qk norm");
    rotate(x, cos, sin, 1.0, t, heads, d, pos0);
}

/// In place on the gradient: the transpose rotation (the same rotation by the opposite angle).
pub fn rope_backward(dx: &mut [f32], cos: &[f32], sin: &[f32], t: usize, heads: usize, d: usize, pos0: usize) {
    let _prof = super::profile::span("rope + qk norm");
    rotate(dx, cos, sin, -1.0, t, heads, d, pos0);
}

/// Rotates each half-split pair by the table angle; `sign = -1` rotates by the opposite angle.
#[allow(clippy::too_many_arguments)]
fn rotate(x: &mut [f32], cos: &[f32], sin: &[f32], sign: f32, t: usize, heads: usize, d: usize, pos0: usize) {
    let half = d / 2;
    x.par_chunks_mut(heads * d).enumerate().for_each(|(row, xr)| {
        let p = pos0 + row % t;
        let (cs, sn) = (&cos[p * half..(p + 1) * half], &sin[p * half..(p + 1) * half]);
        for hx in xr.chunks_exact_mut(d) {
            for j in 0..half {
                let (x1, x2, s) = (hx[j], hx[j + half], sign * sn[j]);
                hx[j] = x1 * cs[j] + x2 * s;
                hx[j + half] = -x1 * s + x2 * cs[j];
            }
        }
    });
}

/// QK-norm: `out = rmsnorm(x over d) · 1.2`, rows of length d; `rstd` saved.
pub fn qk_norm_forward(out: &mut [f32], rstd: &mut [f32], x: &[f32], d: usize) {
    let _prof = super::profile::span("rope + qk norm");
    rmsnorm_forward(out, rstd, x, d);
    out.par_iter_mut().for_each(|v| *v *= QK_SCALE);
}

pub fn qk_norm_backward(dx: &mut [f32], dout: &[f32], x: &[f32], rstd: &[f32], d: usize) {
    let _prof = super::profile::span("rope + qk norm");
    let scaled: Vec<f32> = dout.par_iter().map(|g| g * QK_SCALE).collect();
    rmsnorm_backward(dx, &scaled, x, rstd, d);
}

// ------------------------------------------------------------------------------------------------------------
// Causal sliding-window attention with GQA. q (b, t, h, d), k/v (b, t, hkv, d); query p sees keys [p − w, p].

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub b: usize,
    pub t: usize,
    pub h: usize,
    pub hkv: usize,
    pub d: usize,
    /// Left window: keys in `[p − window, p]`.
    pub window: usize,
}

impl AttnShape {
    fn first_key(&self, p: usize) -> usize {
        p.saturating_sub(self.window)
    }
}

/// Query rows per attention tile: the score block of a tile is `(ATTN_TILE, keys)`, small enough for the cache.
const ATTN_TILE: usize = 64;

/// Copies head `hi` of a `(t, heads, d)` row block into a dense `(t, d)` matrix.
fn gather_head(dst: &mut [f32], src: &[f32], t: usize, heads: usize, hi: usize, d: usize) {
    for p in 0..t {
        dst[p * d..(p + 1) * d].copy_from_slice(&src[(p * heads + hi) * d..][..d]);
    }
}

/// Adds a dense `(t, d)` matrix into head `hi` of a `(t, heads, d)` row block.
fn scatter_add_head(dst: &mut [f32], src: &[f32], t: usize, heads: usize, hi: usize, d: usize) {
    for p in 0..t {
        dst[(p * heads + hi) * d..][..d]
            .iter_mut()
            .zip(&src[p * d..(p + 1) * d])
            .for_each(|(a, b)| *a += b);
    }
}

/// The probabilities of one tile in place: row `r` of `s (rows, nk)` holds the scaled scores of query
/// `p0 + r` against keys `k0..k0 + nk`; keys outside the query's causal window get 0. With `lse` given the
/// rows are `exp(s − lse)` (backward); otherwise each row is softmaxed and its log-sum-exp written to `out_lse`.
fn tile_probs(
    s: &mut [f32],
    nk: usize,
    p0: usize,
    k0: usize,
    shape: &AttnShape,
    lse: Option<&[f32]>,
    out_lse: &mut [f32],
) {
    for (r, row) in s.chunks_exact_mut(nk).enumerate() {
        let p = p0 + r;
        let (lo, hi) = (shape.first_key(p) - k0, p - k0 + 1);
        row[..lo].fill(0.0);
        row[hi..].fill(0.0);
        let valid = &mut row[lo..hi];
        match lse {
            Some(l) => valid.iter_mut().for_each(|x| *x = simd::exp_fast(*x - l[r])),
            None => {
                let m = valid.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0f32;
                for x in valid.iter_mut() {
                    *x = simd::exp_fast(*x - m);
                    sum += *x;
                }
                let inv = 1.0 / sum;
                valid.iter_mut().for_each(|x| *x *= inv);
                out_lse[r] = m + sum.ln();
            }
        }
    }
}

/// `out (b, t, h, d)`, `lse (b, h, t)` (natural-log sum-exp of the scaled scores) saved for backward.
/// One task per (batch, query head); the queries go in tiles of [`ATTN_TILE`] rows, each against only the
/// keys some query of the tile can see, as two GEMMs (scores `Q·Kᵀ`, output `P·V`) around a masked softmax.
pub fn attention_forward(out: &mut [f32], lse: &mut [f32], q: &[f32], k: &[f32], v: &[f32], s: AttnShape) {
    let _prof = super::profile::span("attention");
    let AttnShape { t, h, hkv, d, .. } = s;
    let scale = 1.0 / (d as f32).sqrt();
    let group = h / hkv;
    let results: Vec<(Vec<f32>, Vec<f32>)> = (0..s.b * h)
        .into_par_iter()
        .map(|bh| {
            let (bi, hi) = (bh / h, bh % h);
            let kh = hi / group;
            let (mut qm, mut km, mut vm) = (vec![0.0f32; t * d], vec![0.0f32; t * d], vec![0.0f32; t * d]);
            gather_head(&mut qm, &q[bi * t * h * d..], t, h, hi, d);
            gather_head(&mut km, &k[bi * t * hkv * d..], t, hkv, kh, d);
            gather_head(&mut vm, &v[bi * t * hkv * d..], t, hkv, kh, d);
            let mut o = vec![0.0f32; t * d];
            let mut l = vec![0.0f32; t];
            let mut sc = vec![0.0f32; ATTN_TILE * t];
            for p0 in (0..t).step_by(ATTN_TILE) {
                let p1 = (p0 + ATTN_TILE).min(t);
                let (rows, k0) = (p1 - p0, s.first_key(p0));
                let nk = p1 - k0;
                let st = &mut sc[..rows * nk];
                gemm(
                    Trans::N,
                    Trans::T,
                    rows,
                    nk,
                    d,
                    scale,
                    &qm[p0 * d..],
                    &km[k0 * d..],
                    0.0,
                    st,
                );
                tile_probs(st, nk, p0, k0, &s, None, &mut l[p0..p1]);
                gemm(
                    Trans::N,
                    Trans::N,
                    rows,
                    d,
                    nk,
                    1.0,
                    st,
                    &vm[k0 * d..],
                    0.0,
                    &mut o[p0 * d..p1 * d],
                );
            }
            (o, l)
        })
        .collect();
    for (bh, (o, l)) in results.into_iter().enumerate() {
        let (bi, hi) = (bh / h, bh % h);
        for p in 0..t {
            out[((bi * t + p) * h + hi) * d..][..d].copy_from_slice(&o[p * d..(p + 1) * d]);
        }
        lse[bh * t..(bh + 1) * t].copy_from_slice(&l);
    }
}

/// Adds into dq, dk, dv. Probabilities are recomputed from the saved log-sum-exp, tile by tile as in the
/// forward: `dV += Pᵀ·dO`, `dP = dO·Vᵀ`, `dS = P ∘ (dP − rowsum(dO ∘ O))·scale`, `dQ += dS·K`, `dK += dSᵀ·Q`.
/// Each (batch, kv head) is one task that owns its dk/dv rows, so the reduction order is fixed (deterministic).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    out: &[f32],
    lse: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: AttnShape,
) {
    let _prof = super::profile::span("attention");
    let AttnShape { t, h, hkv, d, .. } = s;
    let scale = 1.0 / (d as f32).sqrt();
    let group = h / hkv;
    let results: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..s.b * hkv)
        .into_par_iter()
        .map(|bk| {
            let (bi, kh) = (bk / hkv, bk % hkv);
            let (mut km, mut vm) = (vec![0.0f32; t * d], vec![0.0f32; t * d]);
            gather_head(&mut km, &k[bi * t * hkv * d..], t, hkv, kh, d);
            gather_head(&mut vm, &v[bi * t * hkv * d..], t, hkv, kh, d);
            let (mut qm, mut gom, mut om) = (vec![0.0f32; t * d], vec![0.0f32; t * d], vec![0.0f32; t * d]);
            let mut gq = vec![0.0f32; group * t * d];
            let mut gk = vec![0.0f32; t * d];
            let mut gv = vec![0.0f32; t * d];
            let (mut pt, mut dpt) = (vec![0.0f32; ATTN_TILE * t], vec![0.0f32; ATTN_TILE * t]);
            let mut delta = vec![0.0f32; t];
            for gi in 0..group {
                let hi = kh * group + gi;
                let base = bi * t * h * d;
                gather_head(&mut qm, &q[base..], t, h, hi, d);
                gather_head(&mut gom, &dout[base..], t, h, hi, d);
                gather_head(&mut om, &out[base..], t, h, hi, d);
                for (p, dl) in delta.iter_mut().enumerate() {
                    *dl = dot(&gom[p * d..(p + 1) * d], &om[p * d..(p + 1) * d]);
                }
                let l = &lse[(bi * h + hi) * t..][..t];
                let gqh = &mut gq[gi * t * d..(gi + 1) * t * d];
                for p0 in (0..t).step_by(ATTN_TILE) {
                    let p1 = (p0 + ATTN_TILE).min(t);
                    let (rows, k0) = (p1 - p0, s.first_key(p0));
                    let nk = p1 - k0;
                    let (pm, dpm) = (&mut pt[..rows * nk], &mut dpt[..rows * nk]);
                    gemm(
                        Trans::N,
                        Trans::T,
                        rows,
                        nk,
                        d,
                        scale,
                        &qm[p0 * d..],
                        &km[k0 * d..],
                        0.0,
                        pm,
                    );
                    tile_probs(pm, nk, p0, k0, &s, Some(&l[p0..p1]), &mut []);
                    let gdo = &gom[p0 * d..p1 * d];
                    gemm(
                        Trans::T,
                        Trans::N,
                        nk,
                        d,
                        rows,
                        1.0,
                        pm,
                        gdo,
                        1.0,
                        &mut gv[k0 * d..p1 * d],
                    );
                    gemm(Trans::N, Trans::T, rows, nk, d, 1.0, gdo, &vm[k0 * d..], 0.0, dpm);
                    for ((ds, &pr), r) in dpm
                        .iter_mut()
                        .zip(pm.iter())
                        .zip((0..rows).flat_map(|r| std::iter::repeat_n(r, nk)))
                    {
                        *ds = pr * (*ds - delta[p0 + r]) * scale;
                    }
                    gemm(
                        Trans::N,
                        Trans::N,
                        rows,
                        d,
                        nk,
                        1.0,
                        dpm,
                        &km[k0 * d..],
                        1.0,
                        &mut gqh[p0 * d..p1 * d],
                    );
                    gemm(
                        Trans::T,
                        Trans::N,
                        nk,
                        d,
                        rows,
                        1.0,
                        dpm,
                        &qm[p0 * d..],
                        1.0,
                        &mut gk[k0 * d..p1 * d],
                    );
                }
            }
            (gq, gk, gv)
        })
        .collect();
    for (bk, (gq, gk, gv)) in results.into_iter().enumerate() {
        let (bi, kh) = (bk / hkv, bk % hkv);
        scatter_add_head(&mut dk[bi * t * hkv * d..], &gk, t, hkv, kh, d);
        scatter_add_head(&mut dv[bi * t * hkv * d..], &gv, t, hkv, kh, d);
        for gi in 0..group {
            scatter_add_head(
                &mut dq[bi * t * h * d..],
                &gq[gi * t * d..(gi + 1) * t * d],
                t,
                h,
                kh * group + gi,
                d,
            );
        }
    }
}

// ------------------------------------------------------------------------------------------------------------
// ReLU²

pub fn relu2_forward(out: &mut [f32], x: &[f32]) {
    let _prof = super::profile::span("relu²");
    out.par_iter_mut()
        .zip(x)
        .for_each(|(o, &x)| *o = if x > 0.0 { x * x } else { 0.0 });
}

pub fn relu2_backward(dx: &mut [f32], dout: &[f32], x: &[f32]) {
    let _prof = super::profile::span("relu²");
    dx.par_iter_mut().zip(dout).zip(x).for_each(|((d, g), &x)| {
        if x > 0.0 {
            *d += 2.0 * x * g
        }
    });
}

// ------------------------------------------------------------------------------------------------------------
// Backout: out = x − lambda · x_mid

pub fn backout_forward(out: &mut [f32], x: &[f32], x_mid: &[f32], lambda: f32) {
    let _prof = super::profile::span("residual mix");
    out.par_iter_mut()
        .zip(x)
        .zip(x_mid)
        .for_each(|((o, x), m)| *o = x - lambda * m);
}

/// Returns d lambda; adds into dx and dx_mid.
pub fn backout_backward(dx: &mut [f32], dx_mid: &mut [f32], dout: &[f32], x_mid: &[f32], lambda: f32) -> f32 {
    let _prof = super::profile::span("residual mix");
    let mut dl = 0f64;
    for i in 0..dout.len() {
        dx[i] += dout[i];
        dx_mid[i] -= lambda * dout[i];
        dl -= (dout[i] * x_mid[i]) as f64;
    }
    dl as f32
}

// ------------------------------------------------------------------------------------------------------------
// Softcapped cross-entropy over the first `v` of `vp` padded logit columns, ignore index -1

/// Turns raw logits `(n, vp)` into softcapped logits `15·tanh(z/15)` in place (first `v` columns; the padding
/// columns are left untouched and never read) and returns the per-token loss `(n)` (0 for ignored targets).
pub fn softcap_ce_forward(losses: &mut [f32], logits: &mut [f32], targets: &[i32], v: usize, vp: usize) {
    let _prof = super::profile::span("softcap + CE");
    losses
        .par_iter_mut()
        .zip(logits.par_chunks_mut(vp))
        .zip(targets.par_iter())
        .for_each(|((loss, row), &y)| {
            let row = &mut row[..v];
            // Capped logits are at most SOFTCAP, so log-sum-exp can shift by SOFTCAP instead of the row max.
            let sum = simd::softcap_row(row, SOFTCAP);
            *loss = if y < 0 {
                0.0
            } else {
                SOFTCAP + sum.ln() - row[y as usize]
            };
        });
}

/// Writes the gradient of the raw logits into `dlogits (n, vp)` (=, padding columns 0) from the softcapped
/// logits and `dloss (n)`, the gradient of the objective with respect to each token's loss.
pub fn softcap_ce_backward(dlogits: &mut [f32], capped: &[f32], targets: &[i32], dloss: &[f32], v: usize, vp: usize) {
    let _prof = super::profile::span("softcap + CE");
    dlogits
        .par_chunks_mut(vp)
        .zip(capped.par_chunks(vp))
        .zip(targets.par_iter().zip(dloss.par_iter()))
        .for_each(|((drow, row), (&y, &g))| {
            if y < 0 || g == 0.0 {
                drow.fill(0.0);
                return;
            }
            let row = &row[..v];
            drow[v..].fill(0.0);
            // dz_j = g·(p_j − [j = y])·(1 − tanh²): the softmax part for every column, then the one-hot term.
            let sum = simd::shifted_exp_sum(row, SOFTCAP);
            simd::softcap_softmax_grad(&mut drow[..v], row, SOFTCAP, g / sum);
            let th = row[y as usize] / SOFTCAP;
            drow[y as usize] -= g * (1.0 - th * th);
        });
}

/// The direct definition of attention (one query row and one key at a time): the oracle of the tiled version.
#[cfg(test)]
mod naive {
    use super::{dot, AttnShape};
    use rayon::prelude::*;

    /// `out (b, t, h, d)`, `lse (b, h, t)` (natural-log sum-exp of the scaled scores) saved for backward.
    pub(super) fn attention_forward_naive(
        out: &mut [f32],
        lse: &mut [f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        s: AttnShape,
    ) {
        let AttnShape { t, h, hkv, d, .. } = s;
        let scale = 1.0 / (d as f32).sqrt();
        let group = h / hkv;
        // One task per (batch, query head); each writes disjoint rows of `lse` and strided slices of `out`.
        let results: Vec<(Vec<f32>, Vec<f32>)> = (0..s.b * h)
            .into_par_iter()
            .map(|bh| {
                let (bi, hi) = (bh / h, bh % h);
                let kh = hi / group;
                let mut o = vec![0.0f32; t * d];
                let mut l = vec![0.0f32; t];
                let mut scores = vec![0.0f32; t];
                for p in 0..t {
                    let qv = &q[((bi * t + p) * h + hi) * d..][..d];
                    let k0 = s.first_key(p);
                    let mut m = f32::NEG_INFINITY;
                    for j in k0..=p {
                        let sc = dot(qv, &k[((bi * t + j) * hkv + kh) * d..][..d]) * scale;
                        scores[j] = sc;
                        m = m.max(sc);
                    }
                    let mut sum = 0.0f32;
                    for s in &mut scores[k0..=p] {
                        *s = (*s - m).exp();
                        sum += *s;
                    }
                    let orow = &mut o[p * d..(p + 1) * d];
                    for j in k0..=p {
                        let w = scores[j] / sum;
                        let vv = &v[((bi * t + j) * hkv + kh) * d..][..d];
                        orow.iter_mut().zip(vv).for_each(|(o, v)| *o += w * v);
                    }
                    l[p] = m + sum.ln();
                }
                (o, l)
            })
            .collect();
        for (bh, (o, l)) in results.into_iter().enumerate() {
            let (bi, hi) = (bh / h, bh % h);
            for p in 0..t {
                out[((bi * t + p) * h + hi) * d..][..d].copy_from_slice(&o[p * d..(p + 1) * d]);
            }
            lse[bh * t..(bh + 1) * t].copy_from_slice(&l);
        }
    }

    /// Adds into dq, dk, dv. Probabilities are recomputed from the saved log-sum-exp; each (batch, kv head) is one
    /// task that owns its dk/dv rows, so the reduction order is fixed (deterministic).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention_backward_naive(
        dq: &mut [f32],
        dk: &mut [f32],
        dv: &mut [f32],
        dout: &[f32],
        out: &[f32],
        lse: &[f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        s: AttnShape,
    ) {
        let AttnShape { t, h, hkv, d, .. } = s;
        let scale = 1.0 / (d as f32).sqrt();
        let group = h / hkv;
        let results: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..s.b * hkv)
            .into_par_iter()
            .map(|bk| {
                let (bi, kh) = (bk / hkv, bk % hkv);
                let mut gq = vec![0.0f32; group * t * d];
                let mut gk = vec![0.0f32; t * d];
                let mut gv = vec![0.0f32; t * d];
                for gi in 0..group {
                    let hi = kh * group + gi;
                    for p in 0..t {
                        let qi = ((bi * t + p) * h + hi) * d;
                        let (qv, go, o) = (&q[qi..qi + d], &dout[qi..qi + d], &out[qi..qi + d]);
                        let delta = dot(go, o);
                        let l = lse[(bi * h + hi) * t + p];
                        let gqr = &mut gq[(gi * t + p) * d..][..d];
                        for j in s.first_key(p)..=p {
                            let ki = ((bi * t + j) * hkv + kh) * d;
                            let (kv, vv) = (&k[ki..ki + d], &v[ki..ki + d]);
                            let pr = (dot(qv, kv) * scale - l).exp();
                            let dp = dot(go, vv);
                            let ds = pr * (dp - delta) * scale;
                            for x in 0..d {
                                gv[j * d + x] += pr * go[x];
                                gk[j * d + x] += ds * qv[x];
                                gqr[x] += ds * kv[x];
                            }
                        }
                    }
                }
                (gq, gk, gv)
            })
            .collect();
        for (bk, (gq, gk, gv)) in results.into_iter().enumerate() {
            let (bi, kh) = (bk / hkv, bk % hkv);
            for p in 0..t {
                let ki = ((bi * t + p) * hkv + kh) * d;
                dk[ki..ki + d]
                    .iter_mut()
                    .zip(&gk[p * d..(p + 1) * d])
                    .for_each(|(a, b)| *a += b);
                dv[ki..ki + d]
                    .iter_mut()
                    .zip(&gv[p * d..(p + 1) * d])
                    .for_each(|(a, b)| *a += b);
                for gi in 0..group {
                    let qi = ((bi * t + p) * h + kh * group + gi) * d;
                    dq[qi..qi + d]
                        .iter_mut()
                        .zip(&gq[(gi * t + p) * d..][..d])
                        .for_each(|(a, b)| *a += b);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: &[f32], want: &[f32], what: &str) {
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 2e-5 * scale, "{what}[{i}]: {g} vs {w} (scale {scale})");
        }
    }

    #[test]
    fn tiled_attention_matches_the_direct_definition() {
        // t spans several tiles with a ragged last one; windows below, inside and above the tile size; GQA.
        for (t, window, h, hkv) in [(150, 150, 4, 2), (150, 20, 2, 2), (150, 100, 4, 1), (7, 3, 2, 1)] {
            let s = AttnShape {
                b: 2,
                t,
                h,
                hkv,
                d: 16,
                window,
            };
            let mut rng = crate::rng::Rng::new(t as u64 + window as u64);
            let mut r = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.normal()).collect() };
            let (q, k, v) = (r(2 * t * h * 16), r(2 * t * hkv * 16), r(2 * t * hkv * 16));
            let dout = r(2 * t * h * 16);
            let (mut o, mut l, mut o2, mut l2) = (
                vec![0.0; q.len()],
                vec![0.0; 2 * h * t],
                vec![0.0; q.len()],
                vec![0.0; 2 * h * t],
            );
            attention_forward(&mut o, &mut l, &q, &k, &v, s);
            naive::attention_forward_naive(&mut o2, &mut l2, &q, &k, &v, s);
            close(&o, &o2, "out");
            close(&l, &l2, "lse");
            let g = |n: usize| vec![0.5f32; n];
            let (mut dq, mut dk, mut dv) = (g(q.len()), g(k.len()), g(v.len()));
            let (mut dq2, mut dk2, mut dv2) = (g(q.len()), g(k.len()), g(v.len()));
            attention_backward(&mut dq, &mut dk, &mut dv, &dout, &o2, &l2, &q, &k, &v, s);
            naive::attention_backward_naive(&mut dq2, &mut dk2, &mut dv2, &dout, &o2, &l2, &q, &k, &v, s);
            close(&dq, &dq2, "dq");
            close(&dk, &dk2, "dk");
            close(&dv, &dv2, "dv");
        }
    }
}
