//! Kernel checks against the CPU references, runnable on any [`Device`]: the correctness half of the
//! kernel benchmark (`bench/kernels.rs`) and the GPU self-check (`kernel_bench --selfcheck`), and, on the
//! Emu device, part of `cargo test`. Each check builds inputs of a given [`Scale`], runs the kernel, and
//! compares with the reference; a mismatch beyond the tolerance is an error naming the element.

use super::kernels::{adamw, cross_entropy, elementwise, embedding, reduce, rmsnorm};
use super::{err, reference, DevPtr, Device, Dtype, Gemm, Op, Result};
use crate::cpu::ops;
use crate::optim::adamw::{adamw_update, AdamHyper};
use crate::rng::Rng;
use half::bf16;

/// Problem sizes: `Small` for the emulator (CI), `Large` for a GPU (close to training shapes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Small,
    Large,
}

/// One named check; returns a one-line summary (largest error seen) or the first mismatch.
pub struct Check {
    pub name: &'static str,
    pub run: fn(&dyn Device, Scale) -> Result<String>,
}

/// Every kernel check, in file order of `cuda/`.
pub fn all() -> Vec<Check> {
    vec![
        Check {
            name: "adamw_step",
            run: check_adamw,
        },
        Check {
            name: "softcap_ce",
            run: check_softcap_ce,
        },
        Check {
            name: "relu2_forward/backward",
            run: check_relu2,
        },
        Check {
            name: "cast_f32_to_bf16/bf16_to_f32",
            run: check_casts,
        },
        Check {
            name: "add_bf16/add_f32_bf16",
            run: check_adds,
        },
        Check {
            name: "embedding_forward/backward",
            run: check_embedding,
        },
        Check {
            name: "reduce (sum, norm)",
            run: check_reduce,
        },
        Check {
            name: "rmsnorm fwd/bwd, residual mix fwd/bwd",
            run: check_rmsnorm,
        },
        Check {
            name: "gemm (transposes, batches, beta)",
            run: check_gemm,
        },
    ]
}

fn rand(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| bf16::from_f32(rng.uniform(-scale, scale)).to_f32())
        .collect()
}

fn bf(x: &[f32]) -> Vec<bf16> {
    x.iter().map(|&v| bf16::from_f32(v)).collect()
}

fn round(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()
}

fn down_bf(dev: &dyn Device, p: DevPtr, n: usize) -> Result<Vec<f32>> {
    Ok(dev
        .download_vec::<bf16>(p, n)?
        .iter()
        .map(|v| v.to_f32())
        .collect())
}

/// Largest |got - want| / (abs + rel |want|); an error if any element exceeds 1.
fn compare(what: &str, got: &[f32], want: &[f32], rel: f32, abs: f32) -> Result<f32> {
    if got.len() != want.len() {
        return err(format!(
            "{what}: {} values, expected {}",
            got.len(),
            want.len()
        ));
    }
    let mut worst = 0f32;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g == w {
            continue;
        }
        let e = (g - w).abs() / (abs + rel * w.abs());
        if e.is_nan() || e > 1.0 {
            return err(format!(
                "{what}[{i}]: got {g}, expected {w} (tolerance {abs} + {rel}·|expected|)"
            ));
        }
        worst = worst.max(e);
    }
    Ok(worst)
}

fn summary(worst: f32) -> String {
    format!("ok (worst error {:.0}% of tolerance)", worst * 100.0)
}

fn check_relu2(dev: &dyn Device, s: Scale) -> Result<String> {
    let n = if s == Scale::Small { 3001 } else { 1 << 24 };
    let mut rng = Rng::new(11);
    let (x, dout) = (rand(&mut rng, n, 2.0), rand(&mut rng, n, 1.0));
    let (bx, bd, out) = (
        dev.upload_new(&bf(&x))?,
        dev.upload_new(&bf(&dout))?,
        dev.alloc(2 * n)?,
    );
    elementwise::relu2_forward(dev, out.ptr(), bx.ptr(), n)?;
    let mut want = vec![0f32; n];
    ops::relu2_forward(&mut want, &x);
    let w1 = compare(
        "relu2_forward",
        &down_bf(dev, out.ptr(), n)?,
        &round(&want),
        0.0,
        0.0,
    )?;
    elementwise::relu2_backward(dev, out.ptr(), bd.ptr(), bx.ptr(), n)?;
    let mut want = vec![0f32; n];
    ops::relu2_backward(&mut want, &dout, &x);
    // FMA contraction on the GPU may change the last bit before rounding.
    let w2 = compare(
        "relu2_backward",
        &down_bf(dev, out.ptr(), n)?,
        &round(&want),
        8e-3,
        1e-30,
    )?;
    Ok(summary(w1.max(w2)))
}

fn check_casts(dev: &dyn Device, s: Scale) -> Result<String> {
    let n = if s == Scale::Small { 2049 } else { 1 << 24 };
    let mut rng = Rng::new(12);
    let x: Vec<f32> = (0..n).map(|_| rng.uniform(-500.0, 500.0)).collect();
    let (bx, b, f) = (dev.upload_new(&x)?, dev.alloc(2 * n)?, dev.alloc(4 * n)?);
    elementwise::cast_f32_to_bf16(dev, b.ptr(), bx.ptr(), n)?;
    let got: Vec<bf16> = dev.download_vec(b.ptr(), n)?;
    let want = reference::cast_f32_to_bf16(&x);
    if let Some(i) = (0..n).find(|&i| got[i] != want[i]) {
        return err(format!(
            "cast_f32_to_bf16[{i}]: {} -> {}, expected {}",
            x[i], got[i], want[i]
        ));
    }
    elementwise::cast_bf16_to_f32(dev, f.ptr(), b.ptr(), n)?;
    let back: Vec<f32> = dev.download_vec(f.ptr(), n)?;
    compare(
        "cast_bf16_to_f32",
        &back,
        &reference::cast_bf16_to_f32(&got),
        0.0,
        0.0,
    )?;
    Ok("ok (exact)".into())
}

fn check_adds(dev: &dyn Device, s: Scale) -> Result<String> {
    let n = if s == Scale::Small { 2051 } else { 1 << 24 };
    let mut rng = Rng::new(19);
    let o = bf(&rand(&mut rng, n, 3.0));
    let b = bf(&rand(&mut rng, n, 3.0));
    let a: Vec<f32> = (0..n).map(|_| rng.uniform(-3.0, 3.0)).collect();
    let (bo, bb, ba) = (
        dev.upload_new(&o)?,
        dev.upload_new(&b)?,
        dev.upload_new(&a)?,
    );
    let first_mismatch = |what: &str, got: &[bf16], want: &[bf16]| -> Result<()> {
        match (0..n).find(|&i| got[i] != want[i]) {
            Some(i) => err(format!("{what}[{i}]: got {}, expected {}", got[i], want[i])),
            None => Ok(()),
        }
    };
    elementwise::add_bf16(dev, bo.ptr(), bb.ptr(), n)?;
    first_mismatch(
        "add_bf16",
        &dev.download_vec(bo.ptr(), n)?,
        &reference::add_bf16(&o, &b),
    )?;
    // In place on b (out == b).
    elementwise::add_f32_bf16(dev, bb.ptr(), ba.ptr(), bb.ptr(), n)?;
    first_mismatch(
        "add_f32_bf16",
        &dev.download_vec(bb.ptr(), n)?,
        &reference::add_f32_bf16(&a, &b),
    )?;
    Ok("ok (exact)".into())
}

fn check_reduce(dev: &dyn Device, s: Scale) -> Result<String> {
    use reduce::Reduction::*;
    let n = if s == Scale::Small { 50_001 } else { 1 << 24 };
    let mut rng = Rng::new(13);
    let x = rand(&mut rng, n, 3.0);
    let (bx, scratch, out) = (
        dev.upload_new(&x)?,
        dev.alloc(4 * reduce::MAX_PARTIALS)?,
        dev.alloc(4)?,
    );
    let mut worst = 0f32;
    let scale = (reference::sum_of_squares(&x) * n as f64).sqrt() as f32;
    for (r, want) in [
        (Sum, reference::sum(&x)),
        (SumOfSquares, reference::sum_of_squares(&x)),
        (Norm, reference::norm(&x)),
    ] {
        reduce::reduce(dev, out.ptr(), scratch.ptr(), bx.ptr(), Dtype::F32, n, r)?;
        let got = dev.download_vec::<f32>(out.ptr(), 1)?;
        reduce::reduce(dev, out.ptr(), scratch.ptr(), bx.ptr(), Dtype::F32, n, r)?;
        let again = dev.download_vec::<f32>(out.ptr(), 1)?;
        if got[0].to_bits() != again[0].to_bits() {
            return err(format!(
                "reduce {r:?}: two runs gave {} and {}",
                got[0], again[0]
            ));
        }
        worst = worst.max(compare(
            &format!("reduce {r:?}"),
            &got,
            &[want as f32],
            0.0,
            1e-6 * scale,
        )?);
    }
    Ok(summary(worst))
}

fn check_rmsnorm(dev: &dyn Device, s: Scale) -> Result<String> {
    let (n, c) = if s == Scale::Small {
        (5, 200)
    } else {
        (16384, 1280)
    };
    let mut rng = Rng::new(14);
    let (x, x0, dy, dx0) = (
        rand(&mut rng, n * c, 2.0),
        rand(&mut rng, n * c, 2.0),
        rand(&mut rng, n * c, 1.0),
        rand(&mut rng, n * c, 0.5),
    );
    let lambdas = [0.9f32, 0.2];
    let (bx, bx0, bdy, bl) = (
        dev.upload_new(&bf(&x))?,
        dev.upload_new(&bf(&x0))?,
        dev.upload_new(&bf(&dy))?,
        dev.upload_new(&lambdas)?,
    );
    let (y, xmix, rstd, bdx) = (
        dev.alloc(2 * n * c)?,
        dev.alloc(2 * n * c)?,
        dev.alloc(4 * n)?,
        dev.upload_new(&bf(&dx0))?,
    );
    let (mut wy, mut wr) = (vec![0f32; n * c], vec![0f32; n]);
    let mut worst = 0f32;

    rmsnorm::mix_rmsnorm_forward(
        dev,
        xmix.ptr(),
        y.ptr(),
        rstd.ptr(),
        bx.ptr(),
        bx0.ptr(),
        bl.ptr(),
        n,
        c,
    )?;
    let mut wmix = vec![0f32; n * c];
    ops::lambda_mix_forward(&mut wmix, &x, &x0, lambdas[0], lambdas[1]);
    let wmix = round(&wmix);
    worst = worst.max(compare(
        "mix_rmsnorm xmix",
        &down_bf(dev, xmix.ptr(), n * c)?,
        &wmix,
        8e-3,
        1e-30,
    )?);
    ops::rmsnorm_forward(&mut wy, &mut wr, &wmix, c);
    worst = worst.max(compare(
        "mix_rmsnorm y",
        &down_bf(dev, y.ptr(), n * c)?,
        &wy,
        8e-3,
        1e-6,
    )?);

    rmsnorm::rmsnorm_forward(dev, y.ptr(), rstd.ptr(), bx.ptr(), n, c)?;
    ops::rmsnorm_forward(&mut wy, &mut wr, &x, c);
    worst = worst.max(compare(
        "rmsnorm y",
        &down_bf(dev, y.ptr(), n * c)?,
        &wy,
        8e-3,
        1e-6,
    )?);
    worst = worst.max(compare(
        "rmsnorm rstd",
        &dev.download_vec::<f32>(rstd.ptr(), n)?,
        &wr,
        1e-5,
        0.0,
    )?);

    rmsnorm::rmsnorm_backward(dev, bdx.ptr(), bdy.ptr(), bx.ptr(), rstd.ptr(), n, c)?;
    let mut wdx = dx0.clone();
    ops::rmsnorm_backward(&mut wdx, &dy, &x, &wr, c);
    worst = worst.max(compare(
        "rmsnorm dx",
        &down_bf(dev, bdx.ptr(), n * c)?,
        &wdx,
        8e-3,
        2e-3,
    )?);

    // mix backward, in place on dy as the model uses it
    let (bdx0, bdl) = (dev.upload_new(&dx0)?, dev.upload_new(&[0f32, 0.0])?);
    let scratch = dev.alloc(4 * rmsnorm::mix_backward_scratch(n))?;
    rmsnorm::mix_backward(
        dev,
        bdy.ptr(),
        bdx0.ptr(),
        bdl.ptr(),
        scratch.ptr(),
        bdy.ptr(),
        bx.ptr(),
        bx0.ptr(),
        bl.ptr(),
        n,
        c,
    )?;
    let (mut wdx, mut wdx0) = (vec![0f32; n * c], dx0.clone());
    let (dr, dz) =
        ops::lambda_mix_backward(&mut wdx, &mut wdx0, &dy, &x, &x0, lambdas[0], lambdas[1]);
    worst = worst.max(compare(
        "mix_backward dx",
        &down_bf(dev, bdy.ptr(), n * c)?,
        &wdx,
        8e-3,
        1e-30,
    )?);
    worst = worst.max(compare(
        "mix_backward dx0",
        &dev.download_vec::<f32>(bdx0.ptr(), n * c)?,
        &wdx0,
        1e-6,
        1e-6,
    )?);
    let tol = 1e-5 * (n * c) as f32;
    worst = worst.max(compare(
        "mix_backward dlambdas",
        &dev.download_vec::<f32>(bdl.ptr(), 2)?,
        &[dr, dz],
        1e-5,
        tol,
    )?);
    Ok(summary(worst))
}

fn check_softcap_ce(dev: &dyn Device, s: Scale) -> Result<String> {
    let (n, v, vp) = if s == Scale::Small {
        (6, 500, 512)
    } else {
        (8192, 32768, 32768)
    };
    let mut rng = Rng::new(15);
    let logits = rand(&mut rng, n * vp, 20.0);
    let targets: Vec<i32> = (0..n)
        .map(|t| {
            if t % 5 == 4 {
                -1
            } else {
                rng.below(v as u64) as i32
            }
        })
        .collect();
    let dloss = 1.0 / n as f32;
    let (bl, bt, bloss) = (
        dev.upload_new(&bf(&logits))?,
        dev.upload_new(&targets)?,
        dev.alloc(4 * n)?,
    );
    cross_entropy::softcap_ce(dev, bl.ptr(), bloss.ptr(), bt.ptr(), dloss, n, v, vp)?;
    let (mut capped, mut wloss) = (logits.clone(), vec![0f32; n]);
    ops::softcap_ce_forward(&mut wloss, &mut capped, &targets, v, vp);
    let w1 = compare(
        "softcap_ce loss",
        &dev.download_vec::<f32>(bloss.ptr(), n)?,
        &wloss,
        1e-4,
        1e-5,
    )?;
    let mut wd = vec![0f32; n * vp];
    ops::softcap_ce_backward(&mut wd, &capped, &targets, &vec![dloss; n], v, vp);
    let w2 = compare(
        "softcap_ce dlogits",
        &down_bf(dev, bl.ptr(), n * vp)?,
        &wd,
        1e-2,
        1e-3 * dloss / v as f32,
    )?;
    Ok(summary(w1.max(w2)))
}

fn check_embedding(dev: &dyn Device, s: Scale) -> Result<String> {
    let (vocab, c, n) = if s == Scale::Small {
        (40, 70, 150)
    } else {
        (32768, 1280, 16384)
    };
    let mut rng = Rng::new(16);
    let table = rand(&mut rng, vocab * c, 1.0);
    let ids: Vec<u32> = (0..n).map(|_| rng.below(vocab as u64 / 2) as u32).collect();
    let ids_i32: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
    let (bt, bids, out) = (
        dev.upload_new(&bf(&table))?,
        dev.upload_new(&ids_i32)?,
        dev.alloc(2 * n * c)?,
    );
    embedding::embedding_forward(dev, out.ptr(), bids.ptr(), bt.ptr(), &ids, vocab, c)?;
    let mut want = vec![0f32; n * c];
    ops::embedding_forward(&mut want, &ids, &table, c);
    compare(
        "embedding_forward",
        &down_bf(dev, out.ptr(), n * c)?,
        &want,
        0.0,
        0.0,
    )?;
    let dout = rand(&mut rng, n * c, 1.0);
    let (bdo, bdt) = (dev.upload_new(&bf(&dout))?, dev.alloc(4 * vocab * c)?);
    dev.zero(bdt.ptr(), 4 * vocab * c)?;
    embedding::embedding_backward(dev, bdt.ptr(), bdo.ptr(), &ids, vocab, c)?;
    let mut want = vec![0f32; vocab * c];
    ops::embedding_backward(&mut want, &dout, &ids, c);
    let w = compare(
        "embedding_backward",
        &dev.download_vec::<f32>(bdt.ptr(), vocab * c)?,
        &want,
        1e-5,
        1e-5,
    )?;
    Ok(summary(w))
}

fn check_adamw(dev: &dyn Device, s: Scale) -> Result<String> {
    let n = if s == Scale::Small { 1003 } else { 1 << 24 };
    let mut rng = Rng::new(17);
    let mut p = rand(&mut rng, n, 1.0);
    let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
    let (bp, bm, bv, bpb) = (
        dev.upload_new(&p)?,
        dev.upload_new(&m)?,
        dev.upload_new(&v)?,
        dev.alloc(2 * n)?,
    );
    for step in 1..=2 {
        let g = rand(&mut rng, n, 0.5);
        let bg = dev.upload_new(&g)?;
        let h = AdamHyper {
            lr: 0.02,
            beta1: 0.8,
            beta2: 0.95,
            eps: 1e-10,
            weight_decay: 0.05,
            step,
        };
        adamw::adamw_step(
            dev,
            bp.ptr(),
            Some(bpb.ptr()),
            bg.ptr(),
            bm.ptr(),
            bv.ptr(),
            n,
            &h,
        )?;
        adamw_update(&mut p, &g, &mut m, &mut v, &h);
    }
    let gp: Vec<f32> = dev.download_vec(bp.ptr(), n)?;
    let w = compare("adamw params", &gp, &p, 1e-5, 1e-7)?;
    compare(
        "adamw bf16 copy",
        &down_bf(dev, bpb.ptr(), n)?,
        &round(&gp),
        0.0,
        0.0,
    )?;
    Ok(summary(w))
}

fn check_gemm(dev: &dyn Device, s: Scale) -> Result<String> {
    let (m, n, k) = if s == Scale::Small {
        (37, 23, 70)
    } else {
        (512, 384, 1280) // the host reference is a plain loop
    };
    let mut rng = Rng::new(18);
    let batch = 2;
    let (a, b) = (
        rand(&mut rng, batch * m * k, 1.0),
        rand(&mut rng, batch * k * n, 1.0),
    );
    let c0 = rand(&mut rng, batch * m * n, 1.0);
    let (ba, bb) = (dev.upload_new(&bf(&a))?, dev.upload_new(&bf(&b))?);
    let mut worst = 0f32;
    for (op_a, op_b) in [
        (Op::N, Op::N),
        (Op::N, Op::T),
        (Op::T, Op::N),
        (Op::T, Op::T),
    ] {
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

// ---------------------------------------------------------------------------------------------------
// PTX helpers (cuda/ptx_helpers.cuh through cuda/tests/ptx_check.cu): on a GPU the asm, on the Emu
// device the emulation, each against the shuffle-only reference and a plain loop over the ISA layout.

/// The PTX helper checks.
pub fn ptx_helper_checks() -> Vec<Check> {
    vec![
        Check {
            name: "mma.m16n8k16 bf16 (helper, reference, loop)",
            run: check_mma,
        },
        Check {
            name: "ldmatrix x1/x2/x4 (.trans) (helper, reference)",
            run: check_ldmatrix,
        },
        Check {
            name: "cp.async + ldmatrix + mma pipeline",
            run: check_pipeline,
        },
    ]
}

fn check_mma(dev: &dyn Device, _: Scale) -> Result<String> {
    let a: Vec<f32> = (0..256).map(|i| ((i * 7 + 3) % 9) as f32 - 4.0).collect();
    let b: Vec<f32> = (0..128).map(|i| ((i * 5 + 1) % 7) as f32 - 3.0).collect();
    let c: Vec<f32> = (0..128).map(|i| (i % 5) as f32).collect();
    let mut want = c.clone();
    for i in 0..16 {
        for j in 0..8 {
            want[i * 8 + j] += (0..16).map(|k| a[i * 16 + k] * b[k * 8 + j]).sum::<f32>();
        }
    }
    let (da, db, dc, dd) = (
        dev.upload_new(&bf(&a))?,
        dev.upload_new(&bf(&b))?,
        dev.upload_new(&c)?,
        dev.alloc(512)?,
    );
    for mode in [0, 1] {
        let args = [
            dd.ptr().into(),
            da.ptr().into(),
            db.ptr().into(),
            dc.ptr().into(),
            super::Arg::I32(mode),
        ];
        dev.launch(
            "ptx_mma_fragments",
            super::Dim3::x(1),
            super::Dim3::x(32),
            0,
            &args,
        )?;
        let what = if mode == 0 {
            "mma helper"
        } else {
            "mma reference"
        };
        compare(
            what,
            &dev.download_vec::<f32>(dd.ptr(), 128)?,
            &want,
            0.0,
            0.0,
        )?;
    }
    Ok("ok (exact)".into())
}

fn check_ldmatrix(dev: &dyn Device, _: Scale) -> Result<String> {
    let m: Vec<u16> = (0..256).map(|i| (i * 3 + 1) as u16).collect();
    let (src, out) = (dev.upload_new(&m)?, dev.alloc(512)?);
    for mode in 0..6 {
        let n = [1, 2, 4][mode % 3];
        let mut results = Vec::new();
        for reference in [0, 1] {
            dev.zero(out.ptr(), 512)?;
            let args = [
                out.ptr().into(),
                src.ptr().into(),
                super::Arg::I32(mode as i32),
                super::Arg::I32(reference),
            ];
            dev.launch(
                "ptx_ldmatrix",
                super::Dim3::x(1),
                super::Dim3::x(32),
                0,
                &args,
            )?;
            results.push(dev.download_vec::<u32>(out.ptr(), 128)?);
        }
        for lane in 0..32 {
            for i in 0..n {
                let mat = |r: usize, c: usize| m[(8 * i + r) * 8 + c] as u32;
                let (g, t) = (lane / 4, lane % 4);
                let want = if mode < 3 {
                    mat(g, 2 * t) | (mat(g, 2 * t + 1) << 16)
                } else {
                    mat(2 * t, g) | (mat(2 * t + 1, g) << 16)
                };
                for (k, r) in results.iter().enumerate() {
                    if r[lane * 4 + i] != want {
                        let who = if k == 0 { "helper" } else { "reference" };
                        return err(format!("ldmatrix mode {mode} {who}: lane {lane} register {i} = {:#x}, expected {want:#x}", r[lane * 4 + i]));
                    }
                }
            }
        }
    }
    Ok("ok (exact)".into())
}

fn check_pipeline(dev: &dyn Device, s: Scale) -> Result<String> {
    let (m, n, k) = if s == Scale::Small {
        (32, 16, 48)
    } else {
        (256, 128, 512)
    };
    let a: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7 + 2) % 11) as f32 - 5.0)
        .collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i * 3 + 1) % 5) as f32 - 2.0).collect();
    let mut want = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            want[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
        }
    }
    let (da, db, dc) = (
        dev.upload_new(&bf(&a))?,
        dev.upload_new(&bf(&b))?,
        dev.alloc(4 * m * n)?,
    );
    let args = [
        dc.ptr().into(),
        da.ptr().into(),
        db.ptr().into(),
        super::Arg::I32(k as i32),
        super::Arg::I32(1),
    ];
    dev.launch(
        "ptx_mma_pipeline",
        super::Dim3::xy((n / 8) as u32, (m / 16) as u32),
        super::Dim3::x(32),
        0,
        &args,
    )?;
    compare(
        "mma pipeline",
        &dev.download_vec::<f32>(dc.ptr(), m * n)?,
        &want,
        0.0,
        0.0,
    )?;
    Ok("ok (exact)".into())
}
