//! What the attention checks (`nanochat::device::check::attention`, run by `tests/kernels_checks.rs` on
//! ragged shapes under every schedule) do not cover for `cuda/attention.cu`: shapes the kernels cannot take
//! are errors, the FLOP count, and the flash backward's bitwise determinism.

use half::bf16;
use nanochat::device::emu::EmuDevice;
use nanochat::device::kernels::attention::{self, AttnImpl, AttnShape};
use nanochat::device::{Device, Schedule};
use nanochat::rng::Rng;

mod common;
use common::{devices, randn, to_bf16};

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
        attention::attention_forward(d, imp, o.ptr(), l.ptr(), q.ptr(), k.ptr(), v.ptr(), s).unwrap();
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
