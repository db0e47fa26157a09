//! The interface between the training loop and whatever computes the model: the CPU reference here; the
//! kernel devices (CUDA, emulator) implement the same trait in `crate::device::model`. The loop never sees buffers or kernels.

use crate::config::ModelConfig;
use crate::cpu::gpt::{Gpt, Storage};
use crate::optim::{MuonAdamW, SetupArgs, StepSettings};
use crate::params::ParamTable;
use crate::safetensors::Tensor;
use std::collections::BTreeMap;

/// A model with its parameters, gradients and optimizer, on some device.
pub trait ModelDevice {
    fn config(&self) -> &ModelConfig;
    /// The device's name as its driver reports it (looked up in the peak-FLOPs table for MFU).
    fn device_name(&self) -> String;
    fn table(&self) -> &ParamTable;
    /// Forward and backward of one micro-batch `(b, t)`; adds `scale ×` the gradient of the mean loss into the
    /// gradient buffer and returns the mean loss.
    fn forward_backward(
        &mut self,
        ids: &[u32],
        targets: &[i32],
        b: usize,
        t: usize,
        scale: f32,
    ) -> Result<f32, String>;
    /// Per-token losses `(b·t)` without touching gradients (0 where the target is -1).
    fn token_losses(
        &mut self,
        ids: &[u32],
        targets: &[i32],
        b: usize,
        t: usize,
    ) -> Result<Vec<f32>, String>;
    /// Softcapped logits of every position, `(b·t, vocab)`.
    fn logits(&mut self, ids: &[u32], b: usize, t: usize) -> Result<Vec<f32>, String>;
    /// The gradients accumulated since the last step, fp32 in the flat layout.
    fn grads(&mut self) -> Result<Vec<f32>, String>;
    /// Softcapped logits of the last position of each row, `(b, vocab)`.
    fn last_logits(&mut self, ids: &[u32], b: usize, t: usize) -> Result<Vec<f32>, String>;
    /// One optimizer step with the accumulated gradients, which are then cleared.
    fn step(&mut self, settings: &StepSettings) -> Result<(), String>;
    /// Parameters as fp32 in the flat layout (for checkpoints).
    fn params(&self) -> Result<Vec<f32>, String>;
    /// The optimizer state as named tensors (for checkpoints).
    fn optimizer_state(&mut self) -> Result<BTreeMap<String, Tensor>, String>;
    fn load_optimizer_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), String>;
}

/// The fp32 CPU reference as a device.
pub struct CpuModel {
    gpt: Gpt,
    params: Vec<f32>,
    grads: Vec<f32>,
    opt: MuonAdamW,
}

impl CpuModel {
    pub fn new(
        config: &ModelConfig,
        params: Vec<f32>,
        optimizer: &SetupArgs,
    ) -> Result<CpuModel, String> {
        let gpt = Gpt::new(config)?;
        if params.len() != gpt.table.numel {
            return Err(format!(
                "{} parameters given, the model has {}",
                params.len(),
                gpt.table.numel
            ));
        }
        let opt = MuonAdamW::new(&gpt.table, optimizer);
        let grads = vec![0.0; gpt.table.numel];
        Ok(CpuModel {
            gpt,
            params,
            grads,
            opt,
        })
    }

    /// Switches the reference to `storage` (bf16: also the Muon orthogonalisation, as on the kernel devices).
    pub fn with_storage(mut self, storage: Storage) -> CpuModel {
        self.gpt.storage = storage;
        self.opt.bf16_orthogonalization = storage == Storage::Bf16;
        self
    }

    pub fn gpt(&self) -> &Gpt {
        &self.gpt
    }
}

impl ModelDevice for CpuModel {
    fn config(&self) -> &ModelConfig {
        &self.gpt.config
    }

    fn device_name(&self) -> String {
        "cpu".to_string()
    }

    fn table(&self) -> &ParamTable {
        &self.gpt.table
    }

    fn forward_backward(
        &mut self,
        ids: &[u32],
        targets: &[i32],
        b: usize,
        t: usize,
        scale: f32,
    ) -> Result<f32, String> {
        let fwd = self.gpt.forward(&self.params, ids, Some(targets), b, t)?;
        let dloss: Vec<f32> = Gpt::mean_dloss(&fwd)
            .into_iter()
            .map(|g| g * scale)
            .collect();
        self.gpt
            .backward(&self.params, &fwd, &dloss, &mut self.grads);
        Ok(fwd.loss)
    }

    fn token_losses(
        &mut self,
        ids: &[u32],
        targets: &[i32],
        b: usize,
        t: usize,
    ) -> Result<Vec<f32>, String> {
        Ok(self
            .gpt
            .forward(&self.params, ids, Some(targets), b, t)?
            .losses)
    }

    fn logits(&mut self, ids: &[u32], b: usize, t: usize) -> Result<Vec<f32>, String> {
        let fwd = self.gpt.forward(&self.params, ids, None, b, t)?;
        Ok(fwd.logits_unpadded(self.gpt.config.vocab_size))
    }

    fn grads(&mut self) -> Result<Vec<f32>, String> {
        Ok(self.grads.clone())
    }

    fn last_logits(&mut self, ids: &[u32], b: usize, t: usize) -> Result<Vec<f32>, String> {
        let fwd = self.gpt.forward(&self.params, ids, None, b, t)?;
        let v = self.gpt.config.vocab_size;
        let all = fwd.logits_unpadded(v);
        Ok((0..b)
            .flat_map(|r| all[((r + 1) * t - 1) * v..(r + 1) * t * v].to_vec())
            .collect())
    }

    fn step(&mut self, settings: &StepSettings) -> Result<(), String> {
        self.opt.step(&mut self.params, &self.grads, settings);
        self.grads.fill(0.0);
        Ok(())
    }

    fn params(&self) -> Result<Vec<f32>, String> {
        Ok(self.params.clone())
    }

    fn optimizer_state(&mut self) -> Result<BTreeMap<String, Tensor>, String> {
        Ok(self.opt.state_tensors())
    }

    fn load_optimizer_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), String> {
        self.opt.load_state_tensors(state)
    }
}
