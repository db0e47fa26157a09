//! What the Muon checks (`nanochat::device::check::muon`: every stage, Polar Express and the whole step, run by
//! `tests/kernels_checks.rs` under every schedule) do not cover for `cuda/muon.cu`: the per-matrix stages give
//! the same bits under every schedule, and statistics too large for a block or fp32 orthogonalisation are
//! errors.

use nanochat::device::emu::EmuDevice;
use nanochat::device::kernels::muon::{self, Stack};
use nanochat::device::Schedule;
use nanochat::optim::muon as cpu;
use nanochat::rng::Rng;

mod common;
use common::{devices, uniform};

#[test]
fn per_matrix_stages_are_bitwise_deterministic() {
    // The reductions have a fixed order, so every schedule gives the same bits.
    let s = Stack { k: 2, m: 37, n: 300 };
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
    assert!(results.windows(2).all(|w| w[0] == w[1]), "schedules disagree");
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
    let e = muon::muon_normuon(&d, nanochat::device::DevPtr(0), nanochat::device::DevPtr(0), s, 0.9).unwrap_err();
    assert!(e.to_string().contains("statistics"), "{e}");
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

#[test]
fn wide_stages_match_the_one_block_kernels() {
    // MuonEq and NorMuon keep the one-block kernels' summation order: the same bits, under every schedule;
    // the Frobenius norm and Muon+ sum row by row instead: within a few ulps. Tall, wide and square stacks,
    // with an all-zero row (MuonEq's clamped norm).
    for s in [
        Stack { k: 3, m: 37, n: 20 },
        Stack { k: 2, m: 9, n: 70 },
        Stack { k: 1, m: 16, n: 16 },
    ] {
        let mut rng = Rng::new(9);
        let mut x = uniform(&mut rng, s.total(), -1.0, 1.0);
        x[..s.n].iter_mut().for_each(|v| *v = 0.0);
        let slen = s.k * cpu::second_moment_len(s.m, s.n);
        let second = uniform(&mut rng, slen, 0.0, 0.5);
        for (schedule, dev) in devices() {
            let d = dev.as_ref();
            let stats = d.alloc(4 * muon::wide_scratch_len(s)).unwrap();
            let run = |wide: bool, stage: &str, round: bool| -> (Vec<f32>, Vec<f32>) {
                let bx = d.upload_new(&x).unwrap();
                let bs = d.upload_new(&second).unwrap();
                let (p, st) = (bx.ptr(), stats.ptr());
                match (stage, wide) {
                    ("eq", false) => muon::muon_eq(d, p, s, round).unwrap(),
                    ("eq", true) => muon::muon_eq_wide(d, p, st, s, round).unwrap(),
                    ("frob", false) => muon::muon_frobenius_norm(d, p, s, round).unwrap(),
                    ("frob", true) => muon::muon_frobenius_norm_wide(d, p, st, s, round).unwrap(),
                    ("plus", false) => muon::muon_plus(d, p, s).unwrap(),
                    ("plus", true) => muon::muon_plus_wide(d, p, st, s).unwrap(),
                    ("normuon", false) => muon::muon_normuon(d, p, bs.ptr(), s, 0.9).unwrap(),
                    _ => muon::muon_normuon_wide(d, p, bs.ptr(), st, s, 0.9).unwrap(),
                }
                (
                    d.download_vec::<f32>(p, s.total()).unwrap(),
                    d.download_vec::<f32>(bs.ptr(), slen).unwrap(),
                )
            };
            let same = |a: (Vec<f32>, Vec<f32>), b: (Vec<f32>, Vec<f32>), what: &str| {
                let (x, y) = (a.0.iter().chain(&a.1), b.0.iter().chain(&b.1));
                let first = x.zip(y).position(|(p, q)| p.to_bits() != q.to_bits());
                assert!(
                    first.is_none(),
                    "{what} {s:?} {schedule:?}: first difference at {first:?}"
                );
            };
            for round in [false, true] {
                same(run(false, "eq", round), run(true, "eq", round), "muon_eq");
            }
            same(
                run(false, "normuon", false),
                run(true, "normuon", false),
                "muon_normuon (o, second moment)",
            );
            for stage in ["frob", "plus"] {
                let (a, b) = (run(false, stage, false).0, run(true, stage, false).0);
                for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                    assert!(
                        (p - q).abs() <= 4e-7 * p.abs().max(1e-3),
                        "{stage} {s:?} {schedule:?} [{i}]: {p} vs {q}"
                    );
                }
            }
        }
    }
}

#[test]
fn wide_stages_lift_the_shared_memory_limit() {
    // More rows than the one-block kernels keep in shared memory: the wide stages run (and a row that is a
    // multiple of another scales to the same values).
    let emu = EmuDevice::new(Schedule::Forward);
    let d: &dyn nanochat::device::Device = &emu;
    let s = Stack {
        k: 1,
        m: muon::MAX_STAT_LEN + 1,
        n: 1,
    };
    let x: Vec<f32> = (0..s.total()).map(|i| if i % 2 == 0 { 1.0 } else { -2.0 }).collect();
    let bx = d.upload_new(&x).unwrap();
    let stats = d.alloc(4 * muon::wide_scratch_len(s)).unwrap();
    muon::muon_eq_wide(d, bx.ptr(), stats.ptr(), s, false).unwrap();
    let got = d.download_vec::<f32>(bx.ptr(), s.total()).unwrap();
    let mut want = x.clone();
    cpu::muon_eq(&mut want, (s.m, s.n));
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-5 * w.abs(), "{g} vs {w}");
    }
}
