//! Checks of the GEMM wrapper (`device/gemm.rs`, cuBLASLt on a GPU) against a plain f64 loop written
//! here, independent of the host GEMM that the emulator runs (`Gemm::run_on_host`).

use super::Scale;
use super::{bf, compare, down_bf, rand, round, summary};
use crate::device::Device;
use crate::device::Dtype;
use crate::device::Gemm;
use crate::device::Op;
use crate::device::Result;
use crate::rng::Rng;
use half::bf16;

pub(super) fn check_gemm(dev: &dyn Device, s: Scale) -> Result<String> {
    let (m, n, k) = s.pick((37, 23, 70), (512, 384, 1280));
    let mut rng = Rng::new(18);
    let batch = 2;
    let (a, b) = (rand(&mut rng, batch * m * k, 1.0), rand(&mut rng, batch * k * n, 1.0));
    let c0 = rand(&mut rng, batch * m * n, 1.0);
    let (ba, bb) = (dev.upload_new(&bf(&a))?, dev.upload_new(&bf(&b))?);
    let mut worst = 0f32;
    for (op_a, op_b) in [(Op::N, Op::N), (Op::N, Op::T), (Op::T, Op::N), (Op::T, Op::T)] {
        for c_dtype in [Dtype::F32, Dtype::Bf16] {
            let bc = match c_dtype {
                Dtype::F32 => dev.upload_new(&c0)?,
                Dtype::Bf16 => dev.upload_new(&bf(&c0))?,
            };
            let g = Gemm {
                lda: if op_a == Op::N { k } else { m },
                op_a,
                ldb: if op_b == Op::N { n } else { k },
                op_b,
                alpha: 0.5,
                beta: 1.0,
                batch,
                stride_a: m * k,
                stride_b: k * n,
                stride_c: m * n,
                ..Gemm::new(m, n, k, ba.ptr(), bb.ptr(), bc.ptr(), c_dtype)
            };
            dev.gemm(&g)?;
            let got = match c_dtype {
                Dtype::F32 => dev.download_vec::<f32>(bc.ptr(), batch * m * n)?,
                Dtype::Bf16 => down_bf(dev, bc.ptr(), batch * m * n)?,
            };
            let want = reference(&g, &round(&a), &round(&b), &c0, c_dtype);
            let tol = (k as f32).sqrt() * 1e-5;
            let rel = if c_dtype == Dtype::Bf16 { 8e-3 } else { 1e-5 };
            worst = worst.max(compare(
                &format!("gemm {op_a:?}{op_b:?} {c_dtype:?}"),
                &got,
                &want,
                rel,
                tol + rel,
            )?);
        }
    }
    Ok(summary(worst))
}

/// `C = alpha·op(A)·op(B) + beta·C` for each batch, summed in f64 straight from the description's
/// leading dimensions and strides; a bf16 output is rounded once at the end, as the device does.
fn reference(g: &Gemm, a: &[f32], b: &[f32], c0: &[f32], c_dtype: Dtype) -> Vec<f32> {
    let (m, n, k) = (g.m, g.n, g.k);
    let c_in = if c_dtype == Dtype::Bf16 { round(c0) } else { c0.to_vec() };
    let mut out = vec![0f32; g.batch * m * n];
    for bi in 0..g.batch {
        let (a, b) = (&a[bi * g.stride_a..], &b[bi * g.stride_b..]);
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0f64;
                for p in 0..k {
                    let x = if g.op_a == Op::N {
                        a[i * g.lda + p]
                    } else {
                        a[p * g.lda + i]
                    };
                    let y = if g.op_b == Op::N {
                        b[p * g.ldb + j]
                    } else {
                        b[j * g.ldb + p]
                    };
                    acc += x as f64 * y as f64;
                }
                let at = bi * g.stride_c + i * g.ldc + j;
                let v = (g.alpha as f64 * acc + g.beta as f64 * c_in[at] as f64) as f32;
                out[at] = if c_dtype == Dtype::Bf16 {
                    bf16::from_f32(v).to_f32()
                } else {
                    v
                };
            }
        }
    }
    out
}
