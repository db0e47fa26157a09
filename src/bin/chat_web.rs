//! `chat_web`: serve the model over HTTP (upstream scripts/chat_web.py): the chat page at `/`, streaming
//! `/chat/completions`, OpenAI-compatible `/v1/chat/completions` and `/v1/models`, `/health` and `/stats`. Stops cleanly on
//! SIGINT/SIGTERM: no new connections, requests in flight get a grace period to finish.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use nanochat::backend::Backend;
use nanochat::common::base_dir;
use nanochat::device::infer::Inference;
use nanochat::engine::load::ModelCard;
use nanochat::engine::{Engine, InferModel};
use nanochat::serve::api::Defaults;
use nanochat::serve::{ModelInfo, Options, Server};

#[derive(Parser)]
#[command(about = "Serve a nanochat model: web page, streaming chat API, OpenAI-compatible API")]
struct Args {
    /// Workers, one model replica each (on the CPU reference, each runs on all cores; with cuda, one per GPU).
    #[arg(short = 'n', long, default_value_t = 1)]
    num_gpus: usize,
    /// Model source: sft, rl, mid or base (sft falls back to base when no sft checkpoint exists).
    #[arg(short = 'i', long, default_value = "sft")]
    source: String,
    /// Default sampling temperature of requests that do not set one.
    #[arg(short = 't', long, default_value_t = 0.8)]
    temperature: f64,
    /// Default top-k of requests that do not set one.
    #[arg(short = 'k', long, default_value_t = 50)]
    top_k: usize,
    /// Default maximum tokens per reply of requests that do not set one.
    #[arg(short = 'm', long, default_value_t = 512)]
    max_tokens: usize,
    /// Checkpoint directory name (default: the largest d<N>).
    #[arg(short = 'g', long)]
    model_tag: Option<String>,
    /// Checkpoint step (default: the latest).
    #[arg(short = 's', long)]
    step: Option<usize>,
    /// Port to listen on (0 picks a free one).
    #[arg(short = 'p', long, default_value_t = 8000)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    host: String,
    /// Device to run on (upstream's flag name): the CPU reference, or the kernels on GPUs 0..n (cuda) or the
    /// emulator (emu).
    #[arg(long, visible_alias = "device", value_enum, default_value_t = Backend::Cpu)]
    device_type: Backend,
    /// Requests that may wait for a busy worker; more get 503 at once.
    #[arg(long, default_value_t = 16)]
    max_queue: usize,
    /// Seconds a request may wait for a worker before it gets 503.
    #[arg(long, default_value_t = 30.0)]
    queue_timeout: f64,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = 1 << 20)]
    max_body: usize,
    /// Continuous batching: requests running at once per worker, each in its own row of the worker's KV cache
    /// (rows x the model's context, allocated at start-up); new requests join the running batch at the next
    /// step and finished ones leave. Requests beyond the rows wait in the queue (--max-queue), beyond that 503.
    /// 0: one request per worker at a time (upstream's mode).
    #[arg(long, default_value_t = 16)]
    batch_rows: usize,
    /// Seconds in-flight requests get to finish after SIGINT/SIGTERM.
    #[arg(long, default_value_t = 10.0)]
    grace: f64,
}

fn run(args: &Args) -> Result<(), String> {
    if args.num_gpus == 0 {
        return Err("--num-gpus must be at least 1".into());
    }
    if !(0.0..=2.0).contains(&args.temperature) || args.top_k > 200 || args.max_tokens == 0 {
        return Err("defaults out of range: temperature 0..2, top-k 0..200, max-tokens >= 1".into());
    }
    if !(args.queue_timeout >= 0.0 && args.grace >= 0.0) {
        return Err("--queue-timeout and --grace must be >= 0".into());
    }
    let (tag, step) = (args.model_tag.as_deref(), args.step);
    serve(args, |i| {
        let (engine, card, notice) = args.device_type.load_engine(i, &base_dir(), &args.source, tag, step)?;
        let name = engine.model.device_name();
        Ok((engine, card, notice, name))
    })
}

/// Loaded engine `i`: the engine, its checkpoint, a notice, the device's name.
type Loaded = (Engine<Inference>, ModelCard, Option<String>, String);

fn serve(args: &Args, load: impl Fn(usize) -> Result<Loaded, String>) -> Result<(), String> {
    let mut engines = Vec::new();
    let mut devices = Vec::new();
    let mut model = ModelInfo::default();
    for i in 0..args.num_gpus {
        let (engine, card, notice, device) = load(i)?;
        if i == 0 {
            if let Some(n) = notice {
                eprintln!("note: {n}");
            }
            eprintln!("loaded {card}");
            let file = card.dir.join(format!("model_{:06}.safetensors", card.step));
            model = ModelInfo {
                id: format!("nanochat-{}-{}", card.source, card.tag),
                checkpoint: Some(card.dir.display().to_string()),
                step: Some(card.step),
                source: Some(card.source.clone()),
                created: std::fs::metadata(&file)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs()),
            };
        }
        engines.push(engine);
        devices.push(device);
    }
    let opts = Options {
        defaults: Defaults {
            temperature: args.temperature,
            top_k: args.top_k,
            max_tokens: args.max_tokens,
        },
        max_queue: args.max_queue,
        queue_timeout: Duration::from_secs_f64(args.queue_timeout),
        max_body: args.max_body,
        batch_rows: args.batch_rows,
        model,
        ..Options::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| format!("cannot install the signal handler: {e}"))?;
    }
    if args.batch_rows > 0 {
        let cfg = engines[0].model.config();
        // Keys and values per position of every layer: fp32 on the CPU reference, bf16 on the kernels.
        let bytes = engines[0].model.kv_bytes(args.batch_rows, cfg.sequence_len);
        eprintln!(
            "continuous batching: {} rows of {} positions per worker, KV cache {:.1} MiB per worker",
            args.batch_rows,
            cfg.sequence_len,
            bytes as f64 / (1 << 20) as f64
        );
    } else {
        eprintln!("one request per worker at a time (--batch-rows 0)");
    }
    let addr = format!("{}:{}", args.host, args.port);
    let server = Server::start(engines, devices, opts, &addr)?;
    // The line tests and scripts wait for.
    println!("listening on http://{}", server.addr());
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("shutting down: {} request(s) in flight", server.active());
    server.shutdown(Duration::from_secs_f64(args.grace));
    eprintln!("stopped");
    Ok(())
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("chat_web: {e}");
        std::process::exit(1);
    }
}
