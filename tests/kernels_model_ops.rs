//! What the kernel checks (`nanochat::device::check::{rope_qknorm, model_ops}`, run by `tests/kernels_checks.rs`)
//! do not cover for `cuda/rope_qknorm.cu` and `cuda/model_ops.cu`: shapes the kernels cannot take are errors,
//! and the parameter gradients are bitwise the same under every thread schedule.

use nanochat::device::emu::EmuDevice;
use nanochat::device::kernels::model_ops::{self, GateShape};
use nanochat::device::kernels::rope_qknorm::{self, RopeShape};
use nanochat::device::{Device, Schedule};
use nanochat::rng::Rng;

mod common;
use common::{devices, randn, to_bf16};

/// Shapes the kernels cannot take are errors, not launches.
#[test]
fn rope_qknorm_rejects_bad_shapes() {
    let dev: Box<dyn Device> = Box::new(EmuDevice::new(Schedule::Forward));
    let dev = dev.as_ref();
    let buf = dev.alloc(1 << 16).unwrap();
    let p = buf.ptr();
    let ok = RopeShape {
        n: 4,
        t: 2,
        heads: 2,
        d: 8,
        pos0: 0,
        x_stride: 16,
        positions: 2,
    };
    let bad = [
        RopeShape { d: 7, ..ok },
        RopeShape {
            d: 258,
            x_stride: 1000,
            ..ok
        },
        RopeShape { t: 3, ..ok },
        RopeShape { x_stride: 15, ..ok },
        RopeShape { pos0: 1, ..ok },
    ];
    for s in bad {
        let e = rope_qknorm::rope_qknorm_forward(dev, p, p, p, p, p, s);
        assert!(e.is_err(), "{s:?} accepted");
    }
    assert!(rope_qknorm::rope_qknorm_backward(dev, p, p, p, p, p, p, ok, 15, false).is_err());
}

/// Shapes the gate and smear kernels cannot take are errors, not launches.
#[test]
fn model_ops_reject_bad_shapes() {
    let dev: Box<dyn Device> = Box::new(EmuDevice::new(Schedule::Forward));
    let dev = dev.as_ref();
    let buf = dev.alloc(1 << 16).unwrap();
    let p = buf.ptr();
    let ok = GateShape {
        n: 2,
        c: 16,
        hkv: 2,
        d: 8,
        k: 12,
        v_stride: 16,
    };
    for s in [
        GateShape { k: 33, c: 64, ..ok },
        GateShape { k: 17, ..ok },
        GateShape { v_stride: 15, ..ok },
    ] {
        assert!(model_ops::ve_gate_forward(dev, p, p, p, p, p, s).is_err(), "{s:?}");
    }
    assert!(model_ops::smear_forward(dev, p, p, p, p, p, 5, 2, 8, 4).is_err());
    assert!(model_ops::smear_forward(dev, p, p, p, p, p, 4, 2, 8, 9).is_err());
}

/// The parameter gradients do not depend on the thread schedule: bitwise the same under all three.
#[test]
fn parameter_gradients_are_deterministic() {
    let mut rng = Rng::new(76);
    let (b, t, c, hkv, d, k) = (2, 6, 48, 2, 32, 12);
    let n = b * t;
    let shape = GateShape {
        n,
        c,
        hkv,
        d,
        k,
        v_stride: hkv * d,
    };
    let (x, dv, ve) = (
        randn(&mut rng, n * c, 1.0),
        randn(&mut rng, n * hkv * d, 1.0),
        randn(&mut rng, n * hkv * d, 1.0),
    );
    let (wg, w) = (randn(&mut rng, hkv * k, 0.5), randn(&mut rng, 24, 0.5));
    let mut seen: Option<Vec<f32>> = None;
    for (s, dev) in devices() {
        let dev = dev.as_ref();
        let up = |v: &[f32]| dev.upload_new(&to_bf16(v)).unwrap();
        let (dx_, ddv, dve_in) = (up(&x), up(&dv), up(&ve));
        let (dwg_in, dw_in, dl_in) = (
            dev.upload_new(&wg).unwrap(),
            dev.upload_new(&w).unwrap(),
            dev.upload_new(&[0.6f32]).unwrap(),
        );
        // Gradients: dwg (hkv·k), dw (24), dlambda smear, dlambda backout.
        let grads = dev.upload_new(&vec![0f32; hkv * k + 26]).unwrap();
        let gate = dev.alloc(4 * n * hkv).unwrap();
        let (dve, dxn) = (dev.alloc(2 * n * hkv * d).unwrap(), up(&x));
        let (gbuf, scratch) = (up(&x), dev.alloc(4 * n * 64).unwrap());
        model_ops::ve_gate_forward(dev, ddv.ptr(), gate.ptr(), dx_.ptr(), dve_in.ptr(), dwg_in.ptr(), shape).unwrap();
        model_ops::ve_gate_backward(
            dev,
            dve.ptr(),
            dxn.ptr(),
            grads.ptr(),
            scratch.ptr(),
            ddv.ptr(),
            gate.ptr(),
            dx_.ptr(),
            dve_in.ptr(),
            dwg_in.ptr(),
            shape,
        )
        .unwrap();
        model_ops::smear_backward(
            dev,
            gbuf.ptr(),
            grads.at::<f32>(hkv * k),
            grads.at::<f32>(hkv * k + 24),
            scratch.ptr(),
            dxn.ptr(),
            dx_.ptr(),
            dw_in.ptr(),
            dl_in.ptr(),
            n,
            t,
            c,
            24,
        )
        .unwrap();
        model_ops::backout_backward(
            dev,
            gbuf.ptr(),
            dxn.ptr(),
            grads.at::<f32>(hkv * k + 25),
            scratch.ptr(),
            dx_.ptr(),
            dx_.ptr(),
            dl_in.ptr(),
            n,
            c,
        )
        .unwrap();
        let got: Vec<f32> = dev.download_vec(grads.ptr(), hkv * k + 26).unwrap();
        assert!(got.iter().all(|v| v.is_finite()), "{s:?}: {got:?}");
        match &seen {
            None => seen = Some(got),
            Some(first) => assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                first.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{s:?}"
            ),
        }
    }
}
