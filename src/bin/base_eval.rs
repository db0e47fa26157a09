//! `base_eval`: evaluate a base checkpoint (upstream scripts/base_eval.py): bits per byte on the train and
//! validation splits, and samples (greedy continuations of fixed prompts, unconditioned samples from BOS).

use clap::Parser;
use nanochat::backend::Backend;
use nanochat::checkpoint;
use nanochat::common::base_dir;
use nanochat::cpu::model::CpuModel;
use nanochat::data::loader::{open_split, LoaderConfig};
use nanochat::data::shards::TokenizerId;
use nanochat::data::Split;
use nanochat::device::infer::continue_cached;
use nanochat::device::model::KernelModel;
use nanochat::device::Schedule;
use nanochat::engine::sample_next_token;
use nanochat::model::ModelDevice;
use nanochat::rng::Rng;
use nanochat::tokenizer::load_tokenizer;
use nanochat::train::eval::{evaluate_bpb, sample_greedy, SAMPLE_PROMPTS};

#[derive(Parser)]
#[command(about = "Evaluate a base model checkpoint: bits per byte and samples")]
struct Args {
    /// Comma-separated parts to run: bpb, sample (core is not part of this build).
    #[arg(long, default_value = "bpb,sample")]
    eval: String,
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
    /// Seed of the unconditioned samples.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Device to run on: the CPU reference (fp32 or bf16 storage), or the kernels on a GPU (cuda) or the
    /// emulator (emu); on the kernels the samples decode with the KV cache.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    device: Backend,
}

fn run(args: &Args) -> Result<(), String> {
    let base = base_dir();
    let parts: Vec<&str> = args.eval.split(',').map(str::trim).collect();
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
    let mut kernel = None;
    let mut cpu = None;
    let model: &mut dyn ModelDevice = match args.device.cpu_storage() {
        Some(storage) => cpu.insert(CpuModel::new(&cfg, loaded.params, &Default::default())?.with_storage(storage)),
        None => {
            let dev = args.device.kernel_device(Schedule::Forward)?;
            kernel.insert(KernelModel::new(dev, &cfg, &loaded.params, &Default::default())?)
        }
    };

    if parts.contains(&"core") {
        println!("core: not part of this build; skipped");
    }
    if parts.contains(&"bpb") {
        let t = loaded.meta.max_seq_len.min(cfg.sequence_len);
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
            let bpb = evaluate_bpb(model, shards, cfg, steps, &tok.token_bytes())?;
            println!("{split:?} bpb: {bpb:.6} ({} tokens)", steps * b * t);
        }
    }
    if parts.contains(&"sample") {
        if let Some(k) = &kernel {
            // The KV-cached path of the kernels.
            for prompt in SAMPLE_PROMPTS {
                let mut ids = vec![tok.bos_id()];
                ids.extend(tok.encode_ordinary(prompt));
                let out = continue_cached(k, &ids, 16, &mut Rng::new(0), 0.0)?;
                println!("{prompt}{}", tok.decode_lossy(&out));
            }
        } else {
            for prompt in SAMPLE_PROMPTS {
                let model = cpu.as_mut().expect("the CPU model");
                println!("{prompt}{}", sample_greedy(model, &tok, prompt, 16)?);
            }
        }
        println!("-- unconditioned samples (temperature 1.0, 128 tokens)");
        let mut rng = Rng::new(args.seed);
        for _ in 0..8 {
            let mut ids = vec![tok.bos_id()];
            if let Some(k) = &kernel {
                ids.extend(continue_cached(k, &[tok.bos_id()], 128, &mut rng, 1.0)?);
            } else {
                let model = cpu.as_mut().expect("the CPU model");
                for _ in 0..128 {
                    let ctx = &ids[ids.len().saturating_sub(cfg.sequence_len)..];
                    let logits = model.last_logits(ctx, 1, ctx.len())?;
                    let next = sample_next_token(&logits, &mut rng, 1.0, None)?;
                    ids.push(next);
                }
            }
            println!("{}\n--", tok.decode_lossy(&ids[1..]));
        }
    }
    Ok(())
}

fn main() {
    if let Err(e) = run(&Args::parse()) {
        eprintln!("base_eval: {e}");
        std::process::exit(1);
    }
}
