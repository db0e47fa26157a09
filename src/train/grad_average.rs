//! Data parallelism for a model device that keeps its whole optimizer (the kernel devices): after the
//! micro-batches, the gradients are averaged over the ranks on the host and every rank takes the same full
//! step, so the parameters stay identical. (The CPU reference shards its optimizer instead: `optim::zero`.)

use crate::config::ModelConfig;
use crate::dist::{ReduceOp, SharedComm};
use crate::model::ModelDevice;
use crate::optim::StepSettings;
use crate::params::ParamTable;
use crate::safetensors::Tensor;
use std::collections::BTreeMap;

/// `inner` with its gradients all-reduced (average) before every step.
pub struct GradAverage {
    pub inner: Box<dyn ModelDevice>,
    pub comm: SharedComm,
}

impl ModelDevice for GradAverage {
    fn config(&self) -> &ModelConfig {
        self.inner.config()
    }
    fn device_name(&self) -> String {
        self.inner.device_name()
    }
    fn table(&self) -> &ParamTable {
        self.inner.table()
    }
    fn forward_backward(
        &mut self,
        ids: &[u32],
        targets: &[i32],
        b: usize,
        t: usize,
        scale: f32,
    ) -> Result<f32, String> {
        self.inner.forward_backward(ids, targets, b, t, scale)
    }
    fn forward_backward_weighted(
        &mut self,
        ids: &[u32],
        targets: &[i32],
        weights: &[f32],
        b: usize,
        t: usize,
        scale: f32,
    ) -> Result<f32, String> {
        self.inner.forward_backward_weighted(ids, targets, weights, b, t, scale)
    }
    fn token_losses(&mut self, ids: &[u32], targets: &[i32], b: usize, t: usize) -> Result<Vec<f32>, String> {
        self.inner.token_losses(ids, targets, b, t)
    }
    fn logits(&mut self, ids: &[u32], b: usize, t: usize) -> Result<Vec<f32>, String> {
        self.inner.logits(ids, b, t)
    }
    fn grads(&mut self) -> Result<Vec<f32>, String> {
        self.inner.grads()
    }
    fn last_logits(&mut self, ids: &[u32], b: usize, t: usize) -> Result<Vec<f32>, String> {
        self.inner.last_logits(ids, b, t)
    }
    fn set_grads(&mut self, grads: &[f32]) -> Result<(), String> {
        self.inner.set_grads(grads)
    }
    fn step(&mut self, settings: &StepSettings) -> Result<(), String> {
        let mut g = self.inner.grads()?;
        {
            let mut comm = self.comm.lock().map_err(|_| "collectives poisoned".to_string())?;
            let me = comm.rank();
            comm.all_reduce(&mut g, ReduceOp::Avg)
                .map_err(|e| format!("rank {me}: gradient all-reduce: {e}"))?;
        }
        self.inner.set_grads(&g)?;
        self.inner.step(settings)
    }
    fn params(&self) -> Result<Vec<f32>, String> {
        self.inner.params()
    }
    fn optimizer_state(&mut self) -> Result<BTreeMap<String, Tensor>, String> {
        self.inner.optimizer_state()
    }
    fn load_optimizer_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), String> {
        self.inner.load_optimizer_state(state)
    }
}
