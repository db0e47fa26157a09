//! The Muon stage kernels of `cuda/muon.cu` on the Emu device against the CPU reference of each stage in
//! `nanochat::optim::muon`, applied matrix by matrix to stacks of K = 1..3 tall, wide, square and ragged
//! (m, n) matrices, under the three thread schedules.

use nanochat::device::emu::EmuDevice;
use nanochat::device::kernels::muon::{self, Stack};
use nanochat::device::{Device, Schedule};
use nanochat::optim::muon as cpu;
use nanochat::rng::Rng;

mod common;
use common::{assert_close, devices, round_bf16, uniform};

/// Tall, wide and square shapes; rows longer than a block (300), single rows and columns, odd sizes.
const SHAPES: [(usize, usize); 7] = [
    (13, 5),
    (5, 13),
    (8, 8),
    (37, 300),
    (300, 37),
    (1, 7),
    (9, 1),
];

/// Runs `each` over every schedule, shape and K = 1..3 with a fresh stack description.
fn for_all(mut each: impl FnMut(Schedule, &dyn Device, Stack, &mut Rng)) {
    let mut rng = Rng::new(11);
    for (sched, dev) in devices() {
        for &(m, n) in &SHAPES {
            for k in 1..=3 {
                each(sched, dev.as_ref(), Stack { k, m, n }, &mut rng);
            }
        }
    }
}

/// Applies a per-matrix CPU function to every matrix of a stack.
fn per_matrix(x: &mut [f32], s: Stack, mut f: impl FnMut(&mut [f32])) {
    x.chunks_exact_mut(s.len()).for_each(&mut f);
}

#[test]
fn nesterov_matches_cpu() {
    for_all(|sched, d, s, rng| {
        for round in [false, true] {
            let g = uniform(rng, s.total(), -1.0, 1.0);
            let mut mom = uniform(rng, s.total(), -1.0, 1.0);
            let (bg, bm, bu) = (
                d.upload_new(&g).unwrap(),
                d.upload_new(&mom).unwrap(),
                d.alloc(4 * s.total()).unwrap(),
            );
            muon::muon_nesterov(d, bu.ptr(), bm.ptr(), bg.ptr(), s, 0.95, round).unwrap();
            let mut u = vec![0f32; s.total()];
            cpu::nesterov(&mut u, &g, &mut mom, 0.95);
            if round {
                u.iter_mut()
                    .for_each(|v| *v = half::bf16::from_f32(*v).to_f32());
            }
            let what = format!("{sched:?} {s:?} bf16={round}");
            let rel = if round { 8e-3 } else { 1e-5 };
            assert_close(
                &d.download_vec(bu.ptr(), s.total()).unwrap(),
                &u,
                rel,
                1e-7,
                &format!("{what} u"),
            );
            assert_close(
                &d.download_vec(bm.ptr(), s.total()).unwrap(),
                &mom,
                1e-5,
                1e-7,
                &format!("{what} momentum"),
            );
        }
    });
}

#[test]
fn muon_eq_matches_cpu() {
    for_all(|sched, d, s, rng| {
        let mut x = uniform(rng, s.total(), -1.0, 1.0);
        // One all-zero row in the first matrix: its norm is clamped to 1e-6 and it stays zero.
        x[..s.n].iter_mut().for_each(|v| *v = 0.0);
        let bx = d.upload_new(&x).unwrap();
        muon::muon_eq(d, bx.ptr(), s, false).unwrap();
        per_matrix(&mut x, s, |x| cpu::muon_eq(x, (s.m, s.n)));
        assert_close(
            &d.download_vec(bx.ptr(), s.total()).unwrap(),
            &x,
            1e-5,
            1e-7,
            &format!("{sched:?} {s:?}"),
        );
    });
}

#[test]
fn frobenius_normalize_matches_cpu() {
    for_all(|sched, d, s, rng| {
        for round in [false, true] {
            let mut x = uniform(rng, s.total(), -3.0, 3.0);
            let bx = d.upload_new(&x).unwrap();
            muon::muon_frobenius_norm(d, bx.ptr(), s, round).unwrap();
            per_matrix(&mut x, s, |x| cpu::frobenius_normalize(x, round));
            let rel = if round { 8e-3 } else { 1e-5 };
            let got = d.download_vec(bx.ptr(), s.total()).unwrap();
            assert_close(
                &got,
                &x,
                rel,
                1e-7,
                &format!("{sched:?} {s:?} bf16={round}"),
            );
        }
    });
}

#[test]
fn muon_plus_matches_cpu() {
    for_all(|sched, d, s, rng| {
        let mut o = uniform(rng, s.total(), -0.5, 0.5);
        let bo = d.upload_new(&o).unwrap();
        muon::muon_plus(d, bo.ptr(), s).unwrap();
        per_matrix(&mut o, s, |o| cpu::muon_plus(o, (s.m, s.n)));
        assert_close(
            &d.download_vec(bo.ptr(), s.total()).unwrap(),
            &o,
            1e-5,
            1e-7,
            &format!("{sched:?} {s:?}"),
        );
    });
}

#[test]
fn normuon_matches_cpu_over_steps() {
    for_all(|sched, d, s, rng| {
        let slen = cpu::second_moment_len(s.m, s.n);
        // Step 1 from zero state (upstream's initial value), then from the state the kernel left.
        let mut second = vec![0f32; s.k * slen];
        let bs = d.upload_new(&second).unwrap();
        for step in 0..3 {
            let mut o = uniform(rng, s.total(), -1.0, 1.0);
            let bo = d.upload_new(&o).unwrap();
            muon::muon_normuon(d, bo.ptr(), bs.ptr(), s, 0.9).unwrap();
            for (o, sec) in o
                .chunks_exact_mut(s.len())
                .zip(second.chunks_exact_mut(slen))
            {
                cpu::normuon(o, sec, (s.m, s.n), 0.9);
            }
            let what = format!("{sched:?} {s:?} step {step}");
            assert_close(
                &d.download_vec(bo.ptr(), s.total()).unwrap(),
                &o,
                2e-5,
                1e-7,
                &format!("{what} o"),
            );
            assert_close(
                &d.download_vec(bs.ptr(), s.k * slen).unwrap(),
                &second,
                1e-5,
                1e-9,
                &format!("{what} second"),
            );
        }
    });
}

#[test]
fn cautious_update_matches_cpu() {
    for_all(|sched, d, s, rng| {
        let mut p = uniform(rng, s.total(), -1.0, 1.0);
        let o = uniform(rng, s.total(), -1.0, 1.0);
        let (bp, bo, bpb) = (
            d.upload_new(&p).unwrap(),
            d.upload_new(&o).unwrap(),
            d.alloc(2 * s.total()).unwrap(),
        );
        muon::muon_cautious_update(d, bp.ptr(), Some(bpb.ptr()), bo.ptr(), s, 0.02, 0.2).unwrap();
        cpu::cautious_update(&mut p, &o, 0.02, 0.2);
        let what = format!("{sched:?} {s:?}");
        let got: Vec<f32> = d.download_vec(bp.ptr(), s.total()).unwrap();
        assert_close(&got, &p, 1e-6, 1e-7, &what);
        let copy: Vec<half::bf16> = d.download_vec(bpb.ptr(), s.total()).unwrap();
        let want: Vec<half::bf16> = got.iter().map(|&v| half::bf16::from_f32(v)).collect();
        assert_eq!(copy, want, "{what} bf16 copy");
    });
}

#[test]
fn per_matrix_stages_are_bitwise_deterministic() {
    // The reductions have a fixed order, so every schedule gives the same bits.
    let s = Stack {
        k: 2,
        m: 37,
        n: 300,
    };
    let mut rng = Rng::new(5);
    let x = uniform(&mut rng, s.total(), -1.0, 1.0);
    let mut results = Vec::new();
    for (_, dev) in devices() {
        let d = dev.as_ref();
        let bx = d.upload_new(&x).unwrap();
        let bs = d
            .upload_new(&vec![0.5f32; s.k * cpu::second_moment_len(s.m, s.n)])
            .unwrap();
        muon::muon_eq(d, bx.ptr(), s, false).unwrap();
        muon::muon_frobenius_norm(d, bx.ptr(), s, false).unwrap();
        muon::muon_plus(d, bx.ptr(), s).unwrap();
        muon::muon_normuon(d, bx.ptr(), bs.ptr(), s, 0.9).unwrap();
        results.push(d.download_vec::<f32>(bx.ptr(), s.total()).unwrap());
    }
    assert!(
        results.windows(2).all(|w| w[0] == w[1]),
        "schedules disagree"
    );
}

#[test]
fn oversized_statistics_are_an_error() {
    let d = EmuDevice::new(Schedule::Forward);
    let s = Stack {
        k: 1,
        m: muon::MAX_STAT_LEN + 1,
        n: 1,
    };
    let e = muon::muon_eq(&d, nanochat::device::DevPtr(0), s, false).unwrap_err();
    assert!(e.to_string().contains("muon_eq"), "{e}");
    let e = muon::muon_normuon(
        &d,
        nanochat::device::DevPtr(0),
        nanochat::device::DevPtr(0),
        s,
        0.9,
    )
    .unwrap_err();
    assert!(e.to_string().contains("statistics"), "{e}");
}

/// Largest difference relative to the largest reference magnitude: the bf16 pipelines differ from the CPU
/// only by accumulation order, which can flip a bf16 rounding, so elementwise relative checks do not fit.
fn max_rel_diff(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |a, &w| a.max(w.abs())).max(1e-30);
    got.iter()
        .zip(want)
        .fold(0f32, |a, (g, w)| a.max((g - w).abs()))
        / scale
}

#[test]
fn polar_express_through_gemm_matches_cpu() {
    let mut rng = Rng::new(21);
    // Only GEMMs and copies, which the schedules do not touch: one device is enough.
    for (sched, dev) in devices().into_iter().take(1) {
        let d = dev.as_ref();
        for &(m, n) in &[(24, 9), (9, 24), (16, 16), (1, 7), (40, 3)] {
            for k in 1..=3 {
                let s = Stack { k, m, n };
                let mut x = uniform(&mut rng, s.total(), -1.0, 1.0);
                per_matrix(&mut x, s, |x| cpu::frobenius_normalize(x, true));
                let xb: Vec<half::bf16> = x.iter().map(|&v| half::bf16::from_f32(v)).collect();
                let kk = m.min(n);
                let (bx, by, ba, bb) = (
                    d.upload_new(&xb).unwrap(),
                    d.alloc(2 * s.total()).unwrap(),
                    d.alloc(2 * k * kk * kk).unwrap(),
                    d.alloc(2 * k * kk * kk).unwrap(),
                );
                muon::polar_express(d, bx.ptr(), by.ptr(), ba.ptr(), bb.ptr(), s, 5).unwrap();
                per_matrix(&mut x, s, |x| cpu::polar_express(x, (m, n), 5, true));
                let got: Vec<f32> = d
                    .download_vec::<half::bf16>(bx.ptr(), s.total())
                    .unwrap()
                    .iter()
                    .map(|v| v.to_f32())
                    .collect();
                let e = max_rel_diff(&got, &x);
                assert!(e <= 2e-2, "{sched:?} {s:?}: max relative difference {e}");
            }
        }
    }
}

#[test]
fn whole_muon_step_matches_cpu() {
    let mut rng = Rng::new(33);
    for (sched, dev) in devices() {
        let d = dev.as_ref();
        for &(m, n) in &[(24, 9), (9, 24), (16, 16)] {
            let s = Stack { k: 2, m, n };
            let slen = cpu::second_moment_len(m, n);
            let h = cpu::MuonHyper {
                lr: 0.02,
                momentum: 0.95,
                weight_decay: 0.2,
                beta2: 0.9,
                ns_steps: 5,
                bf16: true,
            };
            let mut p = round_bf16(&uniform(&mut rng, s.total(), -1.0, 1.0));
            let mut mom = vec![0f32; s.total()];
            let mut second = vec![0f32; s.k * slen];
            let scratch = muon::MuonScratch::new(d, s).unwrap();
            let (bp, bpb, bm, bs) = (
                d.upload_new(&p).unwrap(),
                d.alloc(2 * s.total()).unwrap(),
                d.upload_new(&mom).unwrap(),
                d.upload_new(&second).unwrap(),
            );
            let p0 = p.clone();
            for step in 0..2 {
                let g = uniform(&mut rng, s.total(), -1.0, 1.0);
                let bg = d.upload_new(&g).unwrap();
                muon::muon_step(
                    d,
                    &scratch,
                    bp.ptr(),
                    Some(bpb.ptr()),
                    bg.ptr(),
                    bm.ptr(),
                    bs.ptr(),
                    &h,
                )
                .unwrap();
                for i in 0..s.k {
                    let r = i * s.len()..(i + 1) * s.len();
                    cpu::muon_update(
                        &mut p[r.clone()],
                        &g[r.clone()],
                        &mut mom[r],
                        &mut second[i * slen..(i + 1) * slen],
                        (m, n),
                        &h,
                    );
                }
                let what = format!("{sched:?} {s:?} step {step}");
                let got: Vec<f32> = d.download_vec(bp.ptr(), s.total()).unwrap();
                // Compare the updates (P - P0), which carry the whole pipeline's error.
                let dg: Vec<f32> = got.iter().zip(&p0).map(|(a, b)| a - b).collect();
                let dw: Vec<f32> = p.iter().zip(&p0).map(|(a, b)| a - b).collect();
                let e = max_rel_diff(&dg, &dw);
                assert!(
                    e <= 3e-2,
                    "{what}: update differs by {e} of its largest entry"
                );
                assert_close(
                    &d.download_vec(bm.ptr(), s.total()).unwrap(),
                    &mom,
                    1e-5,
                    1e-7,
                    &format!("{what} momentum"),
                );
                let e = max_rel_diff(&d.download_vec(bs.ptr(), s.k * slen).unwrap(), &second);
                assert!(e <= 5e-2, "{what}: second moment differs by {e}");
            }
        }
    }
}

#[test]
fn muon_step_refuses_fp32_orthogonalisation() {
    let d = EmuDevice::new(Schedule::Forward);
    let s = Stack { k: 1, m: 4, n: 3 };
    let scratch = muon::MuonScratch::new(&d, s).unwrap();
    let h = cpu::MuonHyper {
        lr: 0.02,
        momentum: 0.95,
        weight_decay: 0.0,
        beta2: 0.9,
        ns_steps: 5,
        bf16: false,
    };
    let z = nanochat::device::DevPtr(0);
    let e = muon::muon_step(&d, &scratch, z, None, z, z, z, &h).unwrap_err();
    assert!(e.to_string().contains("bf16"), "{e}");
}
