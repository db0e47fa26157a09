//! The fp32 CPU reference ([`Gpt`]) with its parameters, gradients and optimizer, as a [`ModelDevice`]: what
//! `--device cpu` trains and what the kernel devices are checked against.

use super::gpt::{Gpt, Storage};
use crate::config::ModelConfig;
use crate::model::{last_positions, ModelDevice};
use crate::optim::{MuonAdamW, SetupArgs, StepSettings};
use crate::params::ParamTable;
use crate::safetensors::Tensor;
use std::collections::BTreeMap;

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
        Ok(last_positions(&fwd.logits_unpadded(v), b, t, v))
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
