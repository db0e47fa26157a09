//! Optimizer state for checkpoints: every state buffer as named tensors, under upstream's state names
//! (`exp_avg`, `exp_avg_sq`, `momentum_buffer`, `second_momentum_buffer`) prefixed to the parameter's upstream name,
//! plus the step count. Loading checks every name, shape and dtype before touching the optimizer.

use super::muon::second_moment_len;
use super::MuonAdamW;
use crate::safetensors::{Dtype, Tensor};
use std::collections::BTreeMap;
use std::ops::Range;

/// Name of the step-count tensor (I64, shape (1,)).
pub const STEP_TENSOR: &str = "step";

/// Which state buffer a tensor lives in.
#[derive(Clone, Copy)]
enum Buffer {
    ExpAvg,
    ExpAvgSq,
    Momentum,
    SecondMoment,
}

/// One expected state tensor: its name, shape and place.
struct Entry {
    name: String,
    shape: Vec<usize>,
    buffer: Buffer,
    range: Range<usize>,
}

impl MuonAdamW {
    /// The state tensors this optimizer holds for its model, in a fixed order.
    fn state_layout(&self) -> Vec<Entry> {
        let mut out = Vec::new();
        for p in &self.params {
            let st = self.slot_state(p.slot);
            let numel = p.range.len();
            let at = st.state + p.index * numel;
            let buffers = if st.muon {
                let (m, n) = st.dims;
                let len = second_moment_len(m, n);
                let shape = if m >= n { vec![m, 1] } else { vec![1, n] };
                let second = st.second + p.index * len;
                [
                    (Buffer::Momentum, "momentum_buffer", p.shape.clone(), at..at + numel),
                    (
                        Buffer::SecondMoment,
                        "second_momentum_buffer",
                        shape,
                        second..second + len,
                    ),
                ]
            } else {
                [
                    (Buffer::ExpAvg, "exp_avg", p.shape.clone(), at..at + numel),
                    (Buffer::ExpAvgSq, "exp_avg_sq", p.shape.clone(), at..at + numel),
                ]
            };
            for (buffer, kind, shape, range) in buffers {
                out.push(Entry {
                    name: format!("{kind}.{}", p.name),
                    shape,
                    buffer,
                    range,
                });
            }
        }
        out
    }

    fn buffer(&self, b: Buffer) -> &Vec<f32> {
        match b {
            Buffer::ExpAvg => &self.exp_avg,
            Buffer::ExpAvgSq => &self.exp_avg_sq,
            Buffer::Momentum => &self.momentum,
            Buffer::SecondMoment => &self.second_moment,
        }
    }

    /// Every state buffer as fp32 tensors, plus `step`.
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for e in self.state_layout() {
            let values = &self.buffer(e.buffer)[e.range];
            out.insert(e.name, Tensor::from_f32(e.shape, values));
        }
        let step = Tensor {
            dtype: Dtype::I64,
            shape: vec![1],
            data: (self.step as i64).to_le_bytes().to_vec(),
        };
        out.insert(STEP_TENSOR.to_string(), step);
        out
    }

    /// Restores the state written by `state_tensors`. Every tensor must be present with its exact shape and a
    /// float dtype (integer for `step`), and nothing else may be there; on error the optimizer is unchanged and
    /// the message names the tensor and what was expected.
    pub fn load_state_tensors(&mut self, tensors: &BTreeMap<String, Tensor>) -> Result<(), String> {
        let step_t = tensors
            .get(STEP_TENSOR)
            .ok_or_else(|| format!("optimizer state: tensor '{STEP_TENSOR}' is missing"))?;
        if !matches!(step_t.dtype, Dtype::I64 | Dtype::I32) || step_t.numel() != 1 {
            return Err(format!(
                "optimizer state: '{STEP_TENSOR}' must be one integer, found {:?} of shape {:?}",
                step_t.dtype, step_t.shape
            ));
        }
        let step = step_t.to_i64()[0];
        if step < 0 {
            return Err(format!("optimizer state: '{STEP_TENSOR}' is negative ({step})"));
        }
        let layout = self.state_layout();
        let mut fresh = [
            vec![0f32; self.exp_avg.len()],
            vec![0f32; self.exp_avg_sq.len()],
            vec![0f32; self.momentum.len()],
            vec![0f32; self.second_moment.len()],
        ];
        for e in &layout {
            let t = tensors.get(&e.name).ok_or_else(|| {
                format!(
                    "optimizer state: tensor '{}' is missing (expected shape {:?})",
                    e.name, e.shape
                )
            })?;
            if t.shape != e.shape {
                return Err(format!(
                    "optimizer state: tensor '{}' has shape {:?}, expected {:?}",
                    e.name, t.shape, e.shape
                ));
            }
            if !matches!(t.dtype, Dtype::F32 | Dtype::BF16 | Dtype::F16) {
                return Err(format!(
                    "optimizer state: tensor '{}' has dtype {:?}, expected a float type",
                    e.name, t.dtype
                ));
            }
            let values = t.to_f32();
            if values.len() != e.range.len() {
                return Err(format!(
                    "optimizer state: tensor '{}' holds {} values for shape {:?}",
                    e.name,
                    values.len(),
                    e.shape
                ));
            }
            fresh[e.buffer as usize][e.range.clone()].copy_from_slice(&values);
        }
        if let Some(extra) = tensors
            .keys()
            .find(|k| k.as_str() != STEP_TENSOR && !layout.iter().any(|e| &e.name == *k))
        {
            return Err(format!(
                "optimizer state: unexpected tensor '{extra}' (not state of this model's optimizer)"
            ));
        }
        let [exp_avg, exp_avg_sq, momentum, second_moment] = fresh;
        self.exp_avg = exp_avg;
        self.exp_avg_sq = exp_avg_sq;
        self.momentum = momentum;
        self.second_moment = second_moment;
        self.step = step as u64;
        Ok(())
    }
}
