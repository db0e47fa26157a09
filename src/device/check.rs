//! Kernel checks against the CPU references, runnable on any [`Device`]: the correctness half of the
//! kernel benchmark (`bench/kernels.rs`) and the GPU self-check (`kernel_bench --selfcheck`), and, on the
//! Emu device, part of `cargo test`. Each check builds inputs of a given [`Scale`], runs the kernel, and
//! compares with the reference; a mismatch beyond the tolerance is an error naming the element.

use super::kernels::attention::{self, AttnImpl, AttnShape};
use super::kernels::model_ops::{self, GateShape};
use super::kernels::muon::{self, MuonScratch, Stack};
use super::kernels::rope_qknorm::{self, RopeShape};
use super::kernels::{adamw, cross_entropy, elementwise, embedding, reduce, rmsnorm};
use super::{err, reference, DevPtr, Device, Dtype, Gemm, Op, Result};
use crate::config::{SMEAR_CHANNELS, VE_GATE_CHANNELS};
use crate::cpu::ops;
use crate::optim::adamw::{adamw_update, AdamHyper};
use crate::optim::muon::{cautious_update, muon_update, second_moment_len, MuonHyper};
use crate::rng::Rng;
use half::bf16;

/// Problem sizes: `Small` for the emulator (CI), `Large` for a GPU (close to training shapes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Small,
    Large,
}

impl Scale {
    /// `small` at [`Scale::Small`], else `large`.
    pub fn pick<T>(self, small: T, large: T) -> T {
        match self {
            Scale::Small => small,
            Scale::Large => large,
        }
    }
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
            name: "rmsnorm_mix_backward (fused)",
            run: check_rmsnorm_mix_backward,
        },
        Check {
            name: "rmsnorm_backout_backward (fused)",
            run: check_rmsnorm_backout_backward,
        },
        Check {
            name: "gemm (transposes, batches, beta)",
            run: check_gemm,
        },
        Check {
            name: "attention flash fwd/bwd (d64, d128)",
            run: check_attention_flash,
        },
        Check {
            name: "attention naive fwd/bwd",
            run: check_attention_naive,
        },
        Check {
            name: "rope_qknorm fwd/bwd (strided q, k)",
            run: check_rope_qknorm,
        },
        Check {
            name: "ve_gate fwd/bwd",
            run: check_ve_gate,
        },
        Check {
            name: "smear fwd/bwd",
            run: check_smear,
        },
        Check {
            name: "backout fwd/bwd",
            run: check_backout,
        },
        Check {
            name: "muon_step (bf16 Polar Express), cautious update",
            run: check_muon_step,
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
    let (n, c) = s.pick((5, 200), (16384, 1280));
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

/// The norm's backward fused with the residual mix's: against `rmsnorm_backward` into the residual
/// gradient, then `lambda_mix_backward`, in fp32; dx written over the residual gradient (in place, as the
/// model runs it), dx0 and the two lambda gradients added to nonzero values.
fn check_rmsnorm_mix_backward(dev: &dyn Device, s: Scale) -> Result<String> {
    let (n, c) = s.pick((7, 300), (16384, 1280));
    let mut rng = Rng::new(26);
    let (x, x0, dres, dy, dx0) = (
        rand(&mut rng, n * c, 2.0),
        rand(&mut rng, n * c, 2.0),
        rand(&mut rng, n * c, 1.0),
        rand(&mut rng, n * c, 1.0),
        rand(&mut rng, n * c, 0.5),
    );
    let (lambdas, dl0) = ([0.8f32, -0.4], [0.125f32, -2.0]);
    let mut xmix = vec![0f32; n * c];
    ops::lambda_mix_forward(&mut xmix, &x, &x0, lambdas[0], lambdas[1]);
    let xmix = round(&xmix);
    let (mut y, mut rstd) = (vec![0f32; n * c], vec![0f32; n]);
    ops::rmsnorm_forward(&mut y, &mut rstd, &xmix, c);
    let (bx, bx0, bmix, bdy, bres) = (
        dev.upload_new(&bf(&x))?,
        dev.upload_new(&bf(&x0))?,
        dev.upload_new(&bf(&xmix))?,
        dev.upload_new(&bf(&dy))?,
        dev.upload_new(&bf(&dres))?,
    );
    let (bl, brstd, bdx0, bdl) = (
        dev.upload_new(&lambdas)?,
        dev.upload_new(&rstd)?,
        dev.upload_new(&dx0)?,
        dev.upload_new(&dl0)?,
    );
    let scratch = dev.alloc(4 * rmsnorm::mix_backward_scratch(n))?;
    rmsnorm::rmsnorm_mix_backward(
        dev,
        bres.ptr(),
        bdx0.ptr(),
        bdl.ptr(),
        scratch.ptr(),
        bres.ptr(),
        bdy.ptr(),
        bmix.ptr(),
        brstd.ptr(),
        bx.ptr(),
        bx0.ptr(),
        bl.ptr(),
        n,
        c,
    )?;
    let mut g = dres;
    ops::rmsnorm_backward(&mut g, &dy, &xmix, &rstd, c);
    let (mut wdx, mut wdx0) = (vec![0f32; n * c], dx0);
    let (dr, dz) =
        ops::lambda_mix_backward(&mut wdx, &mut wdx0, &g, &x, &x0, lambdas[0], lambdas[1]);
    let mut worst = compare(
        "rmsnorm_mix_backward dx",
        &down_bf(dev, bres.ptr(), n * c)?,
        &wdx,
        8e-3,
        1e-4,
    )?;
    worst = worst.max(compare(
        "rmsnorm_mix_backward dx0",
        &dev.download_vec::<f32>(bdx0.ptr(), n * c)?,
        &wdx0,
        1e-5,
        1e-5,
    )?);
    worst = worst.max(compare(
        "rmsnorm_mix_backward dlambdas",
        &dev.download_vec::<f32>(bdl.ptr(), 2)?,
        &[dl0[0] + dr, dl0[1] + dz],
        1e-4,
        1e-5 * (n * c) as f32,
    )?);
    Ok(summary(worst))
}

/// The final norm's backward fused with the backout's: against `rmsnorm_backward` then `backout_backward`
/// in fp32; dx and dx_mid written over garbage, the lambda gradient added to a nonzero value.
fn check_rmsnorm_backout_backward(dev: &dyn Device, s: Scale) -> Result<String> {
    let (n, c) = s.pick((5, 260), (16384, 1280));
    let mut rng = Rng::new(27);
    let (xf, x_mid, dy) = (
        rand(&mut rng, n * c, 2.0),
        rand(&mut rng, n * c, 2.0),
        rand(&mut rng, n * c, 1.0),
    );
    let (lambda, dl0) = (0.3f32, 0.5f32);
    let (mut y, mut rstd) = (vec![0f32; n * c], vec![0f32; n]);
    ops::rmsnorm_forward(&mut y, &mut rstd, &xf, c);
    let (bxf, bmid, bdy, bdx, bdmid) = (
        dev.upload_new(&bf(&xf))?,
        dev.upload_new(&bf(&x_mid))?,
        dev.upload_new(&bf(&dy))?,
        dev.upload_new(&bf(&vec![7.0; n * c]))?,
        dev.upload_new(&bf(&vec![-3.0; n * c]))?,
    );
    let (bl, brstd, bdl) = (
        dev.upload_new(&[lambda])?,
        dev.upload_new(&rstd)?,
        dev.upload_new(&[dl0])?,
    );
    let scratch = dev.alloc(4 * rmsnorm::mix_backward_scratch(n))?;
    rmsnorm::rmsnorm_backout_backward(
        dev,
        bdx.ptr(),
        bdmid.ptr(),
        bdl.ptr(),
        scratch.ptr(),
        bdy.ptr(),
        bxf.ptr(),
        brstd.ptr(),
        bmid.ptr(),
        bl.ptr(),
        n,
        c,
    )?;
    let mut g = vec![0f32; n * c];
    ops::rmsnorm_backward(&mut g, &dy, &xf, &rstd, c);
    let (mut wdx, mut wmid) = (vec![0f32; n * c], vec![0f32; n * c]);
    let dl = ops::backout_backward(&mut wdx, &mut wmid, &g, &x_mid, lambda);
    let mut worst = compare(
        "rmsnorm_backout_backward dx",
        &down_bf(dev, bdx.ptr(), n * c)?,
        &wdx,
        8e-3,
        1e-4,
    )?;
    worst = worst.max(compare(
        "rmsnorm_backout_backward dx_mid",
        &down_bf(dev, bdmid.ptr(), n * c)?,
        &wmid,
        8e-3,
        1e-4,
    )?);
    worst = worst.max(compare(
        "rmsnorm_backout_backward dlambda",
        &dev.download_vec::<f32>(bdl.ptr(), 1)?,
        &[dl0 + dl],
        1e-4,
        1e-5 * (n * c) as f32,
    )?);
    Ok(summary(worst))
}

fn check_softcap_ce(dev: &dyn Device, s: Scale) -> Result<String> {
    let (n, v, vp) = s.pick((6, 500, 512), (8192, 32768, 32768));
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
    let (vocab, c, n) = s.pick((40, 70, 150), (32768, 1280, 16384));
    let mut rng = Rng::new(16);
    let table = rand(&mut rng, vocab * c, 1.0);
    let ids: Vec<u32> = (0..n).map(|_| rng.below(vocab as u64 / 2) as u32).collect();
    let (bt, bids, out) = (
        dev.upload_new(&bf(&table))?,
        dev.alloc(embedding::ids_bytes(n))?,
        dev.alloc(2 * n * c)?,
    );
    let dids = embedding::upload_ids(dev, bids.ptr(), &ids, vocab)?;
    embedding::embedding_forward(dev, out.ptr(), dids.ids, bt.ptr(), &ids, vocab, c)?;
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
    embedding::embedding_backward(dev, bdt.ptr(), bdo.ptr(), &dids, c)?;
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
    // The host reference is a plain loop.
    let (m, n, k) = s.pick((37, 23, 70), (512, 384, 1280));
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

/// Largest |x| (0 for an empty slice).
fn peak(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// Absolute tolerance of an fp32 sum of `terms` products of O(1) values, accumulated in another order.
fn sum_tol(terms: usize) -> f32 {
    1e-4 * (terms as f32).sqrt().max(10.0)
}

/// Columns `[col, col + w)` of each row of a row-major `(n, stride)` matrix.
fn columns(x: &[f32], stride: usize, col: usize, w: usize) -> Vec<f32> {
    x.chunks_exact(stride)
        .flat_map(|r| r[col..col + w].iter().copied())
        .collect()
}

fn attn(b: usize, t: usize, h: usize, hkv: usize, d: usize, window: usize) -> AttnShape {
    AttnShape {
        b,
        t,
        h,
        hkv,
        d,
        window,
    }
}

/// Attention shapes: GQA, a window shorter than T, T not a multiple of the 64-row tile (the Large d128
/// case is the training shape: whole tiles).
fn attention_shapes(s: Scale) -> Vec<AttnShape> {
    if s == Scale::Small {
        vec![attn(1, 80, 4, 2, 64, 30), attn(1, 70, 2, 1, 128, 40)]
    } else {
        vec![attn(2, 1024, 8, 4, 128, 384), attn(2, 1000, 8, 4, 64, 256)]
    }
}

fn check_attention_flash(dev: &dyn Device, s: Scale) -> Result<String> {
    check_attention(dev, s, AttnImpl::Flash)
}

fn check_attention_naive(dev: &dyn Device, s: Scale) -> Result<String> {
    check_attention(dev, s, AttnImpl::Naive)
}

/// Forward against the CPU, then backward from the device's own `out` and `lse` against the CPU backward
/// given the same two. Errors are measured against the tensor's largest magnitude (at least 0.01), not
/// each element's: the flash kernels round probabilities to bf16 in the PV products, and gradients
/// cancel to near zero.
fn check_attention(dev: &dyn Device, scale: Scale, imp: AttnImpl) -> Result<String> {
    let mut rng = Rng::new(20);
    let mut worst = 0f32;
    for s in attention_shapes(scale) {
        let what = format!(
            "attention {imp:?} b={} t={} h={} hkv={} d={} window={}",
            s.b, s.t, s.h, s.hkv, s.d, s.window
        );
        let (nq, nk, nl) = (
            s.b * s.t * s.h * s.d,
            s.b * s.t * s.hkv * s.d,
            s.b * s.h * s.t,
        );
        // q larger than k: peaked and flat rows both occur.
        let (q, k, v, dout) = (
            rand(&mut rng, nq, 2.0),
            rand(&mut rng, nk, 1.0),
            rand(&mut rng, nk, 1.0),
            rand(&mut rng, nq, 1.0),
        );
        let (bq, bk, bv, bdo) = (
            dev.upload_new(&bf(&q))?,
            dev.upload_new(&bf(&k))?,
            dev.upload_new(&bf(&v))?,
            dev.upload_new(&bf(&dout))?,
        );
        let (out, lse) = (dev.alloc(2 * nq)?, dev.alloc(4 * nl)?);
        attention::attention_forward(
            dev,
            imp,
            out.ptr(),
            lse.ptr(),
            bq.ptr(),
            bk.ptr(),
            bv.ptr(),
            s,
        )?;
        let (mut wo, mut wl) = (vec![0f32; nq], vec![0f32; nl]);
        ops::attention_forward(&mut wo, &mut wl, &q, &k, &v, s);
        let got_out = down_bf(dev, out.ptr(), nq)?;
        let got_lse = dev.download_vec::<f32>(lse.ptr(), nl)?;
        let mag = |x: &[f32]| peak(x).max(0.01);
        worst = worst.max(compare(
            &format!("{what}: out"),
            &got_out,
            &wo,
            1e-2,
            1e-2 * mag(&wo),
        )?);
        worst = worst.max(compare(
            &format!("{what}: lse"),
            &got_lse,
            &wl,
            1e-3,
            1e-3 * mag(&wl),
        )?);

        let (dq, dk, dv, delta) = (
            dev.alloc(2 * nq)?,
            dev.alloc(2 * nk)?,
            dev.alloc(2 * nk)?,
            dev.alloc(4 * nl)?,
        );
        attention::attention_backward(
            dev,
            imp,
            dq.ptr(),
            dk.ptr(),
            dv.ptr(),
            delta.ptr(),
            bdo.ptr(),
            out.ptr(),
            lse.ptr(),
            bq.ptr(),
            bk.ptr(),
            bv.ptr(),
            s,
        )?;
        let (mut wdq, mut wdk, mut wdv) = (vec![0f32; nq], vec![0f32; nk], vec![0f32; nk]);
        ops::attention_backward(
            &mut wdq, &mut wdk, &mut wdv, &dout, &got_out, &got_lse, &q, &k, &v, s,
        );
        for (name, p, want) in [("dq", &dq, &wdq), ("dk", &dk, &wdk), ("dv", &dv, &wdv)] {
            worst = worst.max(compare(
                &format!("{what}: {name}"),
                &down_bf(dev, p.ptr(), want.len())?,
                want,
                2e-2,
                1e-2 * mag(want),
            )?);
        }
    }
    Ok(summary(worst))
}

/// q and k read from a fused QKV GEMM output (GQA head counts, a position offset), forward, then backward
/// into the strided gradient of that output: q's added to what is there, k's written over it; v's
/// columns are left alone.
fn check_rope_qknorm(dev: &dyn Device, scale: Scale) -> Result<String> {
    let (b, t, h, hkv, d, pos0) = scale.pick((2, 5, 4, 2, 64, 3), (16, 1024, 10, 5, 128, 0));
    let (n, stride, positions) = (b * t, (h + 2 * hkv) * d, pos0 + t);
    let (cos, sin) = ops::rope_tables(positions, d, 10000.0);
    let mut rng = Rng::new(21);
    let (qkv, g0) = (
        rand(&mut rng, n * stride, 1.0),
        rand(&mut rng, n * stride, 0.5),
    );
    let (bqkv, bcos, bsin, bgrad) = (
        dev.upload_new(&bf(&qkv))?,
        dev.upload_new(&cos)?,
        dev.upload_new(&sin)?,
        dev.upload_new(&bf(&g0))?,
    );
    let mut want_grad = g0.clone();
    let mut worst = 0f32;
    for (col, heads, name, accumulate) in [(0, h, "q", true), (h * d, hkv, "k", false)] {
        let shape = RopeShape {
            n,
            t,
            heads,
            d,
            pos0,
            x_stride: stride,
            positions,
        };
        let m = n * heads * d;
        let mut xr = columns(&qkv, stride, col, heads * d);
        ops::rope_forward(&mut xr, &cos, &sin, t, heads, d, pos0);
        let (mut wy, mut wr) = (vec![0f32; m], vec![0f32; n * heads]);
        ops::qk_norm_forward(&mut wy, &mut wr, &xr, d);
        let (y, rstd) = (dev.alloc(2 * m)?, dev.alloc(4 * n * heads)?);
        let x = bqkv.at::<bf16>(col);
        rope_qknorm::rope_qknorm_forward(
            dev,
            y.ptr(),
            rstd.ptr(),
            x,
            bcos.ptr(),
            bsin.ptr(),
            shape,
        )?;
        worst = worst.max(compare(
            &format!("rope_qknorm {name} rstd"),
            &dev.download_vec::<f32>(rstd.ptr(), n * heads)?,
            &wr,
            1e-4,
            0.0,
        )?);
        worst = worst.max(compare(
            &format!("rope_qknorm {name} y"),
            &down_bf(dev, y.ptr(), m)?,
            &wy,
            8e-3,
            1e-3,
        )?);
        let dy = rand(&mut rng, m, 1.0);
        let bdy = dev.upload_new(&bf(&dy))?;
        rope_qknorm::rope_qknorm_backward(
            dev,
            bgrad.at::<bf16>(col),
            bdy.ptr(),
            x,
            rstd.ptr(),
            bcos.ptr(),
            bsin.ptr(),
            shape,
            stride,
            accumulate,
        )?;
        let mut dx = vec![0f32; m];
        ops::qk_norm_backward(&mut dx, &dy, &xr, &wr, d);
        ops::rope_backward(&mut dx, &cos, &sin, t, heads, d, pos0);
        for (row, g) in want_grad
            .chunks_exact_mut(stride)
            .zip(dx.chunks_exact(heads * d))
        {
            for (w, g) in row[col..col + heads * d].iter_mut().zip(g) {
                *w = if accumulate { *w + g } else { *g };
            }
        }
    }
    let got = down_bf(dev, bgrad.ptr(), n * stride)?;
    worst = worst.max(compare(
        "rope_qknorm gradient",
        &got,
        &want_grad,
        1e-2,
        2e-2,
    )?);
    let vcol = (h + hkv) * d;
    compare(
        "rope_qknorm gradient (v columns, untouched)",
        &columns(&got, stride, vcol, hkv * d),
        &columns(&g0, stride, vcol, hkv * d),
        0.0,
        0.0,
    )?;
    Ok(summary(worst))
}

/// The gate on the v columns of a fused QKV output, forward (in place) and backward from a strided dv,
/// adding into nonzero dxn and dwg as across micro-steps.
fn check_ve_gate(dev: &dyn Device, scale: Scale) -> Result<String> {
    let (n, c, h, hkv, d) = scale.pick((7, 40, 6, 3, 64), (16384, 1280, 10, 5, 128));
    let k = VE_GATE_CHANNELS;
    let (stride, vcol) = ((h + 2 * hkv) * d, (h + hkv) * d);
    let shape = GateShape {
        n,
        c,
        hkv,
        d,
        k,
        v_stride: stride,
    };
    let mut rng = Rng::new(22);
    let (qkv, xn, ve, wg) = (
        rand(&mut rng, n * stride, 1.0),
        rand(&mut rng, n * c, 2.0),
        rand(&mut rng, n * hkv * d, 1.0),
        rand(&mut rng, hkv * k, 0.5),
    );
    let (bqkv, bxn, bve, bwg) = (
        dev.upload_new(&bf(&qkv))?,
        dev.upload_new(&bf(&xn))?,
        dev.upload_new(&bf(&ve))?,
        dev.upload_new(&wg)?,
    );
    let gate = dev.alloc(4 * n * hkv)?;
    model_ops::ve_gate_forward(
        dev,
        bqkv.at::<bf16>(vcol),
        gate.ptr(),
        bxn.ptr(),
        bve.ptr(),
        bwg.ptr(),
        shape,
    )?;
    let mut wv = columns(&qkv, stride, vcol, hkv * d);
    let mut wgate = vec![0f32; n * hkv];
    ops::ve_gate_forward(&mut wv, &mut wgate, &xn, &ve, &wg, n, c, hkv, d);
    let mut worst = compare(
        "ve_gate gate",
        &dev.download_vec::<f32>(gate.ptr(), n * hkv)?,
        &wgate,
        1e-4,
        1e-6,
    )?;
    let got = down_bf(dev, bqkv.ptr(), n * stride)?;
    worst = worst.max(compare(
        "ve_gate v",
        &columns(&got, stride, vcol, hkv * d),
        &wv,
        8e-3,
        1e-3,
    )?);
    compare(
        "ve_gate q, k columns (untouched)",
        &columns(&got, stride, 0, vcol),
        &columns(&qkv, stride, 0, vcol),
        0.0,
        0.0,
    )?;

    let (dqkv, dxn0, dwg0) = (
        rand(&mut rng, n * stride, 1.0),
        rand(&mut rng, n * c, 0.5),
        rand(&mut rng, hkv * k, 0.5),
    );
    let (bdqkv, bdxn, bdwg) = (
        dev.upload_new(&bf(&dqkv))?,
        dev.upload_new(&bf(&dxn0))?,
        dev.upload_new(&dwg0)?,
    );
    let dve = dev.alloc(2 * n * hkv * d)?;
    let scratch = dev.alloc(4 * model_ops::ve_gate_scratch(&shape))?;
    model_ops::ve_gate_backward(
        dev,
        dve.ptr(),
        bdxn.ptr(),
        bdwg.ptr(),
        scratch.ptr(),
        bdqkv.at::<bf16>(vcol),
        gate.ptr(),
        bxn.ptr(),
        bve.ptr(),
        bwg.ptr(),
        shape,
    )?;
    let dv = columns(&dqkv, stride, vcol, hkv * d);
    let (mut wdve, mut wdwg, mut wdxn) = (vec![0f32; n * hkv * d], dwg0, dxn0);
    ops::ve_gate_backward(
        &mut wdve, &mut wdwg, &mut wdxn, &dv, &wgate, &xn, &ve, &wg, n, c, hkv, d,
    );
    worst = worst.max(compare(
        "ve_gate dve",
        &down_bf(dev, dve.ptr(), n * hkv * d)?,
        &wdve,
        8e-3,
        1e-4,
    )?);
    worst = worst.max(compare(
        "ve_gate dxn",
        &down_bf(dev, bdxn.ptr(), n * c)?,
        &wdxn,
        1e-2,
        1e-2,
    )?);
    worst = worst.max(compare(
        "ve_gate dwg",
        &dev.download_vec::<f32>(bdwg.ptr(), hkv * k)?,
        &wdwg,
        1e-3,
        sum_tol(n),
    )?);
    Ok(summary(worst))
}

/// Smear within sequences, forward and backward, the gate-weight and lambda gradients added to nonzero
/// values.
fn check_smear(dev: &dyn Device, scale: Scale) -> Result<String> {
    let (b, t, c) = scale.pick((2, 5, 40), (16, 1024, 1280));
    let (n, k, lambda) = (b * t, SMEAR_CHANNELS, 0.7f32);
    let mut rng = Rng::new(23);
    let (x, w) = (rand(&mut rng, n * c, 1.5), rand(&mut rng, k, 0.4));
    let (bx, bw, bl) = (
        dev.upload_new(&bf(&x))?,
        dev.upload_new(&w)?,
        dev.upload_new(&[lambda])?,
    );
    let (out, g) = (dev.alloc(2 * n * c)?, dev.alloc(4 * n)?);
    model_ops::smear_forward(
        dev,
        out.ptr(),
        g.ptr(),
        bx.ptr(),
        bw.ptr(),
        bl.ptr(),
        n,
        t,
        c,
        k,
    )?;
    let (mut wout, mut wg) = (vec![0f32; n * c], vec![0f32; n]);
    ops::smear_forward(&mut wout, &mut wg, &x, &w, lambda, b, t, c);
    let mut worst = compare(
        "smear g",
        &dev.download_vec::<f32>(g.ptr(), n)?,
        &wg,
        1e-4,
        1e-6,
    )?;
    worst = worst.max(compare(
        "smear out",
        &down_bf(dev, out.ptr(), n * c)?,
        &wout,
        8e-3,
        1e-3,
    )?);

    let (dout, dx0, dw0, dl0) = (
        rand(&mut rng, n * c, 1.0),
        rand(&mut rng, n * c, 0.5),
        rand(&mut rng, k, 0.5),
        0.25f32,
    );
    let (bdout, bdx, bdw, bdl) = (
        dev.upload_new(&bf(&dout))?,
        dev.upload_new(&bf(&dx0))?,
        dev.upload_new(&dw0)?,
        dev.upload_new(&[dl0])?,
    );
    let scratch = dev.alloc(4 * model_ops::smear_scratch(n, k))?;
    model_ops::smear_backward(
        dev,
        bdx.ptr(),
        bdw.ptr(),
        bdl.ptr(),
        scratch.ptr(),
        bdout.ptr(),
        bx.ptr(),
        bw.ptr(),
        bl.ptr(),
        n,
        t,
        c,
        k,
    )?;
    let (mut wdx, mut wdw, mut wdl) = (dx0, dw0, dl0);
    ops::smear_backward(&mut wdx, &mut wdw, &mut wdl, &dout, &x, &w, lambda, b, t, c);
    worst = worst.max(compare(
        "smear dx",
        &down_bf(dev, bdx.ptr(), n * c)?,
        &wdx,
        1e-2,
        1e-2,
    )?);
    worst = worst.max(compare(
        "smear dw",
        &dev.download_vec::<f32>(bdw.ptr(), k)?,
        &wdw,
        1e-3,
        sum_tol(n),
    )?);
    worst = worst.max(compare(
        "smear dlambda",
        &dev.download_vec::<f32>(bdl.ptr(), 1)?,
        &[wdl],
        1e-3,
        sum_tol(n),
    )?);
    Ok(summary(worst))
}

fn check_backout(dev: &dyn Device, scale: Scale) -> Result<String> {
    let (n, c) = scale.pick((9, 33), (16384, 1280));
    let (len, lambda) = (n * c, 0.35f32);
    let mut rng = Rng::new(24);
    let (x, xm) = (rand(&mut rng, len, 2.0), rand(&mut rng, len, 2.0));
    let (bx, bxm, bl) = (
        dev.upload_new(&bf(&x))?,
        dev.upload_new(&bf(&xm))?,
        dev.upload_new(&[lambda])?,
    );
    let out = dev.alloc(2 * len)?;
    model_ops::backout_forward(dev, out.ptr(), bx.ptr(), bxm.ptr(), bl.ptr(), len)?;
    let mut wout = vec![0f32; len];
    ops::backout_forward(&mut wout, &x, &xm, lambda);
    let mut worst = compare(
        "backout out",
        &down_bf(dev, out.ptr(), len)?,
        &wout,
        8e-3,
        1e-3,
    )?;

    let (dout, g0, gm0, dl0) = (
        rand(&mut rng, len, 1.0),
        rand(&mut rng, len, 0.5),
        rand(&mut rng, len, 0.5),
        -0.5f32,
    );
    let (bdout, bg, bgm, bdl) = (
        dev.upload_new(&bf(&dout))?,
        dev.upload_new(&bf(&g0))?,
        dev.upload_new(&bf(&gm0))?,
        dev.upload_new(&[dl0])?,
    );
    let scratch = dev.alloc(4 * model_ops::backout_scratch(n))?;
    model_ops::backout_backward(
        dev,
        bg.ptr(),
        bgm.ptr(),
        bdl.ptr(),
        scratch.ptr(),
        bdout.ptr(),
        bxm.ptr(),
        bl.ptr(),
        n,
        c,
    )?;
    let (mut wdx, mut wdm) = (g0, gm0);
    let wdl = dl0 + ops::backout_backward(&mut wdx, &mut wdm, &dout, &xm, lambda);
    worst = worst.max(compare(
        "backout dx",
        &down_bf(dev, bg.ptr(), len)?,
        &wdx,
        8e-3,
        1e-3,
    )?);
    worst = worst.max(compare(
        "backout dx_mid",
        &down_bf(dev, bgm.ptr(), len)?,
        &wdm,
        8e-3,
        1e-3,
    )?);
    worst = worst.max(compare(
        "backout dlambda",
        &dev.download_vec::<f32>(bdl.ptr(), 1)?,
        &[wdl],
        1e-4,
        sum_tol(len),
    )?);
    Ok(summary(worst))
}

/// Two Muon steps on stacks of square, wide and tall matrices against `muon_update` per matrix. The bf16
/// pipelines differ from the CPU only by accumulation order, which can flip a bf16 rounding, so the
/// update (P − P0) and the second moment are measured against their largest entry. Without weight decay:
/// the cautious mask (sign(O) = sign(P)) flips wherever O is near zero, which moves an element by the whole
/// decay lr·wd·P; the cautious update is checked alone, from the same O on both sides.
fn check_muon_step(dev: &dyn Device, scale: Scale) -> Result<String> {
    let stacks = if scale == Scale::Small {
        vec![Stack { k: 2, m: 24, n: 9 }, Stack { k: 2, m: 9, n: 24 }]
    } else {
        vec![
            Stack {
                k: 2,
                m: 1280,
                n: 1280,
            },
            Stack {
                k: 1,
                m: 2560,
                n: 640,
            },
            Stack {
                k: 2,
                m: 320,
                n: 1280,
            },
        ]
    };
    let h = MuonHyper {
        lr: 0.02,
        momentum: 0.95,
        weight_decay: 0.0,
        beta2: 0.9,
        ns_steps: 5,
        bf16: true,
    };
    let mut rng = Rng::new(25);
    let mut worst = check_cautious_update(dev, stacks[0], &mut rng)?;
    for s in stacks {
        let (m, n) = (s.m, s.n);
        let slen = second_moment_len(m, n);
        let mut p = rand(&mut rng, s.total(), 1.0);
        let (mut mom, mut second) = (vec![0f32; s.total()], vec![0f32; s.k * slen]);
        let scratch = MuonScratch::new(dev, s)?;
        let (bp, bpb, bm, bs) = (
            dev.upload_new(&p)?,
            dev.alloc(2 * s.total())?,
            dev.upload_new(&mom)?,
            dev.upload_new(&second)?,
        );
        let p0 = p.clone();
        for step in 1..=2 {
            let g: Vec<f32> = (0..s.total()).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let bg = dev.upload_new(&g)?;
            muon::muon_step(
                dev,
                &scratch,
                bp.ptr(),
                Some(bpb.ptr()),
                bg.ptr(),
                bm.ptr(),
                bs.ptr(),
                &h,
            )?;
            for i in 0..s.k {
                let r = i * s.len()..(i + 1) * s.len();
                muon_update(
                    &mut p[r.clone()],
                    &g[r.clone()],
                    &mut mom[r],
                    &mut second[i * slen..(i + 1) * slen],
                    (m, n),
                    &h,
                );
            }
            let what = format!("muon_step {}x({m}, {n}) step {step}", s.k);
            let got: Vec<f32> = dev.download_vec(bp.ptr(), s.total())?;
            let dgot: Vec<f32> = got.iter().zip(&p0).map(|(a, b)| a - b).collect();
            let dwant: Vec<f32> = p.iter().zip(&p0).map(|(a, b)| a - b).collect();
            worst = worst.max(compare(
                &format!("{what}: update"),
                &dgot,
                &dwant,
                0.0,
                5e-2 * peak(&dwant),
            )?);
            compare(
                &format!("{what}: bf16 copy"),
                &down_bf(dev, bpb.ptr(), s.total())?,
                &round(&got),
                0.0,
                0.0,
            )?;
            worst = worst.max(compare(
                &format!("{what}: momentum"),
                &dev.download_vec::<f32>(bm.ptr(), s.total())?,
                &mom,
                1e-5,
                1e-7,
            )?);
            worst = worst.max(compare(
                &format!("{what}: second moment"),
                &dev.download_vec::<f32>(bs.ptr(), s.k * slen)?,
                &second,
                0.0,
                5e-2 * peak(&second),
            )?);
        }
    }
    Ok(summary(worst))
}

/// `muon_cautious_update` (decay where sign(O) = sign(P), then the step; the bf16 copy rewritten).
fn check_cautious_update(dev: &dyn Device, s: Stack, rng: &mut Rng) -> Result<f32> {
    let (lr, wd) = (0.02, 0.2);
    let (mut p, o) = (rand(rng, s.total(), 1.0), rand(rng, s.total(), 1.0));
    let (bp, bo, bpb) = (
        dev.upload_new(&p)?,
        dev.upload_new(&o)?,
        dev.alloc(2 * s.total())?,
    );
    muon::muon_cautious_update(dev, bp.ptr(), Some(bpb.ptr()), bo.ptr(), s, lr, wd)?;
    cautious_update(&mut p, &o, lr, wd);
    let got: Vec<f32> = dev.download_vec(bp.ptr(), s.total())?;
    let w = compare("muon_cautious_update", &got, &p, 1e-6, 1e-7)?;
    compare(
        "muon_cautious_update bf16 copy",
        &down_bf(dev, bpb.ptr(), s.total())?,
        &round(&got),
        0.0,
        0.0,
    )?;
    Ok(w)
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
    let (m, n, k) = s.pick((32, 16, 48), (256, 128, 512));
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
