//! Checks of `kernels/adamw.rs` (`cuda/adamw.cu`): a few AdamW steps against `optim::adamw` (parameters, both
//! moments, the bf16 copy of the parameters), at sizes that are not multiples of the block.

use super::Scale;
use super::{compare, down_bf, rand, round, summary};
use crate::device::kernels::adamw;
use crate::device::Device;
use crate::device::Result;
use crate::optim::adamw::adamw_update;
use crate::optim::adamw::AdamHyper;
use crate::rng::Rng;

pub(super) fn check_adamw(dev: &dyn Device, s: Scale) -> Result<String> {
    let mut rng = Rng::new(17);
    let mut worst = 0f32;
    // (size, steps, learning rate, weight decay)
    for &(n, steps, lr, weight_decay) in s.pick(
        &[(1003, 2, 0.02, 0.05), (1001, 3, 0.01, 0.1)][..],
        &[(1 << 24, 2, 0.02, 0.05)],
    ) {
        let mut p = rand(&mut rng, n, 1.0);
        let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
        let (bp, bm, bv, bpb) = (
            dev.upload_new(&p)?,
            dev.upload_new(&m)?,
            dev.upload_new(&v)?,
            dev.alloc(2 * n)?,
        );
        for step in 1..=steps {
            let g = rand(&mut rng, n, 0.5);
            let bg = dev.upload_new(&g)?;
            let h = AdamHyper {
                lr,
                beta1: 0.8,
                beta2: 0.95,
                eps: 1e-10,
                weight_decay,
                step,
            };
            adamw::adamw_step(dev, bp.ptr(), Some(bpb.ptr()), bg.ptr(), bm.ptr(), bv.ptr(), n, &h)?;
            adamw_update(&mut p, &g, &mut m, &mut v, &h);
        }
        let gp: Vec<f32> = dev.download_vec(bp.ptr(), n)?;
        worst = worst.max(compare(&format!("adamw params n={n}"), &gp, &p, 1e-5, 1e-7)?);
        worst = worst.max(compare(
            &format!("adamw exp_avg n={n}"),
            &dev.download_vec::<f32>(bm.ptr(), n)?,
            &m,
            1e-5,
            1e-8,
        )?);
        worst = worst.max(compare(
            &format!("adamw exp_avg_sq n={n}"),
            &dev.download_vec::<f32>(bv.ptr(), n)?,
            &v,
            1e-5,
            1e-10,
        )?);
        compare(
            &format!("adamw bf16 copy n={n}"),
            &down_bf(dev, bpb.ptr(), n)?,
            &round(&gp),
            0.0,
            0.0,
        )?;
    }
    Ok(summary(worst))
}
