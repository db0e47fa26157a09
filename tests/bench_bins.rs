//! The GPU benchmark binaries on the emulator: their correctness checks pass and every timing path runs
//! (at toy sizes), so a GPU session does not discover a broken benchmark.

use std::process::Command;

fn run(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{bin} {args:?}:\n{text}");
    text
}

#[test]
fn kernel_bench_runs_every_row_on_the_emulator() {
    let text = run(env!("CARGO_BIN_EXE_kernel_bench"), &["--device", "emu"]);
    assert!(!text.contains("failed"), "{text}");
    for row in [
        "relu2_forward",
        "add_f32_bf16",
        "rmsnorm_mix_backward",
        "rmsnorm_backout_backward",
        "softcap_ce",
        "adamw_step",
        "gemm bf16",
        "embedding_forward",
        "embedding_backward",
        "muon_step (2 x 512x128)",
        "muon_step (3 x 128x128)",
    ] {
        assert!(text.lines().any(|l| l.starts_with(row)), "{row} missing:\n{text}");
    }
    assert!(text.contains("all checks passed"), "{text}");
}

#[test]
fn attention_and_model_ops_benches_run_on_the_emulator() {
    let text = run(env!("CARGO_BIN_EXE_attention_bench"), &["--device", "emu"]);
    // The checks of device::check, then the timing path.
    for line in [
        "PASS attention flash",
        "PASS attention naive",
        "Flash b1 t80",
        "Naive b1 t80",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    let text = run(env!("CARGO_BIN_EXE_model_ops_bench"), &["--device", "emu"]);
    for line in ["PASS rope_qknorm", "PASS ve_gate", "PASS smear", "PASS backout", "ran "] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
}
