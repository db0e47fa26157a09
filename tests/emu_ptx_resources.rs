//! The checked-in GPU builds (`ptx/`, rebuilt by `tools/build_ptx.sh`: the CUDA 13 and the CUDA 12 one)
//! against the kernels compiled into the emulator: every kernel but the planted bugs is in both fatbins
//! for sm_80 and sm_90a, the ptxas reports show no register spills, and the launches whose static plus
//! dynamic shared memory passes 48 KiB ask for the opt-in.

use nanochat::device::cuda::needs_smem_opt_in;
use nanochat::device::emu::EmuDevice;
use nanochat::device::kernels::muon::MAX_STAT_LEN;
use std::collections::BTreeSet;

const REPORTS: [&str; 2] = ["resources.txt", "resources_cu12.txt"];

fn read_report(name: &str) -> String {
    let path = format!("{}/ptx/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Both reports, one after the other (every check holds for each).
fn report() -> String {
    REPORTS.iter().map(|r| read_report(r)).collect::<Vec<_>>().join("\n")
}

/// The static shared memory of `kernel` for `arch` in a report: the "N bytes smem" of its "Used" line.
fn static_smem(report: &str, kernel: &str, arch: &str) -> u32 {
    let header = format!("Compiling entry function '{kernel}' for '{arch}'");
    let mut lines = report.lines().skip_while(|l| !l.ends_with(&header)).skip(1);
    let used = lines
        .find(|l| l.contains("Used ") && l.contains("registers"))
        .unwrap_or_else(|| panic!("no resource line for {kernel} ({arch})"));
    used.split(", ")
        .find_map(|p| p.strip_suffix(" bytes smem"))
        .map_or(0, |n| n.trim().parse().expect("a byte count"))
}

/// Kernels ptxas compiled for `arch`, from lines like `Compiling entry function 'relu2_forward' for 'sm_80'`.
fn compiled_for(report: &str, arch: &str) -> BTreeSet<String> {
    report
        .lines()
        .filter(|l| l.contains("Compiling entry function") && l.ends_with(&format!("'{arch}'")))
        .filter_map(|l| l.split('\'').nth(1).map(str::to_string))
        .collect()
}

#[test]
fn every_kernel_is_in_the_fatbin_for_both_architectures() {
    for name in REPORTS {
        let r = read_report(name);
        let emu: BTreeSet<String> = EmuDevice::kernel_names()
            .into_iter()
            .filter(|n| !n.starts_with("bug_") && !n.starts_with("prof_"))
            .collect();
        assert!(emu.contains("softcap_ce") && emu.contains("ptx_mma_pipeline"));
        for arch in ["sm_80", "sm_90a"] {
            let gpu = compiled_for(&r, arch);
            let missing: Vec<_> = emu.difference(&gpu).collect();
            assert!(
                missing.is_empty(),
                "not in ptx/{name} for {arch} (run tools/build_ptx.sh): {missing:?}"
            );
        }
    }
}

#[test]
fn no_kernel_spills_registers() {
    let r = report();
    let lines: Vec<&str> = r.lines().filter(|l| l.contains("bytes spill stores")).collect();
    assert!(!lines.is_empty(), "the report has no spill lines");
    for l in lines {
        assert!(l.contains(" 0 bytes spill stores, 0 bytes spill loads"), "spill: {l}");
    }
}

#[test]
fn the_statistics_kernels_opt_in_to_large_shared_memory() {
    // muon_eq and muon_normuon keep up to MAX_STAT_LEN fp32 statistics in dynamic shared memory next to
    // their static reduction scratch: near the limit, only static + dynamic passes 48 KiB.
    for name in REPORTS {
        let r = read_report(name);
        for kernel in ["muon_eq", "muon_normuon"] {
            for arch in ["sm_80", "sm_90a"] {
                let stat = static_smem(&r, kernel, arch);
                assert!(stat > 0, "{kernel} ({arch}, {name}) has static shared memory");
                let max_dynamic = (MAX_STAT_LEN * 4) as u32;
                assert!(needs_smem_opt_in(stat, max_dynamic), "{kernel} {arch} {name}");
                assert!(needs_smem_opt_in(stat, 48 * 1024 - stat + 1));
                assert!(!needs_smem_opt_in(stat, 48 * 1024 - stat));
            }
        }
        assert_eq!(static_smem(&r, "muon_nesterov", "sm_80"), 0);
    }
}
