//! The model interface between the programs that use a model (the training loop, parity, evaluation) and
//! whatever computes it: the CPU reference ([`crate::cpu::model::CpuModel`]) and the kernel devices
//! ([`crate::device::model::KernelModel`]) implement [`ModelDevice`]; callers never see buffers or kernels.
//! The batch checks every implementation runs before computing live here too, so both reject the same inputs
//! with the same messages.

use crate::config::ModelConfig;
use crate::optim::StepSettings;
use crate::params::ParamTable;
use crate::safetensors::Tensor;
use std::collections::BTreeMap;

/// A model with its parameters, gradients and optimizer, on some device.
pub trait ModelDevice {
    fn config(&self) -> &ModelConfig;
    /// The model as [`std::any::Any`], for the callers that run a device's own paths on it (the kernel
    /// devices' KV-cached generation on the model in training); None where there are none.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
    /// The device's name as its driver reports it (looked up in the peak-FLOPs table for MFU).
    fn device_name(&self) -> String;
    fn table(&self) -> &ParamTable;
    /// Forward and backward of one micro-batch `(b, t)`; adds `scale ×` the gradient of the mean loss into the
    /// gradient buffer and returns the mean loss.
    fn forward_backward(&mut self, ids: &[u32], targets: &[i32], b: usize, t: usize, scale: f32)
        -> Result<f32, String>;
    /// [`ModelDevice::forward_backward`] without waiting for the loss where the device can keep it: a kernel
    /// device queues the micro-batch and leaves its loss on the device (`Ok(None)`), to be read with the others
    /// by [`ModelDevice::take_losses`], once per optimizer step. Elsewhere the loss comes back at once.
    fn forward_backward_queued(
        &mut self,
        ids: &[u32],
        targets: &[i32],
        b: usize,
        t: usize,
        scale: f32,
    ) -> Result<Option<f32>, String> {
        self.forward_backward(ids, targets, b, t, scale).map(Some)
    }
    /// The mean losses of the micro-batches [`ModelDevice::forward_backward_queued`] left on the device since
    /// the last call, in order (one read from the device).
    fn take_losses(&mut self) -> Result<Vec<f32>, String> {
        Ok(Vec::new())
    }
    /// Forward and backward of `(b, t)` with one weight per row: adds `scale ×` the gradient of
    /// `Σ_r weights[r] · Σ_t CE(r, t)` (a weighted *sum* over the supervised targets, the policy-gradient loss of
    /// chat_rl) and returns that weighted sum. The default composes it from [`ModelDevice::forward_backward`]:
    /// rows of equal weight go through together, each group's mean loss rescaled by its weight and target count
    /// (rows of weight 0 or without a target are skipped: their gradient is zero).
    fn forward_backward_weighted(
        &mut self,
        ids: &[u32],
        targets: &[i32],
        weights: &[f32],
        b: usize,
        t: usize,
        scale: f32,
    ) -> Result<f32, String> {
        weighted_by_row_groups(self, ids, targets, weights, b, t, scale)
    }
    /// Per-token losses `(b·t)` without touching gradients (0 where the target is -1).
    fn token_losses(&mut self, ids: &[u32], targets: &[i32], b: usize, t: usize) -> Result<Vec<f32>, String>;
    /// Softcapped logits of every position, `(b·t, vocab)`.
    fn logits(&mut self, ids: &[u32], b: usize, t: usize) -> Result<Vec<f32>, String>;
    /// The gradients accumulated since the last step, fp32 in the flat layout.
    fn grads(&mut self) -> Result<Vec<f32>, String>;
    /// Softcapped logits of the last position of each row, `(b, vocab)`.
    fn last_logits(&mut self, ids: &[u32], b: usize, t: usize) -> Result<Vec<f32>, String>;
    /// Replaces the accumulated gradients (fp32, flat layout), e.g. to step an optimizer on gradients made
    /// elsewhere.
    fn set_grads(&mut self, _grads: &[f32]) -> Result<(), String> {
        Err(format!("{}: setting gradients is not supported", self.device_name()))
    }
    /// Says that the next [`ModelDevice::forward_backward`] is the last before [`ModelDevice::step`]: its
    /// gradients are final as its backward pass produces them, so a data-parallel device may start reducing
    /// them then (overlap). The default ignores it.
    fn final_micro_batch(&mut self) {}
    /// One optimizer step with the accumulated gradients, which are then cleared.
    fn step(&mut self, settings: &StepSettings) -> Result<(), String>;
    /// Parameters as fp32 in the flat layout (for checkpoints).
    fn params(&self) -> Result<Vec<f32>, String>;
    /// The optimizer state as named tensors (for checkpoints).
    fn optimizer_state(&mut self) -> Result<BTreeMap<String, Tensor>, String>;
    fn load_optimizer_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), String>;
}

/// Checks a batch `(b, t)` of ids (and targets) for a model with RoPE tables of `positions` positions: the
/// lengths, the sequence length, ids inside the vocabulary, targets inside it or the ignore index -1.
pub fn check_batch(
    cfg: &ModelConfig,
    positions: usize,
    ids: &[u32],
    targets: Option<&[i32]>,
    b: usize,
    t: usize,
) -> Result<(), String> {
    let (n, v) = (b * t, cfg.vocab_size);
    if n == 0 {
        return Err(format!("empty batch ({b}x{t})"));
    }
    if ids.len() != n || targets.is_some_and(|y| y.len() != n) {
        return Err(format!("batch must hold {b}x{t} = {n} ids and targets"));
    }
    if t > positions {
        return Err(format!(
            "sequence length {t} exceeds the RoPE table ({positions} positions)"
        ));
    }
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= v) {
        return Err(format!("token id {bad} is outside the vocabulary of {v}"));
    }
    if let Some(&bad) = targets.unwrap_or(&[]).iter().find(|&&y| y < -1 || y >= v as i32) {
        return Err(format!(
            "target {bad} is outside the vocabulary of {v} (and is not the ignore index -1)"
        ));
    }
    Ok(())
}

/// Checks the row weights of [`ModelDevice::forward_backward_weighted`].
pub fn check_row_weights(weights: &[f32], b: usize) -> Result<(), String> {
    if weights.len() != b {
        return Err(format!("{} row weights given for {b} rows", weights.len()));
    }
    if let Some(bad) = weights.iter().find(|w| !w.is_finite()) {
        return Err(format!("row weight {bad} is not finite"));
    }
    Ok(())
}

/// [`ModelDevice::forward_backward_weighted`] composed from the plain mean-loss forward and backward: the rows
/// are grouped by weight (in order of first appearance) and each group of `n` supervised targets runs as one
/// batch with scale `scale · w · n`, which turns its mean into the weighted sum.
pub fn weighted_by_row_groups<M: ModelDevice + ?Sized>(
    model: &mut M,
    ids: &[u32],
    targets: &[i32],
    weights: &[f32],
    b: usize,
    t: usize,
    scale: f32,
) -> Result<f32, String> {
    check_row_weights(weights, b)?;
    check_batch(model.config(), usize::MAX, ids, Some(targets), b, t)?;
    let mut groups: Vec<(f32, Vec<usize>)> = Vec::new();
    for (r, &w) in weights.iter().enumerate() {
        let supervised = targets[r * t..(r + 1) * t].iter().any(|&y| y >= 0);
        if w == 0.0 || !supervised {
            continue;
        }
        match groups.iter_mut().find(|g| g.0 == w) {
            Some(g) => g.1.push(r),
            None => groups.push((w, vec![r])),
        }
    }
    let mut total = 0f64;
    for (w, rows) in groups {
        let g_ids: Vec<u32> = rows
            .iter()
            .flat_map(|&r| ids[r * t..(r + 1) * t].iter().copied())
            .collect();
        let g_targets: Vec<i32> = rows
            .iter()
            .flat_map(|&r| targets[r * t..(r + 1) * t].iter().copied())
            .collect();
        let n = g_targets.iter().filter(|&&y| y >= 0).count() as f32;
        let mean = model.forward_backward(&g_ids, &g_targets, rows.len(), t, scale * w * n)?;
        total += (w * mean * n) as f64;
    }
    Ok(total as f32)
}

/// The rows `(b, v)` of the last position of each row of `all` `(b·t, v)`.
pub fn last_positions(all: &[f32], b: usize, t: usize, v: usize) -> Vec<f32> {
    (0..b)
        .flat_map(|r| all[((r + 1) * t - 1) * v..(r + 1) * t * v].iter().copied())
        .collect()
}
