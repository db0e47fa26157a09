//! Pretraining: the plan derived from the depth dial, checkpoints and the training loop.

pub mod checkpoint;
pub mod plan;
