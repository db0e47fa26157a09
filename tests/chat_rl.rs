//! chat_rl: the policy-gradient loss of a hand-made batch against a plain computation (CPU reference, the
//! grouped composition the kernel devices use, and the emulator), and end to end on a tiny base model with the
//! synthetic keyword reward: the mean reward rises, chat_cli's `-i rl` loads the result, `--resume` after
//! SIGKILL reproduces the uninterrupted trajectory, and a step runs on the kernel emulator.

mod common;

use clap::Parser;
use common::stages::{copy_dir, prepare, records};
use nanochat::backend::Backend;
use nanochat::checkpoint;
use nanochat::config::ModelConfig;
use nanochat::cpu::model::CpuModel;
use nanochat::device::{model::KernelModel, Schedule};
use nanochat::engine::load::load_engine;
use nanochat::model::{weighted_by_row_groups, ModelDevice};
use nanochat::optim::SetupArgs;
use nanochat::params::ParamTable;
use nanochat::rng::Rng;
use nanochat::train::rl::{advantages, chat_rl, policy_gradient_backward, RlArgs, RolloutBatch};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

fn tiny() -> (ModelConfig, Vec<f32>) {
    let config = ModelConfig {
        sequence_len: 16,
        vocab_size: 64,
        n_layer: 2,
        n_head: 2,
        n_kv_head: 2,
        n_embd: 64,
        window_pattern: "L".into(),
    };
    let table = ParamTable::new(&config);
    let mut params = vec![0.0; table.numel];
    table.init(&mut params, 5);
    // Non-zero output layers (the init zeroes some projections), so every parameter gets a gradient.
    let mut rng = Rng::new(9);
    for p in params.iter_mut() {
        *p += rng.uniform(-0.02, 0.02);
    }
    (config, params)
}

fn cpu(config: &ModelConfig, params: &[f32]) -> CpuModel {
    CpuModel::new(config, params.to_vec(), &SetupArgs::default()).unwrap()
}

/// Four rollouts of one prompt (two passes of two rows): different lengths, a calculator-forced token
/// (mask 0) in two of them.
fn hand_made() -> (Vec<Vec<u32>>, Vec<Vec<u8>>) {
    let prompt = [1u32, 5, 9];
    let gen: [(&[u32], &[u8]); 4] = [
        (&[12, 13, 14, 15], &[1, 0, 1, 1]),
        (&[20], &[1]),
        (&[30, 31, 32, 33, 34], &[1, 1, 0, 0, 1]),
        (&[40, 41], &[1, 1]),
    ];
    let seqs = gen.iter().map(|(g, _)| [&prompt[..], g].concat()).collect();
    let masks = gen.iter().map(|(_, m)| [&[0u8, 0, 0][..], m].concat()).collect();
    (seqs, masks)
}

/// The loss of one pass computed plainly from the sequences: per-token cross-entropies of the rows padded to
/// the longest rollout, logp = −CE on the sampled targets, objective = Σ logp · A / (valid · passes ·
/// examples), loss = −objective.
fn reference_loss(
    model: &mut dyn ModelDevice,
    seqs: &[Vec<u32>],
    masks: &[Vec<u8>],
    adv: &[f64],
    passes: usize,
    examples: usize,
) -> f64 {
    let t = seqs.iter().map(Vec::len).max().unwrap() - 1;
    let (mut ids, mut targets) = (Vec::new(), Vec::new());
    for (s, m) in seqs.iter().zip(masks) {
        for j in 0..t {
            ids.push(*s.get(j).unwrap_or(&63));
            let sampled = j + 1 < s.len() && m[j + 1] == 1;
            targets.push(if sampled { s[j + 1] as i32 } else { -1 });
        }
    }
    let ce = model.token_losses(&ids, &targets, seqs.len(), t).unwrap();
    let valid = targets.iter().filter(|&&y| y >= 0).count() as f64;
    let mut objective = 0.0;
    for (i, &l) in ce.iter().enumerate() {
        if targets[i] >= 0 {
            objective += -(l as f64) * adv[i / t];
        }
    }
    -objective / (valid * passes as f64 * examples as f64)
}

/// The two rows of pass `p`, each padded (id 63, mask 0) to the question's longest rollout, 8 tokens: upstream
/// pads the whole question before splitting it into passes.
fn pass_rows(seqs: &[Vec<u32>], masks: &[Vec<u8>], p: usize) -> (Vec<Vec<u32>>, Vec<Vec<u8>>) {
    let mut s = seqs[p * 2..p * 2 + 2].to_vec();
    let mut m = masks[p * 2..p * 2 + 2].to_vec();
    for (row, mask) in s.iter_mut().zip(m.iter_mut()) {
        row.resize(8, 63);
        mask.resize(8, 0);
    }
    (s, m)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let n = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

#[test]
fn the_policy_gradient_loss_equals_a_plain_reference_computation() {
    let (config, params) = tiny();
    let (seqs, masks) = hand_made();
    // Rewards with three distinct advantages (the grouped composition has three groups).
    let rewards = [1.0, 0.0, 0.25, 1.0];
    let adv = advantages(&rewards);
    assert_eq!(adv, [0.4375, -0.5625, -0.3125, 0.4375]);
    let batch = RolloutBatch::new(&seqs, &masks, 63).unwrap();
    let examples = 3;
    let mut model = cpu(&config, &params);
    let losses = policy_gradient_backward(&mut model, &batch, &adv, 2, examples).unwrap();
    assert_eq!(losses.len(), 2);
    let mut plain = cpu(&config, &params);
    let mut want = Vec::new();
    for p in 0..2 {
        let (s, m) = pass_rows(&seqs, &masks, p);
        want.push(reference_loss(&mut plain, &s, &m, &adv[p * 2..p * 2 + 2], 2, examples));
    }
    for (got, want) in losses.iter().zip(&want) {
        assert!(
            (*got as f64 - want).abs() <= 1e-5 * want.abs() + 1e-7,
            "pass loss {got} vs plain {want}"
        );
    }
    let grads = model.grads().unwrap();

    // The gradient is the derivative of that plain loss: along the gradient's direction, a central
    // difference of the plain loss equals the gradient's norm.
    let norm = grads.iter().map(|g| (*g as f64).powi(2)).sum::<f64>().sqrt();
    assert!(norm > 0.0);
    let eps = 1e-2;
    let shifted = |sign: f64| {
        let p: Vec<f32> = params
            .iter()
            .zip(&grads)
            .map(|(p, g)| p + (sign * eps * *g as f64 / norm) as f32)
            .collect();
        let mut m = cpu(&config, &p);
        let mut total = 0.0;
        for pass in 0..2 {
            let (s, k) = pass_rows(&seqs, &masks, pass);
            total += reference_loss(&mut m, &s, &k, &adv[pass * 2..pass * 2 + 2], 2, examples);
        }
        total
    };
    let fd = (shifted(1.0) - shifted(-1.0)) / (2.0 * eps);
    assert!(
        (fd - norm).abs() < 0.03 * norm,
        "directional derivative {fd} vs gradient norm {norm}"
    );

    // The composition of plain mean-loss passes (what the kernel devices run) gives the same loss and gradient.
    let mut composed = cpu(&config, &params);
    for p in 0..2 {
        let span = p * 2 * batch.t..(p + 1) * 2 * batch.t;
        let valid = batch.targets[span.clone()].iter().filter(|&&y| y >= 0).count();
        let scale = 1.0 / (valid * 2 * examples) as f32;
        let w: Vec<f32> = adv[p * 2..p * 2 + 2].iter().map(|&a| a as f32).collect();
        let sum = weighted_by_row_groups(
            &mut composed,
            &batch.inputs[span.clone()],
            &batch.targets[span],
            &w,
            2,
            batch.t,
            scale,
        )
        .unwrap();
        assert!((sum * scale - losses[p]).abs() <= 1e-5 * losses[p].abs() + 1e-7);
    }
    let g2 = composed.grads().unwrap();
    for (i, (a, b)) in grads.iter().zip(&g2).enumerate() {
        assert!((a - b).abs() <= 1e-4 * a.abs() + 1e-6, "grad[{i}]: {a} vs {b}");
    }

    // The kernels (on the emulator) through the trait's default: the same loss and gradient up to bf16.
    let dev = Backend::Emu.kernel_device(Schedule::Forward).unwrap();
    let mut emu = KernelModel::new(dev, &config, &params, &SetupArgs::default()).unwrap();
    let emu_losses = policy_gradient_backward(&mut emu, &batch, &adv, 2, examples).unwrap();
    for (a, b) in losses.iter().zip(&emu_losses) {
        assert!((a - b).abs() <= 0.03 * a.abs() + 1e-4, "cpu {a} vs emu {b}");
    }
    let ge = emu.grads().unwrap();
    let c = cosine(&grads, &ge);
    assert!(c > 0.99, "cosine of the cpu and emu gradients: {c}");

    // A question whose samples all earn the same reward teaches nothing: zero advantage, zero gradient.
    let mut same = cpu(&config, &params);
    let flat = advantages(&[1.0; 4]);
    let l = policy_gradient_backward(&mut same, &batch, &flat, 2, examples).unwrap();
    assert_eq!(l, [0.0, 0.0]);
    assert!(same.grads().unwrap().iter().all(|&g| g == 0.0));
    // Passes must divide the samples.
    assert!(policy_gradient_backward(&mut same, &batch, &adv, 3, examples).is_err());
}

fn rl_args(extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        "chat_rl",
        "-i",
        "base",
        "--task",
        "keyword",
        "--keyword",
        "cat",
        "--num-iterations",
        "30",
        "--examples-per-step",
        "4",
        "--num-samples",
        "8",
        "--device-batch-size",
        "8",
        "--max-new-tokens",
        "8",
        "--init-lr-frac",
        "1.0",
        "--eval-every",
        "15",
        "--eval-examples",
        "8",
        "--save-every",
        "4",
    ];
    a.extend(extra);
    a.iter().map(|s| s.to_string()).collect()
}

/// (step, loss, reward) of every train record.
fn trajectory(dir: &Path) -> Vec<(u64, f64, f64)> {
    records(dir, "train")
        .iter()
        .map(|v| {
            (
                v["step"].as_u64().unwrap(),
                v["loss"].as_f64().unwrap(),
                v["reward"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn chat_rl_raises_the_reward_and_resumes_exactly_after_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("a");
    prepare(&base);
    let copy = tmp.path().join("b");
    copy_dir(&base, &copy);

    // Clear errors: no sft checkpoint yet; samples that do not split into batches.
    let e = chat_rl(
        &RlArgs::try_parse_from(["chat_rl", "--task", "keyword"]).unwrap(),
        &base,
    )
    .err()
    .unwrap();
    assert!(e.contains("chatsft_checkpoints") && e.contains("chat_sft"), "{e}");
    let e = chat_rl(
        &RlArgs::try_parse_from(rl_args(&["--num-samples", "12"])).unwrap(),
        &base,
    )
    .err()
    .unwrap();
    assert!(e.contains("--num-samples 12"), "{e}");

    let straight = chat_rl(&RlArgs::try_parse_from(rl_args(&[])).unwrap(), &base).unwrap();
    let r: Vec<f64> = straight.rewards.iter().map(|x| x.1).collect();
    assert_eq!(r.len(), 30);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (first, last) = (mean(&r[..8]), mean(&r[22..]));
    println!("mean reward: first 8 steps {first:.3}, last 8 steps {last:.3}; rewards {r:?}");
    println!(
        "samples/s: {:.1} in rollouts, {:.1} overall",
        straight.samples_per_sec, straight.step_samples_per_sec
    );
    assert!(last > first + 0.2, "the mean reward should rise: {r:?}");
    // pass@k at steps 0, 15 and the end, k = 1..8, non-decreasing in k.
    let steps: Vec<usize> = straight.pass_at_k.iter().map(|p| p.0).collect();
    assert_eq!(steps, [0, 15, 30]);
    for (_, p) in &straight.pass_at_k {
        assert_eq!(p.len(), 8);
        assert!(p.windows(2).all(|w| w[0] <= w[1]), "{p:?}");
    }
    assert!(
        straight.pass_at_k[2].1[0] > straight.pass_at_k[0].1[0],
        "{:?}",
        straight.pass_at_k
    );
    let dir = base.join("chatrl_checkpoints").join("d2");
    assert_eq!(checkpoint::complete_steps(&dir), [4, 8, 12, 16, 20, 24, 28, 30]);
    // chat_cli / chat_web -i rl load the result.
    let (_, card, notice) = load_engine(&base, "rl", None, None).unwrap();
    assert_eq!((card.source.as_str(), card.step, notice), ("rl", 30, None));

    // Kill the binary after a random step, resume, and compare the trajectory with the straight run.
    let mut rng = Rng::new(std::process::id() as u64);
    let kill_after = 5 + rng.below(15);
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat_rl"))
        .args(&rl_args(&[])[1..])
        .env("NANOCHAT_BASE_DIR", &copy)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        if line.unwrap().starts_with(&format!("step {kill_after:05}/")) {
            break;
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(rng.below(30)));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let killed_dir = copy.join("chatrl_checkpoints").join("d2");
    let kept = checkpoint::complete_steps(&killed_dir);
    assert!(
        !kept.contains(&30),
        "the kill after step {kill_after} came too late: {kept:?}"
    );
    let resumed = chat_rl(&RlArgs::try_parse_from(rl_args(&["--resume"])).unwrap(), &copy).unwrap();
    assert!(
        resumed.rewards.len() < 30,
        "the resumed run should not start from scratch"
    );
    assert_eq!(
        trajectory(&killed_dir),
        trajectory(&dir),
        "killed after step {kill_after}"
    );
    let pass = |d: &Path| {
        records(d, "eval")
            .iter()
            .map(|v| v["pass_at_k"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(pass(&killed_dir), pass(&dir));

    // The default task, GSM8K: without its data the error says how to get it; with the fixture's few test rows
    // (serving as the train split too) a step runs: prompts render, rewards come from the answer check.
    let gsm8k = [
        "chat_rl",
        "-i",
        "base",
        "--num-iterations",
        "1",
        "--examples-per-step",
        "2",
        "--num-samples",
        "2",
        "--device-batch-size",
        "2",
        "--max-new-tokens",
        "16",
        "--eval-every",
        "1",
        "--eval-examples",
        "3",
        "--save-every",
        "-1",
    ];
    let e = chat_rl(&RlArgs::try_parse_from(gsm8k).unwrap(), &copy).err().unwrap();
    assert!(e.contains("download_data --tasks"), "{e}");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tasks/task_data/openai--gsm8k/main/test");
    for split in ["train", "test"] {
        copy_dir(&fixture, &copy.join("task_data/openai--gsm8k/main").join(split));
    }
    let g = chat_rl(&RlArgs::try_parse_from(gsm8k).unwrap(), &copy).unwrap();
    assert_eq!(g.rewards.len(), 1);
    assert!(g.losses[0].1.is_finite());
    assert_eq!(g.pass_at_k.len(), 2);
    assert!(g.pass_at_k.iter().all(|p| p.1.len() == 2));
}

#[test]
fn a_chat_rl_step_runs_on_the_kernel_emulator() {
    let tmp = tempfile::tempdir().unwrap();
    prepare(tmp.path());
    let a = [
        "chat_rl",
        "--device",
        "emu",
        "-i",
        "base",
        "--task",
        "keyword",
        "--keyword",
        "cat",
        "--num-iterations",
        "1",
        "--examples-per-step",
        "1",
        "--num-samples",
        "4",
        "--device-batch-size",
        "2",
        "--max-new-tokens",
        "3",
        "--init-lr-frac",
        "1.0",
        "--eval-every",
        "1",
        "--eval-examples",
        "1",
    ];
    let s = chat_rl(&RlArgs::try_parse_from(a).unwrap(), tmp.path()).unwrap();
    assert_eq!(s.rewards.len(), 1);
    assert!(s.losses[0].1.is_finite());
    assert_eq!(s.pass_at_k.iter().map(|p| p.0).collect::<Vec<_>>(), [0, 1]);
    let dir = tmp.path().join("chatrl_checkpoints").join("d2");
    assert_eq!(checkpoint::complete_steps(&dir), [1]);
    assert!(checkpoint::load(&dir, Some(1), 0, None).unwrap().optim.is_some());
}
