//! AdamW with decoupled weight decay (spec §2.2; the same math as `torch.optim.AdamW` and upstream's fused
//! `adamw_step_fused`). Elementwise, so a whole layer-stacked slot is updated in one call.

use rayon::prelude::*;

/// Below this many elements a slot is updated on the calling thread (thread hand-off would cost more).
const PAR_CHUNK: usize = 1 << 15;

/// The scalars of one AdamW update, fp32 as upstream's 0-D hyperparameter tensors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamHyper {
    /// Current lr (`initial_lr × lr multiplier`).
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Step count t, already incremented for this step (1 on the first step).
    pub step: u64,
}

impl AdamHyper {
    /// The per-element constants: (decay factor `1 − lr·wd`, step size `lr / (1 − β1^t)`, `1 − β2^t`).
    fn factors(&self) -> (f32, f32, f32) {
        let t = self.step as f32;
        let bias1 = 1.0 - self.beta1.powf(t);
        let bias2 = 1.0 - self.beta2.powf(t);
        (1.0 - self.lr * self.weight_decay, self.lr / bias1, bias2)
    }
}

/// One AdamW step over `p` (params), `g` (grads), `m` (exp_avg), `v` (exp_avg_sq), all the same length:
/// `p ← p·(1 − lr·wd)`; `m ← lerp(m, g, 1−β1)`; `v ← lerp(v, g², 1−β2)`;
/// `p ← p − lr/(1−β1^t) · m / (sqrt(v/(1−β2^t)) + eps)`.
pub fn adamw_update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: &AdamHyper) {
    assert!(
        g.len() == p.len() && m.len() == p.len() && v.len() == p.len(),
        "adamw_update: params {}, grads {}, exp_avg {}, exp_avg_sq {} must have equal lengths",
        p.len(),
        g.len(),
        m.len(),
        v.len()
    );
    if p.len() < PAR_CHUNK {
        adamw_chunk(p, g, m, v, h);
    } else {
        p.par_chunks_mut(PAR_CHUNK)
            .zip(g.par_chunks(PAR_CHUNK))
            .zip(m.par_chunks_mut(PAR_CHUNK))
            .zip(v.par_chunks_mut(PAR_CHUNK))
            .for_each(|(((p, g), m), v)| adamw_chunk(p, g, m, v, h));
    }
}

fn adamw_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: &AdamHyper) {
    let (decay, step_size, bias2) = h.factors();
    let (b1, b2) = (1.0 - h.beta1, 1.0 - h.beta2);
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        *p *= decay;
        // torch's lerp: start + weight·(end − start).
        *m += b1 * (g - *m);
        *v += b2 * (g * g - *v);
        let denom = (*v / bias2).sqrt() + h.eps;
        *p -= step_size * (*m / denom);
    }
}
