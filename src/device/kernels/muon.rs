//! `cuda/muon.cu`: the stages of the Muon update around Polar Express, over a stack of `k` same-shaped
//! (m, n) fp32 matrices stored back to back. Each launcher matches one function of `optim::muon`, applied
//! to every matrix of the stack. The per-matrix stages come twice: one block per matrix (`muon_eq`,
//! `muon_frobenius_norm`, `muon_plus`, `muon_normuon`: one launch each, a grid of only k blocks) and wide
//! (`*_wide`: statistics, per-matrix sums and the rescale as three launches over grids of many blocks, with a
//! statistics scratch of [`wide_scratch_len`] floats; MuonEq and NorMuon give the one-block kernels' bits).
//! `polar_express` runs the orthogonalisation as batched bf16 GEMMs and `muon_step` chains every stage, the
//! wide ones, into one update.

use super::elementwise::{cast_bf16_to_f32, cast_f32_to_bf16};
use super::{as_i32, blocks_for, one_block_each, ELEMENTWISE_BLOCK, ROW_BLOCK};
use crate::device::{err, Arg, Buffer, DevPtr, Device, Dim3, Dtype, Gemm, Op, Result};
use crate::optim::muon::{second_moment_len, MuonHyper, POLAR_EXPRESS_COEFFS};

/// Most per-row (or per-column) floats a per-matrix kernel keeps in dynamic shared memory: 96 KiB, within
/// the opt-in limit of sm_80 and sm_90 (the CUDA device raises the kernel's limit past 48 KiB).
pub const MAX_STAT_LEN: usize = 24 * 1024;

/// A stack of `k` row-major (m, n) matrices stored back to back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stack {
    pub k: usize,
    pub m: usize,
    pub n: usize,
}

impl Stack {
    /// Elements of one matrix.
    pub fn len(&self) -> usize {
        self.m * self.n
    }
    /// Whether the stack holds no element.
    pub fn is_empty(&self) -> bool {
        self.k == 0 || self.m == 0 || self.n == 0
    }
    /// Elements of the whole stack.
    pub fn total(&self) -> usize {
        self.k * self.len()
    }
    /// Grid of the one-block-per-matrix kernels.
    fn grid(&self, what: &str) -> Result<Dim3> {
        one_block_each(self.k, what)
    }
    /// Checks that `len` per-matrix statistics fit the kernels' shared memory; returns their byte count.
    fn stat_smem(&self, len: usize, what: &str) -> Result<u32> {
        if len > MAX_STAT_LEN {
            return err(format!(
                "{what}: shape ({}, {}) needs {len} per-neuron statistics in shared memory, at most {MAX_STAT_LEN}",
                self.m, self.n
            ));
        }
        Ok((len * 4) as u32)
    }
}

/// Nesterov momentum over the whole stack (`optim::muon::nesterov`): `mom ← lerp(mom, g, 1−mu)`,
/// `u = lerp(g, mom, mu)`, `u` rounded to bf16 when `round_bf16`. `u` may not alias `g` or `mom`.
pub fn muon_nesterov(
    dev: &dyn Device,
    u: DevPtr,
    mom: DevPtr,
    g: DevPtr,
    s: Stack,
    mu: f32,
    round_bf16: bool,
) -> Result<()> {
    if s.is_empty() {
        return Ok(());
    }
    let total = s.total();
    let args = [
        Arg::Ptr(u),
        Arg::Ptr(mom),
        Arg::Ptr(g),
        Arg::I64(total as i64),
        Arg::F32(mu),
        Arg::I32(round_bf16 as i32),
    ];
    dev.launch(
        "muon_nesterov",
        Dim3::x(blocks_for(total, ELEMENTWISE_BLOCK, "muon_nesterov")?),
        Dim3::x(ELEMENTWISE_BLOCK),
        0,
        &args,
    )
}

/// MuonEq in place on every matrix (`optim::muon::muon_eq`), then bf16 rounding when `round_bf16`.
pub fn muon_eq(dev: &dyn Device, x: DevPtr, s: Stack, round_bf16: bool) -> Result<()> {
    if s.is_empty() {
        return Ok(());
    }
    let smem = s.stat_smem(s.m, "muon_eq")?;
    let args = [
        Arg::Ptr(x),
        Arg::I32(as_i32(s.m, "muon_eq rows")?),
        Arg::I32(as_i32(s.n, "muon_eq columns")?),
        Arg::I32(round_bf16 as i32),
    ];
    dev.launch("muon_eq", s.grid("muon_eq")?, Dim3::x(ROW_BLOCK), smem, &args)
}

/// Frobenius normalisation in place on every matrix (`optim::muon::frobenius_normalize` with `bf16`).
pub fn muon_frobenius_norm(dev: &dyn Device, x: DevPtr, s: Stack, round_bf16: bool) -> Result<()> {
    if s.is_empty() {
        return Ok(());
    }
    let args = [Arg::Ptr(x), Arg::I64(s.len() as i64), Arg::I32(round_bf16 as i32)];
    dev.launch(
        "muon_frobenius_norm",
        s.grid("muon_frobenius_norm")?,
        Dim3::x(ROW_BLOCK),
        0,
        &args,
    )
}

/// Muon+ rescale in place on every matrix (`optim::muon::muon_plus`).
pub fn muon_plus(dev: &dyn Device, o: DevPtr, s: Stack) -> Result<()> {
    if s.is_empty() {
        return Ok(());
    }
    let args = [
        Arg::Ptr(o),
        Arg::I32(as_i32(s.m, "muon_plus rows")?),
        Arg::I32(as_i32(s.n, "muon_plus columns")?),
    ];
    dev.launch("muon_plus", s.grid("muon_plus")?, Dim3::x(ROW_BLOCK), 0, &args)
}

/// NorMuon in place on every matrix (`optim::muon::normuon`); `second` holds `k` factored second moments of
/// `second_moment_len(m, n)` floats each, updated in place.
pub fn muon_normuon(dev: &dyn Device, o: DevPtr, second: DevPtr, s: Stack, beta2: f32) -> Result<()> {
    if s.is_empty() {
        return Ok(());
    }
    let smem = s.stat_smem(second_moment_len(s.m, s.n), "muon_normuon")?;
    let args = [
        Arg::Ptr(o),
        Arg::Ptr(second),
        Arg::I32(as_i32(s.m, "muon_normuon rows")?),
        Arg::I32(as_i32(s.n, "muon_normuon columns")?),
        Arg::F32(beta2),
    ];
    dev.launch("muon_normuon", s.grid("muon_normuon")?, Dim3::x(ROW_BLOCK), smem, &args)
}

/// Floats of the statistics scratch of the wide stages for `s`: a row or column statistic per row or column
/// of every matrix, then one scalar per matrix.
pub fn wide_scratch_len(s: Stack) -> usize {
    s.k * (s.m.max(s.n) + 1)
}

/// Grid of the one-element-per-thread kernels over the whole stack.
fn stack_grid(s: Stack, what: &str) -> Result<Dim3> {
    Ok(Dim3::x(blocks_for(s.total(), ELEMENTWISE_BLOCK, what)?))
}

/// The per-matrix scalars at the end of the wide stages' scratch.
fn wide_scalars(stats: DevPtr, s: Stack) -> DevPtr {
    stats.at::<f32>(s.k * s.m.max(s.n))
}

/// `stats[r] = Σ_j x[r, j]²` for every row of the stack (one warp per row), then the per-matrix sums of
/// those (`muon_eq`'s order) into the scalars; returns the scalars' address.
fn wide_row_sums(dev: &dyn Device, x: DevPtr, stats: DevPtr, s: Stack) -> Result<DevPtr> {
    let rows = s.k * s.m;
    let totals = wide_scalars(stats, s);
    dev.launch(
        "muon_rows_sumsq",
        Dim3::x(blocks_for(rows, ROW_BLOCK / 32, "muon_rows_sumsq")?),
        Dim3::x(ROW_BLOCK),
        0,
        &[
            Arg::Ptr(stats),
            Arg::Ptr(x),
            Arg::I64(rows as i64),
            Arg::I32(as_i32(s.n, "muon columns")?),
        ],
    )?;
    dev.launch(
        "muon_stack_sums",
        s.grid("muon_stack_sums")?,
        Dim3::x(ROW_BLOCK),
        0,
        &[Arg::Ptr(totals), Arg::Ptr(stats), Arg::I32(as_i32(s.m, "muon rows")?)],
    )?;
    Ok(totals)
}

/// [`muon_eq`] over grids of many blocks; `stats` is scratch of [`wide_scratch_len`] floats. Same bits.
pub fn muon_eq_wide(dev: &dyn Device, x: DevPtr, stats: DevPtr, s: Stack, round_bf16: bool) -> Result<()> {
    if s.is_empty() {
        return Ok(());
    }
    let totals = wide_row_sums(dev, x, stats, s)?;
    let args = [
        Arg::Ptr(x),
        Arg::Ptr(stats),
        Arg::Ptr(totals),
        Arg::I32(as_i32(s.m, "muon_eq rows")?),
        Arg::I32(as_i32(s.n, "muon_eq columns")?),
        Arg::I64(s.total() as i64),
        Arg::I32(round_bf16 as i32),
    ];
    dev.launch(
        "muon_eq_apply",
        stack_grid(s, "muon_eq_apply")?,
        Dim3::x(ELEMENTWISE_BLOCK),
        0,
        &args,
    )
}

/// [`muon_frobenius_norm`] over grids of many blocks (the norm summed row by row: not the same bits).
pub fn muon_frobenius_norm_wide(dev: &dyn Device, x: DevPtr, stats: DevPtr, s: Stack, round_bf16: bool) -> Result<()> {
    if s.is_empty() {
        return Ok(());
    }
    let totals = wide_row_sums(dev, x, stats, s)?;
    let args = [
        Arg::Ptr(x),
        Arg::Ptr(totals),
        Arg::I64(s.len() as i64),
        Arg::I64(s.total() as i64),
        Arg::I32(round_bf16 as i32),
    ];
    dev.launch(
        "muon_frobenius_apply",
        stack_grid(s, "muon_frobenius_apply")?,
        Dim3::x(ELEMENTWISE_BLOCK),
        0,
        &args,
    )
}

/// [`muon_plus`] over grids of many blocks (the norm summed row by row: not the same bits).
pub fn muon_plus_wide(dev: &dyn Device, o: DevPtr, stats: DevPtr, s: Stack) -> Result<()> {
    if s.is_empty() {
        return Ok(());
    }
    let totals = wide_row_sums(dev, o, stats, s)?;
    let args = [
        Arg::Ptr(o),
        Arg::Ptr(totals),
        Arg::I64(s.len() as i64),
        Arg::I64(s.total() as i64),
        Arg::F32((s.m.min(s.n) as f32).sqrt()),
    ];
    dev.launch(
        "muon_plus_apply",
        stack_grid(s, "muon_plus_apply")?,
        Dim3::x(ELEMENTWISE_BLOCK),
        0,
        &args,
    )
}

/// [`muon_normuon`] over grids of many blocks; `stats` is scratch of [`wide_scratch_len`] floats. Same bits.
pub fn muon_normuon_wide(
    dev: &dyn Device,
    o: DevPtr,
    second: DevPtr,
    stats: DevPtr,
    s: Stack,
    beta2: f32,
) -> Result<()> {
    if s.is_empty() {
        return Ok(());
    }
    let (m, n) = (as_i32(s.m, "muon_normuon rows")?, as_i32(s.n, "muon_normuon columns")?);
    if s.m >= s.n {
        let rows = s.k * s.m;
        dev.launch(
            "muon_rows_sumsq",
            Dim3::x(blocks_for(rows, ROW_BLOCK / 32, "muon_rows_sumsq")?),
            Dim3::x(ROW_BLOCK),
            0,
            &[Arg::Ptr(stats), Arg::Ptr(o), Arg::I64(rows as i64), Arg::I32(n)],
        )?;
    } else {
        let k = u32::try_from(s.k).or_else(|_| err(format!("muon_cols_sumsq: {} matrices", s.k)))?;
        dev.launch(
            "muon_cols_sumsq",
            Dim3::xy(blocks_for(s.n, ROW_BLOCK, "muon_cols_sumsq")?, k),
            Dim3::x(ROW_BLOCK),
            0,
            &[Arg::Ptr(stats), Arg::Ptr(o), Arg::I32(m), Arg::I32(n)],
        )?;
    }
    let ratio = wide_scalars(stats, s);
    dev.launch(
        "muon_normuon_stats",
        s.grid("muon_normuon_stats")?,
        Dim3::x(ROW_BLOCK),
        0,
        &[
            Arg::Ptr(stats),
            Arg::Ptr(ratio),
            Arg::Ptr(second),
            Arg::I32(m),
            Arg::I32(n),
            Arg::F32(beta2),
        ],
    )?;
    let args = [
        Arg::Ptr(o),
        Arg::Ptr(stats),
        Arg::Ptr(ratio),
        Arg::I32(m),
        Arg::I32(n),
        Arg::I64(s.total() as i64),
    ];
    dev.launch(
        "muon_normuon_apply",
        stack_grid(s, "muon_normuon_apply")?,
        Dim3::x(ELEMENTWISE_BLOCK),
        0,
        &args,
    )
}

/// Cautious weight decay and the update over the whole stack (`optim::muon::cautious_update`); `p_bf16`
/// (the bf16 copy of `p`, or `None`) is rewritten.
pub fn muon_cautious_update(
    dev: &dyn Device,
    p: DevPtr,
    p_bf16: Option<DevPtr>,
    o: DevPtr,
    s: Stack,
    lr: f32,
    wd: f32,
) -> Result<()> {
    if s.is_empty() {
        return Ok(());
    }
    let total = s.total();
    let args = [
        Arg::Ptr(p),
        Arg::Ptr(p_bf16.unwrap_or(DevPtr(0))),
        Arg::Ptr(o),
        Arg::I64(total as i64),
        Arg::F32(lr),
        Arg::F32(lr * wd),
    ];
    dev.launch(
        "muon_cautious_update",
        Dim3::x(blocks_for(total, ELEMENTWISE_BLOCK, "muon_cautious_update")?),
        Dim3::x(ELEMENTWISE_BLOCK),
        0,
        &args,
    )
}

/// Polar Express (`optim::muon::polar_express` with `bf16 = true`) on a stack of bf16 matrices `x`, in
/// place, through batched strided `Device::gemm` calls (bf16 operands, fp32 accumulation, bf16 results, as
/// upstream's bf16 compute dtype). Per iteration, with the Gram matrix on the short side (kk = min(m, n)):
/// `A = XᵀX` (tall) or `XXᵀ`; `B = b·A + c·A·A`; `X ← a·X + X·B` (tall) or `a·X + B·X`.
/// `y` (k·m·n bf16) and `a`, `b` (k·kk·kk bf16 each) are scratch.
#[allow(clippy::too_many_arguments)]
pub fn polar_express(
    dev: &dyn Device,
    x: DevPtr,
    y: DevPtr,
    a: DevPtr,
    b: DevPtr,
    s: Stack,
    ns_steps: usize,
) -> Result<()> {
    let coeffs = &POLAR_EXPRESS_COEFFS;
    if ns_steps > coeffs.len() {
        return err(format!(
            "polar_express: {ns_steps} iterations requested, coefficients exist for {}",
            coeffs.len()
        ));
    }
    if s.is_empty() || ns_steps == 0 {
        return Ok(());
    }
    let (m, n) = (s.m, s.n);
    let tall = m > n;
    let kk = m.min(n);
    let bf = 2; // bytes per bf16
    let batched = |g: Gemm| Gemm { batch: s.k, ..g };
    let (mut cur, mut next) = (x, y);
    for &(ca, cb, cc) in &coeffs[..ns_steps] {
        // A = XᵀX (kk = n) or XXᵀ (kk = m).
        let gram = if tall {
            Gemm {
                op_a: Op::T,
                lda: n,
                stride_a: m * n,
                stride_b: m * n,
                stride_c: kk * kk,
                ..Gemm::new(kk, kk, m, cur, cur, a, Dtype::Bf16)
            }
        } else {
            Gemm {
                op_b: Op::T,
                ldb: n,
                stride_a: m * n,
                stride_b: m * n,
                stride_c: kk * kk,
                ..Gemm::new(kk, kk, n, cur, cur, a, Dtype::Bf16)
            }
        };
        dev.gemm(&batched(gram))?;
        // B = c·A·A + b·A.
        dev.copy(b, a, s.k * kk * kk * bf)?;
        dev.gemm(&batched(Gemm {
            alpha: cc as f32,
            beta: cb as f32,
            stride_a: kk * kk,
            stride_b: kk * kk,
            stride_c: kk * kk,
            ..Gemm::new(kk, kk, kk, a, a, b, Dtype::Bf16)
        }))?;
        // Y = a·X + X·B (tall) or a·X + B·X, then X ← Y.
        dev.copy(next, cur, s.total() * bf)?;
        let (lhs, rhs, inner, sl, sr) = if tall {
            (cur, b, n, m * n, kk * kk)
        } else {
            (b, cur, m, kk * kk, m * n)
        };
        dev.gemm(&batched(Gemm {
            beta: ca as f32,
            stride_a: sl,
            stride_b: sr,
            stride_c: m * n,
            ..Gemm::new(m, n, inner, lhs, rhs, next, Dtype::Bf16)
        }))?;
        std::mem::swap(&mut cur, &mut next);
    }
    if cur != x {
        dev.copy(x, cur, s.total() * bf)?;
    }
    Ok(())
}

/// Device scratch of one Muon step on a stack: the fp32 working matrix, the bf16 Polar Express buffers and
/// the wide stages' statistics.
pub struct MuonScratch {
    stack: Stack,
    u: Buffer,
    xb: Buffer,
    yb: Buffer,
    a: Buffer,
    b: Buffer,
    stats: Buffer,
}

impl MuonScratch {
    /// Allocates the scratch of `s` (about 8 bytes per element plus two Gram matrices per matrix).
    pub fn new(dev: &dyn Device, s: Stack) -> Result<MuonScratch> {
        let [u, xb, yb, a, b, stats] = MuonScratch::sizes(s);
        Ok(MuonScratch {
            stack: s,
            u: dev.alloc(u)?,
            xb: dev.alloc(xb)?,
            yb: dev.alloc(yb)?,
            a: dev.alloc(a)?,
            b: dev.alloc(b)?,
            stats: dev.alloc(stats)?,
        })
    }

    /// Bytes of the six buffers (u, xb, yb, a, b, stats) for `s`; never zero, so an empty stack allocates
    /// cleanly.
    pub fn sizes(s: Stack) -> [usize; 6] {
        let kk = s.m.min(s.n);
        [
            4 * s.total(),
            2 * s.total(),
            2 * s.total(),
            2 * s.k * kk * kk,
            2 * s.k * kk * kk,
            4 * wide_scratch_len(s),
        ]
        .map(|n| n.max(1))
    }
}

/// One full Muon step on a stack (`optim::muon::muon_update` on every matrix, with `h.bf16 = true`, the only
/// mode the bf16 GEMMs give): `p` (fp32 master, and its bf16 copy `p_bf16` unless `None`), `mom` (momentum)
/// and `second` (k factored second moments) updated in place from the gradients `g`.
#[allow(clippy::too_many_arguments)]
pub fn muon_step(
    dev: &dyn Device,
    scratch: &MuonScratch,
    p: DevPtr,
    p_bf16: Option<DevPtr>,
    g: DevPtr,
    mom: DevPtr,
    second: DevPtr,
    h: &MuonHyper,
) -> Result<()> {
    let s = scratch.stack;
    if !h.bf16 {
        return err("muon_step: the device orthogonalises in bf16; MuonHyper::bf16 must be set");
    }
    if s.is_empty() {
        return Ok(());
    }
    let (u, stats) = (scratch.u.ptr(), scratch.stats.ptr());
    muon_nesterov(dev, u, mom, g, s, h.momentum, true)?;
    muon_eq_wide(dev, u, stats, s, true)?;
    muon_frobenius_norm_wide(dev, u, stats, s, true)?;
    cast_f32_to_bf16(dev, scratch.xb.ptr(), u, s.total())?;
    polar_express(
        dev,
        scratch.xb.ptr(),
        scratch.yb.ptr(),
        scratch.a.ptr(),
        scratch.b.ptr(),
        s,
        h.ns_steps,
    )?;
    cast_bf16_to_f32(dev, u, scratch.xb.ptr(), s.total())?;
    muon_plus_wide(dev, u, stats, s)?;
    muon_normuon_wide(dev, u, second, stats, s, h.beta2)?;
    muon_cautious_update(dev, p, p_bf16, u, s, h.lr, h.weight_decay)
}
