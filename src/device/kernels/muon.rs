//! `cuda/muon.cu`: the stages of the Muon update around Polar Express, over a stack of `k` same-shaped
//! (m, n) fp32 matrices stored back to back. Each launcher matches one function of `optim::muon`, applied
//! to every matrix of the stack; the per-matrix kernels run one block per matrix.

use super::{as_i32, blocks_for, ELEMENTWISE_BLOCK, ROW_BLOCK};
use crate::device::{err, Arg, DevPtr, Device, Dim3, Result};
use crate::optim::muon::second_moment_len;

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
        let k = u32::try_from(self.k)
            .or_else(|_| err(format!("{what}: {} matrices exceed a grid", self.k)))?;
        Ok(Dim3::x(k))
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
    dev.launch(
        "muon_eq",
        s.grid("muon_eq")?,
        Dim3::x(ROW_BLOCK),
        smem,
        &args,
    )
}

/// Frobenius normalisation in place on every matrix (`optim::muon::frobenius_normalize` with `bf16`).
pub fn muon_frobenius_norm(dev: &dyn Device, x: DevPtr, s: Stack, round_bf16: bool) -> Result<()> {
    if s.is_empty() {
        return Ok(());
    }
    let args = [
        Arg::Ptr(x),
        Arg::I64(s.len() as i64),
        Arg::I32(round_bf16 as i32),
    ];
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
    dev.launch(
        "muon_plus",
        s.grid("muon_plus")?,
        Dim3::x(ROW_BLOCK),
        0,
        &args,
    )
}

/// NorMuon in place on every matrix (`optim::muon::normuon`); `second` holds `k` factored second moments of
/// `second_moment_len(m, n)` floats each, updated in place.
pub fn muon_normuon(
    dev: &dyn Device,
    o: DevPtr,
    second: DevPtr,
    s: Stack,
    beta2: f32,
) -> Result<()> {
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
    dev.launch(
        "muon_normuon",
        s.grid("muon_normuon")?,
        Dim3::x(ROW_BLOCK),
        smem,
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
        Dim3::x(blocks_for(
            total,
            ELEMENTWISE_BLOCK,
            "muon_cautious_update",
        )?),
        Dim3::x(ELEMENTWISE_BLOCK),
        0,
        &args,
    )
}
