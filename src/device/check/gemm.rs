//! Checks of The GEMM wrapper (`device/gemm.rs`, cuBLASLt on a GPU) against a plain loop.

use super::Scale;
use super::{bf, compare, down_bf, rand, summary};
use crate::device::Device;
use crate::device::Dtype;
use crate::device::Gemm;
use crate::device::Op;
use crate::device::Result;
use crate::rng::Rng;
use half::bf16;

pub(super) fn check_gemm(dev: &dyn Device, s: Scale) -> Result<String> {
    // The host reference is a plain loop.
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
            // The reference: the same description run on host copies.
            let (ab, bbv) = (
                bytemuck::cast_slice::<bf16, u8>(&bf(&a)).to_vec(),
                bytemuck::cast_slice::<bf16, u8>(&bf(&b)).to_vec(),
            );
            let mut cb = match c_dtype {
                Dtype::F32 => bytemuck::cast_slice::<f32, u8>(&c0).to_vec(),
                Dtype::Bf16 => bytemuck::cast_slice::<bf16, u8>(&bf(&c0)).to_vec(),
            };
            g.run_on_host(&ab, &bbv, &mut cb);
            let want: Vec<f32> = match c_dtype {
                Dtype::F32 => cb
                    .chunks_exact(4)
                    .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                Dtype::Bf16 => cb
                    .chunks_exact(2)
                    .map(|b| bf16::from_bits(u16::from_ne_bytes([b[0], b[1]])).to_f32())
                    .collect(),
            };
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
