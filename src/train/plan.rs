//! The single dial (spec §3.2): from `--depth` and a few flags, the model, the total batch, learning rates,
//! weight decay, the horizon and gradient accumulation, as upstream base_train derives them.

use crate::config::ModelConfig;
use crate::optim::SetupArgs;
use serde::{Deserialize, Serialize};

/// Reference batch (tokens) at the reference depth 12.
pub const B_REF: f64 = 524_288.0;
/// Reference depth whose data budget anchors the batch-size and weight-decay scaling.
pub const DEPTH_REF: usize = 12;

/// The inputs of the plan: base_train's flags that shape it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanArgs {
    pub depth: usize,
    pub aspect_ratio: usize,
    pub head_dim: usize,
    pub max_seq_len: usize,
    pub window_pattern: String,
    /// Key/value heads (grouped-query attention); 0 = as many as query heads (upstream's base_train).
    pub n_kv_head: usize,
    pub vocab_size: usize,
    /// Explicit horizon (highest precedence); -1 = derive.
    pub num_iterations: i64,
    /// Horizon from a FLOPs budget; -1 = unused.
    pub target_flops: f64,
    /// Horizon from tokens per scaling parameter (the default).
    pub target_param_data_ratio: f64,
    pub device_batch_size: usize,
    /// Tokens per optimizer step; -1 = automatic (Power Lines, B ∝ D^0.383).
    pub total_batch_size: i64,
    pub embedding_lr: f64,
    pub unembedding_lr: f64,
    pub matrix_lr: f64,
    pub scalar_lr: f64,
    pub weight_decay: f64,
    pub world_size: usize,
}

/// Everything the training loop needs from the dial.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub model: ModelConfig,
    pub num_scaling_params: usize,
    pub flops_per_token: f64,
    pub target_tokens: usize,
    /// Tokens per optimizer step.
    pub total_batch_size: usize,
    pub batch_lr_scale: f64,
    /// Muon weight decay after batch and data scaling (the schedule decays it to 0).
    pub weight_decay_scaled: f64,
    pub num_iterations: usize,
    pub grad_accum_steps: usize,
    /// The arguments of `setup_optimizer` (lrs already multiplied by `batch_lr_scale`).
    pub optimizer: SetupArgs,
}

/// The model of `depth` with `n_kv_head` key/value heads (0 = one per query head) and its target tokens.
fn scaling_tokens(args: &PlanArgs, depth: usize, n_kv_head: usize) -> (ModelConfig, f64) {
    let mut cfg = ModelConfig::from_depth(
        depth,
        args.aspect_ratio,
        args.head_dim,
        args.max_seq_len,
        args.vocab_size,
        &args.window_pattern,
    );
    if n_kv_head > 0 {
        cfg.n_kv_head = n_kv_head;
    }
    let tokens = args.target_param_data_ratio * cfg.num_scaling_params() as f64;
    (cfg, tokens)
}

impl Plan {
    pub fn derive(args: &PlanArgs) -> Result<Plan, String> {
        if args.depth == 0 || args.device_batch_size == 0 || args.max_seq_len == 0 || args.world_size == 0 {
            return Err("depth, device batch size, sequence length and world size must be positive".into());
        }
        let (model, target) = scaling_tokens(args, args.depth, args.n_kv_head);
        model.validate()?;
        let target_tokens = target as usize;
        // The reference model is upstream's d12, one key/value head per query head.
        let (_, d_ref) = scaling_tokens(args, DEPTH_REF, 0);
        let total_batch_size = if args.total_batch_size > 0 {
            args.total_batch_size as usize
        } else {
            let b = B_REF * (target_tokens as f64 / d_ref).powf(0.383);
            1usize << (b.log2().round() as u32)
        };
        let ratio = total_batch_size as f64 / B_REF;
        let batch_lr_scale = ratio.sqrt();
        let weight_decay_scaled = args.weight_decay * ratio.sqrt() * (d_ref / target_tokens as f64);
        let flops_per_token = model.flops_per_token();
        let num_iterations = if args.num_iterations > 0 {
            args.num_iterations as usize
        } else if args.target_flops > 0.0 {
            (args.target_flops / (flops_per_token * total_batch_size as f64)).round() as usize
        } else {
            target_tokens / total_batch_size
        };
        if num_iterations == 0 {
            return Err(format!(
                "the horizon is 0 steps ({target_tokens} target tokens at {total_batch_size} tokens per step): \
                 raise --target-param-data-ratio or set --num-iterations"
            ));
        }
        let per_fwdbwd = args.device_batch_size * args.max_seq_len * args.world_size;
        if total_batch_size % per_fwdbwd != 0 {
            return Err(format!(
                "total batch {total_batch_size} tokens is not a multiple of device batch {} x sequence {} x {} ranks \
                 = {per_fwdbwd}: change --device-batch-size or --total-batch-size",
                args.device_batch_size, args.max_seq_len, args.world_size
            ));
        }
        let optimizer = SetupArgs {
            unembedding_lr: args.unembedding_lr * batch_lr_scale,
            embedding_lr: args.embedding_lr * batch_lr_scale,
            matrix_lr: args.matrix_lr * batch_lr_scale,
            weight_decay: weight_decay_scaled,
            scalar_lr: args.scalar_lr * batch_lr_scale,
        };
        Ok(Plan {
            num_scaling_params: model.num_scaling_params(),
            model,
            flops_per_token,
            target_tokens,
            total_batch_size,
            batch_lr_scale,
            weight_decay_scaled,
            num_iterations,
            grad_accum_steps: total_batch_size / per_fwdbwd,
            optimizer,
        })
    }

    /// The plan as printed at the start of a run.
    pub fn describe(&self) -> String {
        let m = &self.model;
        let total_tokens = self.total_batch_size as f64 * self.num_iterations as f64;
        format!(
            "model: depth {} n_embd {} heads {} (kv {}) head_dim {} seq {} vocab {} (padded {}) windows {:?}\n\
             parameters: {} total, {} scaling; FLOPs/token {:.4e}\n\
             batch: {} tokens/step (2^{:.0}), grad accum {}, batch lr scale {:.4}, weight decay {:.4}\n\
             horizon: {} steps, {:.3e} tokens, {:.3e} FLOPs, tokens:params {:.2}",
            m.n_layer,
            m.n_embd,
            m.n_head,
            m.n_kv_head,
            m.head_dim(),
            m.sequence_len,
            m.vocab_size,
            m.padded_vocab(),
            m.window_sizes(),
            m.counts().total,
            self.num_scaling_params,
            self.flops_per_token,
            self.total_batch_size,
            (self.total_batch_size as f64).log2(),
            self.grad_accum_steps,
            self.batch_lr_scale,
            self.weight_decay_scaled,
            self.num_iterations,
            total_tokens,
            total_tokens * self.flops_per_token,
            total_tokens / self.num_scaling_params as f64,
        )
    }
}

impl PlanArgs {
    /// base_train's defaults for `depth` on `world_size` ranks.
    pub fn defaults(depth: usize, world_size: usize) -> PlanArgs {
        PlanArgs {
            depth,
            aspect_ratio: 64,
            head_dim: 128,
            max_seq_len: 2048,
            window_pattern: "SSSL".into(),
            n_kv_head: 0,
            vocab_size: 32768,
            num_iterations: -1,
            target_flops: -1.0,
            target_param_data_ratio: 12.0,
            device_batch_size: 32,
            total_batch_size: -1,
            embedding_lr: 0.3,
            unembedding_lr: 0.008,
            matrix_lr: 0.02,
            scalar_lr: 0.5,
            weight_decay: 0.28,
            world_size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spec §3.2 table (ratio 12, 8 GPUs): depth, dbs, B, batch_lr_scale, wd_scaled, N, grad accum.
    #[test]
    #[allow(clippy::approx_constant)] // the printed values of the spec table and speedrun (√2, 1/√2 to 4-5 places)
    fn plans_match_the_spec_table() {
        let table = [
            (12, 32, 1 << 19, 1.0, 0.2800, 2520, 1),
            (16, 32, 1 << 19, 1.0, 0.1313, 5376, 1),
            (20, 16, 1 << 20, 1.4142, 0.1002, 4980, 4),
            (24, 16, 1 << 20, 1.4142, 0.0597, 8352, 4),
            (26, 16, 1 << 20, 1.4142, 0.0475, 10510, 4),
        ];
        for (depth, dbs, b, scale, wd, n, accum) in table {
            let mut args = PlanArgs::defaults(depth, 8);
            args.device_batch_size = dbs;
            let p = Plan::derive(&args).unwrap();
            assert_eq!(p.total_batch_size, b, "d{depth}");
            assert!((p.batch_lr_scale - scale).abs() < 1e-4, "d{depth}");
            assert!(
                (p.weight_decay_scaled - wd).abs() < 1e-4,
                "d{depth}: {}",
                p.weight_decay_scaled
            );
            assert_eq!(p.num_iterations, n, "d{depth}");
            assert_eq!(p.grad_accum_steps, accum, "d{depth}");
            let text = p.describe();
            assert!(text.contains(&format!("{n} steps")), "{text}");
        }
        // d26 train FLOPs 6.60e19; d24 speedrun (ratio 8): 5568 steps.
        let p = Plan::derive(&PlanArgs::defaults(26, 8)).unwrap();
        let flops = p.flops_per_token * (p.total_batch_size * p.num_iterations) as f64;
        assert!((flops / 6.60e19 - 1.0).abs() < 5e-3, "{flops:e}");
        let mut sr = PlanArgs::defaults(24, 8);
        sr.target_param_data_ratio = 8.0;
        sr.device_batch_size = 16;
        let p = Plan::derive(&sr).unwrap();
        assert_eq!(p.num_iterations, 5568);
        // Peak lrs of the d24 speedrun: Muon 0.02828, x0 (scalar) 0.7071.
        assert!((p.optimizer.matrix_lr - 0.028284).abs() < 1e-5);
        assert!((p.optimizer.scalar_lr - 0.70711).abs() < 1e-5);
    }

    #[test]
    fn horizon_precedence_and_errors() {
        let mut a = PlanArgs::defaults(12, 8);
        a.target_flops = 1e18;
        let p = Plan::derive(&a).unwrap();
        assert_eq!(
            p.num_iterations,
            (1e18 / (p.flops_per_token * 524288.0)).round() as usize
        );
        a.num_iterations = 7;
        assert_eq!(Plan::derive(&a).unwrap().num_iterations, 7);
        a.device_batch_size = 48;
        assert!(Plan::derive(&a).unwrap_err().contains("--device-batch-size"));
    }
}
