//! Helpers shared by the tests: for the kernels, the emulator under every thread schedule, bf16-exact random
//! inputs, bf16 rounding and downloads, and tolerance assertions; for the conversation stages, [`stages`];
//! `serve`: server start-up and an HTTP client.
// Each test crate compiles this module and uses a part of it.
#![allow(dead_code)]

pub mod serve;
pub mod stages;

use half::bf16;
use nanochat::device::emu::EmuDevice;
use nanochat::device::{DevPtr, Device, Schedule};
use nanochat::rng::Rng;

/// The emulator once per thread schedule (forward, reverse, random): a kernel that depends on the order
/// its threads run in fails under one of them.
pub fn devices() -> Vec<(Schedule, Box<dyn Device>)> {
    Schedule::ALL
        .iter()
        .map(|&s| (s, Box::new(EmuDevice::new(s)) as Box<dyn Device>))
        .collect()
}

/// Values in [-scale, scale), rounded to bf16 (so the device and the reference see the same inputs).
pub fn randn(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| bf16::from_f32(rng.uniform(-scale, scale)).to_f32())
        .collect()
}

/// Values in [lo, hi), not rounded.
pub fn uniform(rng: &mut Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(lo, hi)).collect()
}

pub fn to_bf16(x: &[f32]) -> Vec<bf16> {
    x.iter().map(|&v| bf16::from_f32(v)).collect()
}

/// `x` rounded to bf16 (to nearest even), as f32.
pub fn round_bf16(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()
}

/// `n` bf16 values at `p`, as f32.
pub fn down_bf16(dev: &dyn Device, p: DevPtr, n: usize) -> Vec<f32> {
    dev.download_vec::<bf16>(p, n)
        .unwrap()
        .iter()
        .map(|v| v.to_f32())
        .collect()
}

/// Every |got − want| ≤ abs + rel·|want|.
pub fn assert_close(got: &[f32], want: &[f32], rel: f32, abs: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= abs + rel * w.abs(), "{what}[{i}]: {g} vs {w}");
    }
}

/// |got − want| ≤ rel·|want| + abs·max(max|want|, 0.01): for outputs whose errors scale with the tensor's
/// magnitude, not each element's (bf16 probabilities in the flash kernels' PV products; gradients that
/// cancel to zero, e.g. window 0's dq).
pub fn assert_close_to_peak(got: &[f32], want: &[f32], rel: f32, abs: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let big = want.iter().fold(0.01f32, |m, w| m.max(w.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= rel * w.abs() + abs * big,
            "{what}[{i}]: {g} vs {w} (max |want| {big})"
        );
    }
}
