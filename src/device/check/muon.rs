//! Checks of `kernels/muon.rs` (`cuda/muon.cu`) against `optim::muon`: each per-matrix stage (Nesterov momentum,
//! MuonEq, Frobenius normalisation, Muon+, NorMuon, the cautious update) on stacks of K = 1..3 tall, wide,
//! square and ragged matrices, Polar Express through the GEMM, and the whole Muon step.

use super::Scale;
use super::{compare, down_bf, peak, rand, round, summary};
use crate::device::kernels::muon;
use crate::device::kernels::muon::MuonScratch;
use crate::device::kernels::muon::Stack;
use crate::device::Device;
use crate::device::Result;
use crate::optim::muon as cpu;
use crate::optim::muon::cautious_update;
use crate::optim::muon::muon_update;
use crate::optim::muon::second_moment_len;
use crate::optim::muon::MuonHyper;
use crate::rng::Rng;
use half::bf16;

/// Two Muon steps on stacks of square, wide and tall matrices against `muon_update` per matrix. The bf16
/// pipelines differ from the CPU only by accumulation order, which can flip a bf16 rounding, so the
/// update (P − P0) and the second moment are measured against their largest entry. With weight decay the
/// cautious mask (sign(O) = sign(P)) flips wherever O is near zero, which moves an element by the whole
/// decay lr·wd·P: the large stacks run without it, and the cautious update is also checked alone, from the
/// same O on both sides.
pub(super) fn check_muon_step(dev: &dyn Device, scale: Scale) -> Result<String> {
    let st = |k, m, n| Stack { k, m, n };
    // (stack, weight decay, tolerance of the update relative to its largest entry)
    let cases = scale.pick(
        vec![
            (st(2, 24, 9), 0.0, 5e-2),
            (st(2, 9, 24), 0.0, 5e-2),
            (st(2, 24, 9), 0.2, 3e-2),
            (st(2, 9, 24), 0.2, 3e-2),
            (st(2, 16, 16), 0.2, 3e-2),
        ],
        vec![
            (st(2, 1280, 1280), 0.0, 5e-2),
            (st(1, 2560, 640), 0.0, 5e-2),
            (st(2, 320, 1280), 0.0, 5e-2),
        ],
    );
    let mut rng = Rng::new(25);
    let mut worst = check_cautious_update(dev, cases[0].0, &mut rng)?;
    for (s, weight_decay, update_tol) in cases {
        let h = MuonHyper {
            lr: 0.02,
            momentum: 0.95,
            weight_decay,
            beta2: 0.9,
            ns_steps: 5,
            bf16: true,
        };
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
            let what = format!("muon_step {}x({m}, {n}) wd {weight_decay} step {step}", s.k);
            let got: Vec<f32> = dev.download_vec(bp.ptr(), s.total())?;
            let dgot: Vec<f32> = got.iter().zip(&p0).map(|(a, b)| a - b).collect();
            let dwant: Vec<f32> = p.iter().zip(&p0).map(|(a, b)| a - b).collect();
            worst = worst.max(compare(
                &format!("{what}: update"),
                &dgot,
                &dwant,
                0.0,
                update_tol * peak(&dwant),
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
pub(super) fn check_cautious_update(dev: &dyn Device, s: Stack, rng: &mut Rng) -> Result<f32> {
    let (lr, wd) = (0.02, 0.2);
    let (mut p, o) = (rand(rng, s.total(), 1.0), rand(rng, s.total(), 1.0));
    let (bp, bo, bpb) = (dev.upload_new(&p)?, dev.upload_new(&o)?, dev.alloc(2 * s.total())?);
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

/// Stacks for the per-matrix stages. Small: tall, wide and square shapes, rows longer than a block (300),
/// single rows and columns, odd sizes, each with K = 1..3. Large: d20's matrix shapes.
fn stage_stacks(scale: Scale) -> Vec<Stack> {
    match scale {
        Scale::Small => [(13, 5), (5, 13), (8, 8), (37, 300), (300, 37), (1, 7), (9, 1)]
            .into_iter()
            .flat_map(|(m, n)| (1..=3).map(move |k| Stack { k, m, n }))
            .collect(),
        Scale::Large => vec![
            Stack { k: 2, m: 1280, n: 1280 },
            Stack { k: 1, m: 2560, n: 640 },
            Stack { k: 2, m: 320, n: 1280 },
        ],
    }
}

/// Values in [lo, hi), not rounded to bf16 (the stages take fp32).
fn uniform(rng: &mut Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(lo, hi)).collect()
}

/// Applies a per-matrix CPU function to every matrix of a stack.
fn per_matrix(x: &mut [f32], s: Stack, f: impl FnMut(&mut [f32])) {
    x.chunks_exact_mut(s.len()).for_each(f);
}

/// Each per-matrix stage kernel against its CPU function applied matrix by matrix: Nesterov momentum and
/// the Frobenius normalisation with and without bf16 rounding, MuonEq (with an all-zero row, whose norm
/// is clamped and which stays zero), Muon+, three NorMuon steps from a zero second moment, and the
/// cautious update with its bf16 copy. The Frobenius normalisation, MuonEq, Muon+ and NorMuon run twice, as
/// the one-block-per-matrix kernels and as the wide stages `muon_step` uses.
pub(super) fn check_muon_stages(dev: &dyn Device, scale: Scale) -> Result<String> {
    let mut rng = Rng::new(28);
    let mut worst = 0f32;
    for s in stage_stacks(scale) {
        let (t, what) = (s.total(), |k: &str| format!("{k} {}x({}, {})", s.k, s.m, s.n));
        let stats = dev.alloc(4 * muon::wide_scratch_len(s))?;
        let down = |p: &crate::device::Buffer, n: usize| dev.download_vec::<f32>(p.ptr(), n);
        for rounded in [false, true] {
            // bf16 rounding of the result: one bf16 step of error where the accumulation order flips it.
            let rel = if rounded { 8e-3 } else { 1e-5 };
            let g = uniform(&mut rng, t, -1.0, 1.0);
            let mut mom = uniform(&mut rng, t, -1.0, 1.0);
            let (bg, bm, bu) = (dev.upload_new(&g)?, dev.upload_new(&mom)?, dev.alloc(4 * t)?);
            muon::muon_nesterov(dev, bu.ptr(), bm.ptr(), bg.ptr(), s, 0.95, rounded)?;
            let mut u = vec![0f32; t];
            cpu::nesterov(&mut u, &g, &mut mom, 0.95);
            if rounded {
                u = round(&u);
            }
            let w = &what(&format!("muon_nesterov bf16={rounded}"));
            worst = worst.max(compare(&format!("{w} u"), &down(&bu, t)?, &u, rel, 1e-7)?);
            worst = worst.max(compare(&format!("{w} momentum"), &down(&bm, t)?, &mom, 1e-5, 1e-7)?);

            let mut x = uniform(&mut rng, t, -3.0, 3.0);
            let (bx, bw) = (dev.upload_new(&x)?, dev.upload_new(&x)?);
            muon::muon_frobenius_norm(dev, bx.ptr(), s, rounded)?;
            muon::muon_frobenius_norm_wide(dev, bw.ptr(), stats.ptr(), s, rounded)?;
            per_matrix(&mut x, s, |x| cpu::frobenius_normalize(x, rounded));
            let w = what(&format!("muon_frobenius_norm bf16={rounded}"));
            worst = worst.max(compare(&w, &down(&bx, t)?, &x, rel, 1e-7)?);
            worst = worst.max(compare(&format!("{w} wide"), &down(&bw, t)?, &x, rel, 1e-7)?);
        }

        let mut x = uniform(&mut rng, t, -1.0, 1.0);
        x[..s.n].iter_mut().for_each(|v| *v = 0.0);
        let (bx, bw) = (dev.upload_new(&x)?, dev.upload_new(&x)?);
        muon::muon_eq(dev, bx.ptr(), s, false)?;
        muon::muon_eq_wide(dev, bw.ptr(), stats.ptr(), s, false)?;
        per_matrix(&mut x, s, |x| cpu::muon_eq(x, (s.m, s.n)));
        worst = worst.max(compare(&what("muon_eq"), &down(&bx, t)?, &x, 1e-5, 1e-7)?);
        worst = worst.max(compare(&what("muon_eq wide"), &down(&bw, t)?, &x, 1e-5, 1e-7)?);

        let mut o = uniform(&mut rng, t, -0.5, 0.5);
        let (bo, bw) = (dev.upload_new(&o)?, dev.upload_new(&o)?);
        muon::muon_plus(dev, bo.ptr(), s)?;
        muon::muon_plus_wide(dev, bw.ptr(), stats.ptr(), s)?;
        per_matrix(&mut o, s, |o| cpu::muon_plus(o, (s.m, s.n)));
        worst = worst.max(compare(&what("muon_plus"), &down(&bo, t)?, &o, 1e-5, 1e-7)?);
        worst = worst.max(compare(&what("muon_plus wide"), &down(&bw, t)?, &o, 1e-5, 1e-7)?);

        // Step 1 from zero state (upstream's initial value), then from the state the kernel left.
        let slen = second_moment_len(s.m, s.n);
        let mut second = vec![0f32; s.k * slen];
        let (bs, bsw) = (dev.upload_new(&second)?, dev.upload_new(&second)?);
        for step in 0..3 {
            let mut o = uniform(&mut rng, t, -1.0, 1.0);
            let (bo, bw) = (dev.upload_new(&o)?, dev.upload_new(&o)?);
            muon::muon_normuon(dev, bo.ptr(), bs.ptr(), s, 0.9)?;
            muon::muon_normuon_wide(dev, bw.ptr(), bsw.ptr(), stats.ptr(), s, 0.9)?;
            for (o, sec) in o.chunks_exact_mut(s.len()).zip(second.chunks_exact_mut(slen)) {
                cpu::normuon(o, sec, (s.m, s.n), 0.9);
            }
            let w = what(&format!("muon_normuon step {step}"));
            worst = worst.max(compare(&format!("{w} o"), &down(&bo, t)?, &o, 2e-5, 1e-7)?);
            worst = worst.max(compare(&format!("{w} o wide"), &down(&bw, t)?, &o, 2e-5, 1e-7)?);
            worst = worst.max(compare(
                &format!("{w} second moment wide"),
                &down(&bsw, s.k * slen)?,
                &second,
                1e-5,
                1e-9,
            )?);
            worst = worst.max(compare(
                &format!("{w} second moment"),
                &down(&bs, s.k * slen)?,
                &second,
                1e-5,
                1e-9,
            )?);
        }

        let mut p = uniform(&mut rng, t, -1.0, 1.0);
        let o = uniform(&mut rng, t, -1.0, 1.0);
        let (bp, bo, bpb) = (dev.upload_new(&p)?, dev.upload_new(&o)?, dev.alloc(2 * t)?);
        muon::muon_cautious_update(dev, bp.ptr(), Some(bpb.ptr()), bo.ptr(), s, 0.02, 0.2)?;
        cautious_update(&mut p, &o, 0.02, 0.2);
        let got = down(&bp, t)?;
        worst = worst.max(compare(&what("muon_cautious_update"), &got, &p, 1e-6, 1e-7)?);
        compare(
            &what("muon_cautious_update bf16 copy"),
            &down_bf(dev, bpb.ptr(), t)?,
            &round(&got),
            0.0,
            0.0,
        )?;
    }
    Ok(summary(worst))
}

/// Polar Express (five iterations through the GEMM, bf16) on Frobenius-normalised stacks against
/// `optim::muon::polar_express`, measured against the largest entry (accumulation order can flip a bf16
/// rounding). Small: tall, wide, square, a single row and a 40x3 column block, K = 1..3.
pub(super) fn check_polar_express(dev: &dyn Device, scale: Scale) -> Result<String> {
    let stacks: Vec<Stack> = match scale {
        Scale::Small => [(24, 9), (9, 24), (16, 16), (1, 7), (40, 3)]
            .into_iter()
            .flat_map(|(m, n)| (1..=3).map(move |k| Stack { k, m, n }))
            .collect(),
        Scale::Large => stage_stacks(scale),
    };
    let mut rng = Rng::new(29);
    let mut worst = 0f32;
    for s in stacks {
        let (m, n, k) = (s.m, s.n, s.k);
        let mut x = uniform(&mut rng, s.total(), -1.0, 1.0);
        per_matrix(&mut x, s, |x| cpu::frobenius_normalize(x, true));
        let kk = m.min(n);
        let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
        let (bx, by, ba, bb) = (
            dev.upload_new(&xb)?,
            dev.alloc(2 * s.total())?,
            dev.alloc(2 * k * kk * kk)?,
            dev.alloc(2 * k * kk * kk)?,
        );
        muon::polar_express(dev, bx.ptr(), by.ptr(), ba.ptr(), bb.ptr(), s, 5)?;
        per_matrix(&mut x, s, |x| cpu::polar_express(x, (m, n), 5, true));
        worst = worst.max(compare(
            &format!("polar_express {k}x({m}, {n})"),
            &down_bf(dev, bx.ptr(), s.total())?,
            &x,
            0.0,
            2e-2 * peak(&x).max(1e-30),
        )?);
    }
    Ok(summary(worst))
}
