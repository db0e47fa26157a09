//! `chat_sft`: supervised fine-tuning (upstream's `scripts/chat_sft.py`, spec §9.1). Starts from the mid
//! checkpoint when there is one, else from the base checkpoint (`-i` chooses), inherits the geometry
//! (sequence length, batch sizes) and the raw lr flags from that checkpoint's metadata (no batch lr scale),
//! optionally warm-starts the optimizer from its state, and trains on assistant tokens only: lr × 0.8 from the
//! start, constant until half the mixture, then linearly to 0; Muon momentum 0.85 → 0.95 over 300 steps.
//! Checkpoints: `chatsft_checkpoints/<tag>/`.

use super::mixtures::{self, Rendered};
use super::stage::{self, Hook, LrShape, Stage, StageSummary};
use crate::backend::Backend;
use crate::checkpoint::{self, Loaded};
use crate::common::base_dir;
use crate::data::sft::Supervision;
use crate::optim::SetupArgs;
use crate::tasks::chat_eval::{chatcore, chatcore_cat, chatcore_eval, table};
use crate::tokenizer::{load_tokenizer, Tokenizer};
use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The checkpoint chat_sft starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The pretrained model (base_checkpoints).
    Base,
    /// The midtrained model (mid_checkpoints).
    Mid,
}

impl Source {
    pub fn phase_dir(self, base: &Path) -> PathBuf {
        base.join(match self {
            Source::Base => "base_checkpoints",
            Source::Mid => "mid_checkpoints",
        })
    }
}

/// Fine-tune a chat model (upstream chat_sft's flags).
#[derive(Parser, Clone, Debug, Serialize, Deserialize)]
#[command(
    name = "chat_sft",
    about = "Supervised fine-tuning of a mid (or base) checkpoint",
    args_override_self = true
)]
pub struct SftArgs {
    /// Run name (recorded in the metadata; "dummy" = unnamed).
    #[arg(long, default_value = "dummy")]
    pub run: String,
    /// Where the model computes.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    pub device: Backend,
    /// Checkpoint to start from (default: mid when a mid checkpoint exists, else base).
    #[arg(short = 'i', long, value_enum)]
    pub source: Option<Source>,
    /// Tag of the checkpoint to load (default: the largest d<N>); also names the output directory.
    #[arg(long)]
    pub model_tag: Option<String>,
    /// Step of the checkpoint to load (default: the latest).
    #[arg(long)]
    pub model_step: Option<usize>,
    /// Warm-start the optimizer from the loaded checkpoint's state (0 = no, 1 = yes; lrs are reset).
    #[arg(long, default_value_t = 1)]
    pub load_optimizer: u8,
    /// Optimizer steps (-1 = one pass over the mixture).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub num_iterations: i64,
    /// Context length (default: inherited from the loaded checkpoint).
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    /// Rows per micro-batch (default: inherited).
    #[arg(long)]
    pub device_batch_size: Option<usize>,
    /// Tokens per optimizer step (default: inherited).
    #[arg(long)]
    pub total_batch_size: Option<usize>,
    /// AdamW lr of the token embedding (default: inherited from the checkpoint's flags).
    #[arg(long)]
    pub embedding_lr: Option<f64>,
    /// AdamW lr of lm_head (default: inherited).
    #[arg(long)]
    pub unembedding_lr: Option<f64>,
    /// Muon lr of the block matrices (default: inherited).
    #[arg(long)]
    pub matrix_lr: Option<f64>,
    /// Initial lr as a fraction of the lrs above.
    #[arg(long, default_value_t = 0.8)]
    pub init_lr_frac: f64,
    /// Fraction of the run spent warming the lr up.
    #[arg(long, default_value_t = 0.0)]
    pub warmup_ratio: f64,
    /// Fraction of the run spent decaying the lr.
    #[arg(long, default_value_t = 0.5)]
    pub warmdown_ratio: f64,
    /// lr multiplier at the end of the warmdown.
    #[arg(long, default_value_t = 0.0)]
    pub final_lr_frac: f64,
    /// Evaluate validation bits per byte every this many steps (-1 = only at the end).
    #[arg(long, default_value_t = 200, allow_negative_numbers = true)]
    pub eval_every: i64,
    /// Tokens per validation evaluation.
    #[arg(long, default_value_t = 40 * 524_288)]
    pub eval_tokens: usize,
    /// ChatCORE every this many steps and at the end (-1 = never).
    #[arg(long, default_value_t = 200, allow_negative_numbers = true)]
    pub chatcore_every: i64,
    /// Problems per categorical task for ChatCORE (-1 = all).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub chatcore_max_cat: i64,
    /// Problems per generative task for ChatCORE.
    #[arg(long, default_value_t = 24)]
    pub chatcore_max_sample: usize,
    /// Copies of MMLU auxiliary_train in the mixture (teaches multiple choice).
    #[arg(long, default_value_t = 3)]
    pub mmlu_epochs: usize,
    /// Copies of GSM8K train in the mixture (teaches math and tool use).
    #[arg(long, default_value_t = 4)]
    pub gsm8k_epochs: usize,
    /// Save a checkpoint every this many steps (-1 = only at the end).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub save_every: i64,
    /// Resume from the latest complete checkpoint in chatsft_checkpoints/<tag>, if there is one.
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many steps of this invocation (schedules unchanged; resume later).
    #[arg(long)]
    pub max_steps_this_run: Option<usize>,
}

/// The checkpoint to start from: the requested source, else mid when it has a checkpoint, else base. Says which.
pub fn load_source(
    base: &Path,
    requested: Option<Source>,
    tag: Option<&str>,
    step: Option<usize>,
) -> Result<(Source, PathBuf, Loaded), String> {
    let source = match requested {
        Some(s) => s,
        None if checkpoint::find_largest_model(&Source::Mid.phase_dir(base)).is_some() => Source::Mid,
        None => {
            println!(
                "chat_sft: no mid checkpoint under {}: starting from the base model",
                Source::Mid.phase_dir(base).display()
            );
            Source::Base
        }
    };
    let phase = source.phase_dir(base);
    let tag = match tag {
        Some(t) => t.to_string(),
        None => checkpoint::find_largest_model(&phase).ok_or_else(|| {
            format!(
                "no checkpoints under {}: run {} first",
                phase.display(),
                match source {
                    Source::Base => "train_gpt",
                    Source::Mid => "mid_train (or pass -i base)",
                }
            )
        })?,
    };
    let dir = phase.join(&tag);
    let loaded = checkpoint::load(&dir, step, 0, None)?;
    println!(
        "chat_sft: starting from the {source:?} checkpoint {} step {} (-i {})",
        dir.display(),
        loaded.meta.step,
        if source == Source::Mid { "mid" } else { "base" }
    );
    Ok((source, dir, loaded))
}

/// Upstream's inheritance: a flag left unset takes the checkpoint's value (geometry from its metadata, lrs from
/// the flags it was trained with), else the fallback; a flag that overrides a different value says so.
fn inherit<T: Copy + PartialEq + std::fmt::Display + serde::de::DeserializeOwned>(
    name: &str,
    flag: Option<T>,
    from: &Value,
    fallback: T,
) -> T {
    let pretrained: Option<T> = from.get(name).and_then(|v| serde_json::from_value(v.clone()).ok());
    match (flag, pretrained) {
        (None, p) => {
            let v = p.unwrap_or(fallback);
            println!("chat_sft: inherited {name}={v} from the checkpoint");
            v
        }
        (Some(v), Some(p)) if v != p => {
            println!(
                "chat_sft: NOTE --{}={v} overrides the checkpoint's value {p}",
                name.replace('_', "-")
            );
            v
        }
        (Some(v), _) => v,
    }
}

/// Runs chat fine-tuning on the base directory `base`.
pub fn chat_sft(args: &SftArgs, base: &Path) -> Result<StageSummary, String> {
    let tok = Arc::new(load_tokenizer(base)?);
    let (source, src_dir, src) = load_source(base, args.source, args.model_tag.as_deref(), args.model_step)?;
    let meta = serde_json::to_value(&src.meta).map_err(|e| e.to_string())?;
    let user = &src.meta.user_config;
    let mut resolved = args.clone();
    resolved.source = Some(source);
    resolved.max_seq_len = Some(inherit("max_seq_len", args.max_seq_len, &meta, 2048));
    resolved.device_batch_size = Some(inherit("device_batch_size", args.device_batch_size, &meta, 32));
    resolved.total_batch_size = Some(inherit("total_batch_size", args.total_batch_size, &meta, 524_288));
    resolved.embedding_lr = Some(inherit("embedding_lr", args.embedding_lr, user, 0.3));
    resolved.unembedding_lr = Some(inherit("unembedding_lr", args.unembedding_lr, user, 0.004));
    resolved.matrix_lr = Some(inherit("matrix_lr", args.matrix_lr, user, 0.02));
    let t = resolved.max_seq_len.unwrap_or(2048);

    let optimizer_state = match (args.load_optimizer != 0, src.optim) {
        (true, Some(state)) => {
            println!(
                "chat_sft: optimizer warm-started from {} (momentum buffers only, lrs reset)",
                src_dir.display()
            );
            Some(state)
        }
        (true, None) => {
            println!(
                "chat_sft: WARNING no optimizer state in {}: starting with a fresh optimizer",
                src_dir.display()
            );
            None
        }
        (false, _) => None,
    };
    let mut model_config = src.meta.model_config.clone();
    model_config.sequence_len = t;
    let train = mixtures::build(
        base,
        &mixtures::sft_train(args.mmlu_epochs, args.gsm8k_epochs),
        "chat_sft mixture",
    )?;
    let val = mixtures::build_validation(base)?;
    let tag = src_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "d0".into());
    let stage = Stage {
        name: "chat_sft",
        out_dir: checkpoint::checkpoint_dir(base, "chatsft", &tag),
        device: args.device,
        model_config,
        params: src.params,
        optimizer_state,
        setup: SetupArgs {
            unembedding_lr: resolved.unembedding_lr.unwrap_or(0.004),
            embedding_lr: resolved.embedding_lr.unwrap_or(0.3),
            matrix_lr: resolved.matrix_lr.unwrap_or(0.02),
            weight_decay: 0.0,
            scalar_lr: SetupArgs::default().scalar_lr,
        },
        muon_weight_decay: 0.0,
        init_lr_frac: args.init_lr_frac,
        lr: LrShape::Sft {
            warmup: args.warmup_ratio,
            warmdown: args.warmdown_ratio,
            final_frac: args.final_lr_frac,
        },
        supervision: Supervision::Masked,
        device_batch_size: resolved.device_batch_size.unwrap_or(32),
        max_seq_len: t,
        total_batch_size: resolved.total_batch_size.unwrap_or(524_288),
        num_iterations: args.num_iterations,
        eval_every: args.eval_every,
        eval_tokens: args.eval_tokens,
        save_every: args.save_every,
        resume: args.resume,
        max_steps_this_run: args.max_steps_this_run,
        user_config: serde_json::to_value(&resolved).map_err(|e| e.to_string())?,
        train: Arc::new(Rendered {
            examples: train,
            tokenizer: tok.clone(),
        }),
        val: Arc::new(Rendered {
            examples: val,
            tokenizer: tok.clone(),
        }),
        bos: tok.bos_id(),
        token_bytes: tok.token_bytes(),
        hook: chatcore_hook(args, base, tok.clone(), resolved.device_batch_size.unwrap_or(32)),
    };
    stage::run(stage)
}

/// ChatCORE every `--chatcore-every` steps (not step 0) and at the end, on the tasks with data (spec §9.1:
/// categorical tasks on at most `--chatcore-max-cat` problems, generative ones on `--chatcore-max-sample`,
/// greedy, 512 new tokens, prompts batched by the device batch size).
fn chatcore_hook<'a>(args: &SftArgs, base: &Path, tok: Arc<Tokenizer>, batch: usize) -> Option<Hook<'a>> {
    if args.chatcore_every <= 0 {
        return None;
    }
    let every = args.chatcore_every as usize;
    let max_cat = usize::try_from(args.chatcore_max_cat).ok();
    let max_sample = Some(args.chatcore_max_sample);
    let base = base.to_path_buf();
    Some(Box::new(move |model, step, last| {
        if !(last || (step > 0 && step % every == 0)) {
            return Ok(None);
        }
        let results = chatcore_eval(model, &tok, &base, batch, max_cat, max_sample, 512)?;
        print!("{}", table(&results));
        let (core, cat) = (chatcore(&results), chatcore_cat(&results));
        let show = |v: Option<f64>| v.map_or("- (a task was skipped)".to_string(), |v| format!("{v:.4}"));
        println!(
            "step {step:05} | ChatCORE: {} | ChatCORE_cat: {}",
            show(core),
            show(cat)
        );
        Ok(Some(
            json!({"kind": "chatcore", "step": step, "chatcore": core, "chatcore_cat": cat, "tasks": results}),
        ))
    }))
}

/// Entry point of the binary.
pub fn main_with(args: &SftArgs) -> Result<StageSummary, String> {
    chat_sft(args, &base_dir())
}
