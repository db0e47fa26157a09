//! `mid_train`: midtraining (upstream's `scripts/mid_train.py` as of `1ddaad1^`, midtraining report §2). The
//! base model continues on a conversation mixture (SmolTalk, MMLU auxiliary_train, GSM8K, the identity
//! conversations twice, the spelling tasks) packed best-fit, trained on every token but the padding, with a
//! fresh optimizer; lr 1 until 80% of the mixture, then linearly to 0. Checkpoints: `mid_checkpoints/<tag>/`.

use super::mixtures::{self, Rendered};
use super::stage::{self, LrShape, Stage, StageSummary};
use crate::backend::Backend;
use crate::checkpoint;
use crate::common::base_dir;
use crate::data::sft::Supervision;
use crate::optim::SetupArgs;
use crate::tokenizer::load_tokenizer;
use clap::Parser;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// Midtrain a base model on conversations (upstream mid_train's flags).
#[derive(Parser, Clone, Debug, Serialize, Deserialize)]
#[command(
    name = "mid_train",
    about = "Midtrain a base checkpoint on a conversation mixture",
    args_override_self = true
)]
pub struct MidArgs {
    /// Run name (recorded in the metadata; "dummy" = unnamed).
    #[arg(long, default_value = "dummy")]
    pub run: String,
    /// Where the model computes.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    pub device: Backend,
    /// Base checkpoint tag to load (default: the largest d<N>); also names the output directory.
    #[arg(long)]
    pub model_tag: Option<String>,
    /// Base checkpoint step to load (default: the latest).
    #[arg(long)]
    pub model_step: Option<usize>,
    /// Optimizer steps (-1 = one pass over the mixture).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub num_iterations: i64,
    /// Context length of the packed rows.
    #[arg(long, default_value_t = 2048)]
    pub max_seq_len: usize,
    /// Rows per micro-batch.
    #[arg(long, default_value_t = 32)]
    pub device_batch_size: usize,
    /// Tokens per optimizer step.
    #[arg(long, default_value_t = 524_288)]
    pub total_batch_size: usize,
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
    /// Initial lr as a fraction of the lrs above.
    #[arg(long, default_value_t = 1.0)]
    pub init_lr_frac: f64,
    /// Evaluate validation bits per byte every this many steps (-1 = only at the end).
    #[arg(long, default_value_t = 150, allow_negative_numbers = true)]
    pub eval_every: i64,
    /// Tokens per validation evaluation.
    #[arg(long, default_value_t = 20 * 524_288)]
    pub eval_tokens: usize,
    /// Save a checkpoint every this many steps (-1 = only at the end).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub save_every: i64,
    /// Resume from the latest complete checkpoint in mid_checkpoints/<tag>, if there is one.
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many steps of this invocation (schedules unchanged; resume later).
    #[arg(long)]
    pub max_steps_this_run: Option<usize>,
    /// Train without writing a checkpoint.
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs midtraining on the base directory `base`.
pub fn mid_train(args: &MidArgs, base: &Path) -> Result<StageSummary, String> {
    let tok = Arc::new(load_tokenizer(base)?);
    let phase = base.join("base_checkpoints");
    let tag = match &args.model_tag {
        Some(t) => t.clone(),
        None => checkpoint::find_largest_model(&phase)
            .ok_or_else(|| format!("no base checkpoints under {}: run train_gpt first", phase.display()))?,
    };
    let src_dir = phase.join(&tag);
    let src = checkpoint::load(&src_dir, args.model_step, 0, None)?;
    println!(
        "mid_train: starting from the base checkpoint {} step {}",
        src_dir.display(),
        src.meta.step
    );
    if src.meta.device_batch_size < args.device_batch_size {
        println!(
            "FOOTGUN WARNING: base model training used device_batch_size {}, did you pass in a good \
             --device-batch-size to this script?",
            src.meta.device_batch_size
        );
    }
    let mut model_config = src.meta.model_config.clone();
    model_config.sequence_len = args.max_seq_len;
    let train = mixtures::build(base, &mixtures::mid_train(), "mid_train mixture")?;
    let val = mixtures::build_validation(base)?;
    let out_dir = if args.dry_run {
        std::env::temp_dir().join(format!("nanochat-mid-dry-run-{}", std::process::id()))
    } else {
        checkpoint::checkpoint_dir(base, "mid", &tag)
    };
    let stage = Stage {
        name: "mid_train",
        out_dir,
        device: args.device,
        model_config,
        params: src.params,
        optimizer_state: None,
        setup: SetupArgs {
            unembedding_lr: args.unembedding_lr,
            embedding_lr: args.embedding_lr,
            matrix_lr: args.matrix_lr,
            weight_decay: args.weight_decay,
            scalar_lr: SetupArgs::default().scalar_lr,
        },
        muon_weight_decay: args.weight_decay,
        init_lr_frac: args.init_lr_frac,
        lr: LrShape::Mid,
        supervision: Supervision::All,
        device_batch_size: args.device_batch_size,
        max_seq_len: args.max_seq_len,
        total_batch_size: args.total_batch_size,
        num_iterations: args.num_iterations,
        eval_every: args.eval_every,
        eval_tokens: args.eval_tokens,
        save_every: if args.dry_run { -1 } else { args.save_every },
        resume: args.resume,
        max_steps_this_run: args.max_steps_this_run,
        user_config: serde_json::to_value(args).map_err(|e| e.to_string())?,
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
        hook: None,
    };
    let dry_dir = args.dry_run.then(|| stage.out_dir.clone());
    let summary = stage::run(stage);
    if let Some(dir) = dry_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    summary
}

/// Entry point of the binary.
pub fn main_with(args: &MidArgs) -> Result<StageSummary, String> {
    mid_train(args, &base_dir())
}
