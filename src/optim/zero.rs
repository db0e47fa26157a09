//! MuonAdamW sharded across data-parallel ranks as upstream does it (spec §2.4, "ZeRO-2-like"):
//!
//! - AdamW parameters under 1024 elements: gradient all-reduced (average); every rank updates the whole
//!   parameter with its own full copy of the state.
//! - Larger AdamW parameters: gradient reduce-scattered along dim 0; rank r owns rows
//!   `[r·S0/W, (r+1)·S0/W)`, keeps Adam state for those rows only, updates them, and the updated rows are
//!   all-gathered into the full parameter. Upstream requires `S0 % W == 0`; here a parameter whose rows do not
//!   divide (the vocabulary is padded to 64, so 3 ranks) is treated like a small one instead of failing.
//! - Each Muon group (K same-shaped matrices, upstream order): `chunk = ceil(K/W)`, the gradients stacked into
//!   `chunk·W` matrices (zero padding) and reduce-scattered; rank r owns matrices `[r·chunk, min(K,(r+1)·chunk))`
//!   with their momentum and second moment, orthogonalises only those, and the updated chunk is all-gathered
//!   back into every rank's parameters.
//!
//! The math per element or per matrix is exactly [`MuonAdamW`]'s (the same functions), so with the same
//! averaged gradient each rank's state is bit for bit its slice or chunk of the one-rank state. Phases run one
//! parameter after another (the CPU backend has nothing to overlap with).

use super::adamw::{adamw_update, AdamHyper};
use super::muon::{muon_update, second_moment_len, MuonHyper};
use super::state::STEP_TENSOR;
use super::{GroupKind, MuonAdamW, SetupArgs, StepJob, StepSettings};
use crate::dist::{Collectives, CommResult, ReduceOp};
use crate::params::{ParamTable, Slot};
use crate::safetensors::{Dtype, Tensor};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

/// AdamW parameters from this many elements on are sharded by rows (upstream's threshold).
pub const SHARD_MIN_NUMEL: usize = 1024;
/// Names of the tensors that record which shard a state file is.
pub const WORLD_TENSOR: &str = "zero.world_size";
pub const RANK_TENSOR: &str = "zero.rank";

/// One AdamW parameter's share on this rank.
#[derive(Clone, Debug)]
struct AdamPiece {
    name: String,
    slot: Slot,
    shape: Vec<usize>,
    /// The parameter in the flat buffer.
    range: Range<usize>,
    /// The part this rank updates (all of `range` when not sharded).
    owned: Range<usize>,
    sharded: bool,
    /// Offset in `exp_avg`/`exp_avg_sq`.
    state: usize,
}

/// One Muon group's share on this rank.
#[derive(Clone, Debug)]
struct MuonShard {
    /// (name, slot, flat range) of every matrix of the group, upstream order.
    params: Vec<(String, Slot, Range<usize>)>,
    dims: (usize, usize),
    chunk: usize,
    /// Indices into `params` this rank owns.
    owned: Range<usize>,
    /// Offsets of the owned matrices' state: momentum (m·n each), second moment.
    state: usize,
    second: usize,
}

/// One phase of a sharded step as [`ShardedMuonAdamW::begin_step_jobs`] lists it.
#[derive(Clone, Debug)]
pub enum ShardJob {
    /// An AdamW parameter at `range`: `sharded`, its gradient is reduce-scattered, this rank updates `owned`
    /// (moments at `state..` of its exp_avg/exp_avg_sq) and the rows are all-gathered; otherwise the gradient
    /// is all-reduced and this rank updates all of it (`owned == range`).
    AdamW {
        range: Range<usize>,
        owned: Range<usize>,
        sharded: bool,
        state: usize,
        hyper: AdamHyper,
    },
    /// A Muon group: its matrices' flat ranges (upstream order), stacked `chunk × world` (zero padded) for
    /// the reduce-scatter; this rank updates matrices `owned` (momentum at `state..`, second moments at
    /// `second..`, in that order) and the chunks are all-gathered.
    Muon {
        matrices: Vec<Range<usize>>,
        dims: (usize, usize),
        chunk: usize,
        owned: Range<usize>,
        state: usize,
        second: usize,
        hyper: MuonHyper,
    },
}

/// The sharded optimizer of one rank.
pub struct ShardedMuonAdamW {
    /// Groups, hyperparameters and the step count (its own state buffers are left empty).
    inner: MuonAdamW,
    rank: usize,
    world: usize,
    adam: Vec<AdamPiece>,
    muon: Vec<MuonShard>,
    exp_avg: Vec<f32>,
    exp_avg_sq: Vec<f32>,
    momentum: Vec<f32>,
    second_moment: Vec<f32>,
}

impl ShardedMuonAdamW {
    pub fn new(table: &ParamTable, args: &SetupArgs, rank: usize, world: usize) -> ShardedMuonAdamW {
        assert!(world > 0 && rank < world, "rank {rank} of {world}");
        let mut inner = MuonAdamW::new(table, args);
        // This rank's state lives here, not in the full-size buffers.
        for b in [
            &mut inner.exp_avg,
            &mut inner.exp_avg_sq,
            &mut inner.momentum,
            &mut inner.second_moment,
        ] {
            *b = Vec::new();
        }
        let by_name: HashMap<&str, _> = table.params.iter().map(|p| (p.name.as_str(), p)).collect();
        let (mut adam, mut muon) = (Vec::new(), Vec::new());
        let (mut adam_len, mut muon_len, mut second_len) = (0, 0, 0);
        for g in &inner.groups {
            match g.kind {
                GroupKind::AdamW { .. } => {
                    for name in &g.params {
                        let p = by_name[name.as_str()];
                        let rows = p.shape[0];
                        let numel = p.range.len();
                        let sharded = numel >= SHARD_MIN_NUMEL && rows % world == 0;
                        let owned = if sharded {
                            let per = numel / world;
                            p.range.start + rank * per..p.range.start + (rank + 1) * per
                        } else {
                            p.range.clone()
                        };
                        adam.push(AdamPiece {
                            name: name.clone(),
                            slot: p.slot,
                            shape: p.shape.clone(),
                            range: p.range.clone(),
                            state: adam_len,
                            owned: owned.clone(),
                            sharded,
                        });
                        adam_len += owned.len();
                    }
                }
                GroupKind::Muon { shape, .. } => {
                    let params: Vec<_> = g
                        .params
                        .iter()
                        .map(|n| {
                            let p = by_name[n.as_str()];
                            (n.clone(), p.slot, p.range.clone())
                        })
                        .collect();
                    let k = params.len();
                    let chunk = k.div_ceil(world);
                    let owned = (rank * chunk).min(k)..((rank + 1) * chunk).min(k);
                    muon.push(MuonShard {
                        params,
                        dims: shape,
                        chunk,
                        owned: owned.clone(),
                        state: muon_len,
                        second: second_len,
                    });
                    muon_len += owned.len() * shape.0 * shape.1;
                    second_len += owned.len() * second_moment_len(shape.0, shape.1);
                }
            }
        }
        ShardedMuonAdamW {
            inner,
            rank,
            world,
            adam,
            muon,
            exp_avg: vec![0.0; adam_len],
            exp_avg_sq: vec![0.0; adam_len],
            momentum: vec![0.0; muon_len],
            second_moment: vec![0.0; second_len],
        }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world
    }

    pub fn step_count(&self) -> u64 {
        self.inner.step_count()
    }

    /// The optimizer's groups and flags (e.g. `bf16_orthogonalization`).
    pub fn inner_mut(&mut self) -> &mut MuonAdamW {
        &mut self.inner
    }

    /// fp32 elements of optimizer state this rank holds (the memory the sharding saves).
    pub fn state_len(&self) -> usize {
        2 * self.exp_avg.len() + self.momentum.len() + self.second_moment.len()
    }

    /// Per Muon group: (matrix shape, chunk = ceil(K/W), matrices this rank owns).
    pub fn muon_chunks(&self) -> Vec<((usize, usize), usize, usize)> {
        self.muon.iter().map(|m| (m.dims, m.chunk, m.owned.len())).collect()
    }

    /// fp32 elements of the largest AdamW gradient slice this rank receives from a reduce-scatter.
    pub fn adam_shard_lens(&self) -> Vec<usize> {
        self.adam.iter().map(|p| p.owned.len()).collect()
    }

    /// Counts a step and returns the hyperparameters of every slot for it.
    fn begin_hypers(&mut self, s: &StepSettings) -> (HashMap<Slot, AdamHyper>, HashMap<Slot, MuonHyper>) {
        let mut adam_hyper: HashMap<Slot, AdamHyper> = HashMap::new();
        let mut muon_hyper: HashMap<Slot, MuonHyper> = HashMap::new();
        for job in self.inner.begin_step(s) {
            match job {
                StepJob::AdamW { range, hyper, .. } => {
                    for p in self.adam.iter().filter(|p| range.contains(&p.range.start)) {
                        adam_hyper.insert(p.slot, hyper);
                    }
                }
                StepJob::Muon { range, hyper, .. } => {
                    for m in &self.muon {
                        for (_, slot, r) in &m.params {
                            if range.contains(&r.start) {
                                muon_hyper.insert(*slot, hyper);
                            }
                        }
                    }
                }
            }
        }
        (adam_hyper, muon_hyper)
    }

    /// Counts a step and returns its phases with this rank's share, in the order [`ShardedMuonAdamW::step`]
    /// runs them: for a device that runs the update kernels itself and only needs the plan (the collectives,
    /// offsets into its own copies of the four state buffers, the hyperparameters).
    pub fn begin_step_jobs(&mut self, s: &StepSettings) -> Vec<ShardJob> {
        let (adam_hyper, muon_hyper) = self.begin_hypers(s);
        let mut jobs = Vec::new();
        for p in &self.adam {
            jobs.push(ShardJob::AdamW {
                range: p.range.clone(),
                owned: p.owned.clone(),
                sharded: p.sharded && self.world > 1,
                state: p.state,
                hyper: adam_hyper[&p.slot],
            });
        }
        for m in &self.muon {
            jobs.push(ShardJob::Muon {
                matrices: m.params.iter().map(|(_, _, r)| r.clone()).collect(),
                dims: m.dims,
                chunk: m.chunk,
                owned: m.owned.clone(),
                state: m.state,
                second: m.second,
                hyper: muon_hyper[&m.params[0].1],
            });
        }
        jobs
    }

    /// Lengths of this rank's four state buffers (exp_avg, exp_avg_sq, momentum, second moment).
    pub fn state_lens(&self) -> [usize; 4] {
        [
            self.exp_avg.len(),
            self.exp_avg_sq.len(),
            self.momentum.len(),
            self.second_moment.len(),
        ]
    }

    /// This rank's four state buffers (for a device that keeps the state and syncs it for checkpoints).
    pub fn state_buffers_mut(&mut self) -> [&mut [f32]; 4] {
        [
            &mut self.exp_avg,
            &mut self.exp_avg_sq,
            &mut self.momentum,
            &mut self.second_moment,
        ]
    }

    pub fn state_buffers(&self) -> [&[f32]; 4] {
        [&self.exp_avg, &self.exp_avg_sq, &self.momentum, &self.second_moment]
    }

    /// One step with this rank's (not yet averaged) gradients: the collectives average them across ranks,
    /// every rank updates its shard, and the updated parameters are gathered so that `params` is the same
    /// full vector on every rank afterwards.
    pub fn step(
        &mut self,
        params: &mut [f32],
        grads: &[f32],
        s: &StepSettings,
        comm: &mut dyn Collectives,
    ) -> CommResult<()> {
        self.step_prereduced(params, grads, s, comm, &mut HashMap::new())
    }

    /// The sharded AdamW parameters whose gradient can be reduce-scattered on its own, before the step:
    /// (start of the parameter in the flat buffer, length of this rank's share).
    pub fn early_reduce_scatters(&self) -> HashMap<usize, usize> {
        if self.world == 1 {
            return HashMap::new();
        }
        self.adam
            .iter()
            .filter(|p| p.sharded)
            .map(|p| (p.range.start, p.owned.len()))
            .collect()
    }

    /// [`ShardedMuonAdamW::step`] where the reduce-scatter of some sharded AdamW gradients already ran
    /// (during the backward pass: overlap): `pre` maps a parameter's start (see
    /// [`ShardedMuonAdamW::early_reduce_scatters`]) to this rank's averaged share, and is emptied. The same
    /// collective on the same final gradient gives the same share, so the step is bitwise the same.
    pub fn step_prereduced(
        &mut self,
        params: &mut [f32],
        grads: &[f32],
        s: &StepSettings,
        comm: &mut dyn Collectives,
        pre: &mut HashMap<usize, Vec<f32>>,
    ) -> CommResult<()> {
        assert_eq!(comm.world_size(), self.world, "communicator world size");
        let (adam_hyper, muon_hyper) = self.begin_hypers(s);
        let single = self.world == 1;
        for p in &self.adam {
            let h = adam_hyper[&p.slot];
            let st = p.state..p.state + p.owned.len();
            let mut g = vec![0f32; p.owned.len()];
            if single {
                g.copy_from_slice(&grads[p.range.clone()]);
            } else if let Some(share) = pre.remove(&p.range.start) {
                crate::dist::check_len("pre-reduced share", share.len(), g.len())?;
                g = share;
            } else if p.sharded {
                comm.reduce_scatter(&grads[p.range.clone()], &mut g, ReduceOp::Avg)?;
            } else {
                g.copy_from_slice(&grads[p.range.clone()]);
                comm.all_reduce(&mut g, ReduceOp::Avg)?;
            }
            adamw_update(
                &mut params[p.owned.clone()],
                &g,
                &mut self.exp_avg[st.clone()],
                &mut self.exp_avg_sq[st],
                &h,
            );
            if p.sharded && !single {
                let mine = params[p.owned.clone()].to_vec();
                comm.all_gather(&mine, &mut params[p.range.clone()])?;
            }
        }
        for m in &self.muon {
            let (rows, cols) = m.dims;
            let mn = rows * cols;
            let s_len = second_moment_len(rows, cols);
            let h = muon_hyper[&m.params[0].1];
            let mut chunk_grads = vec![0f32; m.chunk * mn];
            if single {
                for (i, (_, _, r)) in m.params.iter().enumerate() {
                    chunk_grads[i * mn..(i + 1) * mn].copy_from_slice(&grads[r.clone()]);
                }
            } else {
                let mut stacked = vec![0f32; m.chunk * self.world * mn];
                for (i, (_, _, r)) in m.params.iter().enumerate() {
                    stacked[i * mn..(i + 1) * mn].copy_from_slice(&grads[r.clone()]);
                }
                comm.reduce_scatter(&stacked, &mut chunk_grads, ReduceOp::Avg)?;
            }
            // The owned matrices, updated in parallel (each with its own state).
            let mut updated = vec![0f32; m.chunk * mn];
            let n_owned = m.owned.len();
            for (j, i) in m.owned.clone().enumerate() {
                updated[j * mn..(j + 1) * mn].copy_from_slice(&params[m.params[i].2.clone()]);
            }
            let mom = &mut self.momentum[m.state..m.state + n_owned * mn];
            let sec = &mut self.second_moment[m.second..m.second + n_owned * s_len];
            updated[..n_owned * mn]
                .par_chunks_mut(mn)
                .zip(chunk_grads.par_chunks(mn))
                .zip(mom.par_chunks_mut(mn))
                .zip(sec.par_chunks_mut(s_len))
                .for_each(|(((p, g), mo), se)| muon_update(p, g, mo, se, m.dims, &h));
            if single {
                for (j, i) in m.owned.clone().enumerate() {
                    params[m.params[i].2.clone()].copy_from_slice(&updated[j * mn..(j + 1) * mn]);
                }
            } else {
                let mut gathered = vec![0f32; m.chunk * self.world * mn];
                comm.all_gather(&updated, &mut gathered)?;
                for (i, (_, _, r)) in m.params.iter().enumerate() {
                    params[r.clone()].copy_from_slice(&gathered[i * mn..(i + 1) * mn]);
                }
            }
        }
        Ok(())
    }

    /// This rank's state as named tensors: upstream's state names for the rows and matrices it owns (shapes
    /// of the owned part), the step count, and which shard of how many ranks this is.
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (e, values) in self.layout() {
            let v = match values.0 {
                0 => &self.exp_avg,
                1 => &self.exp_avg_sq,
                2 => &self.momentum,
                _ => &self.second_moment,
            };
            out.insert(e.0, Tensor::from_f32(e.1, &v[values.1]));
        }
        let int = |v: i64| Tensor {
            dtype: Dtype::I64,
            shape: vec![1],
            data: v.to_le_bytes().to_vec(),
        };
        out.insert(STEP_TENSOR.to_string(), int(self.inner.step as i64));
        out.insert(WORLD_TENSOR.to_string(), int(self.world as i64));
        out.insert(RANK_TENSOR.to_string(), int(self.rank as i64));
        out
    }

    /// ((name, shape), (buffer index, range)) of every state tensor this rank holds.
    #[allow(clippy::type_complexity)]
    fn layout(&self) -> Vec<((String, Vec<usize>), (usize, Range<usize>))> {
        let mut out = Vec::new();
        for p in &self.adam {
            let mut shape = p.shape.clone();
            if p.sharded {
                shape[0] /= self.world;
            }
            let r = p.state..p.state + p.owned.len();
            out.push(((format!("exp_avg.{}", p.name), shape.clone()), (0, r.clone())));
            out.push(((format!("exp_avg_sq.{}", p.name), shape), (1, r)));
        }
        for m in &self.muon {
            let (rows, cols) = m.dims;
            let s_len = second_moment_len(rows, cols);
            let s_shape = if rows >= cols { vec![rows, 1] } else { vec![1, cols] };
            for (j, i) in m.owned.clone().enumerate() {
                let name = &m.params[i].0;
                let at = m.state + j * rows * cols;
                let sat = m.second + j * s_len;
                out.push((
                    (format!("momentum_buffer.{name}"), vec![rows, cols]),
                    (2, at..at + rows * cols),
                ));
                out.push((
                    (format!("second_momentum_buffer.{name}"), s_shape.clone()),
                    (3, sat..sat + s_len),
                ));
            }
        }
        out
    }

    /// Restores this rank's state. A file written by another rank or for another world size is an error
    /// naming both; a one-rank file without the shard tensors is accepted by a one-rank run.
    pub fn load_state_tensors(&mut self, tensors: &BTreeMap<String, Tensor>) -> Result<(), String> {
        let int = |name: &str| -> Result<Option<i64>, String> {
            match tensors.get(name) {
                None => Ok(None),
                Some(t) if matches!(t.dtype, Dtype::I64 | Dtype::I32) && t.numel() == 1 => Ok(Some(t.to_i64()[0])),
                Some(t) => Err(format!(
                    "optimizer state: '{name}' must be one integer, found {:?} of shape {:?}",
                    t.dtype, t.shape
                )),
            }
        };
        let world = int(WORLD_TENSOR)?.unwrap_or(1) as usize;
        let rank = int(RANK_TENSOR)?.unwrap_or(0) as usize;
        if world != self.world {
            return Err(format!(
                "optimizer state was saved by a run of {world} rank(s), this run has {}: resume with {world} \
                 rank(s) (the optimizer state is sharded; resharding is not supported)",
                self.world
            ));
        }
        if rank != self.rank {
            return Err(format!(
                "optimizer state file belongs to rank {rank}, loaded by rank {}",
                self.rank
            ));
        }
        let step = int(STEP_TENSOR)?.ok_or_else(|| format!("optimizer state: tensor '{STEP_TENSOR}' is missing"))?;
        if step < 0 {
            return Err(format!("optimizer state: '{STEP_TENSOR}' is negative ({step})"));
        }
        let layout = self.layout();
        let mut fresh = [
            vec![0f32; self.exp_avg.len()],
            vec![0f32; self.exp_avg_sq.len()],
            vec![0f32; self.momentum.len()],
            vec![0f32; self.second_moment.len()],
        ];
        for ((name, shape), (buf, range)) in &layout {
            let t = tensors.get(name).ok_or_else(|| {
                format!(
                    "optimizer state (rank {rank} of {world}): tensor '{name}' is missing (expected shape {shape:?})"
                )
            })?;
            if &t.shape != shape || !matches!(t.dtype, Dtype::F32 | Dtype::BF16 | Dtype::F16) {
                return Err(format!(
                    "optimizer state: tensor '{name}' is {:?} of shape {:?}, expected float of shape {shape:?}",
                    t.dtype, t.shape
                ));
            }
            fresh[*buf][range.clone()].copy_from_slice(&t.to_f32());
        }
        let known =
            |k: &str| [STEP_TENSOR, WORLD_TENSOR, RANK_TENSOR].contains(&k) || layout.iter().any(|((n, _), _)| n == k);
        if let Some(extra) = tensors.keys().find(|k| !known(k)) {
            return Err(format!(
                "optimizer state: unexpected tensor '{extra}' (not state of rank {} of {})",
                self.rank, self.world
            ));
        }
        let [a, b, c, d] = fresh;
        self.exp_avg = a;
        self.exp_avg_sq = b;
        self.momentum = c;
        self.second_moment = d;
        self.inner.step = step as u64;
        Ok(())
    }
}
