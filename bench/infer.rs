//! infer_bench: KV-cached inference speed on a kernel device (upstream's infer_bench, spec §8.6).
//!
//! ```text
//! infer_bench --checkpoint DIR              a checkpoint (train_gpt's model_<step>.safetensors + meta)
//! infer_bench --depth 12                    random weights of a depth-12 model
//! infer_bench --device emu --depth 1 --sequence-len 64 --vocab-size 300 --prompt-tokens 12 \
//!             --decode-tokens 4 --batch-sizes 1,2     the whole path on the emulator (times mean nothing)
//! ```
//! Prints a static card (weight and KV bytes, the batch-1 decode ceiling), the prefill (tok/s, MFU), and per
//! batch size the time to first token, the time per output token (median step), tok/s, bandwidth
//! utilisation (weights + KV read per step over TPOT) and decode MFU; the last line is one JSON document.
//! The prompt is a fixed pseudo-random token sequence (no tokenizer is needed for random weights); decoding
//! is greedy (temperature 0) and sampled on the host, inside the timed step.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use nanochat::backend::Backend;
use nanochat::checkpoint;
use nanochat::config::ModelConfig;
use nanochat::device::infer::DeviceCache;
use nanochat::device::model::KernelModel;
use nanochat::device::roofline::Peaks;
use nanochat::device::Schedule;
use nanochat::engine::{sample_next_token, InferModel};
use nanochat::params::ParamTable;
use nanochat::rng::Rng;
use serde_json::json;

#[derive(Parser)]
#[command(about = "KV-cached inference benchmark: prefill tok/s and MFU, decode TPOT, tok/s and MBU per batch size")]
struct Args {
    /// Device to run on.
    #[arg(long, value_enum, default_value_t = Backend::Cuda)]
    device: Backend,
    /// A checkpoint directory (e.g. $NANOCHAT_BASE_DIR/base_checkpoints/d12); without it, random weights.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Checkpoint step (default: the latest).
    #[arg(short = 's', long)]
    step: Option<usize>,
    /// Depth of the random-weight model (without --checkpoint).
    #[arg(long, default_value_t = 12)]
    depth: usize,
    /// Context length of the random-weight model.
    #[arg(long, default_value_t = 2048)]
    sequence_len: usize,
    /// Vocabulary of the random-weight model.
    #[arg(long, default_value_t = 32768)]
    vocab_size: usize,
    /// Model width per layer of depth (upstream's aspect ratio) of the random-weight model.
    #[arg(long, default_value_t = 64)]
    aspect_ratio: usize,
    /// Head dimension of the random-weight model.
    #[arg(long, default_value_t = 128)]
    head_dim: usize,
    /// Prompt length (cut to sequence_len - decode_tokens).
    #[arg(long, default_value_t = 2048)]
    prompt_tokens: usize,
    /// Tokens decoded per batch size.
    #[arg(long, default_value_t = 256)]
    decode_tokens: usize,
    /// Batch sizes of the decode sweep, comma-separated.
    #[arg(long, default_value = "1,8,32,128")]
    batch_sizes: String,
    /// Sampling temperature (0: greedy).
    #[arg(short = 't', long, default_value_t = 0.0)]
    temperature: f64,
}

/// Bytes the caches of one row hold per token: keys and values of every layer.
fn kv_bytes_per_token(cfg: &ModelConfig) -> usize {
    2 * cfg.n_layer * cfg.kv_dim() * 2
}

/// Bytes of K/V one decode step reads per row at context `ctx`: each layer's visible keys and values.
fn kv_read(cfg: &ModelConfig, ctx: usize) -> usize {
    cfg.window_sizes()
        .iter()
        .map(|&w| 2 * ctx.min(w + 1) * cfg.kv_dim() * 2)
        .sum()
}

fn median(x: &mut [f64]) -> f64 {
    x.sort_by(f64::total_cmp);
    x[x.len() / 2]
}

fn used_vram(m: &KernelModel) -> Option<usize> {
    m.device().memory_info().map(|(free, total)| total - free)
}

fn pct(x: Option<f64>) -> String {
    x.map_or("-".into(), |p| format!("{p:.1}%"))
}

fn run(args: &Args) -> Result<(), String> {
    let batches: Vec<usize> = args
        .batch_sizes
        .split(',')
        .map(|s| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("--batch-sizes: {s:?} is not a number"))
        })
        .collect::<Result<_, _>>()?;
    if batches.contains(&0) || args.decode_tokens == 0 {
        return Err("batch sizes and --decode-tokens must be at least 1".into());
    }
    let dev = args.device.kernel_device(Schedule::Forward)?;
    let (cfg, params, source, step) = match &args.checkpoint {
        Some(dir) => {
            let l = checkpoint::load(dir, args.step, 0, None)?;
            (
                l.meta.model_config.clone(),
                l.params,
                dir.display().to_string(),
                Some(l.meta.step),
            )
        }
        None => {
            let cfg = ModelConfig::from_depth(
                args.depth,
                args.aspect_ratio,
                args.head_dim,
                args.sequence_len,
                args.vocab_size,
                "SSSL",
            );
            let table = ParamTable::new(&cfg);
            let mut p = vec![0.0; table.numel];
            table.init(&mut p, 0);
            (cfg, p, format!("random weights, depth {}", args.depth), None)
        }
    };
    let numel = ParamTable::new(&cfg).numel;
    // The serving model: the weights, no gradients, no optimizer state.
    let m = KernelModel::for_inference(dev, &cfg, &params)?;
    drop(params);
    let peaks = Peaks::of(m.device());
    let prompt_len = args
        .prompt_tokens
        .min(cfg.sequence_len.saturating_sub(args.decode_tokens))
        .max(1);
    let mut rng = Rng::new(1);
    let prompt: Vec<u32> = (0..prompt_len)
        .map(|_| rng.below(cfg.vocab_size as u64) as u32)
        .collect();
    let t_max = prompt_len + args.decode_tokens;

    // Static card.
    let weight_bytes = numel * 2; // the bf16 weights the forward reads
    let ctx_mid = prompt_len + args.decode_tokens / 2;
    let kv_step = kv_read(&cfg, ctx_mid);
    let ceiling = peaks.bytes_per_s.map(|bw| bw / (weight_bytes + kv_step) as f64);
    let vram = m.device().memory_info().map(|(_, total)| total);
    let max_rows = vram.map(|v| v.saturating_sub(weight_bytes) / (kv_bytes_per_token(&cfg) * cfg.sequence_len));
    let decode_flops = cfg.decode_flops(ctx_mid);
    println!("device: {}", m.device().name());
    println!("{}", peaks.describe());
    println!(
        "model: {source}: {} layers, {} dim, {}/{} heads of {}, vocab {}, context {}; {numel} parameters",
        cfg.n_layer,
        cfg.n_embd,
        cfg.n_head,
        cfg.n_kv_head,
        cfg.head_dim(),
        cfg.vocab_size,
        cfg.sequence_len
    );
    println!(
        "weights {:.1} MB bf16; KV {} bytes/token; KV read per row-step at context {ctx_mid}: {:.2} MB; \
         batch-1 decode ceiling {}; full-context rows that fit: {}",
        weight_bytes as f64 / 1e6,
        kv_bytes_per_token(&cfg),
        kv_step as f64 / 1e6,
        ceiling.map_or("- (unknown bandwidth)".into(), |c| format!("{c:.0} tok/s")),
        max_rows.map_or("-".into(), |r| r.to_string())
    );

    // Prefill: a warm-up, then one timed batch-1 prefill.
    let prefill = |m: &KernelModel| -> Result<(DeviceCache, Vec<f32>, f64), String> {
        let t0 = Instant::now();
        let mut c = m.new_cache(1, prompt_len)?;
        let logits = m.forward_last(&mut c, &prompt, prompt_len)?;
        Ok((c, logits, t0.elapsed().as_secs_f64()))
    };
    prefill(&m)?;
    let (_, _, prefill_s) = prefill(&m)?;
    let prefill_flops = cfg.flops_per_token() / 3.0 * prompt_len as f64;
    let prefill_mfu = peaks.flops_pct(prefill_flops, prefill_s);
    println!(
        "prefill {prompt_len} tokens: {:.1} ms, {:.0} tok/s, MFU {}",
        prefill_s * 1e3,
        prompt_len as f64 / prefill_s,
        pct(prefill_mfu)
    );

    // Decode sweep.
    let v = cfg.vocab_size;
    let mut sweep = Vec::new();
    println!("batch   TTFT ms   TPOT ms      tok/s     MBU   dMFU   steps  peak VRAM");
    for &b in &batches {
        let run_one = |steps: usize| -> Result<(f64, Vec<f64>), String> {
            let t0 = Instant::now();
            // Prefill row 0, copy it into the other rows (the engine's generate).
            let mut cache = m.new_cache(b, t_max)?;
            let last = m.forward_rows(&mut cache, &[0], &[prompt_len], &prompt)?;
            for r in 1..b {
                m.copy_row(&mut cache, 0, r)?;
            }
            let mut logits = last.repeat(b);
            let mut rng = Rng::new(42);
            let mut col: Vec<u32> = (0..b)
                .map(|r| sample_next_token(&logits[r * v..(r + 1) * v], &mut rng, args.temperature, None))
                .collect::<Result<_, _>>()?;
            let ttft = t0.elapsed().as_secs_f64();
            let mut times = Vec::with_capacity(steps);
            for _ in 0..steps {
                let t = Instant::now();
                logits = m.forward_last(&mut cache, &col, 1)?;
                col = (0..b)
                    .map(|r| sample_next_token(&logits[r * v..(r + 1) * v], &mut rng, args.temperature, None))
                    .collect::<Result<_, _>>()?;
                times.push(t.elapsed().as_secs_f64());
            }
            Ok((ttft, times))
        };
        run_one(args.decode_tokens.min(8))?;
        let steps = args.decode_tokens - 1;
        let (ttft, mut times) = run_one(steps.max(1))?;
        let total: f64 = times.iter().sum();
        let tpot = median(&mut times);
        let tps = (b * times.len()) as f64 / total;
        let mbu = peaks.bytes_pct((weight_bytes + b * kv_step) as f64, tpot);
        let mfu = peaks.flops_pct(b as f64 * decode_flops, tpot);
        let peak = used_vram(&m);
        println!(
            "{b:>5} {:>9.2} {:>9.3} {:>10.1} {:>7} {:>6} {:>7} {:>10}",
            ttft * 1e3,
            tpot * 1e3,
            tps,
            pct(mbu),
            pct(mfu),
            times.len(),
            peak.map_or("-".into(), |p| format!("{:.2} GB", p as f64 / 1e9))
        );
        sweep.push(json!({
            "batch_size": b,
            "ttft_sec": ttft,
            "tpot_sec": tpot,
            "tok_per_sec": tps,
            "mbu_percent": mbu,
            "mfu_percent": mfu,
            "peak_vram_bytes": peak,
            "decode_steps": times.len(),
        }));
    }
    let doc = json!({
        "source": source,
        "step": step,
        "model_config": cfg,
        "gpu": m.device().name(),
        "peak_bandwidth_bytes_per_sec": peaks.bytes_per_s,
        "peak_flops": peaks.flops,
        "vram_bytes": vram,
        "params": numel,
        "dtypes": {"weights": "bf16", "kv_cache": "bf16", "logits": "bf16"},
        "weight_bytes": weight_bytes,
        "kv_bytes_per_token": kv_bytes_per_token(&cfg),
        "kv_read_bytes_per_step": kv_step,
        "context_mid": ctx_mid,
        "decode_flops_per_token": decode_flops,
        "batch1_decode_ceiling_tok_per_sec": ceiling,
        "max_full_context_rows": max_rows,
        "prefill": {"tok_per_sec": prompt_len as f64 / prefill_s, "mfu_percent": prefill_mfu, "time_sec": prefill_s,
                    "tokens": prompt_len},
        "sweep": sweep,
    });
    println!("{doc}");
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("infer_bench: {e}");
            ExitCode::FAILURE
        }
    }
}
