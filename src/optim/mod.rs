//! MuonAdamW (upstream `nanochat/optim.py` + `GPT.setup_optimizer`, spec §2): AdamW for the embeddings, the
//! head and the scalars, Muon for every matrix inside the transformer blocks, over the flat parameter buffer.
//!
//! Groups are built exactly as upstream (six AdamW groups, then one Muon group per distinct matrix shape,
//! ascending) so they can be compared with a fixture's `optimizer_param_groups`. Optimizer state lives in flat
//! fp32 buffers: Adam moments for the AdamW slots, the Muon momentum for the Muon slots (both in slot order, like
//! the parameter buffer) and the factored NorMuon second moment, one row or column vector per matrix.

pub mod adamw;
mod groups;
pub mod muon;
pub mod schedule;
mod state;
pub mod zero;

use crate::params::{Group, ParamRef, ParamTable, Slot};
use crate::profile::{self, PhaseGuard};
use adamw::{adamw_update, AdamHyper};
use muon::{lr_shape_factor, muon_update, second_moment_len, MuonHyper};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::ops::Range;

pub use groups::GroupSummary;
pub use schedule::Schedule;

/// Upstream's Muon momentum default (base_train overrides it every step through `StepSettings`).
pub const MUON_MOMENTUM: f64 = 0.95;
/// Polar Express iterations.
pub const MUON_NS_STEPS: usize = 5;
/// NorMuon second-moment EMA coefficient.
pub const MUON_BETA2: f64 = 0.9;
/// All AdamW groups use this eps.
pub const ADAM_EPS: f64 = 1e-10;

/// The arguments of upstream's `setup_optimizer`; `Default` gives its function defaults (base_train passes its
/// own, batch-scaled values).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetupArgs {
    pub unembedding_lr: f64,
    pub embedding_lr: f64,
    pub matrix_lr: f64,
    /// Muon weight decay (the AdamW groups have fixed ones).
    pub weight_decay: f64,
    pub scalar_lr: f64,
}

impl Default for SetupArgs {
    fn default() -> SetupArgs {
        SetupArgs {
            unembedding_lr: 0.004,
            embedding_lr: 0.2,
            matrix_lr: 0.02,
            weight_decay: 0.0,
            scalar_lr: 0.5,
        }
    }
}

/// What the schedules set before each step (spec §2.5): every group's lr is `initial_lr × lr_multiplier`; the
/// Muon groups take this momentum and weight decay; AdamW groups keep their own weight decay.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepSettings {
    pub lr_multiplier: f64,
    pub muon_momentum: f64,
    pub muon_weight_decay: f64,
}

impl StepSettings {
    /// A step at the peak learning rate with Muon's final momentum and no weight decay: the settings of the
    /// step benchmarks and of the profiled and recorded steps.
    pub const BENCH: StepSettings = StepSettings {
        lr_multiplier: 1.0,
        muon_momentum: 0.95,
        muon_weight_decay: 0.0,
    };
}

/// The kind and fixed hyperparameters of a group.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GroupKind {
    AdamW {
        betas: [f64; 2],
        eps: f64,
        weight_decay: f64,
    },
    Muon {
        /// (rows, cols) of every matrix in the group.
        shape: (usize, usize),
        ns_steps: usize,
        beta2: f64,
        /// The group's initial momentum and weight decay as upstream stores them; `step` uses `StepSettings`.
        momentum: f64,
        weight_decay: f64,
    },
}

/// One parameter group.
#[derive(Clone, Debug)]
pub struct ParamGroup {
    pub kind: GroupKind,
    pub initial_lr: f64,
    /// Upstream parameter names, in upstream's order within the group.
    pub params: Vec<String>,
    /// The layer-stacked slots the group updates.
    pub slots: Vec<Slot>,
}

/// Where one slot lives in the state buffers.
#[derive(Clone, Debug)]
struct SlotState {
    slot: Slot,
    /// The slot's whole stack in the parameter (and gradient) buffer.
    range: Range<usize>,
    /// Offset of the slot in `exp_avg`/`exp_avg_sq` (AdamW) or `momentum` (Muon).
    state: usize,
    /// Offset in `second_moment` (Muon only).
    second: usize,
    /// Stack size and (rows, cols) of each copy.
    count: usize,
    dims: (usize, usize),
    muon: bool,
}

/// The optimizer: groups, step count and state.
pub struct MuonAdamW {
    groups: Vec<ParamGroup>,
    slots: Vec<SlotState>,
    /// Every upstream parameter (names and places), for the checkpoint state.
    params: Vec<ParamRef>,
    numel: usize,
    /// Steps taken (upstream's per-parameter `step`, identical for all AdamW parameters).
    step: u64,
    exp_avg: Vec<f32>,
    exp_avg_sq: Vec<f32>,
    momentum: Vec<f32>,
    second_moment: Vec<f32>,
    /// Round the Muon orthogonalisation to bf16 as upstream does when the compute dtype is bf16.
    pub bf16_orthogonalization: bool,
}

/// The AdamW groups in upstream order: (group, slots in upstream's parameter order, betas, weight decay).
const ADAMW_GROUPS: [(Group, &[Slot], [f64; 2], f64); 6] = [
    (Group::AdamLmHead, &[Slot::LmHead], [0.8, 0.96], 0.01),
    (Group::AdamEmbedding, &[Slot::Wte], [0.8, 0.995], 0.001),
    (Group::AdamValueEmbeds, &[Slot::ValueEmbeds], [0.8, 0.995], 0.01),
    (Group::AdamResid, &[Slot::ResidLambdas], [0.8, 0.95], 0.05),
    (Group::AdamX0, &[Slot::X0Lambdas], [0.96, 0.95], 0.0),
    (
        Group::AdamSmear,
        &[Slot::SmearLambda, Slot::BackoutLambda, Slot::SmearGate],
        [0.8, 0.95],
        0.0,
    ),
];

impl MuonAdamW {
    pub fn new(table: &ParamTable, args: &SetupArgs) -> MuonAdamW {
        let dmodel_lr_scale = (table.config.n_embd as f64 / 768.0).powf(-0.5);
        let names_of = |slots: &[Slot]| -> Vec<String> {
            let mut names = Vec::new();
            for &slot in slots {
                let of_slot = table.params.iter().filter(|p| p.slot == slot);
                names.extend(of_slot.map(|p| p.name.clone()));
            }
            names
        };
        let mut groups = Vec::new();
        for (group, slots, betas, weight_decay) in ADAMW_GROUPS {
            for &s in slots {
                assert_eq!(table.slot(s).group, group, "slot {s:?} is in another group");
            }
            let initial_lr = match group {
                Group::AdamLmHead => args.unembedding_lr * dmodel_lr_scale,
                Group::AdamEmbedding => args.embedding_lr * dmodel_lr_scale,
                Group::AdamValueEmbeds => args.embedding_lr * dmodel_lr_scale * 0.5,
                Group::AdamResid => args.scalar_lr * 0.01,
                Group::AdamX0 => args.scalar_lr,
                // Fixed: neither the model width nor the batch size scales it.
                _ => 0.2,
            };
            groups.push(ParamGroup {
                kind: GroupKind::AdamW {
                    betas,
                    eps: ADAM_EPS,
                    weight_decay,
                },
                initial_lr,
                params: names_of(slots),
                slots: slots.to_vec(),
            });
        }
        for shape in table.muon_shapes() {
            let slots: Vec<Slot> = table
                .slots
                .iter()
                .filter(|s| s.group == Group::Muon && s.count() > 0 && s.matrix_dims() == shape)
                .map(|s| s.slot)
                .collect();
            // Upstream module order (layer by layer), not slot order.
            let params = table
                .params
                .iter()
                .filter(|p| slots.contains(&p.slot))
                .map(|p| p.name.clone())
                .collect();
            groups.push(ParamGroup {
                kind: GroupKind::Muon {
                    shape,
                    ns_steps: MUON_NS_STEPS,
                    beta2: MUON_BETA2,
                    momentum: MUON_MOMENTUM,
                    weight_decay: args.weight_decay,
                },
                initial_lr: args.matrix_lr,
                params,
                slots,
            });
        }

        // State offsets, in slot (= flat buffer) order.
        let (mut adam_len, mut muon_len, mut second_len) = (0, 0, 0);
        let mut slots = Vec::new();
        for spec in &table.slots {
            let dims = spec.matrix_dims();
            let muon = spec.group == Group::Muon;
            slots.push(SlotState {
                slot: spec.slot,
                range: spec.range(),
                state: if muon { muon_len } else { adam_len },
                second: second_len,
                count: spec.count(),
                dims,
                muon,
            });
            if muon {
                muon_len += spec.numel();
                second_len += spec.count() * second_moment_len(dims.0, dims.1);
            } else {
                adam_len += spec.numel();
            }
        }
        MuonAdamW {
            groups,
            slots,
            params: table.params.clone(),
            numel: table.numel,
            step: 0,
            exp_avg: vec![0.0; adam_len],
            exp_avg_sq: vec![0.0; adam_len],
            momentum: vec![0.0; muon_len],
            second_moment: vec![0.0; second_len],
            bf16_orthogonalization: false,
        }
    }

    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Sets the NorMuon beta2 of every Muon group (upstream's is 0.9; 1 disables the variance reduction).
    pub fn set_muon_beta2(&mut self, value: f64) {
        for g in &mut self.groups {
            if let GroupKind::Muon { beta2, .. } = &mut g.kind {
                *beta2 = value;
            }
        }
    }

    fn slot_state(&self, slot: Slot) -> &SlotState {
        self.slots
            .iter()
            .find(|s| s.slot == slot)
            .expect("every slot of the table has state")
    }

    /// Advances the step count and returns what this step does, one job per slot in group order: the slot's
    /// range of the flat parameter and gradient buffers, its offsets in the state buffers and the
    /// hyperparameters of its group under `s`. [`MuonAdamW::step`] runs the jobs on the host; a kernel device
    /// runs the same jobs on its copies of the buffers (see [`MuonAdamW::state_buffers`]).
    pub fn begin_step(&mut self, s: &StepSettings) -> Vec<StepJob> {
        self.step += 1;
        self.plan(s)
    }

    /// The jobs of a step at the current step count (what [`MuonAdamW::begin_step`] returns after counting
    /// the step); does not change the optimizer.
    pub fn plan(&self, s: &StepSettings) -> Vec<StepJob> {
        let mut jobs = Vec::new();
        for g in &self.groups {
            let lr = g.initial_lr * s.lr_multiplier;
            for &slot in &g.slots {
                let st = self.slot_state(slot);
                jobs.push(match g.kind {
                    GroupKind::AdamW {
                        betas,
                        eps,
                        weight_decay,
                    } => StepJob::AdamW {
                        range: st.range.clone(),
                        state: st.state,
                        hyper: AdamHyper {
                            lr: lr as f32,
                            beta1: betas[0] as f32,
                            beta2: betas[1] as f32,
                            eps: eps as f32,
                            weight_decay: weight_decay as f32,
                            step: self.step,
                        },
                    },
                    GroupKind::Muon {
                        shape: (m, n),
                        ns_steps,
                        beta2,
                        ..
                    } => StepJob::Muon {
                        range: st.range.clone(),
                        state: st.state,
                        second: st.second,
                        count: st.count,
                        dims: st.dims,
                        hyper: MuonHyper {
                            lr: (lr * lr_shape_factor(m, n)) as f32,
                            momentum: s.muon_momentum as f32,
                            weight_decay: s.muon_weight_decay as f32,
                            beta2: beta2 as f32,
                            ns_steps,
                            bf16: self.bf16_orthogonalization,
                        },
                    },
                });
            }
        }
        jobs
    }

    /// The four flat state buffers: (exp_avg, exp_avg_sq) of the AdamW slots, (momentum, second moment) of the
    /// Muon slots, indexed by the offsets of [`StepJob`].
    pub fn state_buffers(&self) -> [&[f32]; 4] {
        [&self.exp_avg, &self.exp_avg_sq, &self.momentum, &self.second_moment]
    }

    /// Drops the state vectors (an optimizer kept for its layout only, e.g. by an inference model).
    pub fn release_state(&mut self) {
        for v in [
            &mut self.exp_avg,
            &mut self.exp_avg_sq,
            &mut self.momentum,
            &mut self.second_moment,
        ] {
            *v = Vec::new();
        }
    }

    /// Mutable [`MuonAdamW::state_buffers`] (for a device that keeps the state and syncs it back).
    pub fn state_buffers_mut(&mut self) -> [&mut [f32]; 4] {
        [
            &mut self.exp_avg,
            &mut self.exp_avg_sq,
            &mut self.momentum,
            &mut self.second_moment,
        ]
    }

    /// One optimizer step: `params ← update(params, grads)` for every group, state advanced.
    pub fn step(&mut self, params: &mut [f32], grads: &[f32], s: &StepSettings) {
        assert!(
            params.len() == self.numel && grads.len() == self.numel,
            "MuonAdamW::step: params {} and grads {} must both have the table's {} elements",
            params.len(),
            grads.len(),
            self.numel
        );
        let _phase = PhaseGuard::enter("optimizer");
        let mut muon_jobs = Vec::new();
        for job in self.begin_step(s) {
            match job {
                StepJob::AdamW { range, state, hyper } => {
                    let _prof = profile::span("adamw");
                    let st = state..state + range.len();
                    adamw_update(
                        &mut params[range.clone()],
                        &grads[range],
                        &mut self.exp_avg[st.clone()],
                        &mut self.exp_avg_sq[st],
                        &hyper,
                    );
                }
                muon => muon_jobs.push(muon),
            }
        }
        let _prof = profile::span("muon");
        self.step_muon(params, grads, muon_jobs);
    }

    /// Runs every Muon matrix in parallel: each job gets disjoint slices of the parameter and state buffers.
    fn step_muon(&mut self, params: &mut [f32], grads: &[f32], mut jobs: Vec<StepJob>) {
        // Slot order is buffer order for the parameters and for both state buffers.
        jobs.sort_by_key(|j| j.range().start);
        let mut p_all = Carver::new(params);
        let mut m_all = Carver::new(&mut self.momentum);
        let mut s_all = Carver::new(&mut self.second_moment);
        let mut matrices = Vec::new();
        for job in &jobs {
            let StepJob::Muon {
                range,
                state,
                second,
                count,
                dims: (m, n),
                hyper,
            } = job
            else {
                unreachable!("only Muon jobs are passed here")
            };
            let s_len = second_moment_len(*m, *n);
            let p_slot = p_all.take(range.clone());
            let m_slot = m_all.take(*state..*state + range.len());
            let s_slot = s_all.take(*second..*second + count * s_len);
            let g_slot = &grads[range.clone()];
            for (((p, g), mom), sec) in p_slot
                .chunks_exact_mut(m * n)
                .zip(g_slot.chunks_exact(m * n))
                .zip(m_slot.chunks_exact_mut(m * n))
                .zip(s_slot.chunks_exact_mut(s_len))
            {
                matrices.push((p, g, mom, sec, (*m, *n), *hyper));
            }
        }
        matrices
            .into_par_iter()
            .for_each(|(p, g, mom, sec, dims, h)| muon_update(p, g, mom, sec, dims, &h));
    }
}

/// One slot's share of an optimizer step (see [`MuonAdamW::begin_step`]).
#[derive(Clone, Debug, PartialEq)]
pub enum StepJob {
    /// AdamW over `range` of the flat buffers; moments at `state..` of exp_avg and exp_avg_sq.
    AdamW {
        range: Range<usize>,
        state: usize,
        hyper: AdamHyper,
    },
    /// Muon over `count` stacked `dims` matrices at `range`; momentum at `state..`, the factored second moments
    /// (`second_moment_len(dims)` each) at `second..`.
    Muon {
        range: Range<usize>,
        state: usize,
        second: usize,
        count: usize,
        dims: (usize, usize),
        hyper: MuonHyper,
    },
}

impl StepJob {
    /// The slot's range of the parameter and gradient buffers.
    pub fn range(&self) -> &Range<usize> {
        match self {
            StepJob::AdamW { range, .. } | StepJob::Muon { range, .. } => range,
        }
    }
}

/// Hands out ascending, non-overlapping ranges of a buffer as disjoint `&mut` slices.
struct Carver<'a> {
    rest: &'a mut [f32],
    /// Buffer index of `rest[0]`.
    at: usize,
}

impl<'a> Carver<'a> {
    fn new(buf: &'a mut [f32]) -> Carver<'a> {
        Carver { rest: buf, at: 0 }
    }

    fn take(&mut self, r: Range<usize>) -> &'a mut [f32] {
        let rest = std::mem::take(&mut self.rest);
        let (_, tail) = rest.split_at_mut(r.start - self.at);
        let (out, tail) = tail.split_at_mut(r.len());
        self.rest = tail;
        self.at = r.end;
        out
    }
}
