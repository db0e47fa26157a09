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
