//! The fp32 CPU reference ([`Gpt`]) with its parameters, gradients and optimizer, as a [`ModelDevice`]: what
//! `--device cpu` trains and what the kernel devices are checked against.

use super::gpt::{Gpt, Storage};
use crate::config::ModelConfig;
use crate::dist::SharedComm;
use crate::model::{check_row_weights, last_positions, ModelDevice};
use crate::optim::zero::ShardedMuonAdamW;
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
    /// Data-parallel: the ZeRO-2 optimizer of this rank and the ranks' collectives (`opt` is then unused).
    zero: Option<(ShardedMuonAdamW, SharedComm)>,
}

impl CpuModel {
    pub fn new(config: &ModelConfig, params: Vec<f32>, optimizer: &SetupArgs) -> Result<CpuModel, String> {
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
            zero: None,
        })
    }

    /// Makes this model rank `rank` of `world` data-parallel ranks: gradients averaged across them and the
    /// optimizer sharded ZeRO-2 style (`crate::optim::zero`). Call before loading optimizer state.
    pub fn data_parallel(mut self, optimizer: &SetupArgs, comm: SharedComm, rank: usize, world: usize) -> CpuModel {
        let mut sharded = ShardedMuonAdamW::new(&self.gpt.table, optimizer, rank, world);
        sharded.inner_mut().bf16_orthogonalization = self.opt.bf16_orthogonalization;
        self.zero = Some((sharded, comm));
        self
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
        let dloss: Vec<f32> = Gpt::mean_dloss(&fwd).into_iter().map(|g| g * scale).collect();
        self.gpt.backward(&self.params, &fwd, &dloss, &mut self.grads);
        Ok(fwd.loss)
    }

    /// The weighted loss directly: one forward, and the per-token gradient `scale · weight of the row` into the
    /// backward (the reference the grouped composition of the kernel devices is checked against).
    fn forward_backward_weighted(
        &mut self,
        ids: &[u32],
        targets: &[i32],
        weights: &[f32],
        b: usize,
        t: usize,
        scale: f32,
    ) -> Result<f32, String> {
        check_row_weights(weights, b)?;
        let fwd = self.gpt.forward(&self.params, ids, Some(targets), b, t)?;
        let mut dloss = vec![0f32; b * t];
        let mut total = 0f64;
        for (i, (&y, &l)) in targets.iter().zip(&fwd.losses).enumerate() {
            if y >= 0 {
                dloss[i] = scale * weights[i / t];
                total += (weights[i / t] * l) as f64;
            }
        }
        self.gpt.backward(&self.params, &fwd, &dloss, &mut self.grads);
        Ok(total as f32)
    }

    fn token_losses(&mut self, ids: &[u32], targets: &[i32], b: usize, t: usize) -> Result<Vec<f32>, String> {
        Ok(self.gpt.forward(&self.params, ids, Some(targets), b, t)?.losses)
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

    fn set_grads(&mut self, grads: &[f32]) -> Result<(), String> {
        if grads.len() != self.grads.len() {
            return Err(format!(
                "{} gradients given, the model has {}",
                grads.len(),
                self.grads.len()
            ));
        }
        self.grads.copy_from_slice(grads);
        Ok(())
    }

    fn step(&mut self, settings: &StepSettings) -> Result<(), String> {
        match &mut self.zero {
            None => self.opt.step(&mut self.params, &self.grads, settings),
            Some((opt, comm)) => {
                let mut comm = comm.lock().map_err(|_| "collectives poisoned".to_string())?;
                let me = comm.rank();
                opt.step(&mut self.params, &self.grads, settings, comm.as_mut())
                    .map_err(|e| format!("rank {me}: optimizer step: {e}"))?;
            }
        }
        self.grads.fill(0.0);
        Ok(())
    }

    fn params(&self) -> Result<Vec<f32>, String> {
        Ok(self.params.clone())
    }

    fn optimizer_state(&mut self) -> Result<BTreeMap<String, Tensor>, String> {
        Ok(match &self.zero {
            None => self.opt.state_tensors(),
            Some((opt, _)) => opt.state_tensors(),
        })
    }

    fn load_optimizer_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), String> {
        match &mut self.zero {
            None => self.opt.load_state_tensors(state),
            Some((opt, _)) => opt.load_state_tensors(state),
        }
    }
}
