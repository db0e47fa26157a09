//! The kernel emulator's own behaviour: barriers, shared memory, warp shuffles (with the PTX clamping
//! rules for `width`), votes, barrier counts, atomics, bf16 rounding, spin-waits, and a missing barrier
//! exposed by the schedules. Kernels: cuda/tests/emu_selftest.cu.

use nanochat::device::emu::EmuDevice;
use nanochat::device::{Arg, Device, Dim3, Schedule};

mod common;
use common::devices;

#[test]
fn registry_lists_the_kernels() {
    let names = EmuDevice::kernel_names();
    for k in [
        "emu_block_reverse",
        "emu_tiled_matmul",
        "ptx_mma_fragments",
        "bug_deadlock",
    ] {
        assert!(names.iter().any(|n| n == k), "{k} missing from {names:?}");
    }
}

#[test]
fn block_reverse_through_shared_memory() {
    for (s, dev) in devices() {
        for n in [1usize, 37, 256] {
            let x: Vec<f32> = (0..n).map(|i| i as f32 * 1.5).collect();
            let inp = dev.upload_new(&x).unwrap();
            let out = dev.alloc(4 * n).unwrap();
            dev.launch(
                "emu_block_reverse",
                Dim3::x(1),
                Dim3::x(n as u32),
                0,
                &[(&out).into(), (&inp).into(), Arg::I32(n as i32)],
            )
            .unwrap();
            let y: Vec<f32> = dev.download_vec(out.ptr(), n).unwrap();
            let want: Vec<f32> = x.iter().rev().copied().collect();
            assert_eq!(y, want, "{s:?} n={n}");
        }
    }
}

fn matmul_ref(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
        }
    }
    c
}

fn run_matmul(dev: &dyn Device, kernel: &str, m: usize, n: usize, k: usize) -> (Vec<f32>, Vec<f32>) {
    // Small integers: every product and sum is exact in fp32, whatever the order.
    let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 13) as f32 - 6.0).collect();
    let (da, db) = (dev.upload_new(&a).unwrap(), dev.upload_new(&b).unwrap());
    let dc = dev.alloc(4 * m * n).unwrap();
    let grid = Dim3::xy(n.div_ceil(16) as u32, m.div_ceil(16) as u32);
    let args = [
        (&dc).into(),
        (&da).into(),
        (&db).into(),
        Arg::I32(m as i32),
        Arg::I32(n as i32),
        Arg::I32(k as i32),
    ];
    dev.launch(kernel, grid, Dim3::xy(16, 16), 16 * 16 * 4, &args).unwrap();
    (dev.download_vec(dc.ptr(), m * n).unwrap(), matmul_ref(&a, &b, m, n, k))
}

#[test]
fn tiled_matmul_on_ragged_shapes() {
    for (s, dev) in devices() {
        for (m, n, k) in [(33, 20, 17), (16, 16, 16), (5, 40, 48)] {
            let (got, want) = run_matmul(dev.as_ref(), "emu_tiled_matmul", m, n, k);
            assert_eq!(got, want, "{s:?} {m}x{n}x{k}");
        }
    }
}

#[test]
fn missing_second_barrier_gives_wrong_results_under_every_schedule() {
    for (s, dev) in devices() {
        let (got, want) = run_matmul(dev.as_ref(), "emu_tiled_matmul_buggy", 33, 20, 48);
        assert_ne!(got, want, "{s:?}: the race went unnoticed");
    }
}

/// What lane `l` receives from `__shfl*_sync(full, 100 * lane + 1, arg, width)`, per the PTX ISA.
fn shuffle_model(mode: i32, l: i32, arg: i32, width: i32) -> i32 {
    let v = |j: i32| 100 * j + 1;
    let seg = 32 - width;
    let min_lane = l & seg;
    let max_lane = min_lane | (31 & !seg);
    let (j, ok) = match mode {
        0 => {
            let j = min_lane | (arg & !seg & 31);
            (j, j <= max_lane)
        }
        1 => (l - arg, l - arg >= min_lane),
        2 => (l + arg, l + arg <= max_lane),
        _ => (l ^ (arg & 31), (l ^ (arg & 31)) <= max_lane),
    };
    if ok {
        v(j)
    } else {
        v(l)
    }
}

#[test]
fn shuffles_follow_the_ptx_rules() {
    for (s, dev) in devices() {
        let out = dev.alloc(4 * 64).unwrap();
        for mode in 0..4 {
            for width in [32, 16, 8, 4, 1] {
                for arg in [0, 1, 3, 5, 16, 31] {
                    dev.launch(
                        "emu_shuffle",
                        Dim3::x(1),
                        Dim3::x(64),
                        0,
                        &[(&out).into(), mode.into(), arg.into(), width.into()],
                    )
                    .unwrap();
                    let got: Vec<i32> = dev.download_vec(out.ptr(), 64).unwrap();
                    for t in 0..64 {
                        let want = shuffle_model(mode, t % 32, arg, width);
                        assert_eq!(
                            got[t as usize], want,
                            "{s:?} mode {mode} width {width} arg {arg} thread {t}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn votes_and_barrier_counts() {
    for (s, dev) in devices() {
        let n = 96usize;
        let pred: Vec<i32> = (0..n).map(|i| ((i % 3 == 0) || (i >= 64)) as i32).collect();
        let inp = dev.upload_new(&pred).unwrap();
        let out = dev.alloc(4 * 6 * n).unwrap();
        dev.launch(
            "emu_votes",
            Dim3::x(1),
            Dim3::x(n as u32),
            0,
            &[(&out).into(), (&inp).into()],
        )
        .unwrap();
        let got: Vec<u32> = dev.download_vec(out.ptr(), 6 * n).unwrap();
        let count = pred.iter().filter(|&&p| p != 0).count() as u32;
        for i in 0..n {
            let w = i / 32;
            let ballot = (0..32)
                .filter(|l| pred[w * 32 + l] != 0)
                .fold(0u32, |b, l| b | (1 << l));
            let row = &got[6 * i..6 * i + 6];
            assert_eq!(
                row,
                &[ballot, (ballot != 0) as u32, (ballot == u32::MAX) as u32, count, 0, 1],
                "{s:?} thread {i}"
            );
        }
    }
}

#[test]
fn block_reduction_with_shuffles() {
    for (s, dev) in devices() {
        for (rows, n, block) in [(3usize, 1000usize, 256u32), (2, 7, 32), (1, 4096, 1024)] {
            let x: Vec<f32> = (0..rows * n).map(|i| (i % 17) as f32).collect();
            let dx = dev.upload_new(&x).unwrap();
            let out = dev.alloc(4 * rows).unwrap();
            dev.launch(
                "emu_row_sum",
                Dim3::x(rows as u32),
                Dim3::x(block),
                0,
                &[(&out).into(), (&dx).into(), Arg::I32(n as i32)],
            )
            .unwrap();
            let got: Vec<f32> = dev.download_vec(out.ptr(), rows).unwrap();
            for r in 0..rows {
                let want: f32 = x[r * n..(r + 1) * n].iter().sum();
                assert_eq!(got[r], want, "{s:?} row {r} n {n} block {block}");
            }
        }
    }
}

#[test]
fn half_warp_groups_syncwarp_and_reduce() {
    for (s, dev) in devices() {
        let out = dev.alloc(4 * 64).unwrap();
        dev.launch("emu_half_warps", Dim3::x(1), Dim3::x(64), 0, &[(&out).into()])
            .unwrap();
        let got: Vec<i32> = dev.download_vec(out.ptr(), 64).unwrap();
        for t in 0..64 {
            let lane = t % 32;
            let half_sum: i32 = if lane < 16 { (0..16).sum() } else { (16..32).sum() };
            assert_eq!(got[t as usize], half_sum + 32_000, "{s:?} thread {t}");
        }
    }
}

#[test]
fn dynamic_shared_memory_is_poisoned_per_block() {
    let dev = EmuDevice::new(Schedule::Forward);
    let out = dev.alloc(4 * 64).unwrap();
    let d: &dyn Device = &dev;
    d.launch("emu_smem_poison", Dim3::x(2), Dim3::x(32), 128, &[(&out).into()])
        .unwrap();
    let got: Vec<u32> = d.download_vec(out.ptr(), 64).unwrap();
    assert!(got.iter().all(|&v| v == u32::MAX), "{got:?}");
}

#[test]
fn device_memory_starts_poisoned() {
    let dev = EmuDevice::new(Schedule::Forward);
    let d: &dyn Device = &dev;
    let b = d.alloc(40).unwrap();
    let v: Vec<f32> = d.download_vec(b.ptr(), 10).unwrap();
    assert!(v.iter().all(|x| x.is_nan()));
    d.zero(b.ptr(), 40).unwrap();
    let v: Vec<f32> = d.download_vec(b.ptr(), 10).unwrap();
    assert!(v.iter().all(|&x| x == 0.0));
}

#[test]
fn spin_wait_with_nanosleep_progresses() {
    for (s, dev) in devices() {
        let out = dev.alloc(4 * 64).unwrap();
        dev.launch("emu_spin_wait", Dim3::x(1), Dim3::x(64), 0, &[(&out).into()])
            .unwrap();
        let got: Vec<i32> = dev.download_vec(out.ptr(), 64).unwrap();
        assert!(got.iter().all(|&v| v == 42), "{s:?} {got:?}");
    }
}

#[test]
fn atomics_across_blocks() {
    let dev = EmuDevice::new(Schedule::Random(3));
    let d: &dyn Device = &dev;
    let out = d.upload_new(&[0i32, -1]).unwrap();
    d.launch("emu_atomics", Dim3::x(5), Dim3::x(96), 0, &[(&out).into()])
        .unwrap();
    assert_eq!(d.download_vec::<i32>(out.ptr(), 2).unwrap(), vec![480, 479]);
}

#[test]
fn bf16_rounds_to_nearest_even_like_half() {
    let dev = EmuDevice::new(Schedule::Forward);
    let d: &dyn Device = &dev;
    let x: Vec<f32> = vec![
        1.0,
        1.0 + 1.0 / 256.0, // a tie: rounds to even (down)
        1.007_812_6,
        -std::f32::consts::PI,
        65504.0,
        1e-40,
        f32::INFINITY,
        3.0e38,
        0.1,
    ];
    let n = x.len();
    let dx = d.upload_new(&x).unwrap();
    let out = d.alloc(4 * n).unwrap();
    d.launch(
        "emu_bf16_round",
        Dim3::x(1),
        Dim3::x(32),
        0,
        &[(&out).into(), (&dx).into(), Arg::I32(n as i32)],
    )
    .unwrap();
    let got: Vec<f32> = d.download_vec(out.ptr(), n).unwrap();
    let want: Vec<f32> = x.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect();
    assert_eq!(got, want);
}

#[test]
fn concurrent_launches_on_several_threads() {
    std::thread::scope(|sc| {
        for t in 0..3 {
            sc.spawn(move || {
                let dev = EmuDevice::new(Schedule::Random(t));
                let (got, want) = run_matmul(&dev, "emu_tiled_matmul", 20 + t as usize, 18, 33);
                assert_eq!(got, want);
            });
        }
    });
}
