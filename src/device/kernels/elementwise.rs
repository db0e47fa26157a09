//! `cuda/elementwise.cu`: ReLU², casts and adds on bf16 storage.

use super::{blocks_for, ELEMENTWISE_BLOCK};

/// Elements per thread of the kernels of `cuda/elementwise.cu` (`ELEMS_PER_THREAD` there).
pub const ELEMS_PER_THREAD: usize = 8;
use crate::device::{Arg, DevPtr, Device, Dim3, Result};

fn launch1(dev: &dyn Device, name: &str, ptrs: &[DevPtr], n: usize) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let grid = blocks_for(n.div_ceil(ELEMS_PER_THREAD), ELEMENTWISE_BLOCK, name)?;
    let mut args: Vec<Arg> = ptrs.iter().map(|&p| Arg::Ptr(p)).collect();
    args.push(Arg::I64(n as i64));
    dev.launch(name, Dim3::x(grid), Dim3::x(ELEMENTWISE_BLOCK), 0, &args)
}

/// `out (n) = relu(x)²`, bf16.
pub fn relu2_forward(dev: &dyn Device, out: DevPtr, x: DevPtr, n: usize) -> Result<()> {
    launch1(dev, "relu2_forward", &[out, x], n)
}

/// `dx (n) = (x > 0) · 2x · dout` (overwrites dx), bf16.
pub fn relu2_backward(dev: &dyn Device, dx: DevPtr, dout: DevPtr, x: DevPtr, n: usize) -> Result<()> {
    launch1(dev, "relu2_backward", &[dx, dout, x], n)
}

/// `out (n) bf16 = x (n) f32`, rounded to nearest even.
pub fn cast_f32_to_bf16(dev: &dyn Device, out: DevPtr, x: DevPtr, n: usize) -> Result<()> {
    launch1(dev, "cast_f32_to_bf16", &[out, x], n)
}

/// `out (n) f32 = x (n) bf16`.
pub fn cast_bf16_to_f32(dev: &dyn Device, out: DevPtr, x: DevPtr, n: usize) -> Result<()> {
    launch1(dev, "cast_bf16_to_f32", &[out, x], n)
}

/// `out (n) += a (n)` in place, bf16 storage, the sum in f32 rounded to nearest even. `a` may be the
/// same pointer as `out` (each element is read before it is written); otherwise they must not overlap.
pub fn add_bf16(dev: &dyn Device, out: DevPtr, a: DevPtr, n: usize) -> Result<()> {
    launch1(dev, "add_bf16", &[out, a], n)
}

/// `out (n) bf16 = a (n) f32 + b (n) bf16`, the sum in f32 rounded to nearest even. `out` may be the same
/// pointer as `b` (each element is read before it is written); otherwise the buffers must not overlap.
pub fn add_f32_bf16(dev: &dyn Device, out: DevPtr, a: DevPtr, b: DevPtr, n: usize) -> Result<()> {
    launch1(dev, "add_f32_bf16", &[out, a, b], n)
}
