//! Checks of `kernels/adamw.rs` (`cuda/adamw.cu`): the AdamW step against `optim::adamw`.

use super::Scale;
use super::{compare, down_bf, rand, round, summary};
use crate::device::kernels::adamw;
use crate::device::Device;
use crate::device::Result;
use crate::optim::adamw::adamw_update;
use crate::optim::adamw::AdamHyper;
use crate::rng::Rng;

pub(super) fn check_adamw(dev: &dyn Device, s: Scale) -> Result<String> {
    let n = if s == Scale::Small { 1003 } else { 1 << 24 };
    let mut rng = Rng::new(17);
    let mut p = rand(&mut rng, n, 1.0);
    let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
    let (bp, bm, bv, bpb) = (
        dev.upload_new(&p)?,
        dev.upload_new(&m)?,
        dev.upload_new(&v)?,
        dev.alloc(2 * n)?,
    );
    for step in 1..=2 {
        let g = rand(&mut rng, n, 0.5);
        let bg = dev.upload_new(&g)?;
        let h = AdamHyper {
            lr: 0.02,
            beta1: 0.8,
            beta2: 0.95,
            eps: 1e-10,
            weight_decay: 0.05,
            step,
        };
        adamw::adamw_step(
            dev,
            bp.ptr(),
            Some(bpb.ptr()),
            bg.ptr(),
            bm.ptr(),
            bv.ptr(),
            n,
            &h,
        )?;
        adamw_update(&mut p, &g, &mut m, &mut v, &h);
    }
    let gp: Vec<f32> = dev.download_vec(bp.ptr(), n)?;
    let w = compare("adamw params", &gp, &p, 1e-5, 1e-7)?;
    compare(
        "adamw bf16 copy",
        &down_bf(dev, bpb.ptr(), n)?,
        &round(&gp),
        0.0,
        0.0,
    )?;
    Ok(summary(w))
}
