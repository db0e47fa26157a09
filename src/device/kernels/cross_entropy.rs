//! `cuda/cross_entropy.cu`: the fused softcapped cross-entropy.

use super::{as_i32, ROW_BLOCK};
use crate::device::{err, Arg, DevPtr, Device, Dim3, Result};

/// For `n` tokens with bf16 logits `(n, vp)` (the first `v` columns real): writes the per-token loss
/// `losses (n)` (0 for targets < 0) and, when `dloss != 0`, replaces the logits in place by the gradient
/// of `dloss · loss` with respect to the raw logits (padding columns 0). `targets (n)` are i32.
#[allow(clippy::too_many_arguments)]
pub fn softcap_ce(
    dev: &dyn Device,
    logits: DevPtr,
    losses: DevPtr,
    targets: DevPtr,
    dloss: f32,
    n: usize,
    v: usize,
    vp: usize,
) -> Result<()> {
    if v == 0 || vp < v {
        return err(format!("softcap_ce: need 0 < v <= vp, got v = {v}, vp = {vp}"));
    }
    if n == 0 {
        return Ok(());
    }
    let grid = u32::try_from(n).or_else(|_| err(format!("softcap_ce: {n} rows")))?;
    let args = [
        Arg::Ptr(logits),
        Arg::Ptr(losses),
        Arg::Ptr(targets),
        Arg::F32(dloss),
        Arg::I32(as_i32(n, "softcap_ce rows")?),
        Arg::I32(as_i32(v, "softcap_ce vocab")?),
        Arg::I32(as_i32(vp, "softcap_ce padded vocab")?),
    ];
    dev.launch("softcap_ce", Dim3::x(grid), Dim3::x(ROW_BLOCK), 0, &args)
}
