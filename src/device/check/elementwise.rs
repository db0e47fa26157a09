//! Checks of `kernels/elementwise.rs` (`cuda/elementwise.cu`): ReLU², casts and adds against `cpu::ops` and bf16 rounding.

use super::Scale;
use super::{bf, compare, down_bf, rand, round, summary};
use crate::cpu::ops;
use crate::device::err;
use crate::device::kernels::elementwise;
use crate::device::reference;
use crate::device::Device;
use crate::device::Result;
use crate::rng::Rng;
use half::bf16;

pub(super) fn check_relu2(dev: &dyn Device, s: Scale) -> Result<String> {
    let n = if s == Scale::Small { 3001 } else { 1 << 24 };
    let mut rng = Rng::new(11);
    let (x, dout) = (rand(&mut rng, n, 2.0), rand(&mut rng, n, 1.0));
    let (bx, bd, out) = (
        dev.upload_new(&bf(&x))?,
        dev.upload_new(&bf(&dout))?,
        dev.alloc(2 * n)?,
    );
    elementwise::relu2_forward(dev, out.ptr(), bx.ptr(), n)?;
    let mut want = vec![0f32; n];
    ops::relu2_forward(&mut want, &x);
    let w1 = compare(
        "relu2_forward",
        &down_bf(dev, out.ptr(), n)?,
        &round(&want),
        0.0,
        0.0,
    )?;
    elementwise::relu2_backward(dev, out.ptr(), bd.ptr(), bx.ptr(), n)?;
    let mut want = vec![0f32; n];
    ops::relu2_backward(&mut want, &dout, &x);
    // FMA contraction on the GPU may change the last bit before rounding.
    let w2 = compare(
        "relu2_backward",
        &down_bf(dev, out.ptr(), n)?,
        &round(&want),
        8e-3,
        1e-30,
    )?;
    Ok(summary(w1.max(w2)))
}

pub(super) fn check_casts(dev: &dyn Device, s: Scale) -> Result<String> {
    let n = if s == Scale::Small { 2049 } else { 1 << 24 };
    let mut rng = Rng::new(12);
    let x: Vec<f32> = (0..n).map(|_| rng.uniform(-500.0, 500.0)).collect();
    let (bx, b, f) = (dev.upload_new(&x)?, dev.alloc(2 * n)?, dev.alloc(4 * n)?);
    elementwise::cast_f32_to_bf16(dev, b.ptr(), bx.ptr(), n)?;
    let got: Vec<bf16> = dev.download_vec(b.ptr(), n)?;
    let want = reference::cast_f32_to_bf16(&x);
    if let Some(i) = (0..n).find(|&i| got[i] != want[i]) {
        return err(format!(
            "cast_f32_to_bf16[{i}]: {} -> {}, expected {}",
            x[i], got[i], want[i]
        ));
    }
    elementwise::cast_bf16_to_f32(dev, f.ptr(), b.ptr(), n)?;
    let back: Vec<f32> = dev.download_vec(f.ptr(), n)?;
    compare(
        "cast_bf16_to_f32",
        &back,
        &reference::cast_bf16_to_f32(&got),
        0.0,
        0.0,
    )?;
    Ok("ok (exact)".into())
}

pub(super) fn check_adds(dev: &dyn Device, s: Scale) -> Result<String> {
    let n = if s == Scale::Small { 2051 } else { 1 << 24 };
    let mut rng = Rng::new(19);
    let o = bf(&rand(&mut rng, n, 3.0));
    let b = bf(&rand(&mut rng, n, 3.0));
    let a: Vec<f32> = (0..n).map(|_| rng.uniform(-3.0, 3.0)).collect();
    let (bo, bb, ba) = (
        dev.upload_new(&o)?,
        dev.upload_new(&b)?,
        dev.upload_new(&a)?,
    );
    let first_mismatch = |what: &str, got: &[bf16], want: &[bf16]| -> Result<()> {
        match (0..n).find(|&i| got[i] != want[i]) {
            Some(i) => err(format!("{what}[{i}]: got {}, expected {}", got[i], want[i])),
            None => Ok(()),
        }
    };
    elementwise::add_bf16(dev, bo.ptr(), bb.ptr(), n)?;
    first_mismatch(
        "add_bf16",
        &dev.download_vec(bo.ptr(), n)?,
        &reference::add_bf16(&o, &b),
    )?;
    // In place on b (out == b).
    elementwise::add_f32_bf16(dev, bb.ptr(), ba.ptr(), bb.ptr(), n)?;
    first_mismatch(
        "add_f32_bf16",
        &dev.download_vec(bb.ptr(), n)?,
        &reference::add_f32_bf16(&a, &b),
    )?;
    Ok("ok (exact)".into())
}
