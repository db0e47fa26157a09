//! Checks of `kernels/attention.rs` (`cuda/attention.cu`): flash and naive attention, forward and backward,
//! against `cpu::ops`.

use super::Scale;
use super::{bf, compare, down_bf, peak, rand, round, summary};
use crate::cpu::ops;
use crate::device::kernels::attention;
use crate::device::kernels::attention::AttnImpl;
use crate::device::kernels::attention::AttnShape;
use crate::device::Device;
use crate::device::Result;
use crate::rng::Rng;

fn attn(b: usize, t: usize, h: usize, hkv: usize, d: usize, window: usize) -> AttnShape {
    AttnShape {
        b,
        t,
        h,
        hkv,
        d,
        window,
    }
}

/// Attention shapes. Small: ragged T (not a multiple of the 64-row tile), windows 0, small, larger than a
/// tile and ≥ T, GQA groups 1, 2 and 4, head_dim 64 and 128. Large: the training shape (d128, whole tiles)
/// and a ragged one.
fn attention_shapes(s: Scale) -> Vec<AttnShape> {
    if s == Scale::Small {
        vec![
            attn(1, 80, 4, 2, 64, 30),
            attn(1, 70, 2, 1, 128, 40),
            attn(1, 37, 2, 1, 64, usize::MAX), // full causal, group 2, one ragged tile
            attn(2, 80, 4, 1, 64, 5),          // small window, group 4, two tiles (second ragged)
            attn(1, 70, 2, 2, 128, 0),         // window 0: each query sees itself only
            attn(1, 80, 2, 1, 128, 70),        // window between a tile and T: tile skipping edge
            attn(1, 16, 4, 2, 64, 16),         // window = T, tiny T
            attn(1, 65, 1, 1, 64, 64),         // one query past the tile, window = tile
            attn(2, 50, 8, 2, 128, 3),         // group 4 at head_dim 128, two batches
            attn(1, 64, 2, 2, 64, 63),         // T exactly one tile, window = T - 1
            attn(1, 1, 2, 1, 128, 0),          // a single token
            attn(1, 130, 1, 1, 64, 127),       // unmasked tiles (below the diagonal, inside the window)
            attn(1, 100, 1, 1, 128, usize::MAX), // the same at head_dim 128 (32-query dK/dV steps)
        ]
    } else {
        vec![attn(2, 1024, 8, 4, 128, 384), attn(2, 1000, 8, 4, 64, 256)]
    }
}

pub(super) fn check_attention_flash(dev: &dyn Device, s: Scale) -> Result<String> {
    check_attention(dev, s, AttnImpl::Flash)
}

pub(super) fn check_attention_naive(dev: &dyn Device, s: Scale) -> Result<String> {
    check_attention(dev, s, AttnImpl::Naive)
}

/// Forward against the CPU, then backward from the device's own `out` and `lse` against the CPU backward
/// given the same two. Errors are measured against the tensor's largest magnitude (at least 0.01), not
/// each element's: the flash kernels round probabilities to bf16 in the PV products, and gradients
/// cancel to near zero.
pub(super) fn check_attention(dev: &dyn Device, scale: Scale, imp: AttnImpl) -> Result<String> {
    let mut rng = Rng::new(20);
    let mut worst = 0f32;
    for s in attention_shapes(scale) {
        let what = format!(
            "attention {imp:?} b={} t={} h={} hkv={} d={} window={}",
            s.b, s.t, s.h, s.hkv, s.d, s.window
        );
        let (nq, nk, nl) = (s.b * s.t * s.h * s.d, s.b * s.t * s.hkv * s.d, s.b * s.h * s.t);
        // q larger than k: peaked and flat rows both occur.
        let (q, k, v, dout) = (
            rand(&mut rng, nq, 2.0),
            rand(&mut rng, nk, 1.0),
            rand(&mut rng, nk, 1.0),
            rand(&mut rng, nq, 1.0),
        );
        let (bq, bk, bv, bdo) = (
            dev.upload_new(&bf(&q))?,
            dev.upload_new(&bf(&k))?,
            dev.upload_new(&bf(&v))?,
            dev.upload_new(&bf(&dout))?,
        );
        let (out, lse) = (dev.alloc(2 * nq)?, dev.alloc(4 * nl)?);
        attention::attention_forward(dev, imp, out.ptr(), lse.ptr(), bq.ptr(), bk.ptr(), bv.ptr(), s)?;
        let (mut wo, mut wl) = (vec![0f32; nq], vec![0f32; nl]);
        ops::attention_forward(&mut wo, &mut wl, &q, &k, &v, s);
        // The log-sum-exp is fp32 on both sides: against the reference on the same bf16-rounded inputs it
        // agrees to fp32 rounding (the flash kernel's exp2 and its tile-by-tile rescaling), not to bf16.
        let mut wl_exact = vec![0f32; nl];
        ops::attention_forward(
            &mut vec![0f32; nq],
            &mut wl_exact,
            &round(&q),
            &round(&k),
            &round(&v),
            s,
        );
        let got_out = down_bf(dev, out.ptr(), nq)?;
        let got_lse = dev.download_vec::<f32>(lse.ptr(), nl)?;
        let mag = |x: &[f32]| peak(x).max(0.01);
        worst = worst.max(compare(&format!("{what}: out"), &got_out, &wo, 1e-2, 1e-2 * mag(&wo))?);
        let e = compare(
            &format!("{what}: lse"),
            &got_lse,
            &wl_exact,
            1e-5,
            1e-5 * mag(&wl_exact),
        )?;
        worst = worst.max(e);

        let (dq, dk, dv, delta) = (
            dev.alloc(2 * nq)?,
            dev.alloc(2 * nk)?,
            dev.alloc(2 * nk)?,
            dev.alloc(4 * nl)?,
        );
        attention::attention_backward(
            dev,
            imp,
            dq.ptr(),
            dk.ptr(),
            dv.ptr(),
            delta.ptr(),
            bdo.ptr(),
            out.ptr(),
            lse.ptr(),
            bq.ptr(),
            bk.ptr(),
            bv.ptr(),
            s,
        )?;
        let (mut wdq, mut wdk, mut wdv) = (vec![0f32; nq], vec![0f32; nk], vec![0f32; nk]);
        ops::attention_backward(&mut wdq, &mut wdk, &mut wdv, &dout, &got_out, &got_lse, &q, &k, &v, s);
        for (name, p, want) in [("dq", &dq, &wdq), ("dk", &dk, &wdk), ("dv", &dv, &wdv)] {
            worst = worst.max(compare(
                &format!("{what}: {name}"),
                &down_bf(dev, p.ptr(), want.len())?,
                want,
                2e-2,
                1e-2 * mag(want),
            )?);
        }
    }
    Ok(summary(worst))
}
