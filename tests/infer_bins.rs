//! The inference benchmarks on the emulator: decode_bench's checks pass and its timing path runs, and
//! infer_bench runs the whole path at toy sizes with one JSON document as its last line.

use std::process::Command;

fn run(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{bin} {args:?}:\n{text}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn decode_bench_runs_on_the_emulator() {
    let text = run(env!("CARGO_BIN_EXE_decode_bench"), &["--device", "emu"]);
    for line in [
        "PASS kv_rope_append",
        "PASS decode_attention",
        "PASS decode_smear",
        "decode b2",
        "splits 3",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    assert!(text.contains("all checks passed"), "{text}");
}

#[test]
fn infer_bench_prints_its_sweep_and_one_json_line_on_the_emulator() {
    let args = [
        "--device",
        "emu",
        "--depth",
        "1",
        "--aspect-ratio",
        "64",
        "--head-dim",
        "32",
        "--sequence-len",
        "64",
        "--vocab-size",
        "300",
        "--prompt-tokens",
        "12",
        "--decode-tokens",
        "4",
        "--batch-sizes",
        "1,3",
    ];
    let text = run(env!("CARGO_BIN_EXE_infer_bench"), &args);
    let last = text.lines().last().unwrap();
    let doc: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"));
    assert_eq!(doc["prefill"]["tokens"], 12);
    assert!(doc["prefill"]["tok_per_sec"].as_f64().unwrap() > 0.0);
    let sweep = doc["sweep"].as_array().unwrap();
    assert_eq!(sweep.len(), 2);
    assert_eq!(sweep[1]["batch_size"], 3);
    assert_eq!(sweep[1]["decode_steps"], 3);
    assert!(sweep[1]["tpot_sec"].as_f64().unwrap() > 0.0);
    // The emulator has no known peaks: no percentages, no ceiling.
    assert!(doc["batch1_decode_ceiling_tok_per_sec"].is_null());
    assert!(sweep[0]["mbu_percent"].is_null());
    // KV bytes per token: keys and values of one layer of 2 heads of 32 in bf16.
    assert_eq!(doc["kv_bytes_per_token"], 2 * 64 * 2);
    let e = Command::new(env!("CARGO_BIN_EXE_infer_bench"))
        .args(["--device", "emu", "--batch-sizes", "1,x"])
        .output()
        .unwrap();
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("--batch-sizes"));
}
