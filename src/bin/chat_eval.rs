//! `chat_eval`: evaluate a chat model on the chat tasks (upstream scripts/chat_eval.py) and print ChatCORE.
//!
//! `chat_eval -i sft` scores the latest sft checkpoint on ARC-Easy, ARC-Challenge, MMLU (categorical: the
//! logits of the answer letters), GSM8K, HumanEval and SpellingBee (generative: sampled through the engine with
//! the calculator tool, pass@k over `-n` samples), prints a table and ChatCORE (the mean centered accuracy over
//! the first five, shown when all five ran), and writes the results as JSON. A task without data on disk, or
//! HumanEval without python3, is reported skipped and the others still run.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use nanochat::backend::Backend;
use nanochat::checkpoint;
use nanochat::common::base_dir;
use nanochat::cpu::gpt::Storage;
use nanochat::cpu::model::CpuModel;
use nanochat::device::infer::Inference;
use nanochat::engine::full::FullForward;
use nanochat::engine::Engine;
use nanochat::tasks::chat_eval::{chatcore, eval_categorical, eval_generative, table, EvalSettings, TaskResult};
use nanochat::tasks::humaneval::{python_available, Sandbox};
use nanochat::tasks::registry::{eval_task, CHATCORE_TASKS, EVAL_TASKS};
use nanochat::tasks::{EvalType, TaskSlice};
use nanochat::tokenizer::load_tokenizer;

#[derive(Parser, Debug)]
#[command(about = "Evaluate a chat model on ARC, MMLU, GSM8K, HumanEval and SpellingBee; print ChatCORE")]
struct Args {
    /// Which checkpoints: base, mid, sft or rl.
    #[arg(short = 'i', long)]
    source: String,
    /// Tasks to run, separated by `|` (default: all of ARC-Easy|ARC-Challenge|MMLU|GSM8K|HumanEval|SpellingBee).
    #[arg(short = 'a', long)]
    task_name: Option<String>,
    /// Sampling temperature of the generative tasks (0: greedy).
    #[arg(short = 't', long, default_value_t = 0.0)]
    temperature: f64,
    /// Most tokens generated per sample.
    #[arg(short = 'm', long, default_value_t = 512)]
    max_new_tokens: usize,
    /// Samples per generative problem (a problem passes when any does: pass@k).
    #[arg(short = 'n', long, default_value_t = 1)]
    num_samples: usize,
    /// Top-k sampling (0: none).
    #[arg(short = 'k', long, default_value_t = 50)]
    top_k: usize,
    /// Problems per forward of the categorical tasks.
    #[arg(short = 'b', long, default_value_t = 8)]
    batch_size: usize,
    /// Model tag (checkpoint directory; default: the largest d<N>).
    #[arg(short = 'g', long)]
    model_tag: Option<String>,
    /// Checkpoint step (default: the latest).
    #[arg(short = 's', long)]
    step: Option<usize>,
    /// At most this many problems per task.
    #[arg(short = 'x', long)]
    max_problems: Option<usize>,
    /// Where the model computes.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    device: Backend,
    /// Write the results here (default: $NANOCHAT_BASE_DIR/chat_eval/<source>_<tag>_<step>.json).
    #[arg(long)]
    output: Option<PathBuf>,
}

/// The checkpoint directory of a source.
fn phase_dir(base: &Path, source: &str) -> Result<PathBuf, String> {
    let name = match source {
        "base" => "base_checkpoints",
        "mid" => "mid_checkpoints",
        "sft" => "chatsft_checkpoints",
        "rl" => "chatrl_checkpoints",
        other => return Err(format!("-i {other:?}: choose base, mid, sft or rl")),
    };
    Ok(base.join(name))
}

/// The model twice over on the CPU (the full forward for categorical, the KV-cached one for sampling), or
/// once on another device (sampling by full forwards over the tokens so far).
// One value per run: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Models {
    Cpu(CpuModel, Engine<Inference>),
    /// The CPU reference in bf16 storage: generation re-runs the full forward.
    Device(Engine<FullForward<'static>>),
    /// The kernels (an inference model: no gradients, no optimizer state): full forwards for the categorical
    /// tasks, the KV-cached engine for generation.
    Kernel(Engine<Inference>),
}

fn run_task(models: &mut Models, task: &TaskSlice, s: &EvalSettings) -> Result<TaskResult, String> {
    let start = Instant::now();
    let name = task.name();
    // On a terminal one line rewritten in place; in a log a line per tenth of the problems.
    let tty = std::io::stderr().is_terminal();
    let mut last_tenth = 0;
    let mut progress = |done: usize, total: usize, passed: usize| {
        let secs = start.elapsed().as_secs_f64();
        let eta = secs / done.max(1) as f64 * (total - done) as f64;
        let line = format!(
            "{name}: {done}/{total} problems, {passed} passed ({:.1}%), {secs:.0}s, ETA {eta:.0}s",
            100.0 * passed as f64 / done.max(1) as f64
        );
        let tenth = done * 10 / total.max(1);
        if tty {
            eprint!("\r\x1b[K{line}");
        } else if tenth > last_tenth {
            last_tenth = tenth;
            eprintln!("{line}");
        }
    };
    let r = match (models, task.eval_type()) {
        (Models::Cpu(m, e), EvalType::Categorical) => eval_categorical(m, &e.tokenizer, task, s, &mut progress),
        (Models::Cpu(_, e), EvalType::Generative) => eval_generative(e, task, s, &mut progress),
        (Models::Device(e), EvalType::Categorical) => e
            .model
            .with_model(|m| eval_categorical(m, &e.tokenizer, task, s, &mut progress))?,
        (Models::Device(e), EvalType::Generative) => eval_generative(e, task, s, &mut progress),
        (Models::Kernel(e), EvalType::Categorical) => match &mut e.model {
            Inference::Kernel(m) => eval_categorical(m, &e.tokenizer, task, s, &mut progress),
            Inference::Cpu(_) => unreachable!("the kernel variant holds a kernel model"),
        },
        (Models::Kernel(e), EvalType::Generative) => eval_generative(e, task, s, &mut progress),
    };
    if tty {
        eprintln!();
    }
    r
}

fn run(args: Args) -> Result<(), String> {
    let base = base_dir();
    let phase = phase_dir(&base, &args.source)?;
    let tag = match &args.model_tag {
        Some(t) => t.clone(),
        None => checkpoint::find_largest_model(&phase)
            .ok_or_else(|| format!("no {} checkpoints under {}", args.source, phase.display()))?,
    };
    let dir = phase.join(&tag);
    let loaded = checkpoint::load(&dir, args.step, 0, None)?;
    let cfg = loaded.meta.model_config.clone();
    let tok = load_tokenizer(&base)?;
    if tok.vocab_size() != cfg.vocab_size {
        return Err(format!(
            "the tokenizer has {} tokens but checkpoint {} was trained with {}",
            tok.vocab_size(),
            dir.display(),
            cfg.vocab_size
        ));
    }
    let step = loaded.meta.step;
    println!(
        "chat_eval: {} model {tag} step {step} ({} layers, {} dim) on {}",
        args.source,
        cfg.n_layer,
        cfg.n_embd,
        args.device.flag()
    );
    let mut models = match args.device.cpu_storage() {
        Some(Storage::F32) => Models::Cpu(
            CpuModel::new(&cfg, loaded.params.clone(), &Default::default())?,
            Engine::new(args.device.open_inference(&cfg, loaded.params, 0)?, tok.clone()),
        ),
        Some(storage) => Models::Device(Engine::new(
            FullForward::new(Box::new(
                CpuModel::new(&cfg, loaded.params, &Default::default())?.with_storage(storage),
            )),
            tok.clone(),
        )),
        None => Models::Kernel(Engine::new(
            args.device.open_inference(&cfg, loaded.params, 0)?,
            tok.clone(),
        )),
    };

    let names: Vec<String> = match &args.task_name {
        Some(list) => list.split('|').map(|s| s.trim().to_string()).collect(),
        None => EVAL_TASKS.iter().map(|s| s.to_string()).collect(),
    };
    if let Some(bad) = names.iter().find(|n| !EVAL_TASKS.contains(&n.as_str())) {
        return Err(format!(
            "-a: unknown task {bad:?}: choose from {}",
            EVAL_TASKS.join("|")
        ));
    }
    let settings = EvalSettings {
        batch_size: args.batch_size,
        num_samples: args.num_samples,
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_k: (args.top_k > 0).then_some(args.top_k),
        max_problems: args.max_problems,
        seed: 42,
    };
    let mut results = Vec::new();
    for name in &names {
        let skip = |why: String| TaskResult {
            task: name.clone(),
            passed: 0,
            total: 0,
            accuracy: 0.0,
            skipped: Some(why),
            seconds: 0.0,
        };
        if name == "HumanEval" && !python_available() {
            results.push(skip("skipped: no python3".into()));
            println!("{name}: skipped: no python3");
            continue;
        }
        let task = match eval_task(&base, name, Arc::new(Sandbox)) {
            Ok(t) => TaskSlice::all(t),
            Err(e) => {
                println!("{name}: skipped: {e}");
                results.push(skip(format!("skipped: no data ({e})")));
                continue;
            }
        };
        let r = run_task(&mut models, &task, &settings)?;
        match &r.skipped {
            Some(why) => println!("{name}: {why}"),
            None => println!(
                "{name}: accuracy {:.4} ({}/{}) in {:.1}s",
                r.accuracy, r.passed, r.total, r.seconds
            ),
        }
        results.push(r);
    }

    print!("{}", table(&results));
    let core = chatcore(&results);
    match core {
        Some(c) => println!("ChatCORE: {c:.4}"),
        None => {
            let missing: Vec<&str> = CHATCORE_TASKS
                .iter()
                .copied()
                .filter(|t| !results.iter().any(|r| r.task == *t && r.skipped.is_none()))
                .collect();
            println!("ChatCORE: n/a (not scored: {})", missing.join(", "));
        }
    }
    let out = args.output.unwrap_or_else(|| {
        base.join("chat_eval")
            .join(format!("{}_{tag}_{step}.json", args.source))
    });
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let json = serde_json::json!({
        "source": args.source,
        "model_tag": tag,
        "step": step,
        "device": args.device,
        "settings": {
            "temperature": args.temperature,
            "max_new_tokens": args.max_new_tokens,
            "num_samples": args.num_samples,
            "top_k": args.top_k,
            "batch_size": args.batch_size,
            "max_problems": args.max_problems,
        },
        "results": results,
        "chatcore": core,
    });
    checkpoint::write_atomic(
        &out,
        serde_json::to_string_pretty(&json)
            .map_err(|e| e.to_string())?
            .as_bytes(),
    )?;
    println!("chat_eval: results in {}", out.display());
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat_eval: {e}");
            ExitCode::FAILURE
        }
    }
}
