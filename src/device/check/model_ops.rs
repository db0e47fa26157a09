//! Checks of `kernels/model_ops.rs` (`cuda/model_ops.cu`): the value-embedding gate, smear and backout against
//! `cpu::ops`, on a list of shapes each (ragged ones on the emulator, d20's on a GPU).

use super::Scale;
use super::{bf, columns, compare, down_bf, rand, sum_tol, summary};
use crate::config::SMEAR_CHANNELS;
use crate::config::VE_GATE_CHANNELS;
use crate::cpu::ops;
use crate::device::kernels::model_ops;
use crate::device::kernels::model_ops::GateShape;
use crate::device::Device;
use crate::device::Result;
use crate::rng::Rng;
use half::bf16;

/// The gate on the v columns of a fused QKV output, forward (in place) and backward from a strided dv,
/// adding into nonzero dxn and dwg as across micro-steps.
pub(super) fn check_ve_gate(dev: &dyn Device, scale: Scale) -> Result<String> {
    let mut rng = Rng::new(22);
    let mut worst = 0f32;
    // (n, c, h, hkv, d): GQA head counts, head dims below and above a warp, one row, rows past a block.
    for &(n, c, h, hkv, d) in scale.pick(
        &[
            (7, 40, 6, 3, 64),
            (5, 20, 2, 1, 16),
            (1, 12, 2, 2, 128),
            (33, 24, 1, 1, 40),
        ][..],
        &[(16384, 1280, 10, 5, 128)],
    ) {
        worst = worst.max(ve_gate_case(dev, &mut rng, n, c, h, hkv, d)?);
    }
    Ok(summary(worst))
}

fn ve_gate_case(dev: &dyn Device, rng: &mut Rng, n: usize, c: usize, h: usize, hkv: usize, d: usize) -> Result<f32> {
    let what = |k: &str| format!("ve_gate {k} (n={n} c={c} h={h} hkv={hkv} d={d})");
    let k = VE_GATE_CHANNELS;
    let (stride, vcol) = ((h + 2 * hkv) * d, (h + hkv) * d);
    let shape = GateShape {
        n,
        c,
        hkv,
        d,
        k,
        v_stride: stride,
    };
    let (qkv, xn, ve, wg) = (
        rand(rng, n * stride, 1.0),
        rand(rng, n * c, 2.0),
        rand(rng, n * hkv * d, 1.0),
        rand(rng, hkv * k, 0.5),
    );
    let (bqkv, bxn, bve, bwg) = (
        dev.upload_new(&bf(&qkv))?,
        dev.upload_new(&bf(&xn))?,
        dev.upload_new(&bf(&ve))?,
        dev.upload_new(&wg)?,
    );
    let gate = dev.alloc(4 * n * hkv)?;
    model_ops::ve_gate_forward(
        dev,
        bqkv.at::<bf16>(vcol),
        gate.ptr(),
        bxn.ptr(),
        bve.ptr(),
        bwg.ptr(),
        shape,
    )?;
    let mut wv = columns(&qkv, stride, vcol, hkv * d);
    let mut wgate = vec![0f32; n * hkv];
    ops::ve_gate_forward(&mut wv, &mut wgate, &xn, &ve, &wg, n, c, hkv, d);
    let mut worst = compare(
        &what("gate"),
        &dev.download_vec::<f32>(gate.ptr(), n * hkv)?,
        &wgate,
        1e-4,
        1e-6,
    )?;
    let got = down_bf(dev, bqkv.ptr(), n * stride)?;
    worst = worst.max(compare(
        &what("v"),
        &columns(&got, stride, vcol, hkv * d),
        &wv,
        8e-3,
        1e-3,
    )?);
    compare(
        &what("q, k columns (untouched)"),
        &columns(&got, stride, 0, vcol),
        &columns(&qkv, stride, 0, vcol),
        0.0,
        0.0,
    )?;

    let (dqkv, dxn0, dwg0) = (
        rand(rng, n * stride, 1.0),
        rand(rng, n * c, 0.5),
        rand(rng, hkv * k, 0.5),
    );
    let (bdqkv, bdxn, bdwg) = (
        dev.upload_new(&bf(&dqkv))?,
        dev.upload_new(&bf(&dxn0))?,
        dev.upload_new(&dwg0)?,
    );
    let dve = dev.alloc(2 * n * hkv * d)?;
    let scratch = dev.alloc(4 * model_ops::ve_gate_scratch(&shape))?;
    model_ops::ve_gate_backward(
        dev,
        dve.ptr(),
        bdxn.ptr(),
        bdwg.ptr(),
        scratch.ptr(),
        bdqkv.at::<bf16>(vcol),
        gate.ptr(),
        bxn.ptr(),
        bve.ptr(),
        bwg.ptr(),
        shape,
    )?;
    let dv = columns(&dqkv, stride, vcol, hkv * d);
    let (mut wdve, mut wdwg, mut wdxn) = (vec![0f32; n * hkv * d], dwg0, dxn0);
    ops::ve_gate_backward(
        &mut wdve, &mut wdwg, &mut wdxn, &dv, &wgate, &xn, &ve, &wg, n, c, hkv, d,
    );
    worst = worst.max(compare(
        &what("dve"),
        &down_bf(dev, dve.ptr(), n * hkv * d)?,
        &wdve,
        8e-3,
        1e-4,
    )?);
    worst = worst.max(compare(
        &what("dxn"),
        &down_bf(dev, bdxn.ptr(), n * c)?,
        &wdxn,
        1e-2,
        1e-2,
    )?);
    worst = worst.max(compare(
        &what("dwg"),
        &dev.download_vec::<f32>(bdwg.ptr(), hkv * k)?,
        &wdwg,
        1e-3,
        sum_tol(n),
    )?);
    Ok(worst)
}

/// Smear within sequences, forward and backward, the gate-weight and lambda gradients added to nonzero
/// values.
pub(super) fn check_smear(dev: &dyn Device, scale: Scale) -> Result<String> {
    let mut rng = Rng::new(23);
    let mut worst = 0f32;
    // (b, t, c): a sequence of length 1, rows wider than the block.
    for &(b, t, c) in scale.pick(&[(2, 5, 40), (3, 1, 30), (1, 4, 300)][..], &[(16, 1024, 1280)]) {
        worst = worst.max(smear_case(dev, &mut rng, b, t, c)?);
    }
    Ok(summary(worst))
}

fn smear_case(dev: &dyn Device, rng: &mut Rng, b: usize, t: usize, c: usize) -> Result<f32> {
    let what = |k: &str| format!("smear {k} (b={b} t={t} c={c})");
    let (n, k, lambda) = (b * t, SMEAR_CHANNELS, 0.7f32);
    let (x, w) = (rand(rng, n * c, 1.5), rand(rng, k, 0.4));
    let (bx, bw, bl) = (
        dev.upload_new(&bf(&x))?,
        dev.upload_new(&w)?,
        dev.upload_new(&[lambda])?,
    );
    let (out, g) = (dev.alloc(2 * n * c)?, dev.alloc(4 * n)?);
    model_ops::smear_forward(dev, out.ptr(), g.ptr(), bx.ptr(), bw.ptr(), bl.ptr(), n, t, c, k)?;
    let (mut wout, mut wg) = (vec![0f32; n * c], vec![0f32; n]);
    ops::smear_forward(&mut wout, &mut wg, &x, &w, lambda, b, t, c);
    let mut worst = compare(&what("g"), &dev.download_vec::<f32>(g.ptr(), n)?, &wg, 1e-4, 1e-6)?;
    worst = worst.max(compare(
        &what("out"),
        &down_bf(dev, out.ptr(), n * c)?,
        &wout,
        8e-3,
        1e-3,
    )?);

    let (dout, dx0, dw0, dl0) = (rand(rng, n * c, 1.0), rand(rng, n * c, 0.5), rand(rng, k, 0.5), 0.25f32);
    let (bdout, bdx, bdw, bdl) = (
        dev.upload_new(&bf(&dout))?,
        dev.upload_new(&bf(&dx0))?,
        dev.upload_new(&dw0)?,
        dev.upload_new(&[dl0])?,
    );
    let scratch = dev.alloc(4 * model_ops::smear_scratch(n, k))?;
    model_ops::smear_backward(
        dev,
        bdx.ptr(),
        bdw.ptr(),
        bdl.ptr(),
        scratch.ptr(),
        bdout.ptr(),
        bx.ptr(),
        bw.ptr(),
        bl.ptr(),
        n,
        t,
        c,
        k,
    )?;
    let (mut wdx, mut wdw, mut wdl) = (dx0, dw0, dl0);
    ops::smear_backward(&mut wdx, &mut wdw, &mut wdl, &dout, &x, &w, lambda, b, t, c);
    worst = worst.max(compare(
        &what("dx"),
        &down_bf(dev, bdx.ptr(), n * c)?,
        &wdx,
        1e-2,
        1e-2,
    )?);
    worst = worst.max(compare(
        &what("dw"),
        &dev.download_vec::<f32>(bdw.ptr(), k)?,
        &wdw,
        1e-3,
        sum_tol(n),
    )?);
    worst = worst.max(compare(
        &what("dlambda"),
        &dev.download_vec::<f32>(bdl.ptr(), 1)?,
        &[wdl],
        1e-3,
        sum_tol(n),
    )?);
    Ok(worst)
}

pub(super) fn check_backout(dev: &dyn Device, scale: Scale) -> Result<String> {
    let mut rng = Rng::new(24);
    let mut worst = 0f32;
    for &(n, c) in scale.pick(&[(9, 33), (3, 300), (1, 7)][..], &[(16384, 1280)]) {
        // The lambda gradient's tolerance: a sum of n·c products, 1e-3 at the emulator's sizes.
        let dl_tol = scale.pick(1e-3, sum_tol(n * c));
        worst = worst.max(backout_case(dev, &mut rng, n, c, dl_tol)?);
    }
    Ok(summary(worst))
}

fn backout_case(dev: &dyn Device, rng: &mut Rng, n: usize, c: usize, dl_tol: f32) -> Result<f32> {
    let what = |k: &str| format!("backout {k} (n={n} c={c})");
    let (len, lambda) = (n * c, 0.35f32);
    let (x, xm) = (rand(rng, len, 2.0), rand(rng, len, 2.0));
    let (bx, bxm, bl) = (
        dev.upload_new(&bf(&x))?,
        dev.upload_new(&bf(&xm))?,
        dev.upload_new(&[lambda])?,
    );
    let out = dev.alloc(2 * len)?;
    model_ops::backout_forward(dev, out.ptr(), bx.ptr(), bxm.ptr(), bl.ptr(), len)?;
    let mut wout = vec![0f32; len];
    ops::backout_forward(&mut wout, &x, &xm, lambda);
    let mut worst = compare(&what("out"), &down_bf(dev, out.ptr(), len)?, &wout, 8e-3, 1e-3)?;

    let (dout, g0, gm0, dl0) = (rand(rng, len, 1.0), rand(rng, len, 0.5), rand(rng, len, 0.5), -0.5f32);
    let (bdout, bg, bgm, bdl) = (
        dev.upload_new(&bf(&dout))?,
        dev.upload_new(&bf(&g0))?,
        dev.upload_new(&bf(&gm0))?,
        dev.upload_new(&[dl0])?,
    );
    let scratch = dev.alloc(4 * model_ops::backout_scratch(n))?;
    model_ops::backout_backward(
        dev,
        bg.ptr(),
        bgm.ptr(),
        bdl.ptr(),
        scratch.ptr(),
        bdout.ptr(),
        bxm.ptr(),
        bl.ptr(),
        n,
        c,
    )?;
    let (mut wdx, mut wdm) = (g0, gm0);
    let wdl = dl0 + ops::backout_backward(&mut wdx, &mut wdm, &dout, &xm, lambda);
    worst = worst.max(compare(&what("dx"), &down_bf(dev, bg.ptr(), len)?, &wdx, 8e-3, 1e-3)?);
    worst = worst.max(compare(
        &what("dx_mid"),
        &down_bf(dev, bgm.ptr(), len)?,
        &wdm,
        8e-3,
        1e-3,
    )?);
    worst = worst.max(compare(
        &what("dlambda"),
        &dev.download_vec::<f32>(bdl.ptr(), 1)?,
        &[wdl],
        1e-4,
        dl_tol,
    )?);
    Ok(worst)
}
