//! The GPT on a kernel device: its buffers, the optimizer step and the [`ModelDevice`] implementation. The
//! forward and backward (the same ops as the CPU reference, as kernel launches) are in [`super::gpt`], the
//! activation arena and the memory plan in [`super::memory`].
//!
//! Buffers:
//! - parameters: fp32 master weights (`params`) and a bf16 mirror of the whole buffer (`params_bf16`, what
//!   the GEMMs and gathers read; the optimizer kernels rewrite it after every update); scalar parameters
//!   are read as fp32 straight from the master buffer;
//! - gradients: fp32, the parameter layout, accumulated (`+=`) across micro-batches until [`KernelModel::step`];
//! - optimizer state: the four flat fp32 buffers of [`MuonAdamW`] (the host object keeps the groups, the step
//!   count and the layout; the values live here and are synced for checkpoints);
//! - the activation arena: everything forward saves for backward plus the backward scratch, sized from the
//!   micro-batch `(b, t)` ([`ArenaLayout`], with a per-component memory report).
//!
//! Precision: bf16 activations and GEMM operands with fp32 accumulation, fp32 row statistics (RMSNorm rstd,
//! attention log-sum-exp, per-token losses), fp32 parameter gradients, fp32 optimizer math.

use super::kernels::adamw;
use super::kernels::attention::AttnImpl;
use super::kernels::elementwise::cast_f32_to_bf16;
use super::kernels::muon::{muon_step, MuonScratch, Stack};
use super::memory::{self, largest_batch, muon_stacks, static_memory, Arena, ArenaLayout, BF16, F32};
use super::{Buffer, DevPtr, Device};
use crate::config::{softcap, ModelConfig, ROPE_BASE};
use crate::model::ModelDevice;
use crate::optim::{MuonAdamW, SetupArgs, StepJob, StepSettings};
use crate::params::{ParamTable, Slot};
use crate::safetensors::Tensor;
use half::bf16;
use std::collections::BTreeMap;

pub(super) fn dev_err(e: super::DeviceError) -> String {
    e.to_string()
}

/// The GPT with its parameters, gradients and optimizer state on a kernel device.
pub struct KernelModel {
    pub(super) dev: Box<dyn Device>,
    pub(super) config: ModelConfig,
    pub(super) table: ParamTable,
    pub(super) windows: Vec<usize>,
    pub(super) attn: AttnImpl,
    pub(super) opt: MuonAdamW,
    pub(super) params: Buffer,
    pub(super) params_bf16: Buffer,
    pub(super) grads: Buffer,
    /// (L, 2) f32: each layer's (resid, x0) lambdas side by side, as the mix kernels read them; refreshed
    /// from the master weights after every update.
    pub(super) lambda_pairs: Buffer,
    /// (L, 2) f32: their accumulated gradients, moved into `grads` at the step.
    pub(super) dlambda_pairs: Buffer,
    pub(super) state: [Buffer; 4],
    pub(super) muon_scratch: Vec<(Stack, MuonScratch)>,
    pub(super) cos: Buffer,
    pub(super) sin: Buffer,
    pub(super) positions: usize,
    pub(super) arena: Option<Arena>,
    /// The loss sums of the queued micro-batches ([`ModelDevice::forward_backward_queued`]), f32, one slot each.
    pub(super) loss_log: Buffer,
    /// The supervised-target count of each micro-batch whose loss sum is in `loss_log`.
    pub(super) queued: Vec<usize>,
    /// Mean losses read back already (a full `loss_log`) and not taken yet.
    pub(super) taken: Vec<f32>,
    /// One rank of several with the optimizer sharded (ZeRO-2, [`super::zero`]): then `state` and
    /// `muon_scratch` hold this rank's share only, and `opt` just the layout of the whole.
    pub(super) zero: Option<super::zero::DeviceZero>,
    /// An inference model ([`KernelModel::for_inference`]): `params` holds only the fp32 copies of the
    /// parameters read as fp32 (each at the offset given here), and there are no gradients, no optimizer
    /// state and no loss log (one-element placeholders).
    pub(super) inference: Option<Vec<(Slot, usize, usize)>>,
}

/// The parameters the kernels read from the fp32 master copy (the scalar gates and lambdas); the rest are
/// read from the bf16 mirror.
const MASTER_SLOTS: [Slot; 6] = [
    Slot::ResidLambdas,
    Slot::X0Lambdas,
    Slot::SmearGate,
    Slot::SmearLambda,
    Slot::VeGate,
    Slot::BackoutLambda,
];

/// Micro-batches whose losses wait on the device before the log is read back (and started anew).
pub(super) const LOSS_LOG_LEN: usize = 1024;

impl KernelModel {
    /// Uploads `params` (fp32, the table's layout) and fresh optimizer state to `dev`.
    pub fn new(
        dev: Box<dyn Device>,
        config: &ModelConfig,
        params: &[f32],
        optimizer: &SetupArgs,
    ) -> Result<KernelModel, String> {
        config.validate()?;
        let table = ParamTable::new(config);
        if params.len() != table.numel {
            return Err(format!(
                "{} parameters given, the model has {}",
                params.len(),
                table.numel
            ));
        }
        let d = config.head_dim();
        let attn = if d == 64 || d == 128 {
            AttnImpl::Flash
        } else {
            AttnImpl::Naive
        };
        let mut opt = MuonAdamW::new(&table, optimizer);
        // The device orthogonalises through bf16 GEMMs, as upstream does in its bf16 compute dtype.
        opt.bf16_orthogonalization = true;
        let positions = 10 * config.sequence_len;
        let (cos, sin) = crate::cpu::ops::rope_tables(positions, d, ROPE_BASE);
        let l = config.n_layer;
        let numel = table.numel;
        let d_ = dev.as_ref();
        let state_lens = opt.state_buffers().map(|b| b.len());
        let mk = || -> super::Result<_> {
            let params_buf = d_.upload_new(params)?;
            let params_bf16 = d_.alloc(numel * BF16)?;
            cast_f32_to_bf16(d_, params_bf16.ptr(), params_buf.ptr(), numel)?;
            let grads = d_.alloc(numel * F32)?;
            d_.zero(grads.ptr(), numel * F32)?;
            let lambda_pairs = d_.alloc(2 * l * F32)?;
            let dlambda_pairs = d_.alloc(2 * l * F32)?;
            d_.zero(dlambda_pairs.ptr(), 2 * l * F32)?;
            let state = state_lens.map(|len| {
                let b = d_.alloc(len.max(1) * F32)?;
                d_.zero(b.ptr(), len.max(1) * F32)?;
                Ok(b)
            });
            let [a, b, c, e] = state;
            Ok((
                params_buf,
                params_bf16,
                grads,
                lambda_pairs,
                dlambda_pairs,
                [a?, b?, c?, e?],
                d_.upload_new(&cos)?,
                d_.upload_new(&sin)?,
                d_.alloc(LOSS_LOG_LEN * F32)?,
            ))
        };
        let (params_buf, params_bf16, grads, lambda_pairs, dlambda_pairs, state, cos, sin, loss_log) =
            mk().map_err(|e| format!("{}: {e}", dev.name()))?;
        let mut muon_scratch = Vec::new();
        for s in muon_stacks(&opt) {
            let scratch = MuonScratch::new(dev.as_ref(), s).map_err(dev_err)?;
            muon_scratch.push((s, scratch));
        }
        let model = KernelModel {
            windows: config.window_sizes(),
            config: config.clone(),
            table,
            attn,
            opt,
            params: params_buf,
            params_bf16,
            grads,
            lambda_pairs,
            dlambda_pairs,
            state,
            muon_scratch,
            cos,
            sin,
            positions,
            arena: None,
            loss_log,
            queued: Vec::new(),
            taken: Vec::new(),
            zero: None,
            inference: None,
            dev,
        };
        model.refresh_lambda_pairs().map_err(dev_err)?;
        Ok(model)
    }

    /// The model for inference only (serving, sampling, evaluation): the bf16 weights (converted on the
    /// host, so the fp32 weights never reach the device), fp32 copies of the few parameters the kernels read
    /// as fp32, and the RoPE tables; no gradients, no optimizer state (neither on the device nor on the host).
    /// The forwards ([`ModelDevice::logits`], [`ModelDevice::last_logits`], [`ModelDevice::token_losses`]) and
    /// the KV-cached [`crate::engine::InferModel`] work as on a training model; the training methods are errors.
    pub fn for_inference(dev: Box<dyn Device>, config: &ModelConfig, params: &[f32]) -> Result<KernelModel, String> {
        config.validate()?;
        let table = ParamTable::new(config);
        if params.len() != table.numel {
            return Err(format!(
                "{} parameters given, the model has {}",
                params.len(),
                table.numel
            ));
        }
        let d = config.head_dim();
        let attn = if d == 64 || d == 128 {
            AttnImpl::Flash
        } else {
            AttnImpl::Naive
        };
        // The host optimizer object keeps only the layout: its state vectors are dropped.
        let mut opt = MuonAdamW::new(&table, &Default::default());
        opt.release_state();
        let positions = 10 * config.sequence_len;
        let (cos, sin) = crate::cpu::ops::rope_tables(positions, d, ROPE_BASE);
        let l = config.n_layer;
        // The fp32 parameters, each aligned as in the flat buffer.
        let (mut master, mut at) = (Vec::new(), Vec::new());
        for slot in MASTER_SLOTS {
            for k in 0..table.slot(slot).count() {
                let r = table.range(slot, k);
                at.push((slot, k, master.len()));
                master.extend_from_slice(&params[r]);
                master.resize(master.len().next_multiple_of(crate::params::SLOT_ALIGN), 0.0);
            }
        }
        let weights: Vec<bf16> = params.iter().map(|&p| bf16::from_f32(p)).collect();
        let d_ = dev.as_ref();
        let mk = || -> super::Result<_> {
            let one = || -> super::Result<Buffer> {
                let b = d_.alloc(F32)?;
                d_.zero(b.ptr(), F32)?;
                Ok(b)
            };
            Ok((
                d_.upload_new(&master)?,
                d_.upload_new(&weights)?,
                one()?,
                d_.alloc(2 * l * F32)?,
                one()?,
                [one()?, one()?, one()?, one()?],
                d_.upload_new(&cos)?,
                d_.upload_new(&sin)?,
                one()?,
            ))
        };
        let (params_buf, params_bf16, grads, lambda_pairs, dlambda_pairs, state, cos, sin, loss_log) =
            mk().map_err(|e| format!("{}: {e}", dev.name()))?;
        drop(weights);
        let model = KernelModel {
            windows: config.window_sizes(),
            config: config.clone(),
            table,
            attn,
            opt,
            params: params_buf,
            params_bf16,
            grads,
            lambda_pairs,
            dlambda_pairs,
            state,
            muon_scratch: Vec::new(),
            cos,
            sin,
            positions,
            arena: None,
            loss_log,
            queued: Vec::new(),
            taken: Vec::new(),
            zero: None,
            inference: Some(at),
            dev,
        };
        model.refresh_lambda_pairs().map_err(dev_err)?;
        Ok(model)
    }

    /// Whether this is an inference model ([`KernelModel::for_inference`]).
    pub fn is_inference(&self) -> bool {
        self.inference.is_some()
    }

    /// An error for a training method called on an inference model.
    pub(super) fn trainable(&self, what: &str) -> Result<(), String> {
        match self.inference {
            Some(_) => Err(format!(
                "{}: {what}: this model was opened for inference (no gradients, no optimizer state)",
                self.dev.name()
            )),
            None => Ok(()),
        }
    }

    /// Chooses the attention kernels (flash needs head_dim 64 or 128; naive is the slow second oracle).
    pub fn set_attention(&mut self, imp: AttnImpl) {
        self.attn = imp;
    }

    pub fn device(&self) -> &dyn Device {
        self.dev.as_ref()
    }

    /// Device memory per component for micro-batches `(b, t)`, and the total, as printable lines.
    pub fn memory_report(&self, b: usize, t: usize) -> String {
        let now = self.arena.as_ref().map(|a| (a.b, a.t));
        memory::memory_report(&self.config, &self.table, &self.opt, self.device(), now, b, t)
    }

    /// The largest device batch size at sequence length `t` whose memory fits in `free` bytes (None if
    /// not even 1 does).
    pub fn largest_batch(&self, t: usize, free: usize) -> Option<usize> {
        largest_batch(&self.config, &self.table, &self.opt, t, free)
    }

    /// The largest device batch size at sequence length `t` that fits on the device as it is now: its free
    /// memory plus what this model holds. None when the device reports no memory or not even 1 fits.
    pub fn largest_batch_now(&self, t: usize) -> Option<usize> {
        let (free, _) = self.dev.memory_info()?;
        let now = self.arena.as_ref().map(|a| (a.b, a.t));
        memory::largest_batch_now(&self.config, &self.table, &self.opt, now, t, free)
    }

    /// The bf16 copy of parameter `slot` (layer or table `k`): what GEMMs and gathers read.
    pub(super) fn weight(&self, slot: Slot, k: usize) -> DevPtr {
        self.params_bf16.at::<bf16>(self.table.range(slot, k).start)
    }

    /// The fp32 master copy of parameter `slot` (`k`): what the scalar-parameter kernels read.
    pub(super) fn master(&self, slot: Slot, k: usize) -> DevPtr {
        match &self.inference {
            None => self.params.at::<f32>(self.table.range(slot, k).start),
            Some(at) => {
                let &(_, _, off) = at
                    .iter()
                    .find(|&&(s, j, _)| s == slot && j == k)
                    .expect("every parameter read as fp32 has its copy");
                self.params.at::<f32>(off)
            }
        }
    }

    /// The fp32 gradient of parameter `slot` (`k`).
    pub(super) fn grad(&self, slot: Slot, k: usize) -> DevPtr {
        self.grads.at::<f32>(self.table.range(slot, k).start)
    }

    /// Copies each layer's (resid, x0) lambdas into `lambda_pairs`.
    pub(super) fn refresh_lambda_pairs(&self) -> super::Result<()> {
        for i in 0..self.config.n_layer {
            let pair = self.lambda_pairs.at::<f32>(2 * i);
            self.dev
                .copy(pair, self.master(Slot::ResidLambdas, 0).at::<f32>(i), F32)?;
            self.dev
                .copy(pair.at::<f32>(1), self.master(Slot::X0Lambdas, 0).at::<f32>(i), F32)?;
        }
        Ok(())
    }

    /// Makes sure the arena fits micro-batches `(b, t)`.
    pub(super) fn ensure_arena(&mut self, b: usize, t: usize) -> Result<(), String> {
        if self.arena.as_ref().is_some_and(|a| a.b == b && a.t == t) {
            return Ok(());
        }
        self.arena = None; // free the old one first
        let dev = self.dev.as_ref();
        let arena = Arena::allocate(dev, &self.config, b, t).map_err(|e| {
            // The parameters, gradients and state are allocated already: `free` excludes them.
            let fits = dev.memory_info().map(|(free, _)| {
                let fixed: usize = static_memory(&self.table, &self.opt).values().sum();
                largest_batch(&self.config, &self.table, &self.opt, t, free + fixed)
            });
            let hint = match fits {
                Some(Some(n)) => format!("the largest that fits now is {n}"),
                Some(None) => "not even 1 fits next to the model".to_string(),
                None => "lower it".to_string(),
            };
            format!(
                "{}: the activations of a {b} x {t} micro-batch need {:.1} MiB: {e}; --device-batch-size: {hint}",
                dev.name(),
                ArenaLayout::size(&self.config, b, t) as f64 / (1 << 20) as f64
            )
        })?;
        self.arena = Some(arena);
        Ok(())
    }

    /// Moves the accumulated lambda-pair gradients into the gradient buffer's lambda slots.
    pub(super) fn flush_lambda_grads(&self) -> super::Result<()> {
        for i in 0..self.config.n_layer {
            let pair = self.dlambda_pairs.at::<f32>(2 * i);
            self.dev
                .copy(self.grad(Slot::ResidLambdas, 0).at::<f32>(i), pair, F32)?;
            self.dev
                .copy(self.grad(Slot::X0Lambdas, 0).at::<f32>(i), pair.at::<f32>(1), F32)?;
        }
        Ok(())
    }

    fn run_step(&mut self, settings: &StepSettings) -> super::Result<()> {
        self.flush_lambda_grads()?;
        let dev = self.dev.as_ref();
        let [m, v, mom, second] = &self.state;
        for job in self.opt.begin_step(settings) {
            match job {
                StepJob::AdamW { range, state, hyper } => adamw::adamw_step(
                    dev,
                    self.params.at::<f32>(range.start),
                    Some(self.params_bf16.at::<bf16>(range.start)),
                    self.grads.at::<f32>(range.start),
                    m.at::<f32>(state),
                    v.at::<f32>(state),
                    range.len(),
                    &hyper,
                )?,
                StepJob::Muon {
                    range,
                    state,
                    second: s_off,
                    count,
                    dims: (rows, cols),
                    hyper,
                } => {
                    let stack = Stack {
                        k: count,
                        m: rows,
                        n: cols,
                    };
                    let scratch = &self
                        .muon_scratch
                        .iter()
                        .find(|(s, _)| *s == stack)
                        .expect("scratch allocated for every Muon stack")
                        .1;
                    muon_step(
                        dev,
                        scratch,
                        self.params.at::<f32>(range.start),
                        Some(self.params_bf16.at::<bf16>(range.start)),
                        self.grads.at::<f32>(range.start),
                        mom.at::<f32>(state),
                        second.at::<f32>(s_off),
                        &hyper,
                    )?
                }
            }
        }
        dev.zero(self.grads.ptr(), self.table.numel * F32)?;
        dev.zero(self.dlambda_pairs.ptr(), 2 * self.config.n_layer * F32)?;
        self.refresh_lambda_pairs()?;
        dev.synchronize()
    }

    /// Reads the loss sums of the queued micro-batches (one download) and empties the queue; returns their
    /// mean losses (0 for a micro-batch without a supervised target: an all-masked SFT batch, whose gradient
    /// is zero too).
    fn read_loss_log(&mut self) -> Result<Vec<f32>, String> {
        if self.queued.is_empty() {
            return Ok(Vec::new());
        }
        let sums = self
            .dev
            .download_vec::<f32>(self.loss_log.ptr(), self.queued.len())
            .map_err(|e| format!("{}: reading the losses: {e}", self.dev.name()))?;
        let out = sums
            .iter()
            .zip(self.queued.drain(..))
            .map(|(&s, valid)| if valid == 0 { 0.0 } else { s / valid as f32 })
            .collect();
        Ok(out)
    }

    /// Copies the device optimizer state into the host optimizer object.
    fn sync_state_to_host(&mut self) -> super::Result<()> {
        let dev = self.dev.as_ref();
        let bufs = &self.state;
        for (host, buf) in self.opt.state_buffers_mut().into_iter().zip(bufs) {
            dev.download(buf.ptr(), bytemuck::cast_slice_mut(host))?;
        }
        Ok(())
    }
}

impl ModelDevice for KernelModel {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn device_name(&self) -> String {
        self.dev.name()
    }

    fn table(&self) -> &ParamTable {
        &self.table
    }

    fn forward_backward(
        &mut self,
        ids: &[u32],
        targets: &[i32],
        b: usize,
        t: usize,
        scale: f32,
    ) -> Result<f32, String> {
        self.forward_backward_queued(ids, targets, b, t, scale)?;
        let mut all = self.take_losses()?;
        let loss = all.pop().expect("one micro-batch queued");
        self.taken = all; // the losses queued before this one stay for the next take_losses
        Ok(loss)
    }

    fn forward_backward_queued(
        &mut self,
        ids: &[u32],
        targets: &[i32],
        b: usize,
        t: usize,
        scale: f32,
    ) -> Result<Option<f32>, String> {
        self.trainable("forward_backward")?;
        if self.queued.len() == LOSS_LOG_LEN {
            let read = self.read_loss_log()?;
            self.taken.extend(read);
        }
        let valid = targets.iter().filter(|&&y| y >= 0).count();
        let dloss = scale / valid.max(1) as f32;
        let slot = self.loss_log.at::<f32>(self.queued.len());
        self.forward(ids, Some(targets), b, t, dloss, Some(slot))?;
        self.backward(ids, b, t)
            .map_err(|e| format!("{}: backward: {e}", self.dev.name()))?;
        self.queued.push(valid);
        Ok(None)
    }

    fn take_losses(&mut self) -> Result<Vec<f32>, String> {
        let read = self.read_loss_log()?;
        let mut all = std::mem::take(&mut self.taken);
        all.extend(read);
        Ok(all)
    }

    fn token_losses(&mut self, ids: &[u32], targets: &[i32], b: usize, t: usize) -> Result<Vec<f32>, String> {
        self.forward(ids, Some(targets), b, t, 0.0, None)?;
        let a = &self.arena.as_ref().expect("arena allocated").acts;
        self.dev.download_vec(a.losses, b * t).map_err(dev_err)
    }

    fn grads(&mut self) -> Result<Vec<f32>, String> {
        self.trainable("grads")?;
        self.flush_lambda_grads().map_err(dev_err)?;
        self.dev
            .download_vec::<f32>(self.grads.ptr(), self.table.numel)
            .map_err(dev_err)
    }

    fn set_grads(&mut self, grads: &[f32]) -> Result<(), String> {
        self.trainable("set_grads")?;
        if grads.len() != self.table.numel {
            return Err(format!(
                "{} gradients given, the model has {}",
                grads.len(),
                self.table.numel
            ));
        }
        let dev = self.dev.as_ref();
        dev.upload(self.grads.ptr(), bytemuck::cast_slice(grads))
            .map_err(dev_err)?;
        // The lambdas' gradients accumulate in `dlambda_pairs` and are moved into `grads` at the step:
        // put the new values there too.
        for i in 0..self.config.n_layer {
            let pair = self.dlambda_pairs.at::<f32>(2 * i);
            dev.copy(pair, self.grad(Slot::ResidLambdas, 0).at::<f32>(i), F32)
                .map_err(dev_err)?;
            dev.copy(pair.at::<f32>(1), self.grad(Slot::X0Lambdas, 0).at::<f32>(i), F32)
                .map_err(dev_err)?;
        }
        Ok(())
    }

    fn logits(&mut self, ids: &[u32], b: usize, t: usize) -> Result<Vec<f32>, String> {
        self.forward(ids, None, b, t, 0.0, None)?;
        let (v, vp) = (self.config.vocab_size, self.config.padded_vocab());
        let a = &self.arena.as_ref().expect("arena allocated").acts;
        let raw: Vec<bf16> = self.dev.download_vec(a.logits, b * t * vp).map_err(dev_err)?;
        Ok(raw
            .chunks_exact(vp)
            .flat_map(|r| r[..v].iter().map(|z| softcap(z.to_f32())))
            .collect())
    }

    fn last_logits(&mut self, ids: &[u32], b: usize, t: usize) -> Result<Vec<f32>, String> {
        self.forward(ids, None, b, t, 0.0, None)?;
        let (v, vp) = (self.config.vocab_size, self.config.padded_vocab());
        let a = &self.arena.as_ref().expect("arena allocated").acts;
        let mut out = Vec::with_capacity(b * v);
        for r in 0..b {
            let row: Vec<bf16> = self
                .dev
                .download_vec(a.logits.at::<bf16>(((r + 1) * t - 1) * vp), v)
                .map_err(dev_err)?;
            out.extend(row.iter().map(|z| softcap(z.to_f32())));
        }
        Ok(out)
    }

    fn step(&mut self, settings: &StepSettings) -> Result<(), String> {
        self.trainable("optimizer step")?;
        if self.zero.is_some() {
            return self.run_sharded_step(settings);
        }
        self.run_step(settings)
            .map_err(|e| format!("{}: optimizer step: {e}", self.dev.name()))
    }

    fn params(&self) -> Result<Vec<f32>, String> {
        if self.inference.is_some() {
            // The bf16 weights: what this model computes with.
            let w: Vec<bf16> = self
                .dev
                .download_vec(self.params_bf16.ptr(), self.table.numel)
                .map_err(dev_err)?;
            let mut p: Vec<f32> = w.iter().map(|x| x.to_f32()).collect();
            let master: Vec<f32> = self
                .dev
                .download_vec(self.params.ptr(), self.params.bytes() / F32)
                .map_err(dev_err)?;
            for &(slot, k, off) in self.inference.iter().flatten() {
                let r = self.table.range(slot, k);
                let n = r.len();
                p[r].copy_from_slice(&master[off..off + n]);
            }
            return Ok(p);
        }
        self.dev
            .download_vec::<f32>(self.params.ptr(), self.table.numel)
            .map_err(dev_err)
    }

    fn optimizer_state(&mut self) -> Result<BTreeMap<String, Tensor>, String> {
        self.trainable("optimizer state")?;
        if self.zero.is_some() {
            return self.sharded_state();
        }
        self.sync_state_to_host().map_err(dev_err)?;
        Ok(self.opt.state_tensors())
    }

    fn load_optimizer_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), String> {
        self.trainable("optimizer state")?;
        if self.zero.is_some() {
            return self.load_sharded_state(state);
        }
        self.opt.load_state_tensors(state)?;
        let dev = self.dev.as_ref();
        for (host, buf) in self.opt.state_buffers().into_iter().zip(&self.state) {
            dev.upload(buf.ptr(), bytemuck::cast_slice(host)).map_err(dev_err)?;
        }
        Ok(())
    }
}
