//! `chat_rl`: reinforcement learning on GSM8K (upstream's `scripts/chat_rl.py`, spec §9.2): on-policy REINFORCE
//! with the mean reward of a question's samples as the baseline (upstream's "GRPO" without the trust region,
//! the KL term or the std normalisation).
//!
//! Each step takes the next `--examples-per-step` training questions; per question the engine draws
//! `--num-samples` completions in batches of `--device-batch-size` (seeded by upstream's
//! `hash((step, example, batch)) & 0x7FFFFFFF`), the task rewards each, and the advantage is the reward minus
//! the question's mean. The loss is token-level (DAPO style) over the sampled tokens only (the prompt and the
//! calculator's forced output are masked): per batch of rows, `−Σ logp · A / (valid tokens · batches ·
//! examples)`. One optimizer step per training step with the lr `× init_lr_frac × (1 − step / steps)`; Muon
//! momentum stays 0.95. pass@k (k = 1..device batch) on the test split every `--eval-every` steps.
//!
//! Checkpoints (`chatrl_checkpoints/<tag>/`) are the other stages' atomic ones with the optimizer state;
//! checkpoint `N` holds the model after `N` steps. The rollouts of a step depend only on the parameters and the
//! step, so `--resume` continues exactly the trajectory of an uninterrupted run.

use super::metrics::Metrics;
use super::stage::{fmt_duration, open_model, save_checked};
use crate::backend::Backend;
use crate::checkpoint::{self, LoopState, Meta};
use crate::common::base_dir;
use crate::device::infer::infer_view;
use crate::engine::{Batch, Engine, GenConfig, InferModel};
use crate::model::ModelDevice;
use crate::optim::{SetupArgs, StepSettings};
use crate::tasks::gsm8k::Gsm8k;
use crate::tasks::keyword::Keyword;
use crate::tasks::Task;
use crate::tokenizer::{load_tokenizer, Tokenizer};
use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The checkpoint chat_rl starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RlSource {
    /// The fine-tuned chat model (chatsft_checkpoints).
    Sft,
    /// The midtrained model (mid_checkpoints).
    Mid,
    /// The pretrained model (base_checkpoints).
    Base,
}

impl RlSource {
    fn phase_dir(self, base: &Path) -> PathBuf {
        base.join(match self {
            RlSource::Sft => "chatsft_checkpoints",
            RlSource::Mid => "mid_checkpoints",
            RlSource::Base => "base_checkpoints",
        })
    }
    fn producer(self) -> &'static str {
        match self {
            RlSource::Sft => "chat_sft",
            RlSource::Mid => "mid_train",
            RlSource::Base => "train_gpt",
        }
    }
}

/// The task rewards come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RlTask {
    /// GSM8K main: train split for training, test split for pass@k (download_data --tasks).
    Gsm8k,
    /// A synthetic task: reward 1 when the reply contains the word given by --keyword (no download).
    Keyword,
}

/// Examples of the synthetic keyword task's train and test splits.
pub const KEYWORD_EXAMPLES: (usize, usize) = (1024, 256);

/// Reinforcement learning on GSM8K (upstream chat_rl's flags, plus resuming).
#[derive(Parser, Clone, Debug, Serialize, Deserialize)]
#[command(
    name = "chat_rl",
    about = "Reinforcement learning of a chat model on GSM8K (REINFORCE with a mean baseline)",
    args_override_self = true
)]
pub struct RlArgs {
    /// Run name (recorded in the metadata; "dummy" = unnamed).
    #[arg(long, default_value = "dummy")]
    pub run: String,
    /// Where the model computes.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    pub device: Backend,
    /// Checkpoint to start from.
    #[arg(short = 'i', long, value_enum, default_value_t = RlSource::Sft)]
    pub source: RlSource,
    /// Tag of the checkpoint to load (default: the largest d<N>); also names the output directory.
    #[arg(long)]
    pub model_tag: Option<String>,
    /// Step of the checkpoint to load (default: the latest).
    #[arg(long)]
    pub model_step: Option<usize>,
    /// Passes over the training questions.
    #[arg(long, default_value_t = 1)]
    pub num_epochs: usize,
    /// Optimizer steps (-1 = num_epochs passes over the training questions).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub num_iterations: i64,
    /// Rows per generation batch and per forward/backward pass; also the samples per pass@k problem.
    #[arg(long, default_value_t = 8)]
    pub device_batch_size: usize,
    /// Questions per optimizer step.
    #[arg(long, default_value_t = 16)]
    pub examples_per_step: usize,
    /// Completions sampled per question (a multiple of --device-batch-size).
    #[arg(long, default_value_t = 16)]
    pub num_samples: usize,
    /// Most tokens per completion.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature of the rollouts and of pass@k.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Sample among the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 50)]
    pub top_k: usize,
    /// AdamW lr of the token embedding (value embeddings get half).
    #[arg(long, default_value_t = 0.2)]
    pub embedding_lr: f64,
    /// AdamW lr of lm_head.
    #[arg(long, default_value_t = 0.004)]
    pub unembedding_lr: f64,
    /// Muon lr of the block matrices.
    #[arg(long, default_value_t = 0.02)]
    pub matrix_lr: f64,
    /// Muon weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Initial lr as a fraction of the lrs above (then linearly to 0 at the last step).
    #[arg(long, default_value_t = 0.05)]
    pub init_lr_frac: f64,
    /// pass@k on the test split every this many steps (and at the end; -1 = never).
    #[arg(long, default_value_t = 60, allow_negative_numbers = true)]
    pub eval_every: i64,
    /// Test problems per pass@k evaluation.
    #[arg(long, default_value_t = 400)]
    pub eval_examples: usize,
    /// Save a checkpoint every this many steps (and at the end; -1 = only at the end).
    #[arg(long, default_value_t = 60, allow_negative_numbers = true)]
    pub save_every: i64,
    /// Resume from the latest complete checkpoint in chatrl_checkpoints/<tag>, if there is one.
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many steps of this invocation (schedule unchanged; resume later).
    #[arg(long)]
    pub max_steps_this_run: Option<usize>,
    /// Where the rewards come from.
    #[arg(long, value_enum, default_value_t = RlTask::Gsm8k)]
    pub task: RlTask,
    /// The word the keyword task rewards.
    #[arg(long, default_value = "yes")]
    pub keyword: String,
}

/// Python's `hash()` of a tuple of small non-negative ints (CPython ≥ 3.8 on 64 bits: xxHash-style lanes; an
/// int hashes to itself).
pub fn py_tuple_hash(items: &[u64]) -> u64 {
    const P1: u64 = 11_400_714_785_074_694_791;
    const P2: u64 = 14_029_467_366_897_019_727;
    const P5: u64 = 2_870_177_450_012_600_261;
    let mut acc = P5;
    for &x in items {
        // hash(int) is the value modulo 2^61 − 1.
        let lane = x % ((1u64 << 61) - 1);
        acc = acc.wrapping_add(lane.wrapping_mul(P2)).rotate_left(31).wrapping_mul(P1);
    }
    acc = acc.wrapping_add(items.len() as u64 ^ (P5 ^ 3_527_539));
    if acc == u64::MAX {
        1_546_275_796
    } else {
        acc
    }
}

/// Upstream's rollout seed: `hash((step, example_idx, sampling_step)) & 0x7FFFFFFF`.
pub fn rollout_seed(step: usize, example: usize, batch: usize) -> u64 {
    py_tuple_hash(&[step as u64, example as u64, batch as u64]) & 0x7FFF_FFFF
}

/// The advantages of one question's samples: each reward minus their mean.
pub fn advantages(rewards: &[f64]) -> Vec<f64> {
    let mean = rewards.iter().sum::<f64>() / rewards.len().max(1) as f64;
    rewards.iter().map(|r| r - mean).collect()
}

/// One question's rollouts, padded as upstream: every sequence extended with `pad` (mask 0) to the longest,
/// then `inputs = ids[:, :-1]`, `targets = ids[:, 1:]` with −1 wherever the target's mask is 0 (prompt,
/// forced tool output, padding). Rows are `t = longest − 1` wide.
pub struct RolloutBatch {
    pub inputs: Vec<u32>,
    pub targets: Vec<i32>,
    pub rows: usize,
    pub t: usize,
}

impl RolloutBatch {
    pub fn new(seqs: &[Vec<u32>], masks: &[Vec<u8>], pad: u32) -> Result<RolloutBatch, String> {
        if seqs.len() != masks.len() || seqs.iter().zip(masks).any(|(s, m)| s.len() != m.len()) {
            return Err("every rollout needs one mask value per token".into());
        }
        let longest = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let t = longest.saturating_sub(1);
        let (mut inputs, mut targets) = (Vec::with_capacity(seqs.len() * t), Vec::with_capacity(seqs.len() * t));
        for (s, m) in seqs.iter().zip(masks) {
            let id = |j: usize| s.get(j).copied().unwrap_or(pad);
            let supervised = |j: usize| m.get(j).is_some_and(|&v| v != 0);
            for j in 0..t {
                inputs.push(id(j));
                targets.push(if supervised(j + 1) { id(j + 1) as i32 } else { -1 });
            }
        }
        Ok(RolloutBatch {
            inputs,
            targets,
            rows: seqs.len(),
            t,
        })
    }
}

/// The policy-gradient backward of one question (upstream's per-pass loop): the rows go through in passes of
/// `pass_rows`; each pass adds the gradient of `Σ CE · A / (valid targets of the pass · passes · examples)`
/// (= −Σ logp · A / ...) and its value is returned, one per pass.
pub fn policy_gradient_backward(
    model: &mut dyn ModelDevice,
    batch: &RolloutBatch,
    advantages: &[f64],
    pass_rows: usize,
    examples: usize,
) -> Result<Vec<f32>, String> {
    if advantages.len() != batch.rows || pass_rows == 0 || batch.rows % pass_rows != 0 {
        return Err(format!(
            "{} rollouts with {} advantages cannot be split into passes of {pass_rows}",
            batch.rows,
            advantages.len()
        ));
    }
    let passes = batch.rows / pass_rows;
    let t = batch.t;
    let mut losses = Vec::with_capacity(passes);
    for p in 0..passes {
        let span = p * pass_rows * t..(p + 1) * pass_rows * t;
        let targets = &batch.targets[span.clone()];
        let valid = targets.iter().filter(|&&y| y >= 0).count();
        if t == 0 || valid == 0 {
            losses.push(0.0);
            continue;
        }
        let scale = 1.0 / (valid * passes * examples) as f32;
        let weights: Vec<f32> = advantages[p * pass_rows..(p + 1) * pass_rows]
            .iter()
            .map(|&a| a as f32)
            .collect();
        let sum = model.forward_backward_weighted(&batch.inputs[span], targets, &weights, pass_rows, t, scale)?;
        losses.push(sum * scale);
    }
    Ok(losses)
}

/// Generation requests: a prompt and its sampling settings.
type Job = (Vec<u32>, GenConfig);

fn run_jobs<M: InferModel>(engine: &Engine<M>, jobs: &[Job]) -> Result<Vec<Batch>, String> {
    jobs.iter().map(|(p, cfg)| engine.generate_batch(p, cfg)).collect()
}

/// Runs the generation jobs on the current parameters, KV-cached on every device ([`infer_view`]: on a kernel
/// device the model in training itself, with a KV cache next to its weights).
fn generate(model: &(dyn ModelDevice + Send), tok: &Tokenizer, jobs: &[Job]) -> Result<Vec<Batch>, String> {
    run_jobs(&Engine::new(infer_view(model)?, tok.clone()), jobs)
}

/// pass@k for k = 1..samples: the share of problems with a correct answer among their first k samples.
pub fn pass_at_k(outcomes: &[Vec<bool>], samples: usize) -> Vec<f64> {
    (1..=samples)
        .map(|k| {
            let hits = outcomes.iter().filter(|o| o.iter().take(k).any(|&c| c)).count();
            hits as f64 / outcomes.len().max(1) as f64
        })
        .collect()
}

/// What a chat_rl run reports.
#[derive(Clone, Debug)]
pub struct RlSummary {
    /// (step, mean reward of its rollouts) for every step this invocation trained.
    pub rewards: Vec<(usize, f64)>,
    /// (step, loss summed over its passes) for every step this invocation trained.
    pub losses: Vec<(usize, f64)>,
    /// (step, pass@1..pass@k) of every evaluation this invocation ran.
    pub pass_at_k: Vec<(usize, Vec<f64>)>,
    pub last_step: usize,
    pub checkpoint_dir: PathBuf,
    /// Completions sampled per second of rollout time, over this invocation.
    pub samples_per_sec: f64,
    /// Completions per second of whole steps (rollouts, rewards, backward, optimizer), over this invocation.
    pub step_samples_per_sec: f64,
}

/// The training and the evaluation task.
type TaskPair = (Arc<dyn Task>, Arc<dyn Task>);

fn load_tasks(base: &Path, args: &RlArgs) -> Result<TaskPair, String> {
    Ok(match args.task {
        RlTask::Gsm8k => {
            let load = |split| {
                Gsm8k::load(base, "main", split).map_err(|e| format!("{e} (download it with download_data --tasks)"))
            };
            (Arc::new(load("train")?), Arc::new(load("test")?))
        }
        RlTask::Keyword => (
            Arc::new(Keyword::new(&args.keyword, "train", KEYWORD_EXAMPLES.0)?),
            Arc::new(Keyword::new(&args.keyword, "test", KEYWORD_EXAMPLES.1)?),
        ),
    })
}

/// Runs reinforcement learning on the base directory `base`.
pub fn chat_rl(args: &RlArgs, base: &Path) -> Result<RlSummary, String> {
    let (dbs, eps) = (args.device_batch_size, args.examples_per_step);
    if dbs == 0 || args.num_samples == 0 || args.num_samples % dbs != 0 {
        return Err(format!(
            "--num-samples {} must be a positive multiple of --device-batch-size {dbs}",
            args.num_samples
        ));
    }
    if eps == 0 {
        return Err("--examples-per-step must be at least 1".into());
    }
    if args.temperature.is_nan() || args.temperature < 0.0 {
        return Err(format!("--temperature must be >= 0, got {}", args.temperature));
    }
    let tok = load_tokenizer(base)?;
    let phase = args.source.phase_dir(base);
    let tag = match &args.model_tag {
        Some(t) => t.clone(),
        None => checkpoint::find_largest_model(&phase).ok_or_else(|| {
            format!(
                "no checkpoints under {}: run {} first (or choose another -i)",
                phase.display(),
                args.source.producer()
            )
        })?,
    };
    let src_dir = phase.join(&tag);
    let out_dir = checkpoint::checkpoint_dir(base, "chatrl", &tag);
    let (train, val) = load_tasks(base, args)?;
    if train.num_examples() == 0 {
        return Err(format!("{} has no training examples", train.name()));
    }
    let num_steps = if args.num_iterations > 0 {
        args.num_iterations as usize
    } else {
        (train.num_examples() / eps) * args.num_epochs
    };
    if num_steps == 0 {
        return Err(format!(
            "no steps to run: {} training questions, {eps} per step, {} epochs",
            train.num_examples(),
            args.num_epochs
        ));
    }
    let setup = SetupArgs {
        unembedding_lr: args.unembedding_lr,
        embedding_lr: args.embedding_lr,
        matrix_lr: args.matrix_lr,
        weight_decay: args.weight_decay,
        scalar_lr: SetupArgs::default().scalar_lr,
    };
    let resume_step = if args.resume {
        checkpoint::last_step(&out_dir)
    } else {
        None
    };
    let (mut model, mut loop_state, start, model_config) = match resume_step {
        Some(step) => {
            let l = checkpoint::load(&out_dir, Some(step), 0, None)?;
            let cfg = l.meta.model_config.clone();
            let mut model = open_model(args.device, &cfg, l.params, &setup, dbs, cfg.sequence_len)?;
            let state = l
                .optim
                .ok_or_else(|| format!("checkpoint step {step} in {} has no optimizer state", out_dir.display()))?;
            model.load_optimizer_state(&state)?;
            println!("chat_rl: resuming from step {step} in {}", out_dir.display());
            (model, l.meta.loop_state, step, cfg)
        }
        None => {
            let l = checkpoint::load(&src_dir, args.model_step, 0, None)?;
            println!(
                "chat_rl: starting from the {} checkpoint {} step {}",
                args.source.producer(),
                src_dir.display(),
                l.meta.step
            );
            let cfg = l.meta.model_config.clone();
            let model = open_model(args.device, &cfg, l.params, &setup, dbs, cfg.sequence_len)?;
            (model, LoopState::default(), 0, cfg)
        }
    };
    if tok.vocab_size() != model_config.vocab_size {
        return Err(format!(
            "the tokenizer has {} tokens but the checkpoint was trained with {}",
            tok.vocab_size(),
            model_config.vocab_size
        ));
    }
    let pad = tok
        .special_id("<|assistant_end|>")
        .ok_or("the tokenizer has no <|assistant_end|> token")?;
    let passes = args.num_samples / dbs;
    println!(
        "chat_rl: {num_steps} steps of {eps} {} questions x {} samples ({passes} batches of {dbs}), up to {} new \
         tokens, temperature {}, top-k {}; checkpoints in {}",
        train.name(),
        args.num_samples,
        args.max_new_tokens,
        args.temperature,
        args.top_k,
        out_dir.display()
    );
    let user_config = serde_json::to_value(args).map_err(|e| e.to_string())?;
    let mut metrics = Metrics::open(&out_dir, Some(start))?;
    let top_k = (args.top_k > 0).then_some(args.top_k);
    let gen = |seed| GenConfig {
        num_samples: dbs,
        max_tokens: Some(args.max_new_tokens),
        temperature: args.temperature,
        top_k,
        seed,
    };
    let stop_at = args.max_steps_this_run.map(|k| start + k);
    let mut summary = RlSummary {
        rewards: Vec::new(),
        losses: Vec::new(),
        pass_at_k: Vec::new(),
        last_step: start,
        checkpoint_dir: out_dir.clone(),
        samples_per_sec: 0.0,
        step_samples_per_sec: 0.0,
    };
    let (mut rollout_time, mut step_time) = (0.0, 0.0);
    let mut step = start;
    loop {
        let last_step = step >= num_steps;
        if args.eval_every > 0 && (last_step || step % args.eval_every as usize == 0) {
            let t0 = Instant::now();
            let n = args.eval_examples.min(val.num_examples());
            let mut jobs = Vec::with_capacity(n);
            let mut examples = Vec::with_capacity(n);
            for i in 0..n {
                let ex = val.get_example(i)?;
                let prompt = tok
                    .render_for_completion(&ex.conversation)
                    .map_err(|e| format!("{} test problem {i}: {e}", val.name()))?;
                jobs.push((prompt, gen(42)));
                examples.push(ex);
            }
            let batches = generate(model.as_ref(), &tok, &jobs)?;
            let mut outcomes = Vec::with_capacity(n);
            for ((ex, (prompt, _)), (seqs, _)) in examples.iter().zip(&jobs).zip(&batches) {
                let mut o = Vec::with_capacity(seqs.len());
                for s in seqs {
                    o.push(val.evaluate(ex, &tok.decode_lossy(&s[prompt.len()..]))?);
                }
                outcomes.push(o);
            }
            let passk = pass_at_k(&outcomes, dbs);
            let shown: Vec<String> = passk
                .iter()
                .enumerate()
                .map(|(k, v)| format!("Pass@{}: {v:.4}", k + 1))
                .collect();
            println!(
                "step {step:05} | {} ({n} problems, {:.1}s)",
                shown.join(", "),
                t0.elapsed().as_secs_f64()
            );
            metrics.log(json!({"kind": "eval", "step": step, "pass_at_k": passk, "problems": n}))?;
            summary.pass_at_k.push((step, passk));
        }
        let periodic = args.save_every > 0 && step > 0 && step != start && step % args.save_every as usize == 0;
        if last_step || periodic {
            let meta = Meta {
                step,
                val_bpb: None,
                model_config: model_config.clone(),
                user_config: user_config.clone(),
                device_batch_size: dbs,
                max_seq_len: model_config.sequence_len,
                total_batch_size: eps * args.num_samples,
                dataloader_state_dict: json!({"examples_seen": step * eps}),
                loop_state: loop_state.clone(),
            };
            save_checked(&out_dir, &meta, model.as_mut())?;
        }
        if last_step || stop_at == Some(step) {
            break;
        }

        // Rollouts of this step's questions (the parameters do not change until the optimizer step).
        let t0 = Instant::now();
        let mut jobs = Vec::with_capacity(eps * passes);
        let mut questions = Vec::with_capacity(eps);
        for k in 0..eps {
            let idx = (step * eps + k) % train.num_examples();
            let ex = train.get_example(idx)?;
            let prompt = tok
                .render_for_completion(&ex.conversation)
                .map_err(|e| format!("{} training question {idx}: {e}", train.name()))?;
            for b in 0..passes {
                jobs.push((prompt.clone(), gen(rollout_seed(step, idx, b))));
            }
            questions.push((ex, prompt.len()));
        }
        let batches = generate(model.as_ref(), &tok, &jobs)?;
        let t_rollout = t0.elapsed().as_secs_f64();

        // Rewards, advantages and the policy-gradient backward, question by question.
        let (mut reward_sum, mut loss, mut seq_len) = (0.0, 0.0f64, 0usize);
        for (k, (ex, prompt_len)) in questions.iter().enumerate() {
            let (mut seqs, mut masks) = (Vec::new(), Vec::new());
            for (s, m) in &batches[k * passes..(k + 1) * passes] {
                seqs.extend(s.iter().cloned());
                masks.extend(m.iter().cloned());
            }
            let mut rewards = Vec::with_capacity(seqs.len());
            for s in &seqs {
                rewards.push(train.reward(ex, &tok.decode_lossy(&s[*prompt_len..]))?);
            }
            seq_len += seqs.iter().map(Vec::len).sum::<usize>();
            reward_sum += rewards.iter().sum::<f64>() / rewards.len() as f64;
            let batch = RolloutBatch::new(&seqs, &masks, pad)?;
            let pass_losses = policy_gradient_backward(model.as_mut(), &batch, &advantages(&rewards), dbs, eps)?;
            loss += pass_losses.iter().map(|&l| l as f64).sum::<f64>();
        }
        let reward = reward_sum / eps as f64;
        if !loss.is_finite() {
            return Err(format!(
                "the loss became {loss} at step {step}; stopping without saving. The last good checkpoint (if \
                 any) is intact in {}: resume from it with a lower learning rate",
                out_dir.display()
            ));
        }
        let lrm = 1.0 - step as f64 / num_steps as f64;
        model.step(&StepSettings {
            lr_multiplier: args.init_lr_frac * lrm,
            muon_momentum: 0.95,
            muon_weight_decay: args.weight_decay,
        })?;
        let dt = t0.elapsed().as_secs_f64();
        rollout_time += t_rollout;
        step_time += dt;
        loop_state.total_training_time += dt;
        loop_state.smooth_train_loss = 0.9 * loop_state.smooth_train_loss + 0.1 * loss;
        let smooth = loop_state.smooth_train_loss / (1.0 - 0.9f64.powi(step as i32 + 1));
        let samples = (eps * args.num_samples) as f64;
        let mean_len = seq_len as f64 / samples;
        let eta = step_time / (step + 1 - start) as f64 * (num_steps - step - 1) as f64;
        println!(
            "step {step:05}/{num_steps:05} | reward: {reward:.4} | loss: {loss:.6} | sequence length: {mean_len:.1} | \
             lrm: {lrm:.3} | dt: {:.0}ms | samples/sec: {:.1} | eta: {}",
            dt * 1e3,
            samples / dt,
            fmt_duration(eta)
        );
        metrics.log(json!({
            "kind": "train", "step": step, "loss": loss, "smooth_loss": smooth, "reward": reward,
            "sequence_length": mean_len, "lrm": lrm, "dt": dt, "rollout_time": t_rollout,
            "samples_per_sec": samples / dt, "total_training_time": loop_state.total_training_time,
        }))?;
        summary.rewards.push((step, reward));
        summary.losses.push((step, loss));
        step += 1;
        if (step - start) % 10 == 0 {
            metrics.write_svg()?;
        }
    }
    metrics.write_svg()?;
    summary.last_step = step;
    let samples = (summary.rewards.len() * eps * args.num_samples) as f64;
    if step_time > 0.0 {
        summary.samples_per_sec = samples / rollout_time;
        summary.step_samples_per_sec = samples / step_time;
    }
    let mean = |v: &[(usize, f64)]| v.iter().map(|x| x.1).sum::<f64>() / v.len().max(1) as f64;
    let n = summary.rewards.len();
    let q = (n / 4).max(1).min(n);
    println!(
        "chat_rl: {n} steps this run; mean reward {:.4} over the first {q}, {:.4} over the last {q}; {:.1} samples/s \
         in rollouts, {:.1} samples/s overall; run record in {}",
        mean(&summary.rewards[..q.min(n)]),
        mean(&summary.rewards[n - q.min(n)..]),
        summary.samples_per_sec,
        summary.step_samples_per_sec,
        out_dir.display()
    );
    Ok(summary)
}

/// Entry point of the binary.
pub fn main_with(args: &RlArgs) -> Result<RlSummary, String> {
    chat_rl(args, &base_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_pythons_tuple_hash() {
        // python3 -c "print(hash((1,2,3)), hash((0,5,1)) & 0x7FFFFFFF)"
        assert_eq!(py_tuple_hash(&[1, 2, 3]), 529_344_067_295_497_451);
        assert_eq!(rollout_seed(0, 5, 1), 2_131_991_035);
    }

    #[test]
    fn advantages_padding_masking_and_pass_at_k_by_hand() {
        assert_eq!(advantages(&[1.0, 0.0, 0.0, 1.0]), [0.5, -0.5, -0.5, 0.5]);
        assert_eq!(advantages(&[1.0, 1.0]), [0.0, 0.0]);
        // Prompt [1, 2] (mask 0), then sampled 3, forced 4, sampled 5; the second row stops after one token.
        let seqs = vec![vec![1, 2, 3, 4, 5], vec![1, 2, 7]];
        let masks = vec![vec![0, 0, 1, 0, 1], vec![0, 0, 1]];
        let b = RolloutBatch::new(&seqs, &masks, 9).unwrap();
        assert_eq!((b.rows, b.t), (2, 4));
        assert_eq!(b.inputs, [1, 2, 3, 4, 1, 2, 7, 9]);
        assert_eq!(b.targets, [-1, 3, -1, 5, -1, 7, -1, -1]);
        assert!(RolloutBatch::new(&seqs, &masks[..1], 9).is_err());
        let outcomes = vec![vec![false, true], vec![false, false], vec![true, true]];
        assert_eq!(pass_at_k(&outcomes, 2), [1.0 / 3.0, 2.0 / 3.0]);
    }
}
