//! Whole training steps on a kernel device: tokens per second and MFU for a depth, without a dataset.
//!
//! ```text
//! step_bench --depth 12                      on a GPU: the largest device batch that fits (at most 32) x 2048
//! step_bench --depth 20 --batch 16 --steps 20
//! step_bench --device emu --depth 1 --seq 64 --batch 1 --vocab 512 --head-dim 64 --steps 3
//! ```
//! Builds the model of `--depth` from the depth dial with upstream's init, prints the device memory report,
//! then runs warm-up steps and timed steps of forward + backward and MuonAdamW on one fixed random batch
//! (the loss must fall: a cheap end-to-end sanity check), and prints per-step times, tokens/s and MFU
//! (`flops_per_token · tokens / time / peak`, peak from the device name as upstream's table has it).
//! Build it here (`cargo build --release --bin step_bench`) and carry the binary to the GPU machine.

use clap::Parser;
use nanochat::backend::Backend;
use nanochat::common::peak_bf16_flops;
use nanochat::config::ModelConfig;
use nanochat::device::kernels::attention::AttnImpl;
use nanochat::device::model::KernelModel;
use nanochat::device::Schedule;
use nanochat::model::ModelDevice;
use nanochat::optim::{SetupArgs, StepSettings};
use nanochat::params::ParamTable;
use nanochat::rng::Rng;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Training-step benchmark on a kernel device: tok/s and MFU for one depth")]
struct Args {
    /// Device to run on.
    #[arg(long, value_enum, default_value_t = Backend::Cuda)]
    device: Backend,
    /// Number of layers (the depth dial sizes the rest).
    #[arg(long, default_value_t = 12)]
    depth: usize,
    /// model_dim = depth x aspect ratio (rounded up to a multiple of the head dim).
    #[arg(long, default_value_t = 64)]
    aspect_ratio: usize,
    /// Attention head dimension.
    #[arg(long, default_value_t = 128)]
    head_dim: usize,
    /// Sequence length of the micro-batch.
    #[arg(long, default_value_t = 2048)]
    seq: usize,
    /// Rows per micro-batch; 0 = the largest that fits in free device memory, at most 32.
    #[arg(long, default_value_t = 0)]
    batch: usize,
    /// Vocabulary size.
    #[arg(long, default_value_t = 32768)]
    vocab: usize,
    /// Sliding-window pattern.
    #[arg(long, default_value = "SSSL")]
    window_pattern: String,
    /// Timed steps (after --warmup untimed ones).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Use the naive attention kernels instead of flash attention.
    #[arg(long)]
    naive_attention: bool,
}

fn run(args: &Args) -> Result<(), String> {
    if args.steps == 0 {
        return Err("--steps must be at least 1".into());
    }
    let dev = args.device.kernel_device(Schedule::Forward)?;
    let name = dev.name();
    let cfg = ModelConfig::from_depth(
        args.depth,
        args.aspect_ratio,
        args.head_dim,
        args.seq,
        args.vocab,
        &args.window_pattern,
    );
    cfg.validate()?;
    let table = ParamTable::new(&cfg);
    let mut params = vec![0.0; table.numel];
    table.init(&mut params, 42);
    let mut model = KernelModel::new(dev, &cfg, &params, &SetupArgs::default())?;
    drop(params);
    if args.naive_attention {
        model.set_attention(AttnImpl::Naive);
    }
    let t = args.seq;
    let b = match args.batch {
        0 => {
            if model.device().memory_info().is_none() {
                return Err(format!("{name} reports no free memory: give --batch"));
            }
            // The model is on the device already: its memory counts once (free + what it holds).
            model
                .largest_batch_now(t)
                .ok_or_else(|| format!("depth {} does not fit on {name}", args.depth))?
                .min(32)
        }
        b => b,
    };
    println!(
        "{name}: depth {}, n_embd {}, {} parameters, {} FLOPs/token; micro-batch {b} x {t}",
        cfg.n_layer,
        cfg.n_embd,
        table.numel,
        cfg.flops_per_token()
    );
    println!("{}", model.memory_report(b, t));

    let mut rng = Rng::new(7);
    let (ids, targets) = rng.token_batch(cfg.vocab_size, b * t);
    let settings = StepSettings::BENCH;
    let tokens = (b * t) as f64;
    let peak = peak_bf16_flops(&name);
    let (mut fb_total, mut opt_total) = (0.0, 0.0);
    let mut losses = Vec::new();
    for step in 0..args.warmup + args.steps {
        let t0 = Instant::now();
        // The loss comes back to the host, so the forward and backward have finished when it returns.
        let loss = model.forward_backward(&ids, &targets, b, t, 1.0)?;
        let t1 = Instant::now();
        model.step(&settings)?;
        model.device().synchronize().map_err(|e| format!("{name}: {e}"))?;
        let t2 = Instant::now();
        let (fb, opt) = ((t1 - t0).as_secs_f64(), (t2 - t1).as_secs_f64());
        let dt = fb + opt;
        let mfu = peak.map_or(0.0, |p| 100.0 * cfg.flops_per_token() * tokens / dt / p);
        let timed = step >= args.warmup;
        println!(
            "{} {step:>3}: loss {loss:.4}  fwd+bwd {:>9.2} ms  optimizer {:>8.2} ms  {:>10.0} tok/s  MFU {mfu:5.1}%",
            if timed { "step  " } else { "warmup" },
            fb * 1e3,
            opt * 1e3,
            tokens / dt
        );
        if timed {
            fb_total += fb;
            opt_total += opt;
        }
        losses.push(loss);
    }
    let n = args.steps as f64;
    let dt = (fb_total + opt_total) / n;
    println!(
        "mean over {} steps: fwd+bwd {:.2} ms, optimizer {:.2} ms, {:.0} tok/s, MFU {}",
        args.steps,
        fb_total / n * 1e3,
        opt_total / n * 1e3,
        tokens / dt,
        peak.map_or("unknown (device not in the peak table)".to_string(), |p| format!(
            "{:.1}% of {:.0} TFLOP/s",
            100.0 * cfg.flops_per_token() * tokens / dt / p,
            p / 1e12
        ))
    );
    let (first, last) = (losses[0], *losses.last().unwrap_or(&losses[0]));
    if !last.is_finite() || losses.len() > 1 && last >= first {
        return Err(format!(
            "the loss did not fall on a repeated batch ({first:.4} -> {last:.4})"
        ));
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("step_bench: {e}");
            ExitCode::FAILURE
        }
    }
}
