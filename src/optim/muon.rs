//! The Muon update of one (m, n) matrix (spec §2.3), fp32: Nesterov momentum → MuonEq row equilibration →
//! Frobenius normalisation → Polar Express (5 iterations) → Muon+ rescale → NorMuon per-neuron variance
//! reduction → cautious weight decay and the parameter update.
//!
//! Upstream runs this batched over a stack of same-shaped matrices, but every quantity is per matrix, so the
//! CPU reference updates one matrix at a time and parallelises over matrices (see `super::MuonAdamW::step`).
//! Each piece is a public function so that device kernels can be checked against it piece by piece.

use crate::cpu::gemm::{gemm_view, View};
use half::bf16;

/// Polar Express (a, b, c) per iteration, computed for 5 iterations with safety factor 2e-2 and cushion 2
/// (as upstream writes them; used in fp32).
pub const POLAR_EXPRESS_COEFFS: [(f64, f64, f64); 5] = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
];

/// The scalars of one Muon update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MuonHyper {
    /// Effective lr: group lr × `sqrt(max(1, m/n))` (see `lr_shape_factor`).
    pub lr: f32,
    /// Nesterov momentum μ.
    pub momentum: f32,
    /// Cautious weight decay.
    pub weight_decay: f32,
    /// NorMuon second-moment EMA coefficient (0.9 upstream).
    pub beta2: f32,
    /// Polar Express iterations (at most 5).
    pub ns_steps: usize,
    /// Mirror upstream's bf16 orthogonalisation (compute dtype bf16): the momentum output, the MuonEq and
    /// normalisation results and every Polar Express GEMM result (fp32 accumulation, `a·X` fused into the last
    /// GEMM) are rounded to bf16; Muon+, NorMuon and the update stay fp32. Off for the fp32 reference.
    pub bf16: bool,
}

/// Tall matrices (more rows than columns, e.g. c_fc) take a larger step: `sqrt(max(1, m/n))`.
pub fn lr_shape_factor(m: usize, n: usize) -> f64 {
    (m as f64 / n as f64).max(1.0).sqrt()
}

/// Length of the factored NorMuon second moment of an (m, n) matrix: one per row if m ≥ n, else one per column.
pub fn second_moment_len(m: usize, n: usize) -> usize {
    if m >= n {
        m
    } else {
        n
    }
}

/// One full Muon step on matrix `p` (m, n) row-major, with gradient `g`, momentum buffer `momentum` (m, n) and
/// factored second moment `second` (`second_moment_len(m, n)`).
pub fn muon_update(
    p: &mut [f32],
    g: &[f32],
    momentum: &mut [f32],
    second: &mut [f32],
    (m, n): (usize, usize),
    h: &MuonHyper,
) {
    assert!(
        p.len() == m * n && g.len() == m * n && momentum.len() == m * n,
        "muon_update: shape ({m}, {n}) but params {}, grads {}, momentum {}",
        p.len(),
        g.len(),
        momentum.len()
    );
    assert_eq!(
        second.len(),
        second_moment_len(m, n),
        "muon_update: second moment length for shape ({m}, {n})"
    );
    let mut x = vec![0f32; m * n];
    nesterov(&mut x, g, momentum, h.momentum);
    maybe_bf16(&mut x, h.bf16);
    muon_eq(&mut x, (m, n));
    maybe_bf16(&mut x, h.bf16);
    frobenius_normalize(&mut x, h.bf16);
    polar_express(&mut x, (m, n), h.ns_steps, h.bf16);
    muon_plus(&mut x, (m, n));
    normuon(&mut x, second, (m, n), h.beta2);
    cautious_update(p, &x, h.lr, h.weight_decay);
}

/// Step 1: `M ← lerp(M, G, 1−μ)`; `U = lerp(G, M, μ)` written to `u`.
pub fn nesterov(u: &mut [f32], g: &[f32], momentum: &mut [f32], mu: f32) {
    for ((u, &g), m) in u.iter_mut().zip(g).zip(momentum.iter_mut()) {
        *m += (1.0 - mu) * (g - *m);
        *u = g + mu * (*m - g);
    }
}

/// Step 3, MuonEq: rescales every row to the same norm, `||X||_F / sqrt(m)` (rows of norm below 1e-6 are
/// treated as 1e-6), which leaves the Frobenius norm unchanged.
pub fn muon_eq(x: &mut [f32], (m, n): (usize, usize)) {
    let target = (sum_sq(x) / m as f64).sqrt() as f32;
    for row in x.chunks_exact_mut(n) {
        let r = (sum_sq(row).sqrt() as f32).max(1e-6);
        let scale = target / r;
        row.iter_mut().for_each(|v| *v *= scale);
    }
}

/// Step 4: `X ← X / (||X||_F · 1.01 + 1e-6)`, so every singular value is below 1 before Polar Express.
pub fn frobenius_normalize(x: &mut [f32], bf16: bool) {
    let mut norm = sum_sq(x).sqrt() as f32;
    if bf16 {
        norm = round_bf16(norm);
    }
    let denom = norm * 1.01 + 1e-6;
    x.iter_mut().for_each(|v| *v /= denom);
    maybe_bf16(x, bf16);
}

/// Step 5, Polar Express: `ns_steps` odd-polynomial iterations driving every singular value of X towards 1.
/// Tall (m > n): `A = XᵀX` (n, n), `X ← a·X + X·(b·A + c·A²)`; otherwise `A = XXᵀ` (m, m),
/// `X ← a·X + (b·A + c·A²)·X`. The Gram matrix is taken on the short side so the GEMMs stay small.
pub fn polar_express(x: &mut [f32], (m, n): (usize, usize), ns_steps: usize, bf16: bool) {
    assert!(
        ns_steps <= POLAR_EXPRESS_COEFFS.len(),
        "polar_express: {ns_steps} iterations requested, coefficients exist for {}",
        POLAR_EXPRESS_COEFFS.len()
    );
    let tall = m > n;
    let k = if tall { n } else { m };
    let mut a = vec![0f32; k * k];
    let mut b = vec![0f32; k * k];
    let mut y = vec![0f32; m * n];
    let xm = Mat::row_major(m, n);
    for &(ca, cb, cc) in &POLAR_EXPRESS_COEFFS[..ns_steps] {
        let (ca, cb, cc) = (ca as f32, cb as f32, cc as f32);
        // A = XᵀX or XXᵀ (k, k).
        if tall {
            gemm(1.0, (x, xm.t()), (x, xm), 0.0, &mut a, k, k);
        } else {
            gemm(1.0, (x, xm), (x, xm.t()), 0.0, &mut a, k, k);
        }
        maybe_bf16(&mut a, bf16);
        // B = b·A + c·A·A (k, k).
        b.copy_from_slice(&a);
        let km = Mat::row_major(k, k);
        gemm(cc, (&a, km), (&a, km), cb, &mut b, k, k);
        maybe_bf16(&mut b, bf16);
        // Y = a·X + X·B (tall) or a·X + B·X, then X ← Y.
        y.copy_from_slice(x);
        if tall {
            gemm(1.0, (x, xm), (&b, km), ca, &mut y, m, n);
        } else {
            gemm(1.0, (&b, km), (x, xm), ca, &mut y, m, n);
        }
        maybe_bf16(&mut y, bf16);
        x.copy_from_slice(&y);
    }
}

/// Step 7, Muon+: `O ← O · sqrt(min(m, n)) / max(||O||_F, 1e-6)`, the Frobenius norm of a semi-orthogonal
/// matrix, whatever Polar Express left.
pub fn muon_plus(o: &mut [f32], (m, n): (usize, usize)) {
    let norm = (sum_sq(o).sqrt() as f32).max(1e-6);
    let scale = (m.min(n) as f32).sqrt() / norm;
    o.iter_mut().for_each(|v| *v *= scale);
}

/// Step 8, NorMuon: per-neuron second moment `v` (mean of O² over the reduce dimension: columns when m ≥ n,
/// rows otherwise), EMA into `second`, rescale each row (or column) by `1/sqrt(S)`, then the whole matrix back
/// to its Frobenius norm before the rescale.
pub fn normuon(o: &mut [f32], second: &mut [f32], (m, n): (usize, usize), beta2: f32) {
    let per_row = m >= n;
    // Mean of squares over the reduce dimension, size N.
    let (len, red) = if per_row { (m, n) } else { (n, m) };
    let mut acc = vec![0f64; len];
    for (i, row) in o.chunks_exact(n).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            acc[if per_row { i } else { j }] += (v as f64) * (v as f64);
        }
    }
    let v: Vec<f32> = acc.iter().map(|&s| (s / red as f64) as f32).collect();
    let red = red as f32;
    let vnorm = (v.iter().map(|&x| x as f64).sum::<f64>() as f32 * red).sqrt();
    let mut new_sq = 0f64;
    let mut step = vec![0f32; len];
    for ((s, &vi), st) in second.iter_mut().zip(&v).zip(step.iter_mut()) {
        *s += (1.0 - beta2) * (vi - *s);
        *st = 1.0 / s.max(1e-10).sqrt();
        new_sq += (vi * red * *st * *st) as f64;
    }
    let ratio = vnorm / (new_sq.sqrt() as f32).max(1e-10);
    let scale: Vec<f32> = step.iter().map(|&s| s * ratio).collect();
    for (i, row) in o.chunks_exact_mut(n).enumerate() {
        if per_row {
            row.iter_mut().for_each(|x| *x *= scale[i]);
        } else {
            row.iter_mut().zip(&scale).for_each(|(x, &s)| *x *= s);
        }
    }
}

/// Step 9: cautious weight decay (only where the update and the parameter agree in sign) and the update:
/// `P ← P − (lr·O + lr·wd·P·[O⊙P ≥ 0])`.
pub fn cautious_update(p: &mut [f32], o: &[f32], lr: f32, wd: f32) {
    let lr_wd = lr * wd;
    for (p, &o) in p.iter_mut().zip(o) {
        let mask = if o * *p >= 0.0 { 1.0 } else { 0.0 };
        *p -= lr * o + lr_wd * *p * mask;
    }
}

fn sum_sq(x: &[f32]) -> f64 {
    x.iter().map(|&v| (v as f64) * (v as f64)).sum()
}

fn round_bf16(v: f32) -> f32 {
    bf16::from_f32(v).to_f32()
}

fn maybe_bf16(x: &mut [f32], on: bool) {
    if on {
        x.iter_mut().for_each(|v| *v = round_bf16(*v));
    }
}

/// A (rows, cols) view of a row-major buffer through strides, so transposes cost nothing.
#[derive(Clone, Copy)]
struct Mat {
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl Mat {
    fn row_major(rows: usize, cols: usize) -> Mat {
        Mat {
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }
    fn t(self) -> Mat {
        Mat {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// `C (m, n, row-major) = alpha · A · B + beta · C` through the CPU reference's strided GEMM.
fn gemm(alpha: f32, (a, am): (&[f32], Mat), (b, bm): (&[f32], Mat), beta: f32, c: &mut [f32], m: usize, n: usize) {
    assert!(
        am.rows == m && bm.cols == n,
        "gemm: ({}, {}) · ({}, {}) into ({m}, {n})",
        am.rows,
        am.cols,
        bm.rows,
        bm.cols
    );
    let view = |d, v: Mat| View::new(d, v.rows, v.cols, v.rs, v.cs);
    gemm_view(alpha, view(a, am), view(b, bm), beta, c);
}
