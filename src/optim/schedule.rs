//! Pretraining schedules (spec §2.5, upstream base_train): the lr multiplier applied to every group's
//! `initial_lr`, the Muon momentum, and the Muon weight decay. `it` is the step index, 0..N-1.

use std::f64::consts::PI;

/// Step at which the Muon momentum warmup (0.85 → 0.97) ends.
pub const MUON_MOMENTUM_WARMUP: usize = 400;

/// The knobs of base_train's schedules (its CLI flags of the same names).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// N, the number of optimizer steps of the run.
    pub num_iterations: usize,
    /// Linear lr warmup length in steps.
    pub warmup_steps: usize,
    /// Fraction of N spent in the final linear lr decay.
    pub warmdown_ratio: f64,
    /// lr multiplier reached at the end of the warmdown.
    pub final_lr_frac: f64,
}

impl Schedule {
    /// base_train's defaults for a run of `num_iterations` steps.
    pub fn new(num_iterations: usize) -> Schedule {
        Schedule {
            num_iterations,
            warmup_steps: 40,
            warmdown_ratio: 0.65,
            final_lr_frac: 0.05,
        }
    }

    /// `round(warmdown_ratio * N)` with Python's rounding (ties to even), as upstream computes it.
    pub fn warmdown_steps(&self) -> usize {
        (self.warmdown_ratio * self.num_iterations as f64).round_ties_even() as usize
    }

    /// First step of the warmdown region (`N - W_dn`).
    fn warmdown_start(&self) -> usize {
        self.num_iterations.saturating_sub(self.warmdown_steps())
    }

    /// Linear warmup to 1, constant 1 up to and including step `N - W_dn`, then linear decay towards
    /// `final_lr_frac` (reached at it = N, one past the last step).
    pub fn lr_multiplier(&self, it: usize) -> f64 {
        let n = self.num_iterations;
        let w_dn = self.warmdown_steps();
        if it < self.warmup_steps {
            (it + 1) as f64 / self.warmup_steps as f64
        } else if it + w_dn <= n {
            1.0
        } else {
            let p = (n as f64 - it as f64) / w_dn as f64;
            p + (1.0 - p) * self.final_lr_frac
        }
    }

    /// 0.85 → 0.97 over the first 400 steps; 0.97 → 0.90 linearly over the warmdown; the warmup branch wins
    /// where the two overlap (short runs).
    pub fn muon_momentum(&self, it: usize) -> f64 {
        let start = self.warmdown_start();
        if it < MUON_MOMENTUM_WARMUP {
            0.85 + (0.97 - 0.85) * it as f64 / MUON_MOMENTUM_WARMUP as f64
        } else if it >= start {
            let q = (it - start) as f64 / self.warmdown_steps() as f64;
            0.97 * (1.0 - q) + 0.90 * q
        } else {
            0.97
        }
    }

    /// Cosine decay of the (already batch-scaled) Muon weight decay to 0 at it = N.
    pub fn muon_weight_decay(&self, wd_scaled: f64, it: usize) -> f64 {
        wd_scaled * 0.5 * (1.0 + (PI * it as f64 / self.num_iterations as f64).cos())
    }
}
