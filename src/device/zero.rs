//! ZeRO-2 on a kernel device, as the CPU reference shards (`optim::zero`, upstream's scheme): small AdamW
//! tensors all-reduced and updated whole; large AdamW tensors reduce-scattered along dim 0, this rank's rows
//! updated with the Adam state of those rows only, then all-gathered; each Muon group stacked, chunked across
//! the ranks (this rank orthogonalises only its chunk, with the state of its chunk), then all-gathered.
//!
//! The collectives work on host buffers (the CPU ring, or NCCL's staging path): the gradients are downloaded
//! once per step, each phase's reduced share is uploaded next to the parameter it updates, and the update
//! kernels are the one-rank kernels run on the owned rows or matrices (elementwise AdamW, per-matrix Muon),
//! so with the same averaged gradient every rank's state is its slice or chunk of the one-rank state.

use super::kernels::adamw::adamw_step;
use super::kernels::elementwise::cast_f32_to_bf16;
use super::kernels::muon::{muon_step, MuonScratch, Stack};
use super::memory::F32;
use super::model::{dev_err, KernelModel};
use super::DeviceError;
use crate::dist::{CommError, ReduceOp, SharedComm};
use crate::optim::muon::second_moment_len;
use crate::optim::zero::{ShardJob, ShardedMuonAdamW};
use crate::optim::{SetupArgs, StepSettings};
use crate::safetensors::Tensor;
use half::bf16;
use std::collections::BTreeMap;
use std::ops::Range;

/// This rank's share of the optimizer and the collectives it steps with.
pub(super) struct DeviceZero {
    pub(super) opt: ShardedMuonAdamW,
    pub(super) comm: SharedComm,
}

/// Why a sharded step failed: a collective (named) or a kernel.
enum StepError {
    Comm(&'static str, CommError),
    Dev(DeviceError),
}

impl From<DeviceError> for StepError {
    fn from(e: DeviceError) -> StepError {
        StepError::Dev(e)
    }
}

/// Runs of consecutive owned matrices that also sit back to back in the flat buffer: (first owned index, count).
fn contiguous_runs(matrices: &[Range<usize>], owned: &Range<usize>) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for i in owned.clone() {
        match runs.last_mut() {
            Some((first, count)) if matrices[*first + *count - 1].end == matrices[i].start => *count += 1,
            _ => runs.push((i, 1)),
        }
    }
    runs
}

impl KernelModel {
    /// Makes this model one rank of `world` with its optimizer sharded (ZeRO-2): the full-size state buffers
    /// are replaced by this rank's share; every later step averages the gradients over the ranks.
    pub fn data_parallel(
        mut self,
        optimizer: &SetupArgs,
        comm: SharedComm,
        rank: usize,
        world: usize,
    ) -> Result<KernelModel, String> {
        self.trainable("data parallel")?;
        let mut opt = ShardedMuonAdamW::new(&self.table, optimizer, rank, world);
        opt.inner_mut().bf16_orthogonalization = true;
        let dev = self.dev.as_ref();
        let mut state = Vec::new();
        for len in opt.state_lens() {
            let b = dev.alloc(len.max(1) * F32).map_err(dev_err)?;
            dev.zero(b.ptr(), len.max(1) * F32).map_err(dev_err)?;
            state.push(b);
        }
        let [a, b, c, d]: [_; 4] = state.try_into().map_err(|_| "four state buffers".to_string())?;
        self.state = [a, b, c, d];
        // Scratch for the stacks this rank orthogonalises.
        let mut scratch: Vec<(Stack, MuonScratch)> = Vec::new();
        let settings = StepSettings {
            lr_multiplier: 1.0,
            muon_momentum: 0.0,
            muon_weight_decay: 0.0,
        };
        let mut probe = ShardedMuonAdamW::new(&self.table, optimizer, rank, world);
        for job in probe.begin_step_jobs(&settings) {
            if let ShardJob::Muon {
                matrices,
                dims: (m, n),
                owned,
                ..
            } = job
            {
                for (_, k) in contiguous_runs(&matrices, &owned) {
                    let s = Stack { k, m, n };
                    if !scratch.iter().any(|(t, _)| *t == s) {
                        scratch.push((s, MuonScratch::new(dev, s).map_err(dev_err)?));
                    }
                }
            }
        }
        self.muon_scratch = scratch;
        self.zero = Some(DeviceZero { opt, comm });
        Ok(self)
    }

    /// One sharded step (see the module notes).
    pub(super) fn run_sharded_step(&mut self, settings: &StepSettings) -> Result<(), String> {
        let mut zero = self.zero.take().expect("a sharded model");
        let result = self.sharded_phases(&mut zero, settings);
        self.zero = Some(zero);
        let rank = self.zero.as_ref().map_or(0, |z| z.opt.rank());
        result.map_err(|e| match e {
            StepError::Comm(what, e) => format!("rank {rank}: {what}: {e}"),
            StepError::Dev(e) => format!("{}: optimizer step: {e}", self.dev.name()),
        })
    }

    fn sharded_phases(&mut self, zero: &mut DeviceZero, settings: &StepSettings) -> Result<(), StepError> {
        self.flush_lambda_grads()?;
        let dev = self.dev.as_ref();
        let numel = self.table.numel;
        let grads: Vec<f32> = dev.download_vec(self.grads.ptr(), numel)?;
        let jobs = zero.opt.begin_step_jobs(settings);
        let mut comm = zero.comm.lock().expect("collectives poisoned");
        let world = comm.world_size();
        let [m, v, mom, second] = &self.state;
        let (params, params_bf16, gbuf) = (&self.params, &self.params_bf16, &self.grads);
        for job in jobs {
            match job {
                ShardJob::AdamW {
                    range,
                    owned,
                    sharded,
                    state,
                    hyper,
                } => {
                    let mut g = vec![0f32; owned.len()];
                    if sharded {
                        comm.reduce_scatter(&grads[range.clone()], &mut g, ReduceOp::Avg)
                            .map_err(|e| StepError::Comm("gradient reduce-scatter", e))?;
                    } else {
                        g.copy_from_slice(&grads[range.clone()]);
                        if world > 1 {
                            comm.all_reduce(&mut g, ReduceOp::Avg)
                                .map_err(|e| StepError::Comm("gradient all-reduce", e))?;
                        }
                    }
                    dev.upload(gbuf.at::<f32>(owned.start), bytemuck::cast_slice(&g))?;
                    adamw_step(
                        dev,
                        params.at::<f32>(owned.start),
                        Some(params_bf16.at::<bf16>(owned.start)),
                        gbuf.at::<f32>(owned.start),
                        m.at::<f32>(state),
                        v.at::<f32>(state),
                        owned.len(),
                        &hyper,
                    )?;
                    if sharded {
                        let mine: Vec<f32> = dev.download_vec(params.at::<f32>(owned.start), owned.len())?;
                        let mut full = vec![0f32; range.len()];
                        comm.all_gather(&mine, &mut full)
                            .map_err(|e| StepError::Comm("parameter all-gather", e))?;
                        dev.upload(params.at::<f32>(range.start), bytemuck::cast_slice(&full))?;
                        cast_f32_to_bf16(
                            dev,
                            params_bf16.at::<bf16>(range.start),
                            params.at::<f32>(range.start),
                            range.len(),
                        )?;
                    }
                }
                ShardJob::Muon {
                    matrices,
                    dims: (rows, cols),
                    chunk,
                    owned,
                    state,
                    second: s_off,
                    hyper,
                } => {
                    let mn = rows * cols;
                    let s_len = second_moment_len(rows, cols);
                    let mut chunk_grads = vec![0f32; chunk * mn];
                    if world == 1 {
                        for (i, r) in matrices.iter().enumerate() {
                            chunk_grads[i * mn..(i + 1) * mn].copy_from_slice(&grads[r.clone()]);
                        }
                    } else {
                        let mut stacked = vec![0f32; chunk * world * mn];
                        for (i, r) in matrices.iter().enumerate() {
                            stacked[i * mn..(i + 1) * mn].copy_from_slice(&grads[r.clone()]);
                        }
                        comm.reduce_scatter(&stacked, &mut chunk_grads, ReduceOp::Avg)
                            .map_err(|e| StepError::Comm("Muon gradient reduce-scatter", e))?;
                    }
                    for (j, i) in owned.clone().enumerate() {
                        dev.upload(
                            gbuf.at::<f32>(matrices[i].start),
                            bytemuck::cast_slice(&chunk_grads[j * mn..(j + 1) * mn]),
                        )?;
                    }
                    for (first, k) in contiguous_runs(&matrices, &owned) {
                        let stack = Stack { k, m: rows, n: cols };
                        let scratch = &self
                            .muon_scratch
                            .iter()
                            .find(|(s, _)| *s == stack)
                            .expect("scratch allocated for every owned run")
                            .1;
                        let j = first - owned.start;
                        let at = matrices[first].start;
                        muon_step(
                            dev,
                            scratch,
                            params.at::<f32>(at),
                            Some(params_bf16.at::<bf16>(at)),
                            gbuf.at::<f32>(at),
                            mom.at::<f32>(state + j * mn),
                            second.at::<f32>(s_off + j * s_len),
                            &hyper,
                        )?;
                    }
                    if world > 1 {
                        let mut updated = vec![0f32; chunk * mn];
                        for (j, i) in owned.clone().enumerate() {
                            dev.download(
                                params.at::<f32>(matrices[i].start),
                                bytemuck::cast_slice_mut(&mut updated[j * mn..(j + 1) * mn]),
                            )?;
                        }
                        let mut gathered = vec![0f32; chunk * world * mn];
                        comm.all_gather(&updated, &mut gathered)
                            .map_err(|e| StepError::Comm("Muon parameter all-gather", e))?;
                        for (i, r) in matrices.iter().enumerate() {
                            dev.upload(
                                params.at::<f32>(r.start),
                                bytemuck::cast_slice(&gathered[i * mn..(i + 1) * mn]),
                            )?;
                            cast_f32_to_bf16(dev, params_bf16.at::<bf16>(r.start), params.at::<f32>(r.start), mn)?;
                        }
                    }
                }
            }
        }
        drop(comm);
        dev.zero(self.grads.ptr(), numel * F32)?;
        dev.zero(self.dlambda_pairs.ptr(), 2 * self.config.n_layer * F32)?;
        self.refresh_lambda_pairs()?;
        dev.synchronize()?;
        Ok(())
    }

    /// This rank's optimizer shard as named tensors (the device state synced to the host first).
    pub(super) fn sharded_state(&mut self) -> Result<BTreeMap<String, Tensor>, String> {
        let zero = self.zero.as_mut().expect("a sharded model");
        let dev = self.dev.as_ref();
        for (host, buf) in zero.opt.state_buffers_mut().into_iter().zip(&self.state) {
            dev.download(buf.ptr(), bytemuck::cast_slice_mut(host))
                .map_err(dev_err)?;
        }
        Ok(zero.opt.state_tensors())
    }

    /// Restores this rank's optimizer shard.
    pub(super) fn load_sharded_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), String> {
        let zero = self.zero.as_mut().expect("a sharded model");
        zero.opt.load_state_tensors(state)?;
        let dev = self.dev.as_ref();
        for (host, buf) in zero.opt.state_buffers().into_iter().zip(&self.state) {
            dev.upload(buf.ptr(), bytemuck::cast_slice(host)).map_err(dev_err)?;
        }
        Ok(())
    }
}
