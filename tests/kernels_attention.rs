//! The attention kernels of `cuda/attention.cu` (naive and flash, forward and backward) on the Emu
//! device against the CPU reference `nanochat::cpu::ops::attention_{forward,backward}`, under the three
//! thread schedules: ragged T (not a multiple of the 64-row tile), windows 0, small, larger than a tile
//! and ≥ T, GQA groups 1, 2 and 4, head_dim 64 and 128.

use half::bf16;
use nanochat::cpu::ops;
use nanochat::device::emu::EmuDevice;
use nanochat::device::kernels::attention::{self, AttnImpl, AttnShape};
use nanochat::device::{Device, Schedule};
use nanochat::rng::Rng;

mod common;
use common::{assert_close_to_peak, devices, down_bf16, randn, round_bf16, to_bf16};

fn shape(b: usize, t: usize, h: usize, hkv: usize, d: usize, window: usize) -> AttnShape {
    AttnShape {
        b,
        t,
        h,
        hkv,
        d,
        window,
    }
}

/// The cases every implementation runs, each under every schedule.
fn cases() -> Vec<AttnShape> {
    vec![
        shape(1, 37, 2, 1, 64, usize::MAX), // full causal, group 2, one ragged tile
        shape(2, 80, 4, 1, 64, 5),          // small window, group 4, two tiles (second ragged)
        shape(1, 70, 2, 2, 128, 0),         // window 0: each query sees itself only
        shape(1, 80, 2, 1, 128, 70),        // window between a tile and T: tile skipping edge
        shape(1, 16, 4, 2, 64, 16),         // window = T, tiny T
        shape(1, 65, 1, 1, 64, 64),         // one query past the tile, window = tile
        shape(2, 50, 8, 2, 128, 3),         // group 4 at head_dim 128, two batches
        shape(1, 64, 2, 2, 64, 63),         // T exactly one tile, window = T - 1
        shape(1, 1, 2, 1, 128, 0),          // a single token
        shape(1, 130, 1, 1, 64, 127), // unmasked tiles (below the diagonal, inside the window)
        shape(1, 100, 1, 1, 128, usize::MAX), // the same at head_dim 128 (32-query dK/dV steps)
    ]
}

struct Inputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    dout: Vec<f32>,
}

fn inputs(rng: &mut Rng, s: &AttnShape) -> Inputs {
    let nq = s.b * s.t * s.h * s.d;
    let nk = s.b * s.t * s.hkv * s.d;
    Inputs {
        // q larger than k: peaked and flat rows both occur.
        q: randn(rng, nq, 2.0),
        k: randn(rng, nk, 1.0),
        v: randn(rng, nk, 1.0),
        dout: randn(rng, nq, 1.0),
    }
}

fn check_forward(imp: AttnImpl) {
    let mut rng = Rng::new(7);
    for s in cases() {
        let x = inputs(&mut rng, &s);
        let (nq, nl) = (x.q.len(), s.b * s.h * s.t);
        let mut want = vec![0f32; nq];
        let mut want_lse = vec![0f32; nl];
        ops::attention_forward(&mut want, &mut want_lse, &x.q, &x.k, &x.v, s);
        for (sched, dev) in devices() {
            let d = dev.as_ref();
            let q = d.upload_new(&to_bf16(&x.q)).unwrap();
            let k = d.upload_new(&to_bf16(&x.k)).unwrap();
            let v = d.upload_new(&to_bf16(&x.v)).unwrap();
            let out = d.alloc(2 * nq).unwrap();
            let lse = d.alloc(4 * nl).unwrap();
            attention::attention_forward(
                d,
                imp,
                out.ptr(),
                lse.ptr(),
                q.ptr(),
                k.ptr(),
                v.ptr(),
                s,
            )
            .unwrap();
            let what = format!("{imp:?} {sched:?} {s:?}");
            assert_close_to_peak(
                &down_bf16(d, out.ptr(), nq),
                &want,
                1e-2,
                1e-2,
                &format!("{what} out"),
            );
            let got_lse = d.download_vec::<f32>(lse.ptr(), nl).unwrap();
            assert_close_to_peak(&got_lse, &want_lse, 1e-3, 1e-3, &format!("{what} lse"));
        }
    }
}

fn check_backward(imp: AttnImpl) {
    let mut rng = Rng::new(8);
    for s in cases() {
        let x = inputs(&mut rng, &s);
        let (nq, nk, nl) = (x.q.len(), x.k.len(), s.b * s.h * s.t);
        let mut out = vec![0f32; nq];
        let mut lse = vec![0f32; nl];
        ops::attention_forward(&mut out, &mut lse, &x.q, &x.k, &x.v, s);
        // The device keeps `out` in bf16: the reference backward sees the same rounded values.
        let out = round_bf16(&out);
        let (mut dq, mut dk, mut dv) = (vec![0f32; nq], vec![0f32; nk], vec![0f32; nk]);
        ops::attention_backward(
            &mut dq, &mut dk, &mut dv, &x.dout, &out, &lse, &x.q, &x.k, &x.v, s,
        );
        for (sched, dev) in devices() {
            let d = dev.as_ref();
            let up = |v: &[f32]| d.upload_new(&to_bf16(v)).unwrap();
            let (q, k, v, go, o) = (up(&x.q), up(&x.k), up(&x.v), up(&x.dout), up(&out));
            let l = d.upload_new(&lse).unwrap();
            let gq = d.alloc(2 * nq).unwrap();
            let gk = d.alloc(2 * nk).unwrap();
            let gv = d.alloc(2 * nk).unwrap();
            let delta = d.alloc(4 * nl).unwrap();
            attention::attention_backward(
                d,
                imp,
                gq.ptr(),
                gk.ptr(),
                gv.ptr(),
                delta.ptr(),
                go.ptr(),
                o.ptr(),
                l.ptr(),
                q.ptr(),
                k.ptr(),
                v.ptr(),
                s,
            )
            .unwrap();
            let what = format!("{imp:?} {sched:?} {s:?}");
            assert_close_to_peak(
                &down_bf16(d, gq.ptr(), nq),
                &dq,
                2e-2,
                1e-2,
                &format!("{what} dq"),
            );
            assert_close_to_peak(
                &down_bf16(d, gk.ptr(), nk),
                &dk,
                2e-2,
                1e-2,
                &format!("{what} dk"),
            );
            assert_close_to_peak(
                &down_bf16(d, gv.ptr(), nk),
                &dv,
                2e-2,
                1e-2,
                &format!("{what} dv"),
            );
        }
    }
}

#[test]
fn naive_forward_matches_cpu() {
    check_forward(AttnImpl::Naive);
}

#[test]
fn naive_backward_matches_cpu() {
    check_backward(AttnImpl::Naive);
}

#[test]
fn flash_forward_matches_cpu() {
    check_forward(AttnImpl::Flash);
}

#[test]
fn flash_backward_matches_cpu() {
    check_backward(AttnImpl::Flash);
}

#[test]
fn bad_shapes_are_errors() {
    let dev = EmuDevice::new(Schedule::Forward);
    let buf = dev.alloc(1 << 16).unwrap();
    let p = buf.ptr();
    for (imp, s) in [
        (AttnImpl::Flash, shape(1, 8, 3, 2, 64, 8)), // heads not a multiple of kv heads
        (AttnImpl::Flash, shape(1, 8, 2, 1, 96, 8)), // flash head_dim
        (AttnImpl::Naive, shape(1, 8, 2, 1, 160, 8)), // naive head_dim
        (AttnImpl::Naive, shape(1, 8, 2, 0, 64, 8)), // no kv heads
    ] {
        let e = attention::attention_forward(&dev, imp, p, p, p, p, p, s);
        assert!(e.is_err(), "{imp:?} {s:?} accepted");
        let e = attention::attention_backward(&dev, imp, p, p, p, p, p, p, p, p, p, p, s);
        assert!(e.is_err(), "{imp:?} {s:?} backward accepted");
    }
}

#[test]
fn flops_count_the_window() {
    // t = 4, window 1: queries see 1, 2, 2, 2 keys.
    let s = shape(2, 4, 3, 1, 8, 1);
    assert_eq!(attention::forward_flops(&s), 4.0 * (2 * 3 * 7 * 8) as f64);
    let full = shape(1, 4, 1, 1, 8, usize::MAX);
    assert_eq!(attention::forward_flops(&full), 4.0 * (10 * 8) as f64);
}

/// The backward pass has no atomics: its gradients are bit-identical under every schedule (the
/// schedules reorder the threads, which would reorder any racing accumulation) and across runs.
#[test]
fn flash_backward_is_deterministic() {
    let s = shape(1, 75, 4, 1, 64, 30);
    let x = inputs(&mut Rng::new(9), &s);
    let (nq, nk, nl) = (x.q.len(), x.k.len(), s.b * s.h * s.t);
    let mut first: Option<Vec<u16>> = None;
    for (sched, dev) in devices().into_iter().chain(devices()) {
        let d = dev.as_ref();
        let up = |v: &[f32]| d.upload_new(&to_bf16(v)).unwrap();
        let (q, k, v, go) = (up(&x.q), up(&x.k), up(&x.v), up(&x.dout));
        let (o, l) = (d.alloc(2 * nq).unwrap(), d.alloc(4 * nl).unwrap());
        let g = d.alloc(2 * (nq + 2 * nk)).unwrap();
        let delta = d.alloc(4 * nl).unwrap();
        let imp = AttnImpl::Flash;
        attention::attention_forward(d, imp, o.ptr(), l.ptr(), q.ptr(), k.ptr(), v.ptr(), s)
            .unwrap();
        attention::attention_backward(
            d,
            imp,
            g.ptr(),
            g.at::<bf16>(nq),
            g.at::<bf16>(nq + nk),
            delta.ptr(),
            go.ptr(),
            o.ptr(),
            l.ptr(),
            q.ptr(),
            k.ptr(),
            v.ptr(),
            s,
        )
        .unwrap();
        let bits = d.download_vec::<u16>(g.ptr(), nq + 2 * nk).unwrap();
        match &first {
            None => first = Some(bits),
            Some(f) => assert!(f == &bits, "{sched:?}: gradients differ between runs"),
        }
    }
}
