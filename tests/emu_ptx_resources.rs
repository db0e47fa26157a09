//! The checked-in GPU build (`ptx/`, rebuilt by `tools/build_ptx.sh`) against the kernels compiled into
//! the emulator: every kernel but the planted bugs is in the fatbin for sm_80 and sm_90a, and the ptxas
//! report shows no register spills.

use nanochat::device::emu::EmuDevice;
use std::collections::BTreeSet;

fn report() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/ptx/resources.txt");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
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
    let r = report();
    let emu: BTreeSet<String> = EmuDevice::kernel_names()
        .into_iter()
        .filter(|n| !n.starts_with("bug_"))
        .collect();
    assert!(emu.contains("softcap_ce") && emu.contains("ptx_mma_pipeline"));
    for arch in ["sm_80", "sm_90a"] {
        let gpu = compiled_for(&r, arch);
        let missing: Vec<_> = emu.difference(&gpu).collect();
        assert!(
            missing.is_empty(),
            "not in ptx/ for {arch} (run tools/build_ptx.sh): {missing:?}"
        );
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
