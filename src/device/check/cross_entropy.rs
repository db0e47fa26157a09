//! Checks of `kernels/cross_entropy.rs` (`cuda/cross_entropy.cu`): softcap + cross-entropy and its in-place
//! gradient against `cpu::ops`. Small shapes: a padded vocabulary (v < vp), one row of five logits, a vocabulary
//! that is not a multiple of the block; every third target is ignored (-1).

use super::Scale;
use super::{bf, compare, down_bf, rand, summary};
use crate::cpu::ops;
use crate::device::kernels::cross_entropy;
use crate::device::Device;
use crate::device::Result;
use crate::rng::Rng;

pub(super) fn check_softcap_ce(dev: &dyn Device, s: Scale) -> Result<String> {
    let mut rng = Rng::new(15);
    let mut worst = 0f32;
    for &(n, v, vp) in s.pick(
        &[(6, 500, 512), (7, 300, 320), (1, 5, 5), (4, 1000, 1024)][..],
        &[(8192, 32768, 32768)],
    ) {
        let shape = format!("{n}x{v}/{vp}");
        let logits = rand(&mut rng, n * vp, 20.0);
        let targets: Vec<i32> = (0..n)
            .map(|t| if t % 3 == 2 { -1 } else { rng.below(v as u64) as i32 })
            .collect();
        let dloss = 1.0 / n as f32;
        let (bl, bt, bloss) = (
            dev.upload_new(&bf(&logits))?,
            dev.upload_new(&targets)?,
            dev.alloc(4 * n)?,
        );
        let (mut capped, mut wloss) = (logits.clone(), vec![0f32; n]);
        ops::softcap_ce_forward(&mut wloss, &mut capped, &targets, v, vp);

        // Forward only (dloss 0): the logits are left as they were.
        cross_entropy::softcap_ce(dev, bl.ptr(), bloss.ptr(), bt.ptr(), 0.0, n, v, vp)?;
        worst = worst.max(compare(
            &format!("softcap_ce forward-only loss {shape}"),
            &dev.download_vec::<f32>(bloss.ptr(), n)?,
            &wloss,
            1e-4,
            1e-5,
        )?);
        compare(
            &format!("softcap_ce forward-only logits {shape}"),
            &down_bf(dev, bl.ptr(), n * vp)?,
            &logits,
            0.0,
            0.0,
        )?;

        // Fused forward and backward: the gradient overwrites the logits.
        cross_entropy::softcap_ce(dev, bl.ptr(), bloss.ptr(), bt.ptr(), dloss, n, v, vp)?;
        worst = worst.max(compare(
            &format!("softcap_ce loss {shape}"),
            &dev.download_vec::<f32>(bloss.ptr(), n)?,
            &wloss,
            1e-4,
            1e-5,
        )?);
        let mut wd = vec![0f32; n * vp];
        ops::softcap_ce_backward(&mut wd, &capped, &targets, &vec![dloss; n], v, vp);
        worst = worst.max(compare(
            &format!("softcap_ce dlogits {shape}"),
            &down_bf(dev, bl.ptr(), n * vp)?,
            &wd,
            1e-2,
            (1e-3 * dloss / v as f32).min(1e-6),
        )?);
    }
    Ok(summary(worst))
}
