//! The PTX helpers (cuda/ptx_helpers.cuh) under the emulator: mma.m16n8k16 and ldmatrix against plain
//! loops written from the PTX ISA's layout tables and against the shuffle-only references, and the
//! cp.async -> ldmatrix -> mma pipeline (plus its planted read-before-wait bug).
//! Kernels: cuda/tests/ptx_check.cu. The same kernels run on a GPU in the self-check (asm vs reference).

use half::bf16;
use nanochat::device::{Arg, Device, Dim3};

mod common;
use common::devices;

fn bits(v: &[f32]) -> Vec<u16> {
    v.iter().map(|&x| bf16::from_f32(x).to_bits()).collect()
}

#[test]
fn mma_matches_a_plain_loop_and_the_shuffle_reference() {
    // Small integers: exact in bf16 and in any fp32 summation order.
    let a: Vec<f32> = (0..256).map(|i| ((i * 7 + 3) % 9) as f32 - 4.0).collect(); // (16, 16)
    let b: Vec<f32> = (0..128).map(|i| ((i * 5 + 1) % 7) as f32 - 3.0).collect(); // (16, 8)
    let c: Vec<f32> = (0..128).map(|i| (i % 5) as f32).collect(); // (16, 8)
    let mut want = c.clone();
    for i in 0..16 {
        for j in 0..8 {
            want[i * 8 + j] += (0..16).map(|k| a[i * 16 + k] * b[k * 8 + j]).sum::<f32>();
        }
    }
    for (s, dev) in devices() {
        let da = dev.upload_new(&bits(&a)).unwrap();
        let db = dev.upload_new(&bits(&b)).unwrap();
        let dc = dev.upload_new(&c).unwrap();
        let dd = dev.alloc(128 * 4).unwrap();
        for mode in [0, 1] {
            dev.launch(
                "ptx_mma_fragments",
                Dim3::x(1),
                Dim3::x(32),
                0,
                &[(&dd).into(), (&da).into(), (&db).into(), (&dc).into(), Arg::I32(mode)],
            )
            .unwrap();
            let got: Vec<f32> = dev.download_vec(dd.ptr(), 128).unwrap();
            assert_eq!(got, want, "{s:?} mode {mode}");
        }
    }
}

/// Register `i` of `lane` after ldmatrix with `n` matrices from a 32x8 b16 matrix `m` whose row r is
/// addressed by lane r (PTX ISA: "Warp-level matrix load instruction: ldmatrix").
fn ldmatrix_model(m: &[u16], lane: usize, i: usize, trans: bool) -> u32 {
    let mat = |r: usize, c: usize| m[(8 * i + r) * 8 + c] as u32;
    let (g, t) = (lane / 4, lane % 4);
    if !trans {
        mat(g, 2 * t) | (mat(g, 2 * t + 1) << 16)
    } else {
        mat(2 * t, g) | (mat(2 * t + 1, g) << 16)
    }
}

#[test]
fn ldmatrix_matches_the_layout_and_the_reference() {
    let m: Vec<u16> = (0..256).map(|i| (i * 3 + 1) as u16).collect();
    for (s, dev) in devices() {
        let src = dev.upload_new(&m).unwrap();
        let out = dev.alloc(32 * 4 * 4).unwrap();
        for mode in 0..6 {
            let n = [1, 2, 4][mode % 3];
            let trans = mode >= 3;
            for reference in [0, 1] {
                dev.zero(out.ptr(), 32 * 16).unwrap();
                dev.launch(
                    "ptx_ldmatrix",
                    Dim3::x(1),
                    Dim3::x(32),
                    0,
                    &[(&out).into(), (&src).into(), Arg::I32(mode as i32), Arg::I32(reference)],
                )
                .unwrap();
                let got: Vec<u32> = dev.download_vec(out.ptr(), 128).unwrap();
                for lane in 0..32 {
                    for i in 0..n {
                        let want = ldmatrix_model(&m, lane, i, trans);
                        assert_eq!(
                            got[lane * 4 + i],
                            want,
                            "{s:?} mode {mode} ref {reference} lane {lane} reg {i}"
                        );
                    }
                }
            }
        }
    }
}

fn pipeline(dev: &dyn Device, m: usize, n: usize, k: usize, wait_first: i32) -> (Vec<f32>, Vec<f32>) {
    let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 + 2) % 11) as f32 - 5.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i * 3 + 1) % 5) as f32 - 2.0).collect();
    let mut want = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            want[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
        }
    }
    let da = dev.upload_new(&bits(&a)).unwrap();
    let db = dev.upload_new(&bits(&b)).unwrap();
    let dc = dev.alloc(4 * m * n).unwrap();
    let grid = Dim3::xy((n / 8) as u32, (m / 16) as u32);
    dev.launch(
        "ptx_mma_pipeline",
        grid,
        Dim3::x(32),
        0,
        &[
            (&dc).into(),
            (&da).into(),
            (&db).into(),
            Arg::I32(k as i32),
            Arg::I32(wait_first),
        ],
    )
    .unwrap();
    (dev.download_vec(dc.ptr(), m * n).unwrap(), want)
}

#[test]
fn cp_async_ldmatrix_mma_pipeline() {
    for (s, dev) in devices() {
        for (m, n, k) in [(16, 8, 16), (32, 24, 48)] {
            let (got, want) = pipeline(dev.as_ref(), m, n, k, 1);
            assert_eq!(got, want, "{s:?} {m}x{n}x{k}");
        }
    }
}

#[test]
fn reading_shared_memory_before_the_cp_async_wait_gives_wrong_results() {
    // The copies land only at the wait, so the mma reads what shared memory held before (static shared
    // arrays are not poisoned: stale data from an earlier tile or launch, or zeros).
    for (s, dev) in devices() {
        let (got, want) = pipeline(dev.as_ref(), 32, 16, 32, 0);
        assert_ne!(got, want, "{s:?}: the missing wait went unnoticed");
    }
}
