//! Evaluation during and after training: validation bits per byte (spec §8.1) and greedy samples of upstream's
//! fixed prompts through the KV-cached engine, on any [`ModelDevice`].

use crate::data::loader::{DataLoader, LoaderConfig};
use crate::data::shards::TokenShard;
use crate::device::infer::infer_view;
use crate::engine::{Engine, GenConfig, InferModel};
use crate::model::ModelDevice;
use crate::tokenizer::Tokenizer;
use std::sync::Arc;

/// The fixed prompts of upstream's sampling.
pub const SAMPLE_PROMPTS: [&str; 7] = [
    "The capital of France is",
    "The chemical symbol of gold is",
    "If yesterday was Friday, then tomorrow will be",
    "The opposite of hot is",
    "The planets of the solar system are:",
    "My favorite color is",
    "If 5*x + 3 = 13, then x is",
];

/// Validation bits per byte (spec §8.1) over `steps` batches of a fresh loader.
pub fn evaluate_bpb(
    model: &mut dyn ModelDevice,
    shards: Arc<[TokenShard]>,
    cfg: LoaderConfig,
    steps: usize,
    token_bytes: &[u32],
) -> Result<f64, String> {
    let (nats, bytes) = bpb_sums(model, shards, cfg, steps, token_bytes)?;
    Ok(if bytes == 0 {
        f64::INFINITY
    } else {
        nats / (std::f64::consts::LN_2 * bytes as f64)
    })
}

/// The sums behind bits per byte: nats of every target token that stands for at least one byte, and those
/// bytes (summed over ranks before dividing).
pub fn bpb_sums(
    model: &mut dyn ModelDevice,
    shards: Arc<[TokenShard]>,
    cfg: LoaderConfig,
    steps: usize,
    token_bytes: &[u32],
) -> Result<(f64, u64), String> {
    let mut loader = DataLoader::new(shards, cfg).map_err(|e| e.to_string())?;
    let (mut nats, mut bytes) = (0f64, 0u64);
    for _ in 0..steps {
        let batch = loader.next_batch();
        let targets: Vec<i32> = batch.targets.iter().map(|&y| y as i32).collect();
        let losses = model.token_losses(&batch.inputs, &targets, cfg.batch_size, cfg.seq_len)?;
        for (&y, &l) in batch.targets.iter().zip(&losses) {
            let nb = token_bytes.get(y as usize).copied().unwrap_or(0);
            if nb > 0 {
                nats += l as f64;
                bytes += nb as u64;
            }
        }
    }
    Ok((nats, bytes))
}

/// Greedy continuations of `max_tokens` tokens of [`SAMPLE_PROMPTS`] (after `<|bos|>`) through the KV-cached
/// engine, each prompt followed by its continuation (upstream's `generate_batch` at temperature 0: a
/// continuation ends early at `<|bos|>` or `<|assistant_end|>`).
pub fn sample_prompts<M: InferModel>(engine: &Engine<M>, max_tokens: usize) -> Result<Vec<String>, String> {
    let tok = &engine.tokenizer;
    let greedy = GenConfig {
        num_samples: 1,
        max_tokens: Some(max_tokens),
        temperature: 0.0,
        top_k: None,
        seed: 42,
    };
    SAMPLE_PROMPTS
        .iter()
        .map(|prompt| {
            let mut ids = vec![tok.bos_id()];
            ids.extend(tok.encode_ordinary(prompt));
            let start = ids.len();
            let (seqs, _) = engine.generate_batch(&ids, &greedy)?;
            Ok(format!("{prompt}{}", tok.decode_lossy(&seqs[0][start..])))
        })
        .collect()
}

/// [`sample_prompts`] on the current weights of `model` ([`infer_view`]: KV-cached on every device).
pub fn sample_model(model: &dyn ModelDevice, tok: &Tokenizer, max_tokens: usize) -> Result<Vec<String>, String> {
    sample_prompts(&Engine::new(infer_view(model)?, tok.clone()), max_tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use crate::data::loader::LoaderConfig;
    use crate::data::shards::write_shard;
    use crate::optim::StepSettings;
    use crate::params::ParamTable;
    use crate::safetensors::Tensor;
    use std::collections::BTreeMap;

    /// A device whose per-token loss is the target id + 1 in nats, so bpb can be computed by hand.
    struct Stub(ModelConfig, ParamTable);
    impl ModelDevice for Stub {
        fn config(&self) -> &ModelConfig {
            &self.0
        }
        fn device_name(&self) -> String {
            "stub".into()
        }
        fn table(&self) -> &ParamTable {
            &self.1
        }
        fn forward_backward(&mut self, _: &[u32], _: &[i32], _: usize, _: usize, _: f32) -> Result<f32, String> {
            unreachable!()
        }
        fn token_losses(&mut self, _: &[u32], targets: &[i32], _: usize, _: usize) -> Result<Vec<f32>, String> {
            Ok(targets.iter().map(|&y| y as f32 + 1.0).collect())
        }
        fn last_logits(&mut self, _: &[u32], _: usize, _: usize) -> Result<Vec<f32>, String> {
            unreachable!()
        }
        fn logits(&mut self, _: &[u32], _: usize, _: usize) -> Result<Vec<f32>, String> {
            unreachable!()
        }
        fn grads(&mut self) -> Result<Vec<f32>, String> {
            unreachable!()
        }
        fn step(&mut self, _: &StepSettings) -> Result<(), String> {
            Ok(())
        }
        fn params(&self) -> Result<Vec<f32>, String> {
            Ok(Vec::new())
        }
        fn optimizer_state(&mut self) -> Result<BTreeMap<String, Tensor>, String> {
            Ok(BTreeMap::new())
        }
        fn load_optimizer_state(&mut self, _: &BTreeMap<String, Tensor>) -> Result<(), String> {
            Ok(())
        }
    }

    #[test]
    fn bits_per_byte_skips_zero_byte_tokens() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s.tokens");
        // BOS = 0 has 0 bytes; tokens 1..=3 have 1, 2 and 3 bytes.
        write_shard(&path, &[vec![0, 1, 2], vec![0, 3]], 4, 0).unwrap();
        let shards: Arc<[TokenShard]> = vec![TokenShard::open(&path).unwrap()].into();
        let cfg = ModelConfig {
            sequence_len: 4,
            vocab_size: 4,
            n_layer: 1,
            n_head: 1,
            n_kv_head: 1,
            n_embd: 32,
            window_pattern: "L".into(),
        };
        let mut dev = Stub(cfg.clone(), ParamTable::new(&cfg));
        let lc = LoaderConfig {
            batch_size: 1,
            seq_len: 4,
            ..LoaderConfig::default()
        };
        let token_bytes = [0, 1, 2, 3];
        let bpb = evaluate_bpb(&mut dev, shards, lc, 1, &token_bytes).unwrap();
        // Best fit packs the row [0 1 2 0 3]: targets 1, 2, 0, 3 with losses 2, 3, 1, 4; the BOS target has no
        // bytes and is skipped: 9 nats over 1 + 2 + 3 = 6 bytes.
        assert!((bpb - 1.5 / std::f64::consts::LN_2).abs() < 1e-9, "{bpb}");
    }
}
