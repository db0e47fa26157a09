//! `cuda/rope_qknorm.cu`: RoPE (half split, rotation by −θ) + QK RMSNorm over the head dim + ×1.2, fused
//! after the QKV GEMM, forward and backward. The input is a strided view into the GEMM output; the output
//! is the contiguous `(n, heads, d)` layout of the attention kernels. Same math as
//! [`crate::cpu::ops::rope_forward`] followed by [`crate::cpu::ops::qk_norm_forward`].

use super::{as_i32, blocks_for};
use crate::device::{err, Arg, DevPtr, Device, Dim3, Result};

/// Warps (one (row, head) each) per block.
const WARPS: u32 = 4;
/// Largest head dimension: 4 rotation pairs per lane.
pub const MAX_HEAD_DIM: usize = 256;

/// Shape of one call: `n` rows (tokens of sequences of length `t`, row `r` at position `pos0 + r % t`),
/// `heads` heads of `d` in each row, input rows `x_stride` elements apart, cos/sin tables of `positions`
/// rows of `d / 2` f32 (as [`crate::cpu::ops::rope_tables`]).
#[derive(Clone, Copy, Debug)]
pub struct RopeShape {
    pub n: usize,
    pub t: usize,
    pub heads: usize,
    pub d: usize,
    pub pos0: usize,
    pub x_stride: usize,
    pub positions: usize,
}

impl RopeShape {
    /// Checks the shape; returns the launch grid and the kernel ints (n, t, heads, d, pos0, x_stride).
    fn check(&self) -> Result<(Dim3, [i32; 6])> {
        let s = self;
        let what = format!("rope_qknorm {s:?}");
        if s.d == 0 || s.d % 2 != 0 || s.d > MAX_HEAD_DIM {
            return err(format!("{what}: head_dim must be even and at most {MAX_HEAD_DIM}"));
        }
        if s.t == 0 || s.n % s.t != 0 {
            return err(format!("{what}: rows must be whole sequences of length t"));
        }
        if s.x_stride < s.heads * s.d {
            return err(format!("{what}: input row stride shorter than heads·d"));
        }
        if s.pos0 + s.t > s.positions {
            return err(format!("{what}: positions pos0..pos0+t exceed the rotary tables"));
        }
        let units = s.n * s.heads;
        let grid = Dim3::x(blocks_for(units, WARPS, "rope_qknorm (row, head) pairs")?);
        as_i32(units, "rope_qknorm rows·heads")?;
        Ok((
            grid,
            [
                as_i32(s.n, "rope_qknorm rows")?,
                as_i32(s.t, "rope_qknorm sequence length")?,
                as_i32(s.heads, "rope_qknorm heads")?,
                as_i32(s.d, "rope_qknorm head_dim")?,
                as_i32(s.pos0, "rope_qknorm position offset")?,
                as_i32(s.x_stride, "rope_qknorm row stride")?,
            ],
        ))
    }
}

/// `y (n, heads, d) bf16 = rmsnorm(rope(x)) · 1.2`, `rstd (n·heads) f32` saved for backward.
pub fn rope_qknorm_forward(
    dev: &dyn Device,
    y: DevPtr,
    rstd: DevPtr,
    x: DevPtr,
    cos: DevPtr,
    sin: DevPtr,
    s: RopeShape,
) -> Result<()> {
    if s.n == 0 || s.heads == 0 {
        return Ok(());
    }
    let (grid, [n, t, heads, d, pos0, x_stride]) = s.check()?;
    let args = [
        Arg::Ptr(y),
        Arg::Ptr(rstd),
        Arg::Ptr(x),
        Arg::Ptr(cos),
        Arg::Ptr(sin),
        Arg::I32(n),
        Arg::I32(t),
        Arg::I32(heads),
        Arg::I32(d),
        Arg::I32(pos0),
        Arg::I32(x_stride),
    ];
    dev.launch("rope_qknorm_forward", grid, Dim3::x(32 * WARPS), 0, &args)
}

/// Gradient of the input from `dy (n, heads, d)`: written into the strided `dx` (rows `dx_stride` apart,
/// the layout of `x`), added to what is there when `accumulate`.
#[allow(clippy::too_many_arguments)]
pub fn rope_qknorm_backward(
    dev: &dyn Device,
    dx: DevPtr,
    dy: DevPtr,
    x: DevPtr,
    rstd: DevPtr,
    cos: DevPtr,
    sin: DevPtr,
    s: RopeShape,
    dx_stride: usize,
    accumulate: bool,
) -> Result<()> {
    if s.n == 0 || s.heads == 0 {
        return Ok(());
    }
    let (grid, [n, t, heads, d, pos0, x_stride]) = s.check()?;
    if dx_stride < s.heads * s.d {
        return err(format!(
            "rope_qknorm_backward {s:?}: gradient row stride {dx_stride} shorter than heads·d"
        ));
    }
    let args = [
        Arg::Ptr(dx),
        Arg::Ptr(dy),
        Arg::Ptr(x),
        Arg::Ptr(rstd),
        Arg::Ptr(cos),
        Arg::Ptr(sin),
        Arg::I32(n),
        Arg::I32(t),
        Arg::I32(heads),
        Arg::I32(d),
        Arg::I32(pos0),
        Arg::I32(x_stride),
        Arg::I32(as_i32(dx_stride, "rope_qknorm gradient row stride")?),
        Arg::I32(accumulate as i32),
    ];
    dev.launch("rope_qknorm_backward", grid, Dim3::x(32 * WARPS), 0, &args)
}
