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

/// `bench/gpu_report.sh` on a machine without a GPU (forced: `NVIDIA_SMI` names no program, or one that
/// lists no GPU) ends at once with a "no GPU" line for every step of its run order and exits 0; it never
/// waits on a GPU that is not there.
#[test]
fn gpu_report_without_a_gpu_says_so_for_every_step() {
    use std::time::{Duration, Instant};
    let steps = [
        "driver",
        "selfcheck_debug",
        "selfcheck_cu12",
        "kernel_bench",
        "attention_bench",
        "model_ops_bench",
        "parity",
        "step_d12",
        "step_d26",
        "decode_bench",
        "infer_d12",
    ];
    let root = env!("CARGO_MANIFEST_DIR");
    for (smi, reason) in [
        ("/nonexistent/nvidia-smi", "nvidia-smi not found"),
        ("true", "nvidia-smi lists no GPU"),
    ] {
        let out = std::env::temp_dir().join(format!("gpu_report_{}_{}", std::process::id(), reason.len()));
        let mut child = Command::new("bash")
            .arg(format!("{root}/bench/gpu_report.sh"))
            .arg(format!("{root}/target/nonexistent-bin"))
            .arg(&out)
            .env("NVIDIA_SMI", smi)
            .current_dir(root)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A hang guard only (the script takes about a second): a run that has not ended after two minutes
        // is a hang.
        let t0 = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if t0.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                panic!("gpu_report.sh hangs without a GPU");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let res = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&res.stdout).to_string();
        assert!(res.status.success(), "{text}{}", String::from_utf8_lossy(&res.stderr));
        let summary = std::fs::read_to_string(out.join("summary.txt")).unwrap();
        assert_eq!(summary, text, "summary.txt holds what was printed");
        let lines: Vec<&str> = summary.lines().collect();
        assert_eq!(lines.len(), steps.len() + 1, "{summary}");
        for (line, step) in lines.iter().zip(steps) {
            assert_eq!(*line, format!("{step}: no GPU ({reason}): skipped"));
        }
        assert!(lines[steps.len()].starts_with("no GPU on this machine"), "{summary}");
        let libs = std::fs::read_to_string(out.join("libraries.txt")).unwrap();
        assert!(libs.contains("libcuda:") && libs.contains("libcublasLt:"), "{libs}");
        std::fs::remove_dir_all(&out).unwrap();
    }
}
