//! Pretraining: the plan derived from the depth dial, the run record, evaluation (bits per byte, samples) and
//! the training loop. The model interface is [`crate::model`], checkpoint files are [`crate::checkpoint`].

pub mod eval;
pub mod grad_average;
pub mod metrics;
pub mod plan;
pub mod ranks;
pub mod run;
