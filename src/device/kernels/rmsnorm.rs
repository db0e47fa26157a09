//! `cuda/rmsnorm.cu`: RMSNorm (no weight) forward, with the residual-lambda mix fused in front, and
//! backward, alone or fused with the mix's and the backout's backward. Rows of width `c`, bf16 activations,
//! fp32 `rstd`.

use super::reduce::{reduce_into, Reduction};
use super::{as_i32, launch_rows};
use crate::device::{DevPtr, Device, Dtype, Result};

/// Rows and width as the kernels' `int`s.
fn dims(n: usize, c: usize) -> Result<[i32; 2]> {
    Ok([as_i32(n, "rmsnorm rows")?, as_i32(c, "rmsnorm width")?])
}

/// `y (n, c) = x · rstd`, `rstd (n)` saved.
pub fn rmsnorm_forward(dev: &dyn Device, y: DevPtr, rstd: DevPtr, x: DevPtr, n: usize, c: usize) -> Result<()> {
    launch_rows(dev, "rmsnorm_forward", n, &[y, rstd, x], &dims(n, c)?)
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
    launch_rows(
        dev,
        "mix_rmsnorm_forward",
        n,
        &[xmix, y, rstd, x, x0, lambdas],
        &dims(n, c)?,
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
    launch_rows(dev, "rmsnorm_backward", n, &[dx, dy, x, rstd], &dims(n, c)?)
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
    launch_rows(
        dev,
        "mix_backward",
        n,
        &[dx, dx0, scratch, dxmix, x, x0, lambdas],
        &dims(n, c)?,
    )?;
    reduce_partials(dev, dlambdas, scratch, n, 2)
}

/// Scratch f32 elements [`mix_backward`] needs for `n` rows.
pub fn mix_backward_scratch(n: usize) -> usize {
    2 * n + super::reduce::partials_for(n)
}

/// [`rmsnorm_backward`] then [`mix_backward`] in one pass, the gradient of `xmix` kept in fp32 between them:
/// `g = dres + rstd · (dy − y · mean(dy · y))` (y = xmix · rstd), then `dx (n, c) bf16 = lambdas[0] · g` (dx
/// may be dres itself), `dx0 (n, c) f32 += lambdas[1] · g`, `dlambdas[0..2] (f32) += (Σ g·x, Σ g·x0)`.
/// `scratch` holds at least [`mix_backward_scratch`]`(n)` f32.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_mix_backward(
    dev: &dyn Device,
    dx: DevPtr,
    dx0: DevPtr,
    dlambdas: DevPtr,
    scratch: DevPtr,
    dres: DevPtr,
    dy: DevPtr,
    xmix: DevPtr,
    rstd: DevPtr,
    x: DevPtr,
    x0: DevPtr,
    lambdas: DevPtr,
    n: usize,
    c: usize,
) -> Result<()> {
    launch_rows(
        dev,
        "rmsnorm_mix_backward",
        n,
        &[dx, dx0, scratch, dres, dy, xmix, rstd, x, x0, lambdas],
        &dims(n, c)?,
    )?;
    reduce_partials(dev, dlambdas, scratch, n, 2)
}

/// The final norm's backward fused with the backout's (`xf = x − lambda · x_mid`): `g = rstd · (dy − y ·
/// mean(dy · y))` in fp32 (y = xf · rstd), `dx (n, c) bf16 = g`, `dx_mid (n, c) bf16 = −lambda · g` (both
/// written, not added), `dlambda (1) f32 += −Σ g · x_mid`. `scratch` holds at least
/// [`mix_backward_scratch`]`(n)` f32.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backout_backward(
    dev: &dyn Device,
    dx: DevPtr,
    dx_mid: DevPtr,
    dlambda: DevPtr,
    scratch: DevPtr,
    dy: DevPtr,
    xf: DevPtr,
    rstd: DevPtr,
    x_mid: DevPtr,
    lambda: DevPtr,
    n: usize,
    c: usize,
) -> Result<()> {
    launch_rows(
        dev,
        "rmsnorm_backout_backward",
        n,
        &[dx, dx_mid, scratch, dy, xf, rstd, x_mid, lambda],
        &dims(n, c)?,
    )?;
    reduce_partials(dev, dlambda, scratch, n, 1)
}

/// `out[j] += Σ_row scratch[j·n + row]` for `j < count`, deterministically; the reduction's own partial
/// sums go at `scratch[2n..]` (see [`mix_backward_scratch`]).
fn reduce_partials(dev: &dyn Device, out: DevPtr, scratch: DevPtr, n: usize, count: usize) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let parts = scratch.at::<f32>(2 * n);
    for j in 0..count {
        reduce_into(
            dev,
            out.at::<f32>(j),
            parts,
            scratch.at::<f32>(j * n),
            Dtype::F32,
            n,
            Reduction::Sum,
            true,
        )?;
    }
    Ok(())
}
