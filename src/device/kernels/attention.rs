//! `cuda/attention.cu`: causal sliding-window attention with GQA, forward and backward, in two
//! implementations: [`AttnImpl::Flash`] (tensor cores, the training path) and [`AttnImpl::Naive`] (one
//! warp per row, the second oracle). Same layouts as [`crate::cpu::ops::attention_forward`]: q, out,
//! dout (b, t, h, d) bf16; k, v (b, t, hkv, d) bf16; lse (b, h, t) f32.

use super::as_i32;
use crate::device::{err, Arg, DevPtr, Device, Dim3, Result};

pub use crate::cpu::ops::AttnShape;

/// Which kernels compute the attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnImpl {
    /// One warp per row, plain loads: simple and slow.
    Naive,
    /// FlashAttention-2 tiles on mma.sync; head_dim 64 or 128.
    Flash,
}

/// Warps per block of the naive kernels (one row per warp).
const NAIVE_WARPS: u32 = 4;
/// Queries per block of the flash kernels (16 per warp, 4 warps) and keys per shared-memory tile.
pub const FLASH_BR: usize = 64;
pub const FLASH_BC: usize = 64;
const FLASH_THREADS: u32 = 128;

/// Checks the shape and returns (b, t, h, hkv, d, window) as kernel ints, window clamped to t.
fn args_of(s: &AttnShape, imp: AttnImpl) -> Result<[i32; 6]> {
    let what = format!("attention {s:?}");
    if s.hkv == 0 || s.h % s.hkv != 0 {
        return err(format!("{what}: query heads must be a multiple of kv heads"));
    }
    match imp {
        AttnImpl::Naive if s.d == 0 || s.d > 128 => {
            return err(format!("{what}: naive kernels need 1 <= head_dim <= 128"))
        }
        AttnImpl::Flash if s.d != 64 && s.d != 128 => {
            return err(format!("{what}: flash kernels need head_dim 64 or 128"))
        }
        _ => {}
    }
    // Element offsets are 64-bit in the kernels, row counts are not.
    as_i32(s.b * s.h.max(s.hkv) * s.t, &format!("{what}: rows"))?;
    Ok([
        as_i32(s.b, &what)?,
        as_i32(s.t, &what)?,
        as_i32(s.h, &what)?,
        as_i32(s.hkv, &what)?,
        as_i32(s.d, &what)?,
        as_i32(s.window.min(s.t), &what)?,
    ])
}

fn shape_args(a: [i32; 6]) -> impl Iterator<Item = Arg> {
    a.into_iter().map(Arg::I32)
}

fn row_grid(rows: usize, what: &str) -> Result<Dim3> {
    Ok(Dim3::x(super::blocks_for(rows, NAIVE_WARPS, what)?))
}

/// Flash grid: (query tiles or key tiles, heads, batch).
fn tile_grid(t: usize, heads: usize, b: usize, tile: usize, what: &str) -> Result<Dim3> {
    let x = u32::try_from(t.div_ceil(tile)).or_else(|_| err(format!("{what}: t = {t}")))?;
    let y = u32::try_from(heads).or_else(|_| err(format!("{what}: {heads} heads")))?;
    let z = u32::try_from(b).or_else(|_| err(format!("{what}: batch {b}")))?;
    Ok(Dim3 { x, y, z })
}

/// Dynamic shared memory of the flash kernels: `tiles` tiles of 64 rows of d bf16, each row padded by
/// 8 elements (16 bytes) so that ldmatrix's eight row addresses fall in different banks.
fn flash_smem(tiles: usize, d: usize) -> u32 {
    (tiles * FLASH_BR * (d + 8) * 2) as u32
}

/// Dynamic shared memory of the dK/dV kernel: the K and V tiles (64 rows), then two buffers of the
/// Q and dO tiles of `bq` rows (64 at head_dim 64, 32 at 128: see `cuda/attention.cu`) and of `bq` f32
/// of lse and of delta.
fn dkdv_smem(d: usize) -> u32 {
    let bq = if d == 64 { 64 } else { 32 };
    ((2 * FLASH_BC + 4 * bq) * (d + 8) * 2 + 4 * bq * 4) as u32
}

/// `out (b, t, h, d)` bf16 and `lse (b, h, t)` f32 of causal attention with a left window.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(
    dev: &dyn Device,
    imp: AttnImpl,
    out: DevPtr,
    lse: DevPtr,
    q: DevPtr,
    k: DevPtr,
    v: DevPtr,
    s: AttnShape,
) -> Result<()> {
    let a = args_of(&s, imp)?;
    if s.b * s.t * s.h == 0 {
        return Ok(());
    }
    let mut args = vec![Arg::Ptr(out), Arg::Ptr(lse), Arg::Ptr(q), Arg::Ptr(k), Arg::Ptr(v)];
    args.extend(shape_args(a));
    match imp {
        AttnImpl::Naive => dev.launch(
            "attention_naive_forward",
            row_grid(s.b * s.h * s.t, "attention forward")?,
            Dim3::x(NAIVE_WARPS * 32),
            0,
            &args,
        ),
        AttnImpl::Flash => dev.launch(
            if s.d == 64 {
                "attention_flash_forward_d64"
            } else {
                "attention_flash_forward_d128"
            },
            tile_grid(s.t, s.h, s.b, FLASH_BR, "attention forward")?,
            Dim3::x(FLASH_THREADS),
            flash_smem(5, s.d),
            &args,
        ),
    }
}

/// Gradients of [`attention_forward`]: `dq (b, t, h, d)`, `dk`, `dv (b, t, hkv, d)` bf16 are written
/// (not accumulated). `delta` is scratch for `b · h · t` f32. Deterministic: no atomics.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dev: &dyn Device,
    imp: AttnImpl,
    dq: DevPtr,
    dk: DevPtr,
    dv: DevPtr,
    delta: DevPtr,
    dout: DevPtr,
    out: DevPtr,
    lse: DevPtr,
    q: DevPtr,
    k: DevPtr,
    v: DevPtr,
    s: AttnShape,
) -> Result<()> {
    let a = args_of(&s, imp)?;
    if s.b * s.t * s.h == 0 {
        return Ok(());
    }
    let mut dargs = vec![Arg::Ptr(delta), Arg::Ptr(dout), Arg::Ptr(out)];
    dargs.extend([a[0], a[1], a[2], a[4]].map(Arg::I32));
    dev.launch(
        "attention_delta",
        row_grid(s.b * s.h * s.t, "attention delta")?,
        Dim3::x(NAIVE_WARPS * 32),
        0,
        &dargs,
    )?;
    let mut dq_args = vec![Arg::Ptr(dq)];
    let mut dkdv_args = vec![Arg::Ptr(dk), Arg::Ptr(dv)];
    for args in [&mut dq_args, &mut dkdv_args] {
        args.extend([dout, lse, delta, q, k, v].map(Arg::Ptr));
        args.extend(shape_args(a));
    }
    match imp {
        AttnImpl::Naive => {
            dev.launch(
                "attention_naive_backward_dq",
                row_grid(s.b * s.h * s.t, "attention backward dq")?,
                Dim3::x(NAIVE_WARPS * 32),
                0,
                &dq_args,
            )?;
            dev.launch(
                "attention_naive_backward_dkdv",
                row_grid(s.b * s.hkv * s.t, "attention backward dk dv")?,
                Dim3::x(NAIVE_WARPS * 32),
                0,
                &dkdv_args,
            )
        }
        AttnImpl::Flash => {
            let sfx = if s.d == 64 { "d64" } else { "d128" };
            dev.launch(
                &format!("attention_flash_backward_dq_{sfx}"),
                tile_grid(s.t, s.h, s.b, FLASH_BR, "attention backward dq")?,
                Dim3::x(FLASH_THREADS),
                flash_smem(6, s.d),
                &dq_args,
            )?;
            dev.launch(
                &format!("attention_flash_backward_dkdv_{sfx}"),
                tile_grid(s.t, s.hkv, s.b, FLASH_BC, "attention backward dk dv")?,
                Dim3::x(FLASH_THREADS),
                dkdv_smem(s.d),
                &dkdv_args,
            )
        }
    }
}

/// FLOPs of one forward pass (two matmuls over the visible (query, key) pairs), for benchmarks.
/// The backward pass does 2.5 times as much (five matmuls).
pub fn forward_flops(s: &AttnShape) -> f64 {
    let w = s.window.min(s.t);
    // Query p sees min(p, w) + 1 keys.
    let pairs: usize = (0..s.t).map(|p| p.min(w) + 1).sum();
    4.0 * (s.b * s.h * pairs * s.d) as f64
}
