//! The model configuration and everything derived from it: the `--depth` dial, sliding windows, which layers
//! carry value embeddings, parameter counts and FLOPs per token (upstream `GPTConfig`, `build_model_meta`,
//! `_compute_window_sizes`, `num_scaling_params`, `estimate_flops`).

use serde::{Deserialize, Serialize};

/// Upstream `GPTConfig`. Field names match upstream's checkpoint metadata (`model_config`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub sequence_len: usize,
    pub vocab_size: usize,
    pub n_layer: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (GQA when smaller than `n_head`).
    pub n_kv_head: usize,
    pub n_embd: usize,
    /// Tiled over the layers ('S' short window, 'L' full context); the last layer is always 'L'.
    #[serde(default = "default_window_pattern")]
    pub window_pattern: String,
}

fn default_window_pattern() -> String {
    // Upstream patches checkpoints without a pattern to full attention everywhere.
    "L".to_string()
}

/// Channels of the normalized input that feed the value-embedding gate.
pub const VE_GATE_CHANNELS: usize = 12;
/// Channels of the embedding that feed the smear gate.
pub const SMEAR_CHANNELS: usize = 24;
/// Logit softcap: `15 * tanh(logits / 15)` ([`softcap`]; `SOFTCAP` in `cuda/kernel_common.cuh`).
pub const SOFTCAP: f32 = 15.0;

/// The softcapped logit: `SOFTCAP · tanh(z / SOFTCAP)`, the one definition the CPU reference, inference and
/// the kernel devices' logits use (the kernel computes the same in `cuda/cross_entropy.cu`).
pub fn softcap(z: f32) -> f32 {
    SOFTCAP * (z / SOFTCAP).tanh()
}
/// RoPE base.
pub const ROPE_BASE: f32 = 100_000.0;
/// Q and K are scaled by this after QK-norm.
pub const QK_SCALE: f32 = 1.2;

impl ModelConfig {
    /// The single dial: `n_embd = ceil(depth * aspect_ratio / head_dim) * head_dim`, heads of `head_dim`.
    pub fn from_depth(
        depth: usize,
        aspect_ratio: usize,
        head_dim: usize,
        sequence_len: usize,
        vocab_size: usize,
        window_pattern: &str,
    ) -> ModelConfig {
        let base_dim = depth * aspect_ratio;
        let n_embd = base_dim.div_ceil(head_dim) * head_dim;
        let n_head = n_embd / head_dim;
        ModelConfig {
            sequence_len,
            vocab_size,
            n_layer: depth,
            n_head,
            n_kv_head: n_head,
            n_embd,
            window_pattern: window_pattern.to_string(),
        }
    }

    /// Checks the invariants the model relies on; the message says which one failed.
    pub fn validate(&self) -> Result<(), String> {
        let fail = |m: String| Err(format!("invalid model config {self:?}: {m}"));
        if self.n_layer == 0 || self.n_head == 0 || self.n_kv_head == 0 || self.n_embd == 0 {
            return fail("n_layer, n_head, n_kv_head and n_embd must be positive".into());
        }
        if self.vocab_size == 0 || self.sequence_len == 0 {
            return fail("vocab_size and sequence_len must be positive".into());
        }
        if self.n_embd % self.n_head != 0 {
            return fail(format!(
                "n_embd {} is not a multiple of n_head {}",
                self.n_embd, self.n_head
            ));
        }
        if self.n_head % self.n_kv_head != 0 {
            return fail(format!(
                "n_head {} is not a multiple of n_kv_head {}",
                self.n_head, self.n_kv_head
            ));
        }
        if self.head_dim() % 2 != 0 {
            return fail(format!("head_dim {} must be even for RoPE", self.head_dim()));
        }
        if self.n_embd < SMEAR_CHANNELS || self.n_embd < VE_GATE_CHANNELS {
            return fail(format!("n_embd must be at least {SMEAR_CHANNELS} (smear gate input)"));
        }
        if self.window_pattern.is_empty() || !self.window_pattern.chars().all(|c| c == 'S' || c == 'L') {
            return fail(format!(
                "window_pattern {:?} must be a non-empty string of 'S' and 'L'",
                self.window_pattern
            ));
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Vocabulary rounded up to a multiple of 64; embeddings and the head use it, logits are sliced back.
    pub fn padded_vocab(&self) -> usize {
        self.vocab_size.div_ceil(64) * 64
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_head * self.head_dim()
    }

    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim()
    }

    pub fn mlp_dim(&self) -> usize {
        4 * self.n_embd
    }

    /// The short window: `ceil(ceil(sequence_len / 4) / 128) * 128` (512 for 2048).
    pub fn short_window(&self) -> usize {
        self.sequence_len.div_ceil(4).div_ceil(128) * 128
    }

    /// Left window per layer: a query at position p sees keys in `[p - window, p]`.
    pub fn window_sizes(&self) -> Vec<usize> {
        let pattern: Vec<char> = self.window_pattern.chars().collect();
        (0..self.n_layer)
            .map(|i| {
                let c = if i == self.n_layer - 1 {
                    'L'
                } else {
                    pattern[i % pattern.len()]
                };
                if c == 'S' {
                    self.short_window()
                } else {
                    self.sequence_len
                }
            })
            .collect()
    }

    /// Layer i has a value embedding iff `i % 2 == (n_layer - 1) % 2`: alternate layers, the last one included.
    pub fn has_ve(&self, layer: usize) -> bool {
        layer % 2 == (self.n_layer - 1) % 2
    }

    pub fn ve_layers(&self) -> Vec<usize> {
        (0..self.n_layer).filter(|&i| self.has_ve(i)).collect()
    }

    /// Index into the stacked value embeddings for a layer that has one.
    pub fn ve_index(&self, layer: usize) -> Option<usize> {
        self.has_ve(layer)
            .then(|| self.ve_layers().iter().position(|&l| l == layer).unwrap_or(0))
    }

    /// The block whose output is subtracted (scaled by `backout_lambda`) before the final norm.
    pub fn backout_layer(&self) -> usize {
        self.n_layer / 2
    }

    pub fn counts(&self) -> ParamCounts {
        let (c, l, vp) = (self.n_embd, self.n_layer, self.padded_vocab());
        let n_ve = self.ve_layers().len();
        let per_layer = self.q_dim() * c + 2 * self.kv_dim() * c + c * c + 2 * self.mlp_dim() * c;
        let ve_gates = n_ve * self.n_kv_head * VE_GATE_CHANNELS;
        let wte = vp * c;
        let value_embeds = n_ve * vp * self.kv_dim();
        let lm_head = vp * c;
        let transformer_matrices = l * per_layer + ve_gates;
        let scalars = 2 * l + SMEAR_CHANNELS + 2;
        ParamCounts {
            wte,
            value_embeds,
            lm_head,
            transformer_matrices,
            scalars,
            total: wte + value_embeds + lm_head + transformer_matrices + scalars,
        }
    }

    /// Parameters used for the training horizon: transformer matrices + lm_head.
    pub fn num_scaling_params(&self) -> usize {
        let c = self.counts();
        c.transformer_matrices + c.lm_head
    }

    /// Weights of every upstream `Linear`: block matrices incl. ve gates, lm_head and the smear gate.
    pub fn num_matmul_params(&self) -> usize {
        let c = self.counts();
        c.transformer_matrices + c.lm_head + SMEAR_CHANNELS
    }

    /// Training FLOPs per token (forward + backward), PaLM-style with the full window.
    pub fn flops_per_token(&self) -> f64 {
        let hd = (self.n_head * self.head_dim()) as f64;
        let attn: f64 = self
            .window_sizes()
            .iter()
            .map(|&w| 12.0 * hd * w.min(self.sequence_len) as f64)
            .sum();
        6.0 * self.num_matmul_params() as f64 + attn
    }

    /// Decode FLOPs for one token at context length `c`.
    pub fn decode_flops(&self, context: usize) -> f64 {
        let hd = (self.n_head * self.head_dim()) as f64;
        let attn: f64 = self
            .window_sizes()
            .iter()
            .map(|&w| 4.0 * hd * context.min(w) as f64)
            .sum();
        2.0 * self.num_matmul_params() as f64 + attn
    }
}

/// Upstream `num_scaling_params()` groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamCounts {
    pub wte: usize,
    pub value_embeds: usize,
    pub lm_head: usize,
    pub transformer_matrices: usize,
    pub scalars: usize,
    pub total: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth(d: usize) -> ModelConfig {
        ModelConfig::from_depth(d, 64, 128, 2048, 32768, "SSSL")
    }

    #[test]
    fn depth_table_matches_spec() {
        // (depth, C, heads, VE layers, wte, value_embeds, transformer_matrices, total, scaling, flops)
        let table = [
            (
                12,
                768,
                6,
                6,
                25_165_824,
                150_994_944,
                84_935_088,
                286_261_730,
                110_100_912,
                7.597e8,
            ),
            (
                16,
                1024,
                8,
                8,
                33_554_432,
                268_435_456,
                201_327_360,
                536_871_738,
                234_881_792,
                1.585e9,
            ),
            (
                20,
                1280,
                10,
                10,
                41_943_040,
                419_430_400,
                393_217_200,
                896_533_746,
                435_160_240,
                2.886e9,
            ),
            (
                24,
                1536,
                12,
                12,
                50_331_648,
                603_979_776,
                679_478_976,
                1_384_122_122,
                729_810_624,
                4.775e9,
            ),
            (
                26,
                1664,
                13,
                13,
                54_525_952,
                708_837_376,
                863_897_580,
                1_681_786_938,
                918_423_532,
                5.991e9,
            ),
        ];
        for (d, c, h, nve, wte, ve, tm, total, scaling, flops) in table {
            let cfg = depth(d);
            cfg.validate().unwrap();
            assert_eq!(cfg.n_embd, c, "d{d}");
            assert_eq!(cfg.n_head, h, "d{d}");
            assert_eq!(cfg.ve_layers().len(), nve, "d{d}");
            let counts = cfg.counts();
            assert_eq!(counts.wte, wte, "d{d}");
            assert_eq!(counts.lm_head, wte, "d{d}");
            assert_eq!(counts.value_embeds, ve, "d{d}");
            assert_eq!(counts.transformer_matrices, tm, "d{d}");
            assert_eq!(counts.total, total, "d{d}");
            assert_eq!(cfg.num_scaling_params(), scaling, "d{d}");
            let f = cfg.flops_per_token();
            assert!((f - flops).abs() / flops < 5e-4, "d{d}: {f} vs {flops}");
        }
    }

    #[test]
    fn windows_follow_pattern_and_last_layer_is_long() {
        let d26 = depth(26);
        let w = d26.window_sizes();
        assert_eq!(d26.short_window(), 512);
        assert_eq!(w.iter().filter(|&&x| x == 2048).count(), 7);
        assert_eq!(w[25], 2048);
        let d24 = depth(24).window_sizes();
        assert_eq!(d24.iter().filter(|&&x| x == 2048).count(), 6);
        // T=256 and T=320 both give a short window of 128 (upstream's -(-T // 4 // 128) * 128).
        let mut small = depth(4);
        small.sequence_len = 256;
        assert_eq!(small.short_window(), 128);
        small.sequence_len = 320;
        assert_eq!(small.short_window(), 128);
        small.window_pattern = "SL".into();
        small.n_layer = 5;
        assert_eq!(small.window_sizes(), vec![128, 320, 128, 320, 320]);
    }

    #[test]
    fn value_embedding_layers_alternate_ending_at_last() {
        let mut cfg = depth(4);
        assert_eq!(cfg.ve_layers(), vec![1, 3]);
        cfg.n_layer = 5;
        assert_eq!(cfg.ve_layers(), vec![0, 2, 4]);
        assert_eq!(cfg.ve_index(4), Some(2));
        assert_eq!(cfg.ve_index(1), None);
        cfg.n_layer = 1;
        assert_eq!(cfg.ve_layers(), vec![0]);
    }

    #[test]
    fn padded_vocab_and_validation() {
        let mut cfg = depth(4);
        cfg.vocab_size = 700;
        assert_eq!(cfg.padded_vocab(), 704);
        cfg.n_kv_head = 4;
        assert!(cfg.validate().unwrap_err().contains("n_kv_head"));
        cfg.n_kv_head = 1;
        cfg.window_pattern = "SXL".into();
        assert!(cfg.validate().unwrap_err().contains("window_pattern"));
    }
}
