//! Checks of `kernels/muon.rs` (`cuda/muon.cu`): the whole Muon step and the cautious update against `optim::muon`.

use super::Scale;
use super::{compare, down_bf, peak, rand, round, summary};
use crate::device::kernels::muon;
use crate::device::kernels::muon::MuonScratch;
use crate::device::kernels::muon::Stack;
use crate::device::Device;
use crate::device::Result;
use crate::optim::muon::cautious_update;
use crate::optim::muon::muon_update;
use crate::optim::muon::second_moment_len;
use crate::optim::muon::MuonHyper;
use crate::rng::Rng;

/// Two Muon steps on stacks of square, wide and tall matrices against `muon_update` per matrix. The bf16
/// pipelines differ from the CPU only by accumulation order, which can flip a bf16 rounding, so the
/// update (P − P0) and the second moment are measured against their largest entry. Without weight decay:
/// the cautious mask (sign(O) = sign(P)) flips wherever O is near zero, which moves an element by the whole
/// decay lr·wd·P; the cautious update is checked alone, from the same O on both sides.
pub(super) fn check_muon_step(dev: &dyn Device, scale: Scale) -> Result<String> {
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
pub(super) fn check_cautious_update(dev: &dyn Device, s: Stack, rng: &mut Rng) -> Result<f32> {
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
