//! The emulator's profiler on planted access patterns with known answers (kernels:
//! cuda/tests/emu_profile.cu): a stride-2 fp32 load reads twice the ideal sectors, a shared-memory column
//! of a 32x32 fp32 tile is a 32-way bank conflict and the padded tile none, a half-masked warp has 16
//! active lanes. They need the profiling build:
//!
//! ```text
//! cargo test --features emu-profile --test emu_profile
//! ```
//!
//! Without the feature only the refusal is checked.

use nanochat::device::profile::{self, Profile};

#[test]
fn profile_needs_the_profiling_build() {
    assert_eq!(profile::available(), cfg!(feature = "emu-profile"));
    if !profile::available() {
        let e = Profile::start(0).err().expect("start must fail without the profiler");
        assert!(e.contains("emu-profile"), "{e}");
    }
}

#[cfg(feature = "emu-profile")]
mod planted {
    use super::*;
    use nanochat::device::emu::EmuDevice;
    use nanochat::device::profile::{LaunchCounters, SiteCounters};
    use nanochat::device::{Arg, Device, Dim3, Schedule};

    fn profiled(f: impl FnOnce(&dyn Device)) -> Vec<LaunchCounters> {
        let dev = EmuDevice::new(Schedule::Forward);
        let p = Profile::start(0).unwrap();
        f(&dev);
        p.stop().unwrap()
    }

    fn sites<'a>(l: &'a LaunchCounters, op: &str) -> Vec<&'a SiteCounters> {
        l.sites.iter().filter(|s| s.op == op).collect()
    }

    fn strided(stride: i32) -> LaunchCounters {
        let n = 256usize;
        let mut l = profiled(|dev| {
            let x: Vec<f32> = (0..n * stride as usize).map(|i| i as f32).collect();
            let inp = dev.upload_new(&x).unwrap();
            let out = dev.alloc(4 * n).unwrap();
            dev.launch(
                "prof_strided_load",
                Dim3::x((n / 128) as u32),
                Dim3::x(128),
                0,
                &[(&out).into(), (&inp).into(), Arg::I32(stride), Arg::I32(n as i32)],
            )
            .unwrap();
            let y: Vec<f32> = dev.download_vec(out.ptr(), n).unwrap();
            assert_eq!(y[5], (5 * stride) as f32);
        });
        assert_eq!(l.len(), 1);
        l.remove(0)
    }

    #[test]
    fn stride_two_load_reads_twice_the_ideal_sectors() {
        for (stride, sectors) in [(1, 4), (2, 8)] {
            let l = strided(stride);
            assert_eq!(l.kernel, "prof_strided_load");
            assert_eq!(l.blocks_run, 2);
            let loads = sites(&l, "ld.global");
            assert_eq!(loads.len(), 1, "{:?}", l.sites);
            let ld = loads[0];
            // 2 blocks of 4 warps, 32 lanes of 4 bytes each: 4 sectors ideally
            assert_eq!(ld.requests, 8);
            assert_eq!(ld.lanes, 8 * 32);
            assert_eq!(ld.ideal_sectors, 8 * 4);
            assert_eq!(ld.sectors, 8 * sectors, "stride {stride}");
            assert!(ld.location().starts_with("emu_profile.cu:"), "{}", ld.location());
            let st = sites(&l, "st.global");
            assert_eq!(st.len(), 1);
            assert_eq!(st[0].sectors, st[0].ideal_sectors);
            let t = l.totals();
            assert_eq!(t.global_requests, 16);
            assert_eq!(l.instructions.get("ld.global"), Some(&8));
            assert_eq!(l.instructions.get("st.global"), Some(&8));
        }
        let ratio = |l: &LaunchCounters| {
            let ld = sites(l, "ld.global")[0];
            ld.sectors as f64 / ld.ideal_sectors as f64
        };
        assert_eq!(ratio(&strided(2)), 2.0);
        assert_eq!(ratio(&strided(1)), 1.0);
    }

    fn column(pad: i32) -> LaunchCounters {
        let mut l = profiled(|dev| {
            let x: Vec<f32> = (0..32 * 32).map(|i| (i % 7) as f32).collect();
            let inp = dev.upload_new(&x).unwrap();
            let out = dev.alloc(4 * 32).unwrap();
            dev.launch(
                "prof_smem_column",
                Dim3::x(1),
                Dim3::x(32),
                0,
                &[(&out).into(), (&inp).into(), Arg::I32(pad)],
            )
            .unwrap();
            let y: Vec<f32> = dev.download_vec(out.ptr(), 32).unwrap();
            let want: f32 = (0..32).map(|c| ((3 * 32 + c) % 7) as f32).sum();
            assert_eq!(y[3], want);
        });
        l.remove(0)
    }

    #[test]
    fn shared_column_conflicts_32_way_and_the_padded_tile_none() {
        for (pad, degree) in [(0, 32.0), (1, 1.0)] {
            let l = column(pad);
            let reads = sites(&l, "ld.shared");
            assert_eq!(reads.len(), 1, "pad {pad}: {:?}", l.sites);
            let r = reads[0];
            assert_eq!(r.requests, 32);
            assert_eq!(r.ideal_wavefronts, 32);
            assert_eq!(r.wavefronts as f64 / r.ideal_wavefronts as f64, degree, "pad {pad}");
            // the row writes are conflict-free either way
            let writes = sites(&l, "st.shared");
            assert_eq!(writes.len(), 1);
            assert_eq!(writes[0].wavefronts, writes[0].ideal_wavefronts);
            let t = l.totals();
            assert_eq!(t.bank_conflict_degree(), (32.0 * degree + 32.0) / 64.0);
            assert!(l.instructions.contains_key("__syncwarp"));
        }
    }

    #[test]
    fn half_masked_warp_has_16_active_lanes() {
        let n = 200usize;
        let l = profiled(|dev| {
            let out = dev.alloc(4 * n).unwrap();
            dev.zero(out.ptr(), 4 * n).unwrap();
            dev.launch(
                "prof_half_warp",
                Dim3::x(2),
                Dim3::x(128),
                0,
                &[(&out).into(), Arg::I32(n as i32)],
            )
            .unwrap();
        });
        let st = sites(&l[0], "st.global");
        assert_eq!(st.len(), 1);
        // 8 warps; the last block's lanes past n = 200 (from 200) are masked too: warp 2 of block 1 has
        // lanes 64..79 of that block = elements 192..207, of which 192..199 store.
        let t = l[0].totals();
        assert_eq!(t.requests, 7);
        assert_eq!(t.lanes, 6 * 16 + 8);
        // the warps that are not cut by `n` show exactly 16
        assert_eq!(st[0].lanes - 8, 16 * (st[0].requests - 1));
        let full = profiled(|dev| {
            let out = dev.alloc(4 * 256).unwrap();
            dev.launch(
                "prof_half_warp",
                Dim3::x(2),
                Dim3::x(128),
                0,
                &[(&out).into(), Arg::I32(256)],
            )
            .unwrap();
        });
        assert_eq!(full[0].totals().active_lanes(), 16.0);
    }

    /// The warp-level helpers report themselves: ptx_mma_pipeline (cuda/tests/ptx_check.cu) on one warp,
    /// two k-steps. Its A tile has 32-byte rows, so the 8 rows of each ldmatrix.x4 matrix fall on 4 banks
    /// twice over (degree 2); the B tile's 16-byte rows are contiguous (degree 1).
    #[test]
    fn ptx_helpers_report_mma_ldmatrix_and_cp_async() {
        let (m, n, k) = (16usize, 8usize, 32usize);
        let l = profiled(|dev| {
            let a: Vec<u16> = (0..m * k)
                .map(|i| half::bf16::from_f32((i % 5) as f32).to_bits())
                .collect();
            let b: Vec<u16> = (0..k * n)
                .map(|i| half::bf16::from_f32((i % 3) as f32).to_bits())
                .collect();
            let (da, db, dc) = (
                dev.upload_new(&a).unwrap(),
                dev.upload_new(&b).unwrap(),
                dev.alloc(4 * m * n).unwrap(),
            );
            dev.launch(
                "ptx_mma_pipeline",
                Dim3::xy(1, 1),
                Dim3::x(32),
                0,
                &[
                    (&dc).into(),
                    (&da).into(),
                    (&db).into(),
                    Arg::I32(k as i32),
                    Arg::I32(1),
                ],
            )
            .unwrap();
        });
        let l = &l[0];
        let count = |name: &str| l.instructions.get(name).copied().unwrap_or(0);
        assert_eq!(count("mma.m16n8k16"), 2);
        assert_eq!(count("ldmatrix.x4"), 2);
        assert_eq!(count("ldmatrix.x2.trans"), 2);
        assert_eq!(count("cp.async"), 4, "{:?}", l.instructions);
        let mut ldm = sites(l, "ldmatrix");
        ldm.sort_by_key(|s| s.line);
        assert_eq!(ldm.len(), 2);
        for s in &ldm {
            assert!(s.location().starts_with("ptx_check.cu:"), "{}", s.location());
        }
        let degree = |s: &SiteCounters| s.wavefronts as f64 / s.ideal_wavefronts as f64;
        // x4: 4 matrices = 4 phases per request, 2 requests
        assert_eq!(ldm[0].ideal_wavefronts, 8);
        assert_eq!(degree(ldm[0]), 2.0);
        assert_eq!(ldm[1].ideal_wavefronts, 4);
        assert_eq!(degree(ldm[1]), 1.0);
        let cp_st = sites(l, "cp.async.st.shared");
        assert_eq!(cp_st.iter().map(|s| s.requests).sum::<u64>(), 4);
        assert!(cp_st.iter().all(|s| s.wavefronts == s.ideal_wavefronts));
        let cp_ld = sites(l, "cp.async.ld.global");
        assert_eq!(cp_ld.iter().map(|s| s.lanes).sum::<u64>(), 2 * (32 + 16));
        assert!(cp_ld.iter().all(|s| s.sectors == s.ideal_sectors));
    }

    #[test]
    fn block_sampling_keeps_the_first_and_last_block() {
        let n = 128 * 40usize;
        let l = {
            let emu = EmuDevice::new(Schedule::Forward);
            let dev: &dyn Device = &emu;
            let out = dev.alloc(4 * n).unwrap();
            let p = Profile::start(8).unwrap();
            dev.launch(
                "prof_half_warp",
                Dim3::x(40),
                Dim3::x(128),
                0,
                &[(&out).into(), Arg::I32(n as i32)],
            )
            .unwrap();
            let l = p.stop().unwrap();
            let y: Vec<f32> = dev.download_vec(out.ptr(), n).unwrap();
            // block 0 and block 39 ran (stride 5: blocks 0, 5, ..., 35 and 39)
            assert_eq!(y[3], 3.0);
            assert_eq!(y[39 * 128 + 3], (39 * 128 + 3) as f32);
            l
        };
        assert_eq!(l[0].blocks_run, 9);
        // nothing is recorded once the profile stopped
        let dev = EmuDevice::new(Schedule::Forward);
        let out = dev.alloc(4 * 128).unwrap();
        let p = Profile::start(0).unwrap();
        let none = p.stop().unwrap();
        dev.launch(
            "prof_half_warp",
            Dim3::x(1),
            Dim3::x(128),
            0,
            &[(&out).into(), Arg::I32(128)],
        )
        .unwrap();
        assert!(none.is_empty());
    }
}
