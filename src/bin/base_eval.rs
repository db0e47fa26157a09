//! `base_eval`: evaluate a base checkpoint (upstream scripts/base_eval.py): the CORE metric on the DCLM eval
//! bundle (written to `base_eval/base_model_<step>.csv`), bits per byte on the train and validation splits,
//! and samples (greedy continuations of fixed prompts, unconditioned samples from BOS). Launched as several
//! ranks, the CORE examples are dealt across them; only rank 0 prints and writes.

use clap::Parser;
use nanochat::backend::Backend;
use nanochat::checkpoint;
use nanochat::common::base_dir;
use nanochat::core_eval::{self, Bundle};
use nanochat::data::loader::{open_split, LoaderConfig};
use nanochat::data::shards::TokenizerId;
use nanochat::data::Split;
use nanochat::device::infer::{infer_view, Inference};
use nanochat::engine::{Engine, GenConfig};
use nanochat::model::ModelDevice;
use nanochat::tokenizer::load_tokenizer;
use nanochat::train::eval::{evaluate_bpb, sample_prompts};
use nanochat::train::ranks::{self, Ranks};
use nanochat::train::stage::open_model;

#[derive(Parser)]
#[command(about = "Evaluate a base model checkpoint: bits per byte and samples")]
struct Args {
    /// Comma-separated parts to run: core (the CORE metric; needs `download_data --eval-bundle`), bpb, sample.
    /// Default: all three, core skipped with a notice when the bundle is absent.
    #[arg(long)]
    eval: Option<String>,
    /// Checkpoint directory name under base_checkpoints (default: the largest d<N>).
    #[arg(long)]
    model_tag: Option<String>,
    /// Checkpoint step (default: the latest).
    #[arg(long)]
    step: Option<usize>,
    /// Rows per evaluation batch.
    #[arg(long, default_value_t = 32)]
    device_batch_size: usize,
    /// Tokens evaluated per split (rounded down to whole batches).
    #[arg(long, default_value_t = 40 * 524_288)]
    split_tokens: usize,
    /// Examples per CORE task (-1: all).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    max_per_task: i64,
    /// The CORE bundle directory (default: $NANOCHAT_BASE_DIR/eval_bundle).
    #[arg(long)]
    eval_bundle: Option<std::path::PathBuf>,
    /// Where the model runs: cpu (the fp32 reference), cuda, or emu (the kernels on the CPU emulator; slow).
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    device: Backend,
    /// Seed of the unconditioned samples.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

fn run(args: &Args) -> Result<(), String> {
    let base = base_dir();
    let started = std::time::Instant::now();
    let eval = args.eval.as_deref().unwrap_or("core,bpb,sample");
    let parts: Vec<&str> = eval.split(',').map(str::trim).collect();
    if let Some(bad) = parts.iter().find(|p| !matches!(**p, "bpb" | "sample" | "core")) {
        return Err(format!("--eval: unknown part {bad:?} (choose from bpb, sample, core)"));
    }
    let phase_dir = base.join("base_checkpoints");
    let tag = match &args.model_tag {
        Some(t) => t.clone(),
        None => checkpoint::find_largest_model(&phase_dir)
            .ok_or_else(|| format!("no checkpoints under {}: run train_gpt first", phase_dir.display()))?,
    };
    let dir = phase_dir.join(&tag);
    let loaded = checkpoint::load(&dir, args.step, 0, None)?;
    let tok = load_tokenizer(&base)?;
    if tok.vocab_size() != loaded.meta.model_config.vocab_size {
        return Err(format!(
            "the tokenizer has {} tokens but the checkpoint was trained with {}",
            tok.vocab_size(),
            loaded.meta.model_config.vocab_size
        ));
    }
    let cfg = loaded.meta.model_config.clone();
    println!(
        "model {tag} step {} ({} parameters)",
        loaded.meta.step,
        loaded.params.len()
    );
    let t = loaded.meta.max_seq_len.min(cfg.sequence_len);
    // Evaluation only: on the kernels an inference model (the weights, no gradients, no optimizer state).
    let mut model: Box<dyn ModelDevice + Send> = if args.device.is_kernels() {
        match args.device.open_inference(&cfg, loaded.params, 0)? {
            Inference::Kernel(m) => Box::new(m),
            Inference::Cpu(_) => unreachable!("a kernel device opens a kernel model"),
        }
    } else {
        open_model(
            args.device,
            &cfg,
            loaded.params,
            &Default::default(),
            args.device_batch_size,
            t,
        )?
    };
    let info = nanochat::dist::env::from_env()?;
    let user_config = serde_json::json!({"eval": eval, "model_tag": tag, "step": loaded.meta.step,
        "max_per_task": args.max_per_task, "device": args.device.flag()});
    let fp = ranks::fingerprint(
        &user_config,
        &TokenizerId::of(&tok).fingerprint,
        info.world_size.value,
        None,
    );
    let timeouts = nanochat::dist::Timeouts {
        connect: std::time::Duration::from_secs(600),
        op: std::time::Duration::from_secs(600),
    };
    // The ranks exchange only a few counts: the CPU ring over TCP carries them on every device.
    let ranks = Ranks::join(info, &fp, false, &timeouts)?;
    let main = ranks.is_main();
    let mut record = serde_json::json!({
        "model_tag": tag, "step": loaded.meta.step, "device": args.device.flag(), "world_size": ranks.world,
    });

    let bundle_dir = args
        .eval_bundle
        .clone()
        .unwrap_or_else(|| base.join(core_eval::EVAL_BUNDLE_DIR));
    let run_core = parts.contains(&"core") && (args.eval.is_some() || bundle_dir.join("core.yaml").exists());
    if parts.contains(&"core") && !run_core && main {
        println!(
            "core: skipped: no eval bundle in {} (fetch it with `download_data --eval-bundle`)",
            bundle_dir.display()
        );
    }
    if run_core {
        let dir = bundle_dir;
        let bundle = Bundle::open(&dir)?;
        let max = usize::try_from(args.max_per_task).ok();
        let t0 = std::time::Instant::now();
        let (rank, world) = (ranks.rank, ranks.world);
        let mut sum = |v: &[f64]| ranks.sum("CORE counts", v);
        let mut core_ranks = core_eval::Ranks {
            rank,
            world,
            sum: &mut sum,
        };
        let mut say = |line: &str| {
            if main {
                println!("{line}")
            }
        };
        let result = core_eval::evaluate_core(model.as_mut(), &tok, &bundle, max, &mut core_ranks, &mut say)?;
        let secs = t0.elapsed().as_secs_f64();
        if main {
            println!(
                "CORE metric: {:.4} ({} tasks, {secs:.1}s)",
                result.core,
                result.tasks.len()
            );
            let path = core_eval::csv_path(&base, loaded.meta.step);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            checkpoint::write_atomic(&path, core_eval::render_csv(&result).as_bytes())?;
            println!("CORE results in {}", path.display());
        }
        record["core"] = serde_json::json!({"metric": result.core, "seconds": secs, "max_per_task": max,
            "tasks": result.tasks.iter().map(|t| serde_json::json!({"label": t.label, "accuracy": t.accuracy,
                "centered": t.centered, "examples": t.examples})).collect::<Vec<_>>()});
    }
    if !main {
        return Ok(());
    }
    if parts.contains(&"bpb") {
        let b = args.device_batch_size;
        let steps = (args.split_tokens / (b * t)).max(1);
        let id = TokenizerId::of(&tok);
        for split in [Split::Train, Split::Val] {
            let shards = open_split(&base, &id, split).map_err(|e| e.to_string())?;
            let cfg = LoaderConfig {
                batch_size: b,
                seq_len: t,
                ..LoaderConfig::default()
            };
            let bpb = evaluate_bpb(model.as_mut(), shards, cfg, steps, &tok.token_bytes())?;
            println!("{split:?} bpb: {bpb:.6} ({} tokens)", steps * b * t);
            record[format!("{split:?}_bpb").to_lowercase()] = serde_json::json!(bpb);
        }
    }
    if parts.contains(&"sample") {
        // Both through the KV-cached engine on the model's device (upstream's generate_batch).
        let engine = Engine::new(infer_view(model.as_ref())?, tok.clone());
        let samples = sample_prompts(&engine, 16)?;
        for text in &samples {
            println!("{text}");
        }
        record["samples"] = serde_json::json!(samples);
        println!("-- unconditioned samples (temperature 1.0, 128 tokens)");
        let unconditioned = GenConfig {
            num_samples: 8,
            max_tokens: Some(128),
            temperature: 1.0,
            top_k: None,
            seed: args.seed,
        };
        let (seqs, _) = engine.generate_batch(&[tok.bos_id()], &unconditioned)?;
        for s in &seqs {
            println!("{}\n--", tok.decode_lossy(&s[1..]));
        }
    }
    // The record the report card reads.
    record["seconds"] = serde_json::json!(started.elapsed().as_secs_f64());
    let path = base
        .join("base_eval")
        .join(format!("base_model_{:06}.json", loaded.meta.step));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let text = serde_json::to_string_pretty(&record).map_err(|e| e.to_string())?;
    checkpoint::write_atomic(&path, text.as_bytes())?;
    Ok(())
}

fn main() {
    if let Err(e) = run(&Args::parse()) {
        eprintln!("base_eval: {e}");
        std::process::exit(1);
    }
}
