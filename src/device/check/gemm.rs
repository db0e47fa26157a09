//! Checks of the GEMM wrapper (`device/gemm.rs`, cuBLASLt on a GPU) against a plain f64 loop written
//! here, independent of the host GEMM that the emulator runs (`Gemm::run_on_host`).

use super::Scale;
use super::{bf, compare, down_bf, rand, round, summary};
use crate::config::ModelConfig;
use crate::device::err;
use crate::device::Device;
use crate::device::Dtype;
use crate::device::Gemm;
use crate::device::Op;
use crate::device::Result;
use crate::params::{ParamTable, Slot};
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

/// The GEMMs of the model on the slots of a real parameter table: each weight read from its place in one
/// flat bf16 buffer (as the model's forward does) and each weight gradient accumulated into its place in
/// one flat fp32 buffer (as its backward does), so that the slot offsets' alignment is what the GEMM sees.
/// Fails when a slot is not 256-byte aligned, which `cuMemAlloc`'d operands of the plain check never show.
pub(super) fn check_gemm_on_slots(dev: &dyn Device, s: Scale) -> Result<String> {
    let cfg = s.pick(
        ModelConfig {
            sequence_len: 64,
            vocab_size: 200,
            n_layer: 2,
            n_head: 1,
            n_kv_head: 1,
            n_embd: 128,
            window_pattern: "SL".into(),
        },
        ModelConfig::from_depth(6, 64, 128, 2048, 32768, "SSSL"),
    );
    let table = ParamTable::new(&cfg);
    let n_tok = s.pick(24, 32);
    let weights = dev.alloc(table.numel * 2)?;
    let grads = dev.alloc(table.numel * 4)?;
    dev.zero(weights.ptr(), table.numel * 2)?;
    dev.zero(grads.ptr(), table.numel * 4)?;
    let mut rng = Rng::new(19);
    let mut worst = 0f32;
    for slot in [
        Slot::AttnQ,
        Slot::AttnK,
        Slot::AttnV,
        Slot::AttnProj,
        Slot::MlpFc,
        Slot::MlpProj,
        Slot::LmHead,
    ] {
        let spec = table.slot(slot);
        let (out, inp) = spec.matrix_dims();
        let mut copies = vec![0, spec.count() - 1];
        copies.dedup();
        for k in copies {
            let at = table.range(slot, k).start;
            let w = rand(&mut rng, out * inp, 1.0);
            let x = rand(&mut rng, n_tok * inp, 1.0);
            let dy = rand(&mut rng, n_tok * out, 1.0);
            let g0 = rand(&mut rng, out * inp, 1.0);
            dev.upload(weights.at::<bf16>(at), bytemuck::cast_slice(&bf(&w)))?;
            dev.upload(grads.at::<f32>(at), bytemuck::cast_slice(&g0))?;
            let (bx, bdy) = (dev.upload_new(&bf(&x))?, dev.upload_new(&bf(&dy))?);
            let y = dev.alloc(n_tok * out * 4)?;
            // Forward: y (n, out) = x (n, in) @ W^T.
            let fwd = Gemm {
                op_b: Op::T,
                ldb: inp,
                ..Gemm::new(n_tok, out, inp, bx.ptr(), weights.at::<bf16>(at), y.ptr(), Dtype::F32)
            };
            // Weight gradient: dW (out, in) += dy^T (out, n) @ x (n, in), into the gradient slot.
            let bwd = Gemm {
                op_a: Op::T,
                lda: out,
                beta: 1.0,
                ..Gemm::new(out, inp, n_tok, bdy.ptr(), bx.ptr(), grads.at::<f32>(at), Dtype::F32)
            };
            let what = format!("{slot:?} copy {k} (element {at})");
            // The slot's offset inside the flat buffers (what the layout decides), and on a device whose
            // allocations start 256-byte aligned (a GPU; the emulator's end at a guard page) the pointers.
            let base_aligned = weights.ptr().0 % 256 == 0 && grads.ptr().0 % 256 == 0;
            if at * 2 % 256 != 0 || (base_aligned && (fwd.alignments()[1] < 256 || bwd.alignments()[2] < 256)) {
                return err(format!(
                    "{what}: the weight is {}-byte and its gradient {}-byte aligned in the flat buffers, not 256",
                    1u32 << ((at * 2) | 256).trailing_zeros(),
                    1u32 << ((at * 4) | 256).trailing_zeros()
                ));
            }
            dev.gemm(&fwd)?;
            dev.gemm(&bwd)?;
            let got_y = dev.download_vec::<f32>(y.ptr(), n_tok * out)?;
            let got_g = dev.download_vec::<f32>(grads.at::<f32>(at), out * inp)?;
            // The independent f64 loop (the inputs are bf16 values already).
            let want_y = reference(&fwd, &x, &w, &vec![0.0; n_tok * out], Dtype::F32);
            let want_g = reference(&bwd, &dy, &x, &g0, Dtype::F32);
            let tol = |k: usize| (k as f32).sqrt() * 1e-5 + 1e-5;
            worst = worst.max(compare(&format!("{what} forward"), &got_y, &want_y, 1e-5, tol(inp))?);
            worst = worst.max(compare(
                &format!("{what} weight gradient"),
                &got_g,
                &want_g,
                1e-5,
                tol(n_tok),
            )?);
        }
    }
    Ok(summary(worst))
}
