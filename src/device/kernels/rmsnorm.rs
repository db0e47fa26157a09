//! `cuda/rmsnorm.cu`: RMSNorm (no weight) forward, with the residual-lambda mix fused in front, and
//! backward. Rows of width `c`, bf16 activations, fp32 `rstd`.

use super::reduce::{reduce_into, Reduction};
use super::{as_i32, one_block_each, ROW_BLOCK};
use crate::device::{Arg, DevPtr, Device, Dim3, Dtype, Result};

/// `y (n, c) = x · rstd`, `rstd (n)` saved.
pub fn rmsnorm_forward(
    dev: &dyn Device,
    y: DevPtr,
    rstd: DevPtr,
    x: DevPtr,
    n: usize,
    c: usize,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let args = [
        Arg::Ptr(y),
        Arg::Ptr(rstd),
        Arg::Ptr(x),
        Arg::I32(as_i32(n, "rmsnorm rows")?),
        Arg::I32(as_i32(c, "rmsnorm width")?),
    ];
    dev.launch(
        "rmsnorm_forward",
        one_block_each(n, "rmsnorm")?,
        Dim3::x(ROW_BLOCK),
        0,
        &args,
    )
}

/// `xmix (n, c) = lambdas[0] · x + lambdas[1] · x0` (bf16), then `y = rmsnorm(xmix)`, `rstd (n)` saved.
/// `lambdas` points at two f32 on the device (the resid and x0 lambdas of the layer).
#[allow(clippy::too_many_arguments)]
pub fn mix_rmsnorm_forward(
    dev: &dyn Device,
    xmix: DevPtr,
    y: DevPtr,
    rstd: DevPtr,
    x: DevPtr,
    x0: DevPtr,
    lambdas: DevPtr,
    n: usize,
    c: usize,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let args = [
        Arg::Ptr(xmix),
        Arg::Ptr(y),
        Arg::Ptr(rstd),
        Arg::Ptr(x),
        Arg::Ptr(x0),
        Arg::Ptr(lambdas),
        Arg::I32(as_i32(n, "rmsnorm rows")?),
        Arg::I32(as_i32(c, "rmsnorm width")?),
    ];
    dev.launch(
        "mix_rmsnorm_forward",
        one_block_each(n, "rmsnorm")?,
        Dim3::x(ROW_BLOCK),
        0,
        &args,
    )
}

/// `dx (n, c) += rstd · (dy − y · mean(dy · y))` with `y = x · rstd`.
pub fn rmsnorm_backward(
    dev: &dyn Device,
    dx: DevPtr,
    dy: DevPtr,
    x: DevPtr,
    rstd: DevPtr,
    n: usize,
    c: usize,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let args = [
        Arg::Ptr(dx),
        Arg::Ptr(dy),
        Arg::Ptr(x),
        Arg::Ptr(rstd),
        Arg::I32(as_i32(n, "rmsnorm rows")?),
        Arg::I32(as_i32(c, "rmsnorm width")?),
    ];
    dev.launch(
        "rmsnorm_backward",
        one_block_each(n, "rmsnorm")?,
        Dim3::x(ROW_BLOCK),
        0,
        &args,
    )
}

/// Backward of `xmix = lambdas[0] · x + lambdas[1] · x0`: `dx (n, c) bf16 = lambdas[0] · dxmix` (dx may
/// be dxmix itself), `dx0 (n, c) f32 += lambdas[1] · dxmix`, and `dlambdas[0..2] (f32) += (Σ dxmix·x,
/// Σ dxmix·x0)`, summed deterministically. `scratch` holds at least [`mix_backward_scratch`]`(n)` f32.
#[allow(clippy::too_many_arguments)]
pub fn mix_backward(
    dev: &dyn Device,
    dx: DevPtr,
    dx0: DevPtr,
    dlambdas: DevPtr,
    scratch: DevPtr,
    dxmix: DevPtr,
    x: DevPtr,
    x0: DevPtr,
    lambdas: DevPtr,
    n: usize,
    c: usize,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let args = [
        Arg::Ptr(dx),
        Arg::Ptr(dx0),
        Arg::Ptr(scratch),
        Arg::Ptr(dxmix),
        Arg::Ptr(x),
        Arg::Ptr(x0),
        Arg::Ptr(lambdas),
        Arg::I32(as_i32(n, "mix rows")?),
        Arg::I32(as_i32(c, "mix width")?),
    ];
    dev.launch(
        "mix_backward",
        one_block_each(n, "rmsnorm")?,
        Dim3::x(ROW_BLOCK),
        0,
        &args,
    )?;
    let parts = scratch.at::<f32>(2 * n);
    reduce_into(
        dev,
        dlambdas,
        parts,
        scratch,
        Dtype::F32,
        n,
        Reduction::Sum,
        true,
    )?;
    reduce_into(
        dev,
        dlambdas.at::<f32>(1),
        parts,
        scratch.at::<f32>(n),
        Dtype::F32,
        n,
        Reduction::Sum,
        true,
    )
}

/// Scratch f32 elements [`mix_backward`] needs for `n` rows.
pub fn mix_backward_scratch(n: usize) -> usize {
    2 * n + super::reduce::partials_for(n)
}
