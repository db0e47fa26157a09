//! CPU references of the device-only ops (the model ops' references live in `crate::cpu`):
//! precision casts, adds and reductions.

use half::bf16;

/// f32 -> bf16, round to nearest even (what `__float2bfloat16` does).
pub fn cast_f32_to_bf16(x: &[f32]) -> Vec<bf16> {
    x.iter().map(|&v| bf16::from_f32(v)).collect()
}

/// bf16 -> f32, exact.
pub fn cast_bf16_to_f32(x: &[bf16]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}

/// `out + a` elementwise, in f32, rounded to bf16 (what `add_bf16` leaves in `out`).
pub fn add_bf16(out: &[bf16], a: &[bf16]) -> Vec<bf16> {
    assert_eq!(out.len(), a.len());
    out.iter()
        .zip(a)
        .map(|(o, a)| bf16::from_f32(o.to_f32() + a.to_f32()))
        .collect()
}

/// `a + b` elementwise, in f32, rounded to bf16 (`add_f32_bf16`).
pub fn add_f32_bf16(a: &[f32], b: &[bf16]) -> Vec<bf16> {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(&a, b)| bf16::from_f32(a + b.to_f32())).collect()
}

/// Sum in f64 (the device sums in fp32 in a fixed tree order; compare with a tolerance).
pub fn sum(x: &[f32]) -> f64 {
    x.iter().map(|&v| v as f64).sum()
}

/// Sum of squares in f64.
pub fn sum_of_squares(x: &[f32]) -> f64 {
    x.iter().map(|&v| v as f64 * v as f64).sum()
}

/// L2 norm in f64.
pub fn norm(x: &[f32]) -> f64 {
    sum_of_squares(x).sqrt()
}
