//! Checks of `kernels/rmsnorm.rs` (`cuda/rmsnorm.cu`) against `cpu::ops`: RMSNorm forward and backward, the
//! residual mix (forward fused with the norm, backward), and the two fused backward kernels. Small shapes
//! are ragged (one row, widths that are not multiples of the block or of 8); the large one is d20's.

use super::Scale;
use super::{bf, compare, down_bf, rand, round, summary};
use crate::cpu::ops;
use crate::device::kernels::rmsnorm;
use crate::device::Device;
use crate::device::Result;
use crate::rng::Rng;

pub(super) fn check_rmsnorm(dev: &dyn Device, s: Scale) -> Result<String> {
    let mut rng = Rng::new(14);
    let mut worst = 0f32;
    for &(n, c) in s.pick(
        &[(1, 32), (5, 100), (3, 768), (5, 200), (1, 40), (9, 300)][..],
        &[(16384, 1280)],
    ) {
        let (x, x0, dy, dx0) = (
            rand(&mut rng, n * c, 2.0),
            rand(&mut rng, n * c, 2.0),
            rand(&mut rng, n * c, 1.0),
            rand(&mut rng, n * c, 0.5),
        );
        let lambdas = [0.75f32, 0.3];
        let (bx, bx0, bdy, bl) = (
            dev.upload_new(&bf(&x))?,
            dev.upload_new(&bf(&x0))?,
            dev.upload_new(&bf(&dy))?,
            dev.upload_new(&lambdas)?,
        );
        let (y, xmix, rstd, bdx) = (
            dev.alloc(2 * n * c)?,
            dev.alloc(2 * n * c)?,
            dev.alloc(4 * n)?,
            dev.upload_new(&bf(&dx0))?,
        );
        let (mut wy, mut wr) = (vec![0f32; n * c], vec![0f32; n]);

        rmsnorm::mix_rmsnorm_forward(
            dev,
            xmix.ptr(),
            y.ptr(),
            rstd.ptr(),
            bx.ptr(),
            bx0.ptr(),
            bl.ptr(),
            n,
            c,
        )?;
        let mut wmix = vec![0f32; n * c];
        ops::lambda_mix_forward(&mut wmix, &x, &x0, lambdas[0], lambdas[1]);
        let wmix = round(&wmix);
        // The mix is one fp32 multiply-add per element, rounded once: exact.
        worst = worst.max(compare(
            "mix_rmsnorm xmix",
            &down_bf(dev, xmix.ptr(), n * c)?,
            &wmix,
            0.0,
            0.0,
        )?);
        ops::rmsnorm_forward(&mut wy, &mut wr, &wmix, c);
        worst = worst.max(compare(
            "mix_rmsnorm y",
            &down_bf(dev, y.ptr(), n * c)?,
            &wy,
            8e-3,
            1e-6,
        )?);

        rmsnorm::rmsnorm_forward(dev, y.ptr(), rstd.ptr(), bx.ptr(), n, c)?;
        ops::rmsnorm_forward(&mut wy, &mut wr, &x, c);
        worst = worst.max(compare("rmsnorm y", &down_bf(dev, y.ptr(), n * c)?, &wy, 8e-3, 1e-6)?);
        worst = worst.max(compare(
            "rmsnorm rstd",
            &dev.download_vec::<f32>(rstd.ptr(), n)?,
            &wr,
            1e-5,
            0.0,
        )?);

        rmsnorm::rmsnorm_backward(dev, bdx.ptr(), bdy.ptr(), bx.ptr(), rstd.ptr(), n, c)?;
        let mut wdx = dx0.clone();
        ops::rmsnorm_backward(&mut wdx, &dy, &x, &wr, c);
        worst = worst.max(compare(
            "rmsnorm dx",
            &down_bf(dev, bdx.ptr(), n * c)?,
            &wdx,
            8e-3,
            2e-3,
        )?);

        // mix backward, in place on dy as the model uses it
        let (bdx0, bdl) = (dev.upload_new(&dx0)?, dev.upload_new(&[0f32, 0.0])?);
        let scratch = dev.alloc(4 * rmsnorm::mix_backward_scratch(n))?;
        rmsnorm::mix_backward(
            dev,
            bdy.ptr(),
            bdx0.ptr(),
            bdl.ptr(),
            scratch.ptr(),
            bdy.ptr(),
            bx.ptr(),
            bx0.ptr(),
            bl.ptr(),
            n,
            c,
        )?;
        let (mut wdx, mut wdx0) = (vec![0f32; n * c], dx0.clone());
        let (dr, dz) = ops::lambda_mix_backward(&mut wdx, &mut wdx0, &dy, &x, &x0, lambdas[0], lambdas[1]);
        worst = worst.max(compare(
            "mix_backward dx",
            &down_bf(dev, bdy.ptr(), n * c)?,
            &wdx,
            8e-3,
            1e-30,
        )?);
        worst = worst.max(compare(
            "mix_backward dx0",
            &dev.download_vec::<f32>(bdx0.ptr(), n * c)?,
            &wdx0,
            1e-6,
            1e-6,
        )?);
        let tol = 1e-5 * (n * c) as f32;
        worst = worst.max(compare(
            "mix_backward dlambdas",
            &dev.download_vec::<f32>(bdl.ptr(), 2)?,
            &[dr, dz],
            1e-5,
            tol,
        )?);
    }
    Ok(summary(worst))
}

/// The norm's backward fused with the residual mix's: against `rmsnorm_backward` into the residual
/// gradient, then `lambda_mix_backward`, in fp32; dx written over the residual gradient (in place, as the
/// model runs it), dx0 and the two lambda gradients added to nonzero values.
pub(super) fn check_rmsnorm_mix_backward(dev: &dyn Device, s: Scale) -> Result<String> {
    let mut rng = Rng::new(26);
    let mut worst = 0f32;
    for &(n, c) in s.pick(&[(1, 40), (7, 300)][..], &[(16384, 1280)]) {
        let (x, x0, dres, dy, dx0) = (
            rand(&mut rng, n * c, 2.0),
            rand(&mut rng, n * c, 2.0),
            rand(&mut rng, n * c, 1.0),
            rand(&mut rng, n * c, 1.0),
            rand(&mut rng, n * c, 0.5),
        );
        let (lambdas, dl0) = ([0.8f32, -0.4], [0.125f32, -2.0]);
        let mut xmix = vec![0f32; n * c];
        ops::lambda_mix_forward(&mut xmix, &x, &x0, lambdas[0], lambdas[1]);
        let xmix = round(&xmix);
        let (mut y, mut rstd) = (vec![0f32; n * c], vec![0f32; n]);
        ops::rmsnorm_forward(&mut y, &mut rstd, &xmix, c);
        let (bx, bx0, bmix, bdy, bres) = (
            dev.upload_new(&bf(&x))?,
            dev.upload_new(&bf(&x0))?,
            dev.upload_new(&bf(&xmix))?,
            dev.upload_new(&bf(&dy))?,
            dev.upload_new(&bf(&dres))?,
        );
        let (bl, brstd, bdx0, bdl) = (
            dev.upload_new(&lambdas)?,
            dev.upload_new(&rstd)?,
            dev.upload_new(&dx0)?,
            dev.upload_new(&dl0)?,
        );
        let scratch = dev.alloc(4 * rmsnorm::mix_backward_scratch(n))?;
        rmsnorm::rmsnorm_mix_backward(
            dev,
            bres.ptr(),
            bdx0.ptr(),
            bdl.ptr(),
            scratch.ptr(),
            bres.ptr(),
            bdy.ptr(),
            bmix.ptr(),
            brstd.ptr(),
            bx.ptr(),
            bx0.ptr(),
            bl.ptr(),
            n,
            c,
        )?;
        let mut g = dres;
        ops::rmsnorm_backward(&mut g, &dy, &xmix, &rstd, c);
        let (mut wdx, mut wdx0) = (vec![0f32; n * c], dx0);
        let (dr, dz) = ops::lambda_mix_backward(&mut wdx, &mut wdx0, &g, &x, &x0, lambdas[0], lambdas[1]);
        worst = worst.max(compare(
            "rmsnorm_mix_backward dx",
            &down_bf(dev, bres.ptr(), n * c)?,
            &wdx,
            8e-3,
            1e-4,
        )?);
        worst = worst.max(compare(
            "rmsnorm_mix_backward dx0",
            &dev.download_vec::<f32>(bdx0.ptr(), n * c)?,
            &wdx0,
            1e-5,
            1e-5,
        )?);
        worst = worst.max(compare(
            "rmsnorm_mix_backward dlambdas",
            &dev.download_vec::<f32>(bdl.ptr(), 2)?,
            &[dl0[0] + dr, dl0[1] + dz],
            1e-4,
            1e-5 * (n * c) as f32,
        )?);
    }
    Ok(summary(worst))
}

/// The final norm's backward fused with the backout's: against `rmsnorm_backward` then `backout_backward`
/// in fp32; dx and dx_mid written over garbage, the lambda gradient added to a nonzero value.
pub(super) fn check_rmsnorm_backout_backward(dev: &dyn Device, s: Scale) -> Result<String> {
    let mut rng = Rng::new(27);
    let mut worst = 0f32;
    for &(n, c) in s.pick(&[(1, 24), (5, 260)][..], &[(16384, 1280)]) {
        let (xf, x_mid, dy) = (
            rand(&mut rng, n * c, 2.0),
            rand(&mut rng, n * c, 2.0),
            rand(&mut rng, n * c, 1.0),
        );
        let (lambda, dl0) = (0.3f32, 0.5f32);
        let (mut y, mut rstd) = (vec![0f32; n * c], vec![0f32; n]);
        ops::rmsnorm_forward(&mut y, &mut rstd, &xf, c);
        let (bxf, bmid, bdy, bdx, bdmid) = (
            dev.upload_new(&bf(&xf))?,
            dev.upload_new(&bf(&x_mid))?,
            dev.upload_new(&bf(&dy))?,
            dev.upload_new(&bf(&vec![7.0; n * c]))?,
            dev.upload_new(&bf(&vec![-3.0; n * c]))?,
        );
        let (bl, brstd, bdl) = (
            dev.upload_new(&[lambda])?,
            dev.upload_new(&rstd)?,
            dev.upload_new(&[dl0])?,
        );
        let scratch = dev.alloc(4 * rmsnorm::mix_backward_scratch(n))?;
        rmsnorm::rmsnorm_backout_backward(
            dev,
            bdx.ptr(),
            bdmid.ptr(),
            bdl.ptr(),
            scratch.ptr(),
            bdy.ptr(),
            bxf.ptr(),
            brstd.ptr(),
            bmid.ptr(),
            bl.ptr(),
            n,
            c,
        )?;
        let mut g = vec![0f32; n * c];
        ops::rmsnorm_backward(&mut g, &dy, &xf, &rstd, c);
        let (mut wdx, mut wmid) = (vec![0f32; n * c], vec![0f32; n * c]);
        let dl = ops::backout_backward(&mut wdx, &mut wmid, &g, &x_mid, lambda);
        worst = worst.max(compare(
            "rmsnorm_backout_backward dx",
            &down_bf(dev, bdx.ptr(), n * c)?,
            &wdx,
            8e-3,
            1e-4,
        )?);
        worst = worst.max(compare(
            "rmsnorm_backout_backward dx_mid",
            &down_bf(dev, bdmid.ptr(), n * c)?,
            &wmid,
            8e-3,
            1e-4,
        )?);
        worst = worst.max(compare(
            "rmsnorm_backout_backward dlambda",
            &dev.download_vec::<f32>(bdl.ptr(), 1)?,
            &[dl0 + dl],
            1e-4,
            1e-5 * (n * c) as f32,
        )?);
    }
    Ok(summary(worst))
}
