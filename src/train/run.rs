//! `train_gpt`: upstream base_train as a linear story. Build the plan from the depth dial, load the tokenizer
//! and token shards, build (or resume) the model and optimizer, then loop: evaluate, sample, checkpoint,
//! train one step of `grad_accum` micro-batches, log.

use super::eval::{bpb_sums, sample_greedy, SAMPLE_PROMPTS};
use super::metrics::Metrics;
use super::plan::{Plan, PlanArgs};
use super::ranks::{self, Ranks};
use super::stage::fmt_duration;
use crate::backend::Backend;
use crate::checkpoint::{self, LoopState, Meta};
use crate::common::base_dir;
use crate::cpu::gpt::Storage;
use crate::cpu::model::CpuModel;
use crate::data::loader::open_split;
use crate::data::loader::{DataLoader, LoaderConfig, LoaderState};
use crate::data::shards::TokenizerId;
use crate::data::Split;
use crate::device::model::KernelModel;
use crate::model::ModelDevice;
use crate::optim::schedule::Schedule;
use crate::optim::StepSettings;
use crate::tokenizer::load_tokenizer;
use clap::Parser;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Pretrain a GPT (upstream base_train's flags).
#[derive(Parser, Clone, Debug, Serialize, Deserialize)]
#[command(
    name = "train_gpt",
    about = "Pretrain a GPT sized by one dial, --depth",
    args_override_self = true
)]
pub struct TrainArgs {
    /// Run name (upstream logs to wandb; here it is recorded in the metadata; "dummy" = unnamed).
    #[arg(long, default_value = "dummy")]
    pub run: String,
    /// Where the model computes.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    pub device: Backend,
    /// Number of transformer layers: the one dial that sizes everything else.
    #[arg(long, default_value_t = 20)]
    pub depth: usize,
    /// model_dim = depth × aspect ratio (rounded up to a multiple of the head dim).
    #[arg(long, default_value_t = 64)]
    pub aspect_ratio: usize,
    /// Dimension of each attention head.
    #[arg(long, default_value_t = 128)]
    pub head_dim: usize,
    /// Context length in tokens.
    #[arg(long, default_value_t = 2048)]
    pub max_seq_len: usize,
    /// Sliding-window pattern tiled over layers: S = short window (a quarter context), L = full; last layer L.
    #[arg(long, default_value = "SSSL")]
    pub window_pattern: String,
    /// Key/value heads for grouped-query attention (a divisor of the query heads); 0 = as many as query
    /// heads, as upstream's base_train builds.
    #[arg(long, default_value_t = 0)]
    pub n_kv_head: usize,
    /// Explicit number of optimizer steps (highest precedence; -1 = derive).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub num_iterations: i64,
    /// Horizon from a FLOPs budget (second precedence; -1 = unused).
    #[arg(long, default_value_t = -1.0, allow_negative_numbers = true)]
    pub target_flops: f64,
    /// Horizon from training tokens per scaling parameter (the default horizon).
    #[arg(long, default_value_t = 12.0)]
    pub target_param_data_ratio: f64,
    /// Rows per micro-batch on each rank.
    #[arg(long, default_value_t = 32)]
    pub device_batch_size: usize,
    /// Tokens per optimizer step (-1 = derived from the data budget).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub total_batch_size: i64,
    /// AdamW lr of the token embedding (value embeddings get half).
    #[arg(long, default_value_t = 0.3)]
    pub embedding_lr: f64,
    /// AdamW lr of lm_head.
    #[arg(long, default_value_t = 0.008)]
    pub unembedding_lr: f64,
    /// Muon cautious weight decay at the d12 reference (scaled by batch and data).
    #[arg(long, default_value_t = 0.28)]
    pub weight_decay: f64,
    /// Muon lr of the block matrices.
    #[arg(long, default_value_t = 0.02)]
    pub matrix_lr: f64,
    /// AdamW lr of the residual (×0.01) and x0 lambdas.
    #[arg(long, default_value_t = 0.5)]
    pub scalar_lr: f64,
    /// Linear lr warmup steps.
    #[arg(long, default_value_t = 40)]
    pub warmup_steps: usize,
    /// Fraction of the run spent decaying the lr.
    #[arg(long, default_value_t = 0.65)]
    pub warmdown_ratio: f64,
    /// lr multiplier at the end of the warmdown.
    #[arg(long, default_value_t = 0.05)]
    pub final_lr_frac: f64,
    /// Resume from this step's checkpoint (-1 = start fresh unless --resume).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub resume_from_step: i64,
    /// Resume from the latest complete checkpoint of this model tag, if there is one.
    #[arg(long)]
    pub resume: bool,
    /// Evaluate validation bits per byte every this many steps (and at the end; 0 = never).
    #[arg(long, default_value_t = 250)]
    pub eval_every: usize,
    /// Tokens per validation evaluation.
    #[arg(long, default_value_t = 80 * 524_288)]
    pub eval_tokens: usize,
    /// Evaluate the CORE metric every this many steps (and at the end; 0 = never). Needs the eval bundle
    /// (`download_data --eval-bundle`); without it the evaluation is skipped with a notice.
    #[arg(long, default_value_t = 2000)]
    pub core_metric_every: usize,
    /// Examples per CORE task (-1: all).
    #[arg(long, default_value_t = 500, allow_negative_numbers = true)]
    pub core_metric_max_per_task: i64,
    /// Print greedy samples of the fixed prompts every this many steps (and at the end; 0 = never).
    #[arg(long, default_value_t = 2000)]
    pub sample_every: usize,
    /// Save a checkpoint every this many steps (-1 = only at the end).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub save_every: i64,
    /// Checkpoint directory name (default d<depth>).
    #[arg(long)]
    pub model_tag: Option<String>,
    /// Seed of the weight initialisation.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// FP8 matmuls (GPU only; ignored with a warning elsewhere).
    #[arg(long)]
    pub fp8: bool,
    /// Stop after this many steps of this invocation, saving a checkpoint there (the plan and schedules are
    /// unchanged; for tests and time-boxed runs; continue with --resume).
    #[arg(long)]
    pub max_steps_this_run: Option<usize>,
    /// Start this many ranks on this node (torchrun-style, one per GPU) and supervise them; without it the
    /// ranks come from the launcher's variables (mpirun, srun, RANK/WORLD_SIZE), or there is one.
    #[arg(long)]
    pub nproc_per_node: Option<usize>,
    /// With --nproc-per-node: the number of nodes of the job (each runs the same command).
    #[arg(long, default_value_t = 1)]
    pub nnodes: usize,
    /// With --nproc-per-node: this node's index (its ranks are node_rank x nproc_per_node + local rank).
    #[arg(long, default_value_t = 0)]
    pub node_rank: usize,
    /// Read the rows of this many data ranks in one process (each a share of the gradient accumulation):
    /// reproduces a run on that many ranks without them.
    #[arg(long, default_value_t = 1)]
    pub data_ranks: usize,
    /// Seconds the ranks wait for each other (to join, and for data in a collective) before failing.
    #[arg(long, default_value_t = 600)]
    pub dist_timeout: u64,
    /// Seconds a collective waits for a rank that sends nothing (hung, or busy elsewhere) before every rank
    /// fails naming it (0 = --dist-timeout). Must exceed the longest gap between two collectives of a rank.
    #[arg(long, default_value_t = 0)]
    pub hang_timeout: u64,
    /// Data-parallel on the cpu device: reduce-scatter the gradients of lm_head and the value embeddings on a
    /// communication thread during the last micro-batch's backward pass instead of after it (the same
    /// results, bitwise; every rank must be given the same setting).
    #[arg(long)]
    pub overlap_comm: bool,
}

/// A fault planted on one rank to test the failure paths (`NANOCHAT_FAULT=kind:rank:step`, not a user
/// setting): `hang-at-save` stops the rank for good at the checkpoint of that step, after writing its shard
/// and before the barrier; `nan-loss` makes that step's first loss on that rank NaN.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    HangAtSave { rank: usize, step: usize },
    NanLoss { rank: usize, step: usize },
}

impl Fault {
    fn from_env() -> Result<Option<Fault>, String> {
        let Ok(v) = std::env::var("NANOCHAT_FAULT") else {
            return Ok(None);
        };
        let parts: Vec<&str> = v.split(':').collect();
        let bad = || format!("NANOCHAT_FAULT={v:?}: expected hang-at-save:RANK:STEP or nan-loss:RANK:STEP");
        let [kind, rank, step] = parts[..] else {
            return Err(bad());
        };
        let (rank, step) = (rank.parse().map_err(|_| bad())?, step.parse().map_err(|_| bad())?);
        match kind {
            "hang-at-save" => Ok(Some(Fault::HangAtSave { rank, step })),
            "nan-loss" => Ok(Some(Fault::NanLoss { rank, step })),
            _ => Err(bad()),
        }
    }
}

/// What a run reports at its end.
#[derive(Clone, Debug)]
pub struct Summary {
    /// (step, train loss of that step) for every step this invocation ran.
    pub losses: Vec<(usize, f32)>,
    pub min_val_bpb: Option<f64>,
    pub last_step: usize,
    pub checkpoint_dir: PathBuf,
}

/// Runs pretraining as `args` describe, on the base directory `base` (usually `$NANOCHAT_BASE_DIR`).
pub fn train(args: &TrainArgs, base: &Path) -> Result<Summary, String> {
    // Each local rank takes its own GPU (set before the driver is initialised; an explicit setting wins).
    if args.device == Backend::Cuda && std::env::var_os("CUDA_VISIBLE_DEVICES").is_none() {
        if let Ok(info) = crate::dist::env::from_env() {
            if info.local_world_size.value > 1 {
                std::env::set_var("CUDA_VISIBLE_DEVICES", info.local_rank.value.to_string());
            }
        }
    }
    // Open a kernel device first, so a machine without a driver or GPU hears exactly that.
    let mut kernel_device = if args.device.is_kernels() {
        // The emulator runs its threads in order; the kernel tests try the other schedules.
        Some(args.device.kernel_device(crate::device::Schedule::Forward)?)
    } else {
        None
    };
    if args.fp8 {
        eprintln!("warning: --fp8 is not implemented; training runs in bf16");
    }
    let info = crate::dist::env::from_env()?;
    let world = info.world_size.value;
    if world > 1 && args.data_ranks > 1 {
        return Err(format!(
            "--data-ranks {} plays several ranks in one process; this process is already one of {world} ranks",
            args.data_ranks
        ));
    }
    let data_ranks = args.data_ranks.max(1);
    let tok = load_tokenizer(base)?;
    let plan = Plan::derive(&PlanArgs {
        depth: args.depth,
        aspect_ratio: args.aspect_ratio,
        head_dim: args.head_dim,
        max_seq_len: args.max_seq_len,
        window_pattern: args.window_pattern.clone(),
        n_kv_head: args.n_kv_head,
        vocab_size: tok.vocab_size(),
        num_iterations: args.num_iterations,
        target_flops: args.target_flops,
        target_param_data_ratio: args.target_param_data_ratio,
        device_batch_size: args.device_batch_size,
        total_batch_size: args.total_batch_size,
        embedding_lr: args.embedding_lr,
        unembedding_lr: args.unembedding_lr,
        matrix_lr: args.matrix_lr,
        scalar_lr: args.scalar_lr,
        weight_decay: args.weight_decay,
        world_size: world * data_ranks,
    })?;
    let tok_id = TokenizerId::of(&tok);
    let tag = args.model_tag.clone().unwrap_or_else(|| format!("d{}", args.depth));
    let ckpt_dir = checkpoint::checkpoint_dir(base, "base", &tag);
    // Fresh start or resume.
    let resume_step = if args.resume_from_step >= 0 {
        Some(args.resume_from_step as usize)
    } else if args.resume {
        checkpoint::last_step(&ckpt_dir)
    } else {
        None
    };
    // Join the other ranks before the expensive part, so a mismatched launch fails at once.
    let user_config = serde_json::to_value(args).map_err(|e| e.to_string())?;
    let hang = if args.hang_timeout > 0 {
        args.hang_timeout
    } else {
        args.dist_timeout
    };
    let timeouts = crate::dist::Timeouts {
        connect: std::time::Duration::from_secs(args.dist_timeout),
        op: std::time::Duration::from_secs(hang),
    };
    let fp = ranks::fingerprint(&user_config, &tok_id.fingerprint, world, resume_step);
    let ranks = Ranks::join(info, &fp, args.device == Backend::Cuda, &timeouts)?;
    let result = train_ranked(
        args,
        base,
        &ranks,
        kernel_device.take(),
        &tok,
        &tok_id,
        &plan,
        &ckpt_dir,
        resume_step,
        user_config,
    );
    if let Err(e) = &result {
        // The others fail at their next collective naming this rank and why.
        ranks.abort(e);
    }
    result
}

/// Everything after the ranks have joined: the loop of every rank.
#[allow(clippy::too_many_arguments)]
fn train_ranked(
    args: &TrainArgs,
    base: &Path,
    ranks: &Ranks,
    mut kernel_device: Option<Box<dyn crate::device::Device>>,
    tok: &crate::tokenizer::Tokenizer,
    tok_id: &TokenizerId,
    plan: &Plan,
    ckpt_dir: &Path,
    resume_step: Option<usize>,
    user_config: serde_json::Value,
) -> Result<Summary, String> {
    let main = ranks.is_main();
    let fault = Fault::from_env()?;
    let say = |s: String| {
        if main {
            println!("{s}");
        }
    };
    let (rank, world, data_ranks) = (ranks.rank, ranks.world, args.data_ranks.max(1));
    if world > 1 {
        say(format!("data parallel: {}", ranks.info));
    }
    say(plan.describe());
    let (b, t, n_iter) = (args.device_batch_size, args.max_seq_len, plan.num_iterations);
    // This process's micro-batches per step: its share of the accumulation for each data rank it plays.
    let per_rank = plan.grad_accum_steps;
    let accum = per_rank * data_ranks;
    let schedule = Schedule {
        num_iterations: n_iter,
        warmup_steps: args.warmup_steps,
        warmdown_ratio: args.warmdown_ratio,
        final_lr_frac: args.final_lr_frac,
    };
    let train_shards = open_split(base, tok_id, Split::Train).map_err(|e| e.to_string())?;
    let val_shards = open_split(base, tok_id, Split::Val).map_err(|e| e.to_string())?;
    // Data rank d of this process is global data rank `rank × data_ranks + d` of `world × data_ranks`.
    let loader_cfg = |d: usize| LoaderConfig {
        batch_size: b,
        seq_len: t,
        rank: rank * data_ranks + d,
        world_size: world * data_ranks,
        ..LoaderConfig::default()
    };

    // The model on the chosen device (built once, from fresh or resumed parameters).
    let mut make_model = |params: Vec<f32>| -> Result<Box<dyn ModelDevice>, String> {
        match kernel_device.take() {
            None => {
                let m = CpuModel::new(&plan.model, params, &plan.optimizer)?
                    .with_storage(args.device.cpu_storage().unwrap_or(Storage::F32));
                Ok(Box::new(if world > 1 {
                    m.data_parallel(&plan.optimizer, ranks.comm.clone(), rank, world)
                        .with_overlap(args.overlap_comm)
                } else {
                    m
                }))
            }
            Some(dev) => {
                let m = KernelModel::new(dev, &plan.model, &params, &plan.optimizer)?;
                say(format!(
                    "device memory ({}):\n{}",
                    m.device().name(),
                    m.memory_report(b, t)
                ));
                Ok(if world > 1 {
                    Box::new(m.data_parallel(&plan.optimizer, ranks.comm.clone(), rank, world)?)
                } else {
                    Box::new(m)
                })
            }
        }
    };
    let (mut model, mut loaders, mut loop_state, start) = match resume_step {
        Some(step) => {
            ranks::check_resume_world(ckpt_dir, step, world)?;
            let l = checkpoint::load(ckpt_dir, Some(step), rank, None)?;
            if l.meta.model_config != plan.model {
                return Err(format!(
                    "checkpoint step {step} in {} was made for model {:?}, this run builds {:?}: resume it with {}",
                    ckpt_dir.display(),
                    l.meta.model_config,
                    plan.model,
                    model_flags(&l.meta.model_config)
                ));
            }
            let mut model = make_model(l.params)?;
            let state = l.optim.ok_or_else(|| {
                format!(
                    "checkpoint step {step} in {} has no optimizer state for rank {rank}",
                    ckpt_dir.display()
                )
            })?;
            model.load_optimizer_state(&state)?;
            let mut loaders = Vec::new();
            for d in 0..data_ranks {
                let global = rank * data_ranks + d;
                let ls = ranks::load_loader_state(ckpt_dir, step, global, &l.meta.dataloader_state_dict)?;
                loaders.push(DataLoader::resume(train_shards.clone(), loader_cfg(d), &ls).map_err(|e| e.to_string())?);
            }
            say(format!("resuming from step {step} in {}", ckpt_dir.display()));
            (model, loaders, l.meta.loop_state, step)
        }
        None => {
            let table = crate::params::ParamTable::new(&plan.model);
            let mut params = vec![0.0; table.numel];
            table.init(&mut params, args.seed);
            let model = make_model(params)?;
            let mut loaders = Vec::new();
            for d in 0..data_ranks {
                loaders.push(DataLoader::new(train_shards.clone(), loader_cfg(d)).map_err(|e| e.to_string())?);
            }
            (model, loaders, LoopState::default(), 0)
        }
    };
    // Only rank 0 keeps the run record.
    let mut metrics = if main {
        Some(Metrics::open(ckpt_dir, Some(start))?)
    } else {
        None
    };
    let token_bytes = tok.token_bytes();
    // Upstream's eval_steps = eval_tokens / (B·T·world), per rank.
    let eval_steps = (args.eval_tokens / (b * t * world * data_ranks)).max(1);
    let tokens_per_step = plan.total_batch_size as f64;
    let mut summary = Summary {
        losses: Vec::new(),
        min_val_bpb: loop_state.min_val_bpb,
        last_step: start,
        checkpoint_dir: ckpt_dir.to_path_buf(),
    };
    let mut val_bpb = None;
    let stop_at = args.max_steps_this_run.map(|k| start + k);
    let peak_flops = crate::common::peak_bf16_flops(&model.device_name());

    for step in start..=n_iter {
        let last_step = step == n_iter;
        if args.eval_every > 0 && (last_step || step % args.eval_every == 0) {
            // Every rank its own rows; the sums of nats and bytes over the ranks give the bpb.
            let (mut nats, mut bytes) = (0f64, 0f64);
            for d in 0..data_ranks {
                let (n, by) = bpb_sums(
                    model.as_mut(),
                    val_shards.clone(),
                    loader_cfg(d),
                    eval_steps,
                    &token_bytes,
                )?;
                nats += n;
                bytes += by as f64;
            }
            let s = ranks.sum("validation bpb", &[nats, bytes])?;
            let bpb = if s[1] == 0.0 {
                f64::INFINITY
            } else {
                s[0] / (std::f64::consts::LN_2 * s[1])
            };
            say(format!("step {step:05} | validation bpb: {bpb:.6}"));
            loop_state.min_val_bpb = Some(loop_state.min_val_bpb.map_or(bpb, |m: f64| m.min(bpb)));
            val_bpb = Some(bpb);
            if let Some(m) = &mut metrics {
                m.log(json!({"kind": "eval", "step": step, "val_bpb": bpb}))?;
            }
        }
        if args.core_metric_every > 0 && step > 0 && (last_step || step % args.core_metric_every == 0) {
            let dir = base.join(crate::core_eval::EVAL_BUNDLE_DIR);
            if !dir.join("core.yaml").is_file() {
                say(format!(
                    "step {step:05} | CORE: skipped: no eval bundle in {} (fetch it with `download_data \
                     --eval-bundle`, or silence with --core-metric-every 0)",
                    dir.display()
                ));
            } else {
                let bundle = crate::core_eval::Bundle::open(&dir)?;
                let mut sum = |v: &[f64]| ranks.sum("CORE counts", v);
                let mut core_ranks = crate::core_eval::Ranks {
                    rank,
                    world,
                    sum: &mut sum,
                };
                let max = usize::try_from(args.core_metric_max_per_task).ok();
                let mut quiet = |_: &str| {};
                let t0 = Instant::now();
                let r =
                    crate::core_eval::evaluate_core(model.as_mut(), tok, &bundle, max, &mut core_ranks, &mut quiet)?;
                say(format!(
                    "step {step:05} | CORE metric: {:.4} ({} tasks, {:.1}s)",
                    r.core,
                    r.tasks.len(),
                    t0.elapsed().as_secs_f64()
                ));
                if let Some(m) = &mut metrics {
                    m.log(json!({"kind": "core", "step": step, "core_metric": r.core,
                        "centered": r.tasks.iter().map(|t| (t.label.clone(), json!(t.centered))).collect::<serde_json::Map<_, _>>()}))?;
                }
            }
        }
        if main && args.sample_every > 0 && (last_step || (step > 0 && step % args.sample_every == 0)) {
            for prompt in SAMPLE_PROMPTS {
                println!("sample | {prompt}{}", sample_greedy(model.as_mut(), tok, prompt, 16)?);
            }
        }
        let periodic = args.save_every > 0 && step > 0 && step != start && step % args.save_every as usize == 0;
        // A run stopped by --max-steps-this-run saves where it stopped, so the next --resume continues there.
        let stopping = stop_at == Some(step) && step != start;
        if last_step || periodic || stopping {
            let params = model.params()?;
            if let Some(bad) = params.iter().position(|p| !p.is_finite()) {
                let name = model
                    .table()
                    .params
                    .iter()
                    .find(|p| p.range.contains(&bad))
                    .map_or("?", |p| &p.name);
                return Err(format!(
                    "parameters became non-finite ({name}) before step {step}; not saving. The last good \
                     checkpoint (if any) is intact in {}: resume from it with a lower learning rate",
                    ckpt_dir.display()
                ));
            }
            let optim_state = model.optimizer_state()?;
            let states: Vec<(usize, LoaderState)> = loaders
                .iter()
                .enumerate()
                .map(|(d, l)| (rank * data_ranks + d, l.state()))
                .collect();
            // Shards first, everywhere; the metadata (what makes the checkpoint exist) only after all.
            if !main {
                ranks::save_shard(ckpt_dir, step, rank, Some(&optim_state), &states)?;
            } else {
                ranks::save_shard(ckpt_dir, step, rank, None, &states)?;
            }
            if fault == Some(Fault::HangAtSave { rank, step }) {
                eprintln!("rank {rank}: NANOCHAT_FAULT: hanging at the checkpoint of step {step}");
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                }
            }
            ranks.barrier("checkpoint")?;
            if main {
                let meta = Meta {
                    step,
                    val_bpb,
                    model_config: plan.model.clone(),
                    user_config: user_config.clone(),
                    device_batch_size: b,
                    max_seq_len: t,
                    total_batch_size: plan.total_batch_size,
                    dataloader_state_dict: serde_json::to_value(&states[0].1).map_err(|e| e.to_string())?,
                    loop_state: loop_state.clone(),
                };
                checkpoint::save(ckpt_dir, &meta, model.table(), &params, &optim_state, 0)?;
                println!("saved checkpoint step {step} to {}", ckpt_dir.display());
            }
        }
        if last_step || stop_at == Some(step) {
            summary.last_step = step;
            break;
        }

        // One optimizer step: `accum` micro-batches here (micro-batch j from data rank j / per_rank),
        // gradients averaged over them and over the ranks.
        let t0 = Instant::now();
        // The losses stay on the device until all micro-batches are queued: one read per step.
        let mut losses = Vec::with_capacity(accum);
        for j in 0..accum {
            let batch = loaders[j / per_rank].next_batch();
            let targets: Vec<i32> = batch.targets.iter().map(|&y| y as i32).collect();
            if j + 1 == accum {
                model.final_micro_batch();
            }
            losses.extend(model.forward_backward_queued(&batch.inputs, &targets, b, t, 1.0 / accum as f32)?);
        }
        losses.extend(model.take_losses()?);
        if fault == Some(Fault::NanLoss { rank, step }) {
            losses[0] = f32::NAN;
        }
        if let Some(bad) = losses.iter().find(|l| !l.is_finite()) {
            return Err(format!(
                "rank {rank}: the loss became {bad} at step {step}; stopping without saving. The last good \
                 checkpoint (if any) is intact in {}: resume from it with a lower learning rate",
                ckpt_dir.display()
            ));
        }
        let loss = losses.last().copied().unwrap_or(0.0);
        let loss_sum: f64 = losses.iter().map(|&l| l as f64).sum();
        let settings = StepSettings {
            lr_multiplier: schedule.lr_multiplier(step),
            muon_momentum: schedule.muon_momentum(step),
            muon_weight_decay: schedule.muon_weight_decay(plan.weight_decay_scaled, step),
        };
        model.step(&settings)?;
        // The mean loss of every micro-batch of every rank (what the step optimised).
        let mean_loss = ranks.sum("train loss", &[loss_sum / accum as f64])?[0] / world as f64;
        let dt = t0.elapsed().as_secs_f64();

        loop_state.smooth_train_loss = 0.9 * loop_state.smooth_train_loss + 0.1 * loss as f64;
        let smooth =
            loop_state.smooth_train_loss / (1.0 - 0.9f64.powi(step.saturating_sub(loop_state.smooth_since) as i32 + 1));
        if step > 10 {
            loop_state.total_training_time += dt;
        }
        let done = step + 1 - start;
        let (speed, mfu) =
            crate::common::speed_field(plan.flops_per_token * tokens_per_step / dt / world as f64, peak_flops);
        let avg = if step > 10 {
            loop_state.total_training_time / (step - 10) as f64
        } else {
            dt
        };
        let eta = avg * (n_iter - step - 1) as f64;
        say(format!(
            "step {step:05}/{n_iter:05} ({:.2}%) | loss: {smooth:.6} | lrm: {:.2} | dt: {:.0}ms | tok/sec: {:.0} | {speed} | epoch: {} | eta: {}",
            100.0 * (step + 1) as f64 / n_iter as f64,
            settings.lr_multiplier,
            dt * 1e3,
            tokens_per_step / dt,
            loaders[0].state().pos.epoch,
            fmt_duration(eta)
        ));
        if let Some(m) = &mut metrics {
            m.log(json!({
                "kind": "train", "step": step, "loss": loss, "mean_loss": mean_loss, "smooth_loss": smooth,
                "lrm": settings.lr_multiplier, "dt": dt, "tok_per_sec": tokens_per_step / dt, "mfu": mfu,
                "total_training_time": loop_state.total_training_time,
            }))?;
            if done % 10 == 0 || step + 1 == n_iter {
                m.write_svg()?;
            }
        }
        summary.losses.push((step, loss));
        summary.last_step = step + 1;
    }
    if let Some(m) = &mut metrics {
        m.write_svg()?;
    }
    summary.min_val_bpb = loop_state.min_val_bpb;
    if main {
        // The run's summary for the report card (upstream's "Base model training" section).
        let timed = summary.last_step.saturating_sub(11);
        let mfu = peak_flops
            .filter(|_| timed > 0 && loop_state.total_training_time > 0.0)
            .map(|peak| {
                100.0 * plan.flops_per_token * tokens_per_step * timed as f64
                    / loop_state.total_training_time
                    / peak
                    / world as f64
            });
        let tokens = tokens_per_step * summary.last_step as f64;
        let record = json!({
            "depth": args.depth, "model_config": plan.model, "num_params": model.table().numel,
            "num_scaling_params": plan.num_scaling_params, "flops_per_token": plan.flops_per_token,
            "num_iterations": n_iter, "steps_done": summary.last_step, "tokens": tokens,
            "tokens_per_param": tokens / plan.num_scaling_params.max(1) as f64,
            "world_size": world * data_ranks, "device": model.device_name(), "device_batch_size": b,
            "max_seq_len": t, "total_batch_size": plan.total_batch_size, "warmup_steps": args.warmup_steps,
            "warmdown_ratio": args.warmdown_ratio, "final_lr_frac": args.final_lr_frac,
            "min_val_bpb": loop_state.min_val_bpb, "final_val_bpb": val_bpb, "mfu_percent": mfu,
            "total_flops": plan.flops_per_token * tokens, "total_training_time": loop_state.total_training_time,
        });
        checkpoint::write_atomic(&ckpt_dir.join("run.json"), format!("{record:#}\n").as_bytes())?;
    }
    let crop = loaders[0].stats().crop_fraction();
    say(format!(
        "done: {} steps this run, min validation bpb {}, crop fraction {:.1}%, total training time {}; run record in {}",
        summary.losses.len(),
        loop_state.min_val_bpb.map_or("-".into(), |v| format!("{v:.6}")),
        100.0 * crop,
        fmt_duration(loop_state.total_training_time),
        ckpt_dir.display()
    ));
    Ok(summary)
}

/// Entry point of the binary: with `--nproc-per-node`, start and supervise this node's ranks; else train.
pub fn main_with(args: &TrainArgs) -> Result<Summary, String> {
    if let Some(n) = args.nproc_per_node {
        launch_ranks(args, n)?;
        return Ok(Summary {
            losses: Vec::new(),
            min_val_bpb: None,
            last_step: 0,
            checkpoint_dir: PathBuf::new(),
        });
    }
    train(args, &base_dir())
}

/// Re-runs this program as `n` local ranks (same arguments, without the launcher flags).
fn launch_ranks(args: &TrainArgs, n: usize) -> Result<(), String> {
    let mut child_args = Vec::new();
    let mut it = std::env::args_os().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        let flag = s.split('=').next().unwrap_or("").to_string();
        if ["--nproc-per-node", "--nnodes", "--node-rank"].contains(&flag.as_str()) {
            if !s.contains('=') {
                it.next();
            }
            continue;
        }
        child_args.push(a);
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let master_addr = std::env::var("MASTER_ADDR").unwrap_or_else(|_| "127.0.0.1".into());
    let master_port = match std::env::var("MASTER_PORT") {
        Ok(p) => p
            .parse()
            .map_err(|_| format!("MASTER_PORT={p:?} is not a port number"))?,
        Err(_) => crate::dist::env::DEFAULT_PORT,
    };
    crate::dist::launch::run_local(
        &exe,
        &child_args,
        &crate::dist::launch::LocalLaunch {
            nproc_per_node: n,
            nnodes: args.nnodes,
            node_rank: args.node_rank,
            master_addr,
            master_port,
            grace: std::time::Duration::from_secs(30),
        },
    )
}

/// The train_gpt flags that build `m` (what a resume of its checkpoint must pass).
pub fn model_flags(m: &crate::config::ModelConfig) -> String {
    let head_dim = m.head_dim();
    // --aspect-ratio: n_embd = ceil(depth * ratio / head_dim) * head_dim, so n_embd / depth builds it.
    let ratio = m.n_embd / m.n_layer.max(1);
    let mut flags = format!(
        "--depth {} --aspect-ratio {ratio} --head-dim {head_dim} --max-seq-len {} --window-pattern {}",
        m.n_layer, m.sequence_len, m.window_pattern
    );
    if m.n_kv_head != m.n_head {
        flags += &format!(" --n-kv-head {}", m.n_kv_head);
    }
    flags
}
