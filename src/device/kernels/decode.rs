//! `cuda/decode.cu`: the kernels of a KV-cached step (inference only): RoPE/QK-norm at per-row positions
//! appending k and v to the cache, flash-decoding attention over the cache split along the key axis with
//! a final combine, and the smear of a one-token step from the cached previous embedding. Same math as
//! [`crate::cpu::decode`]. Layouts: q `(n, h, d)` bf16 with `n = rows · t`, caches `(rows, t_max, hkv, d)`
//! bf16 per layer, positions `(rows)` i32 on the device (each row's length before the step).

use super::as_i32;
use crate::device::{err, Arg, DevPtr, Device, Dim3, Result};

pub use crate::cpu::decode::StepShape;

const WARPS: u32 = 4;
const THREADS: u32 = WARPS * 32;
/// Keys a split should cover at least before the launcher splits further.
pub const SPLIT_KEYS: usize = 256;
/// Most key splits of one (query, head).
pub const MAX_SPLITS: usize = 64;
/// Blocks the split choice aims for: enough to fill a large GPU (132 SMs) about twice.
const TARGET_BLOCKS: usize = 264;

/// Checks a step against the host copy of the positions; returns the kernel ints
/// (n, t, h, hkv, d, t_max, window clamped to t_max).
fn check(s: &StepShape, pos: &[usize], positions: usize) -> Result<[i32; 7]> {
    let what = format!("cached step {s:?}");
    if s.hkv == 0 || s.h % s.hkv != 0 {
        return err(format!("{what}: query heads must be a multiple of kv heads"));
    }
    if ![8, 16, 32, 64, 128, 256].contains(&s.d) {
        return err(format!("{what}: head_dim must be 8, 16, 32, 64, 128 or 256"));
    }
    if pos.len() != s.rows || s.t == 0 {
        return err(format!("{what}: {} positions for {} rows", pos.len(), s.rows));
    }
    if let Some((r, &p)) = pos.iter().enumerate().find(|(_, &p)| p + s.t > s.t_max.min(positions)) {
        return err(format!(
            "{what}: row {r} at position {p} plus {} tokens exceeds the cache ({} positions) or the rotary \
             tables ({positions})",
            s.t, s.t_max
        ));
    }
    as_i32(s.rows * s.t_max * s.hkv * s.d, &format!("{what}: cache elements"))?;
    Ok([
        as_i32(s.n(), &what)?,
        as_i32(s.t, &what)?,
        as_i32(s.h, &what)?,
        as_i32(s.hkv, &what)?,
        as_i32(s.d, &what)?,
        as_i32(s.t_max, &what)?,
        as_i32(s.window.min(s.t_max), &what)?,
    ])
}

fn warps_grid(units: usize, what: &str) -> Result<Dim3> {
    Ok(Dim3::x(super::blocks_for(units, WARPS, what)?))
}

/// RoPE at `pos[r] + i` + QK-norm + ×1.2: q heads of `qk` (rows of `x_stride`, q heads then k heads) to
/// `q_out (n, h, d)`; k heads into `k_cache`, `v (n, hkv·d)` into `v_cache` (one layer's caches) at each
/// token's position. `pos_dev` holds `pos` as i32; `cos`/`sin` tables of `positions` rows.
#[allow(clippy::too_many_arguments)]
pub fn kv_rope_append(
    dev: &dyn Device,
    q_out: DevPtr,
    k_cache: DevPtr,
    v_cache: DevPtr,
    qk: DevPtr,
    v: DevPtr,
    cos: DevPtr,
    sin: DevPtr,
    pos_dev: DevPtr,
    pos: &[usize],
    s: StepShape,
    x_stride: usize,
    positions: usize,
) -> Result<()> {
    let [n, t, h, hkv, d, t_max, _] = check(&s, pos, positions)?;
    if x_stride < (s.h + s.hkv) * s.d {
        return err(format!(
            "kv_rope_append {s:?}: row stride {x_stride} shorter than (h + hkv)·d"
        ));
    }
    if s.n() == 0 {
        return Ok(());
    }
    let args = [
        Arg::Ptr(q_out),
        Arg::Ptr(k_cache),
        Arg::Ptr(v_cache),
        Arg::Ptr(qk),
        Arg::Ptr(v),
        Arg::Ptr(cos),
        Arg::Ptr(sin),
        Arg::Ptr(pos_dev),
        Arg::I32(n),
        Arg::I32(t),
        Arg::I32(h),
        Arg::I32(hkv),
        Arg::I32(d),
        Arg::I32(t_max),
        Arg::I32(as_i32(x_stride, "kv_rope_append row stride")?),
    ];
    let grid = warps_grid(s.n() * (s.h + s.hkv), "kv_rope_append (token, head) pairs")?;
    dev.launch("kv_rope_append", grid, Dim3::x(THREADS), 0, &args)
}

/// Key splits for a step whose longest visible key range is `max_keys`: at least [`SPLIT_KEYS`] keys a
/// split, as many splits as it takes to give the GPU about [`TARGET_BLOCKS`] blocks, at most [`MAX_SPLITS`].
pub fn choose_splits(s: &StepShape, max_keys: usize) -> usize {
    let by_len = max_keys.div_ceil(SPLIT_KEYS).max(1);
    let by_blocks = TARGET_BLOCKS.div_ceil((s.n() * s.h).max(1)).max(1);
    by_len.min(by_blocks).min(MAX_SPLITS)
}

/// The longest key range a query of the step sees.
pub fn max_keys(s: &StepShape, pos: &[usize]) -> usize {
    pos.iter().map(|&p| (p + s.t - 1).min(s.window) + 1).max().unwrap_or(0)
}

/// f32 elements of the split partials (`part_o`, `part_ml`) [`decode_attention`] needs at `splits`.
pub fn split_scratch(s: &StepShape, splits: usize) -> (usize, usize) {
    if splits <= 1 {
        return (0, 0);
    }
    (s.n() * s.h * splits * s.d, s.n() * s.h * splits * 2)
}

/// `out (n, h, d)` bf16: the step's queries `q (n, h, d)` attending to one layer's caches, in `splits`
/// key splits (1: no partials; more: `part_o`, `part_ml` of [`split_scratch`] elements, then the combine).
#[allow(clippy::too_many_arguments)]
pub fn decode_attention(
    dev: &dyn Device,
    out: DevPtr,
    part_o: DevPtr,
    part_ml: DevPtr,
    q: DevPtr,
    k_cache: DevPtr,
    v_cache: DevPtr,
    pos_dev: DevPtr,
    pos: &[usize],
    s: StepShape,
    splits: usize,
) -> Result<()> {
    let [n, t, h, hkv, d, t_max, window] = check(&s, pos, usize::MAX)?;
    if splits == 0 || splits > MAX_SPLITS {
        return err(format!("decode_attention {s:?}: {splits} splits (1..={MAX_SPLITS})"));
    }
    if s.n() == 0 || s.h == 0 {
        return Ok(());
    }
    let grid = Dim3 {
        x: splits as u32,
        y: s.h as u32,
        z: u32::try_from(s.n()).or_else(|_| err(format!("decode_attention: {} queries", s.n())))?,
    };
    let mut args = vec![
        Arg::Ptr(out),
        Arg::Ptr(part_o),
        Arg::Ptr(part_ml),
        Arg::Ptr(q),
        Arg::Ptr(k_cache),
        Arg::Ptr(v_cache),
        Arg::Ptr(pos_dev),
    ];
    args.extend([n, t, h, hkv, d, t_max, window, splits as i32].map(Arg::I32));
    dev.launch("decode_attention", grid, Dim3::x(THREADS), 0, &args)?;
    if splits == 1 {
        return Ok(());
    }
    let args = [
        Arg::Ptr(out),
        Arg::Ptr(part_o),
        Arg::Ptr(part_ml),
        Arg::I32(n),
        Arg::I32(h),
        Arg::I32(d),
        Arg::I32(splits as i32),
    ];
    dev.launch(
        "decode_combine",
        warps_grid(s.n() * s.h, "decode_combine")?,
        Dim3::x(THREADS),
        0,
        &args,
    )
}

/// `out (rows, c)` bf16: the smear of a one-token step, `x[r] + lambda·sigmoid(w · x[r, :k])·prev[r]`;
/// then `prev = x`. `w (k)`, `lambda (1)` f32 on the device, `k <= 32`.
#[allow(clippy::too_many_arguments)]
pub fn decode_smear(
    dev: &dyn Device,
    out: DevPtr,
    prev: DevPtr,
    x: DevPtr,
    w: DevPtr,
    lambda: DevPtr,
    rows: usize,
    c: usize,
    k: usize,
) -> Result<()> {
    if k == 0 || k > 32 || k > c {
        return err(format!("decode_smear: gate width {k} must be in 1..=min(32, {c})"));
    }
    if rows == 0 {
        return Ok(());
    }
    let args = [
        Arg::Ptr(out),
        Arg::Ptr(prev),
        Arg::Ptr(x),
        Arg::Ptr(w),
        Arg::Ptr(lambda),
        Arg::I32(as_i32(rows, "decode_smear rows")?),
        Arg::I32(as_i32(c, "decode_smear width")?),
        Arg::I32(k as i32),
    ];
    dev.launch(
        "decode_smear",
        warps_grid(rows, "decode_smear")?,
        Dim3::x(THREADS),
        0,
        &args,
    )
}

/// Bytes one step reads from the caches: every visible key and value of every (query, kv head) once.
pub fn cache_bytes_read(s: &StepShape, pos: &[usize]) -> usize {
    let keys: usize = pos
        .iter()
        .map(|&p| (0..s.t).map(|i| (p + i).min(s.window) + 1).sum::<usize>())
        .sum();
    2 * keys * s.hkv * s.d * 2
}
