//! The constants the kernels and the CPU reference share are defined once on each side, in
//! `cuda/kernel_common.cuh` and in Rust: they must agree to the bit.

use nanochat::config::{QK_SCALE, SOFTCAP};
use nanochat::cpu::ops::RMS_EPS;

/// The value of `#define NAME <float>f` in `cuda/kernel_common.cuh`.
fn cuda_define(name: &str) -> f32 {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/cuda/kernel_common.cuh");
    let text = std::fs::read_to_string(path).unwrap();
    let line = text
        .lines()
        .find(|l| l.split_whitespace().take(2).eq(["#define", name]))
        .unwrap_or_else(|| panic!("no #define {name} in {path}"));
    let literal = line.split_whitespace().nth(2).unwrap();
    literal
        .trim_end_matches('f')
        .parse()
        .unwrap_or_else(|e| panic!("{name} = {literal}: {e}"))
}

#[test]
fn kernel_and_reference_constants_agree() {
    assert_eq!(cuda_define("RMS_EPS").to_bits(), RMS_EPS.to_bits());
    assert_eq!(cuda_define("SOFTCAP").to_bits(), SOFTCAP.to_bits());
    assert_eq!(cuda_define("QK_SCALE").to_bits(), QK_SCALE.to_bits());
    // Spot values from the spec: fp32 machine epsilon, 15, 1.2.
    assert_eq!(RMS_EPS, f32::EPSILON);
    assert_eq!((SOFTCAP, QK_SCALE), (15.0, 1.2));
}
