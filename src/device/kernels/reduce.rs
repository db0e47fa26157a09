//! `cuda/reduce.cu`: deterministic sums, sums of squares and L2 norms of device vectors.

use super::blocks_for;
use crate::device::{Arg, DevPtr, Device, Dim3, Dtype, Result};

const BLOCK: u32 = 256;
/// At most this many partial sums (and blocks in the first pass).
pub const MAX_PARTIALS: usize = 1024;

/// What to reduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    Sum,
    SumOfSquares,
    /// sqrt(sum of squares)
    Norm,
}

/// The number of partial sums (= first-pass blocks) for `n` elements: a function of `n` only, so the
/// summation order, and the result, do not change from run to run.
pub fn partials_for(n: usize) -> usize {
    (n.div_ceil(4 * BLOCK as usize)).clamp(1, MAX_PARTIALS)
}

/// `out[0] (f32) = reduction of x (n)` of `dtype`, using `scratch` (at least `partials_for(n)` f32).
pub fn reduce(
    dev: &dyn Device,
    out: DevPtr,
    scratch: DevPtr,
    x: DevPtr,
    dtype: Dtype,
    n: usize,
    r: Reduction,
) -> Result<()> {
    reduce_into(dev, out, scratch, x, dtype, n, r, false)
}

/// As [`reduce`], adding the result to `out[0]` when `accumulate` (gradients across micro-steps).
#[allow(clippy::too_many_arguments)]
pub fn reduce_into(
    dev: &dyn Device,
    out: DevPtr,
    scratch: DevPtr,
    x: DevPtr,
    dtype: Dtype,
    n: usize,
    r: Reduction,
    accumulate: bool,
) -> Result<()> {
    let parts = partials_for(n);
    blocks_for(n, BLOCK, "reduce")?;
    let name = match dtype {
        Dtype::F32 => "reduce_partials_f32",
        Dtype::Bf16 => "reduce_partials_bf16",
    };
    let square = (r != Reduction::Sum) as i32;
    let args = [Arg::Ptr(scratch), Arg::Ptr(x), Arg::I64(n as i64), Arg::I32(square)];
    dev.launch(name, Dim3::x(parts as u32), Dim3::x(BLOCK), 0, &args)?;
    let sqrt = (r == Reduction::Norm) as i32;
    let args = [
        Arg::Ptr(out),
        Arg::Ptr(scratch),
        Arg::I32(parts as i32),
        Arg::I32(sqrt),
        Arg::I32(accumulate as i32),
    ];
    dev.launch("reduce_finish", Dim3::x(1), Dim3::x(1024), 0, &args)
}
