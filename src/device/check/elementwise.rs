//! Checks of `kernels/elementwise.rs` (`cuda/elementwise.cu`): ReLU², casts and adds against `cpu::ops` and bf16
//! rounding. Small sizes are ragged (one element, a tail shorter than the 8-element vector, a multiple of 8, odd
//! lengths), and each is also run on views one element in, which are not 16-byte aligned and take the scalar path.

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

const SMALL: &[usize] = &[1, 7, 8, 1000, 3001, 4099];
const LARGE: &[usize] = &[1 << 24];

pub(super) fn check_relu2(dev: &dyn Device, s: Scale) -> Result<String> {
    let mut rng = Rng::new(11);
    // The emulator computes what the reference does, bit for bit; FMA contraction on the GPU may change the
    // backward's last bit before rounding.
    let (rel, abs) = s.pick((0.0, 0.0), (8e-3, 1e-30));
    let mut worst = 0f32;
    for &n in s.pick(SMALL, LARGE) {
        let (x, dout) = (rand(&mut rng, n, 2.0), rand(&mut rng, n, 1.0));
        let (bx, bd, out) = (dev.upload_new(&bf(&x))?, dev.upload_new(&bf(&dout))?, dev.alloc(2 * n)?);
        // The whole buffer, then (n > 1) the views one element in.
        for off in [0, 1].into_iter().filter(|&k| k < n.min(2)) {
            let m = n - off;
            let (o, xp, dp) = (out.at::<bf16>(off), bx.at::<bf16>(off), bd.at::<bf16>(off));
            elementwise::relu2_forward(dev, o, xp, m)?;
            let mut want = vec![0f32; m];
            ops::relu2_forward(&mut want, &x[off..]);
            worst = worst.max(compare(
                &format!("relu2_forward n={n} offset {off}"),
                &down_bf(dev, o, m)?,
                &round(&want),
                0.0,
                0.0,
            )?);
            elementwise::relu2_backward(dev, o, dp, xp, m)?;
            let mut want = vec![0f32; m];
            ops::relu2_backward(&mut want, &dout[off..], &x[off..]);
            worst = worst.max(compare(
                &format!("relu2_backward n={n} offset {off}"),
                &down_bf(dev, o, m)?,
                &round(&want),
                rel,
                abs,
            )?);
        }
    }
    Ok(summary(worst))
}

pub(super) fn check_casts(dev: &dyn Device, s: Scale) -> Result<String> {
    let mut rng = Rng::new(12);
    for &n in s.pick(&[777, 2049][..], LARGE) {
        let x: Vec<f32> = (0..n).map(|_| rng.uniform(-500.0, 500.0)).collect();
        let (bx, b, f) = (dev.upload_new(&x)?, dev.alloc(2 * n)?, dev.alloc(4 * n)?);
        elementwise::cast_f32_to_bf16(dev, b.ptr(), bx.ptr(), n)?;
        let got: Vec<bf16> = dev.download_vec(b.ptr(), n)?;
        let want = reference::cast_f32_to_bf16(&x);
        if let Some(i) = (0..n).find(|&i| got[i] != want[i]) {
            return err(format!(
                "cast_f32_to_bf16[{i}] (n={n}): {} -> {}, expected {}",
                x[i], got[i], want[i]
            ));
        }
        elementwise::cast_bf16_to_f32(dev, f.ptr(), b.ptr(), n)?;
        let back: Vec<f32> = dev.download_vec(f.ptr(), n)?;
        compare(
            &format!("cast_bf16_to_f32 n={n}"),
            &back,
            &reference::cast_bf16_to_f32(&got),
            0.0,
            0.0,
        )?;
    }
    Ok("ok (exact)".into())
}

fn first_mismatch(what: &str, got: &[bf16], want: &[bf16]) -> Result<()> {
    if got.len() != want.len() {
        return err(format!("{what}: {} values, expected {}", got.len(), want.len()));
    }
    match (0..got.len()).find(|&i| got[i] != want[i]) {
        Some(i) => err(format!("{what}[{i}]: got {}, expected {}", got[i], want[i])),
        None => Ok(()),
    }
}

/// `add_bf16` (out += a) and `add_f32_bf16` (out = a + b, into a separate buffer and in place on b), on the
/// whole buffers and on views one element in (the element before the view must stay as it was).
pub(super) fn check_adds(dev: &dyn Device, s: Scale) -> Result<String> {
    let mut rng = Rng::new(19);
    for &n in s.pick(&[1, 7, 8, 1000, 2051, 4099][..], LARGE) {
        let o = bf(&rand(&mut rng, n, 3.0));
        let b = bf(&rand(&mut rng, n, 3.0));
        // a is not bf16-representable, so the rounding of the sum is exercised.
        let a: Vec<f32> = (0..n).map(|_| rng.uniform(-3.0, 3.0)).collect();
        let (bo, bb, ba, out) = (
            dev.upload_new(&o)?,
            dev.upload_new(&b)?,
            dev.upload_new(&a)?,
            dev.alloc(2 * n)?,
        );
        for off in [0, 1].into_iter().filter(|&k| k < n.min(2)) {
            let m = n - off;
            let what = |k: &str| format!("{k} n={n} offset {off}");
            let whole = |p| -> Result<Vec<bf16>> { dev.download_vec(p, n) };
            dev.upload(bo.ptr(), bytemuck::cast_slice(&o))?;
            elementwise::add_bf16(dev, bo.at::<bf16>(off), bb.at::<bf16>(off), m)?;
            let got = whole(bo.ptr())?;
            first_mismatch(&what("add_bf16 (before the view)"), &got[..off], &o[..off])?;
            first_mismatch(
                &what("add_bf16"),
                &got[off..],
                &reference::add_bf16(&o[off..], &b[off..]),
            )?;

            let want = reference::add_f32_bf16(&a[off..], &b[off..]);
            elementwise::add_f32_bf16(dev, out.at::<bf16>(off), ba.at::<f32>(off), bb.at::<bf16>(off), m)?;
            first_mismatch(&what("add_f32_bf16"), &whole(out.ptr())?[off..], &want)?;
            // In place on b (out == b).
            dev.upload(bb.ptr(), bytemuck::cast_slice(&b))?;
            elementwise::add_f32_bf16(dev, bb.at::<bf16>(off), ba.at::<f32>(off), bb.at::<bf16>(off), m)?;
            let got = whole(bb.ptr())?;
            first_mismatch(&what("add_f32_bf16 aliased (before the view)"), &got[..off], &b[..off])?;
            first_mismatch(&what("add_f32_bf16 aliased"), &got[off..], &want)?;
            dev.upload(bb.ptr(), bytemuck::cast_slice(&b))?;
        }
    }
    Ok("ok (exact)".into())
}
