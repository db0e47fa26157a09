//! Loading a chat model for chat_cli / chat_web: the checkpoint of a source (base, mid, sft, rl) plus the
//! tokenizer.

use std::path::{Path, PathBuf};

use super::Engine;
use crate::checkpoint;
use crate::config::ModelConfig;
use crate::cpu::infer::CpuInfer;
use crate::tokenizer::{load_tokenizer, Tokenizer};

/// The checkpoint phase directory of a source.
fn phase_dir_name(source: &str) -> Result<&'static str, String> {
    match source {
        "base" => Ok("base_checkpoints"),
        "mid" => Ok("mid_checkpoints"),
        "sft" => Ok("chatsft_checkpoints"),
        "rl" => Ok("chatrl_checkpoints"),
        other => Err(format!("unknown source {other:?}: choose base, mid, sft or rl")),
    }
}

/// Which checkpoint a loaded engine came from.
#[derive(Clone, Debug)]
pub struct ModelCard {
    /// base, sft or rl (after the sft -> base fallback).
    pub source: String,
    /// The model tag (checkpoint directory name, e.g. d20).
    pub tag: String,
    pub step: usize,
    /// The checkpoint directory.
    pub dir: PathBuf,
    pub n_layer: usize,
    pub n_embd: usize,
    pub context: usize,
}

impl std::fmt::Display for ModelCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} model {} step {} ({} layers, {} dim, context {})",
            self.source, self.tag, self.step, self.n_layer, self.n_embd, self.context
        )
    }
}

/// Loads the engine for `source` from `base`. When the source is sft and no sft checkpoint exists yet, falls back
/// to the base checkpoints and says so in the returned notice. Returns (engine, its checkpoint, notice).
pub fn load_engine(
    base: &Path,
    source: &str,
    model_tag: Option<&str>,
    step: Option<usize>,
) -> Result<(Engine<CpuInfer>, ModelCard, Option<String>), String> {
    let (cfg, params, tok, card, notice) = load_parts(base, source, model_tag, step)?;
    let model = CpuInfer::new(&cfg, params)?;
    Ok((Engine::new(model, tok), card, notice))
}

/// What [`load_engine`] loads, before a model is built from it: (configuration, parameters, tokenizer,
/// checkpoint card, notice).
pub type Parts = (ModelConfig, Vec<f32>, Tokenizer, ModelCard, Option<String>);

/// The checkpoint and tokenizer [`load_engine`] builds its engine from.
pub fn load_parts(base: &Path, source: &str, model_tag: Option<&str>, step: Option<usize>) -> Result<Parts, String> {
    let mut source = source;
    let mut notice = None;
    let mut phase = base.join(phase_dir_name(source)?);
    if source == "sft" && checkpoint::find_largest_model(&phase).is_none() {
        notice = Some(format!(
            "no sft checkpoint under {}: using the base model instead (pass -i base to silence this)",
            phase.display()
        ));
        source = "base";
        phase = base.join(phase_dir_name(source)?);
    }
    let tag = match model_tag {
        Some(t) => t.to_string(),
        None => checkpoint::find_largest_model(&phase).ok_or_else(|| {
            format!(
                "no {source} checkpoints under {}: train a model first (train_gpt)",
                phase.display()
            )
        })?,
    };
    let dir = phase.join(&tag);
    let loaded = checkpoint::load(&dir, step, 0, None)?;
    let tok = load_tokenizer(base)?;
    let cfg = loaded.meta.model_config.clone();
    if tok.vocab_size() != cfg.vocab_size {
        return Err(format!(
            "the tokenizer has {} tokens but checkpoint {} was trained with {}",
            tok.vocab_size(),
            dir.display(),
            cfg.vocab_size
        ));
    }
    let card = ModelCard {
        source: source.to_string(),
        tag,
        step: loaded.meta.step,
        dir,
        n_layer: cfg.n_layer,
        n_embd: cfg.n_embd,
        context: cfg.sequence_len,
    };
    Ok((cfg, loaded.params, tok, card, notice))
}
