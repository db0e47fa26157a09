//! The conversation stages after pretraining, mid_train and chat_sft, share one loop (upstream's two scripts
//! differ only in mixture, masking, lr shape and defaults): start from a checkpoint, then loop: evaluate
//! validation bits per byte on the conversation loader's targets, run the stage's hook (ChatCORE), checkpoint,
//! train one step of `grad_accum` micro-batches with the lr set by progress through the mixture, log.
//!
//! As upstream, the next batch is drawn right after each micro-step (the prefetch), and the stage ends when the
//! loader has consumed the whole mixture once (or after `--num-iterations` optimizer steps). Checkpoints hold the
//! loader's state before the prefetched batch, so `--resume` redraws it and continues the same trajectory.
//!
//! The pieces shared with pretraining live here too: building the model on a device, the checked save.

use super::metrics::Metrics;
use crate::backend::Backend;
use crate::checkpoint::{self, LoopState, Meta};
use crate::config::ModelConfig;
use crate::cpu::gpt::Storage;
use crate::cpu::model::CpuModel;
use crate::data::sft::{ConversationSource, SftConfig, SftLoader, SftState, SftStats, Supervision};
use crate::device::model::KernelModel;
use crate::model::ModelDevice;
use crate::optim::{SetupArgs, StepSettings};
use crate::safetensors::Tensor;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// The model on `device` from `params`, with a fresh optimizer set up by `setup`; on a kernel device the
/// memory report for micro-batches of `(b, t)` is printed first.
pub fn open_model(
    device: Backend,
    config: &ModelConfig,
    params: Vec<f32>,
    setup: &SetupArgs,
    b: usize,
    t: usize,
) -> Result<Box<dyn ModelDevice + Send>, String> {
    if !device.is_kernels() {
        let storage = device.cpu_storage().unwrap_or(Storage::F32);
        return Ok(Box::new(CpuModel::new(config, params, setup)?.with_storage(storage)));
    }
    // The emulator runs its threads in order; the kernel tests try the other schedules.
    let dev = device.kernel_device(crate::device::Schedule::Forward)?;
    let m = KernelModel::new(dev, config, &params, setup)?;
    println!("device memory ({}):\n{}", m.device().name(), m.memory_report(b, t));
    Ok(Box::new(m))
}

/// Saves a checkpoint of `model` unless a parameter became non-finite (then the previous checkpoints stay the
/// last good ones and the error says so).
pub fn save_checked(dir: &std::path::Path, meta: &Meta, model: &mut dyn ModelDevice) -> Result<(), String> {
    let params = model.params()?;
    if let Some(bad) = params.iter().position(|p| !p.is_finite()) {
        let name = model
            .table()
            .params
            .iter()
            .find(|p| p.range.contains(&bad))
            .map_or("?", |p| &p.name);
        return Err(format!(
            "parameters became non-finite ({name}) before step {}; not saving. The last good checkpoint (if any) \
             is intact in {}: resume from it with a lower learning rate",
            meta.step,
            dir.display()
        ));
    }
    let optim = model.optimizer_state()?;
    checkpoint::save(dir, meta, model.table(), &params, &optim, 0)?;
    println!("saved checkpoint step {} to {}", meta.step, dir.display());
    Ok(())
}

pub fn fmt_duration(secs: f64) -> String {
    if secs < 90.0 {
        format!("{secs:.0}s")
    } else if secs < 5400.0 {
        format!("{:.1}m", secs / 60.0)
    } else {
        format!("{:.2}h", secs / 3600.0)
    }
}

/// The lr multiplier as a function of progress `p` through the stage (0 → 1).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum LrShape {
    /// mid_train: 1 until 80%, then linear to 0 (clamped at 0: progress may pass 1 on the last step).
    Mid,
    /// chat_sft: linear warmup over `warmup`, 1 while `p <= 1 - warmdown`, then linear to `final_frac`.
    Sft {
        warmup: f64,
        warmdown: f64,
        final_frac: f64,
    },
}

impl LrShape {
    pub fn multiplier(&self, p: f64) -> f64 {
        match *self {
            LrShape::Mid => {
                if p < 0.8 {
                    1.0
                } else {
                    (1.0 - (p - 0.8) / 0.2).max(0.0)
                }
            }
            LrShape::Sft {
                warmup,
                warmdown,
                final_frac,
            } => {
                if p < warmup {
                    (p + 1e-8) / warmup
                } else if p <= 1.0 - warmdown {
                    1.0
                } else {
                    let decay = (p - (1.0 - warmdown)) / warmdown;
                    (1.0 - decay) + decay * final_frac
                }
            }
        }
    }
}

/// Muon momentum of both stages: 0.85 → 0.95 over the first 300 optimizer steps.
pub fn muon_momentum(step: usize) -> f64 {
    let frac = (step as f64 / 300.0).min(1.0);
    (1.0 - frac) * 0.85 + frac * 0.95
}

/// Run hook of a stage (chat_sft's ChatCORE): called at the top of every step with the model, the step and
/// whether it is the last; a returned record goes into `metrics.jsonl`.
pub type Hook<'a> = Box<dyn FnMut(&mut (dyn ModelDevice + Send), usize, bool) -> Result<Option<Value>, String> + 'a>;

/// Everything a stage run is made of; the stage modules fill it from their flags.
pub struct Stage<'a> {
    /// The program's name, for messages (`mid_train`, `chat_sft`).
    pub name: &'static str,
    /// Where checkpoints and the run record go (`<base>/mid_checkpoints/<tag>`, ...).
    pub out_dir: PathBuf,
    pub device: Backend,
    pub model_config: ModelConfig,
    /// Parameters to start from (ignored when resuming).
    pub params: Vec<f32>,
    /// Optimizer state to warm-start from (chat_sft's --load-optimizer), ignored when resuming.
    pub optimizer_state: Option<BTreeMap<String, Tensor>>,
    pub setup: SetupArgs,
    /// Muon weight decay of every step (no schedule: mid_train's flag, 0 in chat_sft).
    pub muon_weight_decay: f64,
    /// Every group's lr is scaled by this from the start (upstream multiplies `initial_lr`).
    pub init_lr_frac: f64,
    pub lr: LrShape,
    pub supervision: Supervision,
    pub device_batch_size: usize,
    pub max_seq_len: usize,
    pub total_batch_size: usize,
    /// Optimizer steps (<= 0: one pass over the training mixture).
    pub num_iterations: i64,
    /// Validation cadence in steps (<= 0: only at the end).
    pub eval_every: i64,
    pub eval_tokens: usize,
    pub save_every: i64,
    pub resume: bool,
    pub max_steps_this_run: Option<usize>,
    pub user_config: Value,
    pub train: Arc<dyn ConversationSource>,
    pub val: Arc<dyn ConversationSource>,
    pub bos: u32,
    pub token_bytes: Vec<u32>,
    pub hook: Option<Hook<'a>>,
}

/// The loader position a checkpoint records: the state before the prefetched batch, and the counters then.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StagePosition {
    train: SftState,
    stats: SftStats,
}

/// What a stage run reports.
#[derive(Clone, Debug)]
pub struct StageSummary {
    /// (step, train loss of its last micro-batch) for every step this invocation ran.
    pub losses: Vec<(usize, f32)>,
    /// (step, validation bpb) of every evaluation this invocation ran.
    pub val_bpb: Vec<(usize, f64)>,
    pub last_step: usize,
    pub checkpoint_dir: PathBuf,
    pub stats: SftStats,
    /// Training tokens per second over this invocation's steps.
    pub tok_per_sec: f64,
}

/// Validation bits per byte over `steps` batches of a fresh conversation loader: nats of the supervised
/// targets with a byte length, over ln 2 times their bytes (spec §8.1 on the loader's targets).
pub fn evaluate_bpb(
    model: &mut dyn ModelDevice,
    val: Arc<dyn ConversationSource>,
    cfg: SftConfig,
    steps: usize,
    token_bytes: &[u32],
) -> Result<f64, String> {
    let mut loader = SftLoader::new(val, cfg)?;
    let (mut nats, mut bytes) = (0f64, 0u64);
    for _ in 0..steps {
        let batch = loader.next_batch()?;
        let losses = model.token_losses(&batch.inputs, &batch.targets, cfg.batch_size, cfg.seq_len)?;
        for (&y, &l) in batch.targets.iter().zip(&losses) {
            let nb = if y >= 0 {
                token_bytes.get(y as usize).copied().unwrap_or(0)
            } else {
                0
            };
            if nb > 0 {
                nats += l as f64;
                bytes += nb as u64;
            }
        }
    }
    Ok(if bytes == 0 {
        f64::INFINITY
    } else {
        nats / (std::f64::consts::LN_2 * bytes as f64)
    })
}

pub fn run(mut s: Stage) -> Result<StageSummary, String> {
    let (b, t) = (s.device_batch_size, s.max_seq_len);
    let per_fwdbwd = b * t;
    if per_fwdbwd == 0 || s.total_batch_size % per_fwdbwd != 0 {
        return Err(format!(
            "{}: total batch {} tokens is not a multiple of device batch {b} x sequence {t} = {per_fwdbwd}: change \
             --device-batch-size or --total-batch-size",
            s.name, s.total_batch_size
        ));
    }
    let accum = s.total_batch_size / per_fwdbwd;
    let n_iter = (s.num_iterations > 0).then_some(s.num_iterations as usize);
    println!(
        "{}: batch {} tokens/step = {b} rows x {t} tokens x {accum} micro-batches; {}",
        s.name,
        s.total_batch_size,
        n_iter.map_or("one pass over the mixture".into(), |n| format!("{n} steps"))
    );
    let loader_cfg = SftConfig::new(b, t, s.bos, s.supervision);

    let resume_step = if s.resume {
        checkpoint::last_step(&s.out_dir)
    } else {
        None
    };
    let (mut model, mut loader, mut loop_state, start) = match resume_step {
        Some(step) => {
            let l = checkpoint::load(&s.out_dir, Some(step), 0, Some(&s.model_config))?;
            let mut model = open_model(s.device, &s.model_config, l.params, &s.setup, b, t)?;
            let state = l.optim.ok_or_else(|| {
                format!(
                    "checkpoint step {step} in {} has no optimizer state",
                    s.out_dir.display()
                )
            })?;
            model.load_optimizer_state(&state)?;
            let pos: StagePosition = serde_json::from_value(l.meta.dataloader_state_dict.clone()).map_err(|e| {
                format!(
                    "checkpoint step {step} in {}: bad loader state: {e}",
                    s.out_dir.display()
                )
            })?;
            let mut loader = SftLoader::resume(s.train.clone(), loader_cfg, &pos.train)?;
            loader.restore_stats(pos.stats);
            println!("{}: resuming from step {step} in {}", s.name, s.out_dir.display());
            (model, loader, l.meta.loop_state, step)
        }
        None => {
            let mut model = open_model(s.device, &s.model_config, std::mem::take(&mut s.params), &s.setup, b, t)?;
            if let Some(state) = &s.optimizer_state {
                model.load_optimizer_state(state)?;
            }
            (
                model,
                SftLoader::new(s.train.clone(), loader_cfg)?,
                LoopState::default(),
                0,
            )
        }
    };
    let mut metrics = Metrics::open(&s.out_dir, Some(start))?;
    let eval_steps = (s.eval_tokens / per_fwdbwd).max(1);
    let peak_flops = crate::common::peak_bf16_flops(&model.device_name());
    let flops_per_token = s.model_config.flops_per_token();
    let tokens_per_step = s.total_batch_size as f64;
    let stop_at = s.max_steps_this_run.map(|k| start + k);
    let mut summary = StageSummary {
        losses: Vec::new(),
        val_bpb: Vec::new(),
        last_step: start,
        checkpoint_dir: s.out_dir.clone(),
        stats: SftStats::default(),
        tok_per_sec: 0.0,
    };
    let (mut val_bpb, mut train_time, mut all_masked_batches) = (None, 0.0, 0u64);

    // The prefetch: the batch the next micro-step trains on, and the loader state before it.
    let mut pending_pos = StagePosition {
        train: loader.state(),
        stats: loader.stats(),
    };
    let mut pending = loader.next_batch()?;
    let mut step = start;
    loop {
        let last_step = n_iter.is_some_and(|n| step >= n) || loader.epoch_done();
        if last_step || (s.eval_every > 0 && step % s.eval_every as usize == 0) {
            let bpb = evaluate_bpb(model.as_mut(), s.val.clone(), loader_cfg, eval_steps, &s.token_bytes)?;
            println!("step {step:05} | validation bpb: {bpb:.6}");
            loop_state.min_val_bpb = Some(loop_state.min_val_bpb.map_or(bpb, |m: f64| m.min(bpb)));
            val_bpb = Some(bpb);
            summary.val_bpb.push((step, bpb));
            metrics.log(json!({"kind": "eval", "step": step, "val_bpb": bpb}))?;
        }
        if let Some(hook) = s.hook.as_mut() {
            if let Some(record) = hook(model.as_mut(), step, last_step)? {
                metrics.log(record)?;
            }
        }
        let periodic = s.save_every > 0 && step > 0 && step != start && step % s.save_every as usize == 0;
        if last_step || periodic {
            let meta = Meta {
                step,
                val_bpb,
                model_config: s.model_config.clone(),
                user_config: s.user_config.clone(),
                device_batch_size: b,
                max_seq_len: t,
                total_batch_size: s.total_batch_size,
                dataloader_state_dict: serde_json::to_value(&pending_pos).map_err(|e| e.to_string())?,
                loop_state: loop_state.clone(),
            };
            save_checked(&s.out_dir, &meta, model.as_mut())?;
        }
        if last_step || stop_at == Some(step) {
            break;
        }

        // One optimizer step: grad_accum micro-batches (each a mean over its supervised targets), averaged.
        let t0 = Instant::now();
        // The losses stay on the device until all micro-batches are queued: one read per step.
        let mut losses = Vec::with_capacity(accum);
        for _ in 0..accum {
            all_masked_batches += (pending.supervised() == 0) as u64;
            losses.extend(model.forward_backward_queued(
                &pending.inputs,
                &pending.targets,
                b,
                t,
                1.0 / accum as f32,
            )?);
            pending_pos = StagePosition {
                train: loader.state(),
                stats: loader.stats(),
            };
            pending = loader.next_batch()?;
        }
        losses.extend(model.take_losses()?);
        if let Some(bad) = losses.iter().find(|l| !l.is_finite()) {
            return Err(format!(
                "the loss became {bad} at step {step}; stopping without saving. The last good checkpoint (if \
                 any) is intact in {}: resume from it with a lower learning rate",
                s.out_dir.display()
            ));
        }
        let loss = losses.last().copied().unwrap_or(0.0);
        let progress = match n_iter {
            Some(n) => (step + 1) as f64 / n as f64,
            None => loader.progress(None),
        };
        let lrm = s.lr.multiplier(progress);
        let settings = StepSettings {
            lr_multiplier: s.init_lr_frac * lrm,
            muon_momentum: muon_momentum(step),
            muon_weight_decay: s.muon_weight_decay,
        };
        model.step(&settings)?;
        let dt = t0.elapsed().as_secs_f64();
        train_time += dt;
        step += 1;

        // Logging as upstream's scripts (the EMA is debiased with the incremented step).
        loop_state.smooth_train_loss = 0.9 * loop_state.smooth_train_loss + 0.1 * loss as f64;
        let smooth =
            loop_state.smooth_train_loss / (1.0 - 0.9f64.powi(step.saturating_sub(loop_state.smooth_since) as i32 + 1));
        if step > 10 {
            loop_state.total_training_time += dt;
        }
        let (speed, mfu) = crate::common::speed_field(flops_per_token * tokens_per_step / dt, peak_flops);
        // Steps left: exact with --num-iterations, else from the progress made per step so far.
        let left = match n_iter {
            Some(n) => n.saturating_sub(step) as f64,
            None => step as f64 * (1.0 - progress).max(0.0) / progress.max(1e-9),
        };
        let eta = train_time / (step - start) as f64 * left;
        let stats = loader.stats();
        println!(
            "step {step:05} ({:.2}%) | loss: {smooth:.6} | lrm: {lrm:.2} | dt: {:.0}ms | tok/sec: {:.0} | {speed} | epoch: {} | all-masked rows: {} | eta: {}",
            100.0 * progress,
            dt * 1e3,
            tokens_per_step / dt,
            loader.state().epoch,
            stats.all_masked_rows,
            fmt_duration(eta)
        );
        metrics.log(json!({
            "kind": "train", "step": step - 1, "loss": loss, "smooth_loss": smooth, "lrm": lrm, "progress": progress,
            "dt": dt, "tok_per_sec": tokens_per_step / dt, "mfu": mfu, "all_masked_rows": stats.all_masked_rows,
            "total_training_time": loop_state.total_training_time,
        }))?;
        if (step - start) % 10 == 0 {
            metrics.write_svg()?;
        }
        summary.losses.push((step - 1, loss));
    }
    metrics.write_svg()?;
    summary.last_step = step;
    summary.stats = loader.stats();
    summary.tok_per_sec = if train_time > 0.0 {
        tokens_per_step * summary.losses.len() as f64 / train_time
    } else {
        0.0
    };
    let st = summary.stats;
    println!(
        "{}: {} steps this run, min validation bpb {}, {:.0} tok/s; {} rows ({} conversations, {} truncated), \
         {:.1}% padding, {} rows and {} micro-batches without a supervised target; run record in {}",
        s.name,
        summary.losses.len(),
        loop_state.min_val_bpb.map_or("-".into(), |v| format!("{v:.6}")),
        summary.tok_per_sec,
        st.rows,
        st.conversations,
        st.truncated,
        100.0 * st.padding_tokens as f64 / (st.rows as f64 * (t + 1) as f64).max(1.0),
        st.all_masked_rows,
        all_masked_batches,
        s.out_dir.display()
    );
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::sft::RenderedConversations;

    #[test]
    fn lr_shapes_and_momentum_by_hand() {
        // chat_sft defaults (spec §9.1): no warmup, 1 until half-way, then linearly to 0.
        let sft = LrShape::Sft {
            warmup: 0.0,
            warmdown: 0.5,
            final_frac: 0.0,
        };
        for (p, want) in [(0.0, 1.0), (0.25, 1.0), (0.5, 1.0), (0.75, 0.5), (0.9, 0.2), (1.0, 0.0)] {
            assert!(
                (sft.multiplier(p) - want).abs() < 1e-12,
                "sft p={p}: {}",
                sft.multiplier(p)
            );
        }
        // A warmup of 0.1 and a final fraction of 0.1: half-way up at p = 0.05; 0.55 at p = 0.75.
        let warm = LrShape::Sft {
            warmup: 0.1,
            warmdown: 0.5,
            final_frac: 0.1,
        };
        assert!((warm.multiplier(0.05) - 0.5).abs() < 1e-6);
        assert!((warm.multiplier(0.75) - 0.55).abs() < 1e-12);
        // mid_train: 1 until 0.8, then to 0 at 1, clamped past it.
        for (p, want) in [(0.5, 1.0), (0.79, 1.0), (0.9, 0.5), (1.0, 0.0), (1.05, 0.0)] {
            assert!((LrShape::Mid.multiplier(p) - want).abs() < 1e-12, "mid p={p}");
        }
        for (step, want) in [(0, 0.85), (150, 0.90), (300, 0.95), (1000, 0.95)] {
            assert!((muon_momentum(step) - want).abs() < 1e-12, "step {step}");
        }
    }

    /// One pass over a mixture ends as upstream's does: at the top of the first step whose prefetched batch
    /// brought the consumed count to the mixture's size, so the run makes one step fewer than the batches the
    /// loader had to draw (counted here with the loader alone).
    #[test]
    fn one_pass_over_the_mixture_stops_where_upstream_stops() {
        let convs: Vec<(Vec<u32>, Vec<u8>)> = (0..15u32)
            .map(|k| {
                (
                    (0..3 + k % 7).map(|i| (i * 7 + k) % 60 + 1).collect(),
                    vec![1; (3 + k % 7) as usize],
                )
            })
            .collect();
        let source: Arc<dyn ConversationSource> = Arc::new(RenderedConversations(convs));
        let cfg = SftConfig::new(2, 16, 0, Supervision::Masked);
        let mut alone = SftLoader::new(source.clone(), cfg).unwrap();
        let mut draws = 0;
        while !alone.epoch_done() {
            alone.next_batch().unwrap();
            draws += 1;
        }
        let config = ModelConfig {
            sequence_len: 16,
            vocab_size: 64,
            n_layer: 1,
            n_head: 1,
            n_kv_head: 1,
            n_embd: 32,
            window_pattern: "L".into(),
        };
        let table = crate::params::ParamTable::new(&config);
        let mut params = vec![0.0; table.numel];
        table.init(&mut params, 1);
        let tmp = tempfile::tempdir().unwrap();
        let stage = Stage {
            name: "test",
            out_dir: tmp.path().join("run"),
            device: Backend::Cpu,
            model_config: config,
            params,
            optimizer_state: None,
            setup: SetupArgs::default(),
            muon_weight_decay: 0.0,
            init_lr_frac: 1.0,
            lr: LrShape::Mid,
            supervision: Supervision::Masked,
            device_batch_size: 2,
            max_seq_len: 16,
            total_batch_size: 32,
            num_iterations: -1,
            eval_every: -1,
            eval_tokens: 32,
            save_every: -1,
            resume: false,
            max_steps_this_run: None,
            user_config: Value::Null,
            train: source.clone(),
            val: source,
            bos: 0,
            token_bytes: vec![1; 64],
            hook: None,
        };
        let summary = run(stage).unwrap();
        assert!(draws > 2);
        assert_eq!(summary.losses.len(), draws - 1);
        assert_eq!(summary.last_step, draws - 1);
        assert_eq!(summary.val_bpb.len(), 1, "only the final evaluation");
        assert_eq!(checkpoint::complete_steps(&tmp.path().join("run")), vec![draws - 1]);
    }
}
