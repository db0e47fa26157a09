//! Pretraining: the plan derived from the depth dial, the model device interface, checkpoints, the run
//! record and the training loop.

pub mod checkpoint;
pub mod device;
pub mod metrics;
pub mod plan;
pub mod run;
