//! `cuda/adamw.cu`: the AdamW step over fp32 master weights, writing the bf16 copy.

use super::{blocks_for, ELEMENTWISE_BLOCK};
use crate::device::{Arg, DevPtr, Device, Dim3, Result};
use crate::optim::adamw::AdamHyper;

/// One AdamW step over `n` elements: `p` (f32 master), `g` (f32 grads), `m`, `v` (f32 state) updated in
/// place, and `p_bf16` (the bf16 copy, or `None`) rewritten. Same math as `optim::adamw::adamw_update`.
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    dev: &dyn Device,
    p: DevPtr,
    p_bf16: Option<DevPtr>,
    g: DevPtr,
    m: DevPtr,
    v: DevPtr,
    n: usize,
    h: &AdamHyper,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let t = h.step as f32;
    let decay = 1.0 - h.lr * h.weight_decay;
    let step_size = h.lr / (1.0 - h.beta1.powf(t));
    let bias2 = 1.0 - h.beta2.powf(t);
    let args = [
        Arg::Ptr(p),
        Arg::Ptr(p_bf16.unwrap_or(DevPtr(0))),
        Arg::Ptr(g),
        Arg::Ptr(m),
        Arg::Ptr(v),
        Arg::I64(n as i64),
        Arg::F32(decay),
        Arg::F32(1.0 - h.beta1),
        Arg::F32(1.0 - h.beta2),
        Arg::F32(step_size),
        Arg::F32(bias2),
        Arg::F32(h.eps),
    ];
    dev.launch(
        "adamw_step",
        Dim3::x(blocks_for(n, ELEMENTWISE_BLOCK, "adamw_step")?),
        Dim3::x(ELEMENTWISE_BLOCK),
        0,
        &args,
    )
}
