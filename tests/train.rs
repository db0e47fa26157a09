//! `train_gpt` end to end on the CPU reference, on a generated corpus: exact resume after SIGKILL, gradient
//! accumulation, clear errors for missing inputs, incompatible checkpoints and a diverging loss.

use clap::Parser;
use nanochat::checkpoint;
use nanochat::data::{self, parquet::write_text_parquet};
use nanochat::rng::Rng;
use nanochat::tokenizer::{Tokenizer, TOKENIZER_FILE};
use nanochat::train::run::{train, TrainArgs};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

const WORDS: &[&str] = &[
    "the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "house", "big", "small", "red", "blue", "green",
    "tree", "over", "under", "quickly", "slowly", "jumped", "saw", "bird", "sky", "river", "stone", "light", "day",
];

/// A base directory with 3 parquet shards of generated sentences, a tokenizer and token shards.
fn prepare(base: &Path) {
    let mut rng = Rng::new(7);
    let docs: Vec<String> = (0..900)
        .map(|_| {
            let n = 5 + rng.below(60) as usize;
            let words: Vec<&str> = (0..n).map(|_| WORDS[rng.below(WORDS.len() as u64) as usize]).collect();
            format!("{}.", words.join(" "))
        })
        .collect();
    let dir = base.join(data::DEFAULT_DIR);
    std::fs::create_dir_all(&dir).unwrap();
    for (i, chunk) in docs.chunks(300).enumerate() {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        write_text_parquet(&dir.join(format!("shard_{i:05}.parquet")), &refs, 100).unwrap();
    }
    let tok = Tokenizer::train(docs.iter().cloned(), 320, 64, &mut |_, _| {}).unwrap();
    std::fs::create_dir_all(base.join("tokenizer")).unwrap();
    tok.save(&base.join("tokenizer").join(TOKENIZER_FILE)).unwrap();
    data::tokenize::tokenize_dir(&dir, &data::tokens_dir_for(&dir), &tok, false).unwrap();
}

fn args(extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "train_gpt",
        "--depth",
        "2",
        "--aspect-ratio",
        "32",
        "--head-dim",
        "32",
        "--max-seq-len",
        "64",
        "--device-batch-size",
        "4",
        "--total-batch-size",
        "256",
        "--num-iterations",
        "8",
        "--eval-every",
        "4",
        "--eval-tokens",
        "512",
        "--sample-every",
        "0",
        "--core-metric-every",
        "0",
        "--warmup-steps",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn parse(extra: &[&str]) -> TrainArgs {
    TrainArgs::try_parse_from(args(extra)).unwrap()
}

/// Train losses by step from a run directory's metrics.jsonl.
fn logged_losses(dir: &Path) -> Vec<(u64, f64)> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

/// Steps of the kill-and-resume runs: long enough (about 20 ms a step) that the kill, at most at step 8 plus
/// 40 ms, lands well before the run's end.
const RESUME_STEPS: &str = "16";

/// The straight 16-step run the resumed runs must reproduce: its logged losses.
fn straight_run(base: &Path) -> Vec<(u64, f64)> {
    let reference = train(
        &parse(&["--model-tag", "straight", "--num-iterations", RESUME_STEPS]),
        base,
    )
    .unwrap();
    assert_eq!(reference.losses.len(), 16);
    let (first, last) = (reference.losses[0].1, reference.losses[15].1);
    assert!(last < first, "loss should fall: {first} -> {last}");
    let straight = logged_losses(&base.join("base_checkpoints").join("straight"));
    assert_eq!(straight.len(), 16);
    straight
}

#[test]
fn sigkill_and_resume_reproduce_the_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    prepare(base);
    let straight = straight_run(base);

    // Kill the binary at a random moment after a random step, then resume from the latest checkpoint. The seed
    // is printed (and may be given in NANOCHAT_TEST_SEED) so a failure can be replayed.
    let seed = std::env::var("NANOCHAT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let mut rng = Rng::new(seed);
    let kill_after = 2 + rng.below(7) as usize;
    let pause = rng.below(40);
    println!("kill-and-resume: seed {seed}: SIGKILL {pause} ms after step {kill_after}");
    let bin = env!("CARGO_BIN_EXE_train_gpt");
    let run = [
        "--model-tag",
        "killed",
        "--save-every",
        "2",
        "--num-iterations",
        RESUME_STEPS,
    ];
    let mut child = Command::new(bin)
        .args(&args(&run)[1..])
        .env("NANOCHAT_BASE_DIR", base)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    for line in BufReader::new(stdout).lines() {
        if line.unwrap().starts_with(&format!("step {kill_after:05}/")) {
            break;
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(pause));
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    let ctx = format!("seed {seed}, killed {pause} ms after step {kill_after}");
    // The kill must have interrupted the run: had the child finished first, the resumed run would train
    // nothing and the comparison below would hold trivially.
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "{ctx}: train_gpt ended before the kill ({status:?})"
    );
    let dir = base.join("base_checkpoints").join("killed");
    // Whatever the moment, every complete checkpoint loads.
    let steps = checkpoint::complete_steps(&dir);
    for &step in &steps {
        checkpoint::load(&dir, Some(step), 0, None).unwrap();
    }
    let last = steps.iter().max().copied().unwrap_or(0);
    assert!(last < 16, "{ctx}: complete checkpoint at the horizon");
    let resumed = train(&parse(&[&run[..], &["--resume"]].concat()), base).unwrap();
    assert!(!resumed.losses.is_empty(), "{ctx}: the resumed run trained nothing");
    assert_eq!(
        (resumed.losses[0].0, resumed.losses.len()),
        (last, 16 - last),
        "{ctx}: the resumed run starts at the last complete checkpoint and runs to the end"
    );
    let killed = logged_losses(&dir);
    assert_eq!(killed, straight, "{ctx}: loss trajectory after kill + resume differs");
}

#[test]
fn stopping_with_max_steps_this_run_and_resuming_reproduce_the_uninterrupted_run() {
    // The deterministic twin of the SIGKILL test: stop after 5 steps (a checkpoint at 4 from --save-every and
    // one where it stopped), then resume twice (5 more steps, then to the end).
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    prepare(base);
    let straight = straight_run(base);
    let run = [
        "--model-tag",
        "boxed",
        "--save-every",
        "4",
        "--num-iterations",
        RESUME_STEPS,
    ];
    let first = train(&parse(&[&run[..], &["--max-steps-this-run", "5"]].concat()), base).unwrap();
    let steps: Vec<usize> = first.losses.iter().map(|l| l.0).collect();
    assert_eq!(steps, (0..5).collect::<Vec<_>>());
    let dir = base.join("base_checkpoints").join("boxed");
    assert_eq!(checkpoint::complete_steps(&dir), vec![4, 5]);
    let second = train(
        &parse(&[&run[..], &["--resume", "--max-steps-this-run", "5"]].concat()),
        base,
    )
    .unwrap();
    let steps: Vec<usize> = second.losses.iter().map(|l| l.0).collect();
    assert_eq!(steps, (5..10).collect::<Vec<_>>());
    let third = train(&parse(&[&run[..], &["--resume"]].concat()), base).unwrap();
    let steps: Vec<usize> = third.losses.iter().map(|l| l.0).collect();
    assert_eq!(steps, (10..16).collect::<Vec<_>>());
    assert_eq!(logged_losses(&dir), straight);
}

#[test]
fn gradient_accumulation_equals_the_big_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    prepare(base);
    let one = ["--num-iterations", "1", "--eval-every", "0"];
    let mut a = one.to_vec();
    a.extend(["--model-tag", "accum", "--device-batch-size", "2"]); // 2 rows x 2 micro-steps
    let mut b = one.to_vec();
    b.extend(["--model-tag", "big", "--device-batch-size", "4"]); // 4 rows x 1
    train(&parse(&a), base).unwrap();
    train(&parse(&b), base).unwrap();
    let load = |tag: &str| checkpoint::load(&base.join("base_checkpoints").join(tag), Some(1), 0, None).unwrap();
    let (pa, pb) = (load("accum").params, load("big").params);
    // The same initialisation; compare the updates.
    let table = nanochat::params::ParamTable::new(&load("big").meta.model_config);
    let mut p0 = vec![0.0; table.numel];
    table.init(&mut p0, 42);
    let (mut num, mut den) = (0f64, 0f64);
    for i in 0..p0.len() {
        num += ((pa[i] - pb[i]) as f64).powi(2);
        den += ((pb[i] - p0[i]) as f64).powi(2);
    }
    let rel = (num / den).sqrt();
    assert!(
        den > 0.0 && rel < 1e-4,
        "accumulated update differs from the big-batch update: {rel:e}"
    );
}

#[test]
fn clear_errors_for_missing_inputs_bad_checkpoints_and_divergence() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let e = train(&parse(&[]), base).unwrap_err();
    assert!(e.contains("tok_train"), "{e}");
    // Without a GPU (or until the kernel devices run the model) --device cuda is a clear error, not a panic.
    let e = train(&parse(&["--device", "cuda"]), base).unwrap_err();
    assert!(e.starts_with("--device cuda"), "{e}");
    prepare(base);
    std::fs::remove_dir_all(data::tokens_dir_for(&base.join(data::DEFAULT_DIR))).unwrap();
    let e = train(&parse(&[]), base).unwrap_err();
    assert!(e.contains("tokenize_data"), "{e}");
    prepare(base);

    // A checkpoint of another depth under the same tag.
    train(
        &parse(&["--model-tag", "t", "--num-iterations", "1", "--eval-every", "0"]),
        base,
    )
    .unwrap();
    let e = train(&parse(&["--model-tag", "t", "--depth", "3", "--resume"]), base).unwrap_err();
    assert!(e.contains("was made for model"), "{e}");

    // A diverging run stops with a message and leaves its last checkpoint loadable.
    let blowup = [
        "--model-tag",
        "nan",
        "--save-every",
        "1",
        "--embedding-lr",
        "1e30",
        "--unembedding-lr",
        "1e30",
        "--eval-every",
        "0",
    ];
    let e = train(&parse(&blowup), base).unwrap_err();
    assert!(e.contains("the loss became") || e.contains("non-finite"), "{e}");
    let dir = base.join("base_checkpoints").join("nan");
    let step = checkpoint::last_step(&dir).expect("the checkpoint saved before the divergence");
    let loaded = checkpoint::load(&dir, Some(step), 0, None).unwrap();
    assert!(loaded.params.iter().all(|p| p.is_finite()));
}

#[test]
fn base_eval_reports_bpb_and_samples_of_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    prepare(base);
    train(
        &parse(&["--model-tag", "ev", "--num-iterations", "2", "--eval-every", "0"]),
        base,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_base_eval"))
        .args(["--model-tag", "ev", "--device-batch-size", "2", "--split-tokens", "256"])
        .env("NANOCHAT_BASE_DIR", base)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Train bpb:") && text.contains("Val bpb:"), "{text}");
    assert!(text.contains("The capital of France is"), "{text}");
    assert!(text.contains("unconditioned samples"), "{text}");
    // A missing checkpoint step is an error naming what exists.
    let out = Command::new(env!("CARGO_BIN_EXE_base_eval"))
        .args(["--model-tag", "ev", "--step", "7"])
        .env("NANOCHAT_BASE_DIR", base)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("[2]"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_kernel_device_trains_like_the_cpu_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    prepare(base);
    // head_dim 64: the flash attention kernels; 4 steps with a checkpoint at the end.
    let common = ["--num-iterations", "4", "--eval-every", "0", "--head-dim", "64"];
    let run = |device: &str| {
        let mut a = common.to_vec();
        // The samples at the last step: the KV-cached engine on the model in training.
        a.extend(["--device", device, "--model-tag", device, "--sample-every", "4"]);
        train(&parse(&a), base).unwrap();
        logged_losses(&base.join("base_checkpoints").join(device))
    };
    let (cpu, emu) = (run("cpu"), run("emu"));
    assert_eq!(cpu.len(), 4, "{cpu:?}");
    assert_eq!(emu.len(), cpu.len(), "{emu:?}");
    for ((s, a), (_, b)) in cpu.iter().zip(&emu) {
        assert!((a - b).abs() < 2e-2, "step {s}: cpu loss {a}, emu loss {b}");
    }
    // The loss falls (4 steps, 2 of them warm-up).
    assert!(emu.last().unwrap().1 < emu[0].1 - 0.02, "{emu:?}");
    // The checkpoint of the kernel run holds its parameters and optimizer state, and resumes.
    let l = checkpoint::load(&base.join("base_checkpoints").join("emu"), Some(4), 0, None).unwrap();
    assert!(l.optim.is_some());
    let mut a = common.to_vec();
    a.extend([
        "--device",
        "emu",
        "--model-tag",
        "emu",
        "--resume",
        "--num-iterations",
        "5",
    ]);
    train(&parse(&a), base).unwrap();
    let resumed = logged_losses(&base.join("base_checkpoints").join("emu"));
    assert_eq!(resumed.last().unwrap().0, 4, "{resumed:?}");
}

#[test]
fn step_bench_trains_a_repeated_batch_on_the_emulator() {
    let bench = env!("CARGO_BIN_EXE_step_bench");
    let tiny = [
        "--device",
        "emu",
        "--depth",
        "1",
        "--seq",
        "64",
        "--batch",
        "2",
        "--vocab",
        "512",
        "--head-dim",
        "64",
        "--steps",
        "3",
        "--warmup",
        "1",
    ];
    let out = Command::new(bench).args(tiny).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("micro-batch 2 x 64"), "{text}");
    assert!(text.contains("total"), "{text}");
    let losses: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("loss ").nth(1))
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(losses.len(), 4, "{text}");
    assert!(losses[3] < losses[0] - 0.5, "{losses:?}");
    assert!(text.contains("mean over 3 steps"), "{text}");
    // Bad input is a clear error, not a crash.
    let out = Command::new(bench)
        .args(["--device", "emu", "--steps", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--steps"));
}
