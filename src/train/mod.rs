//! Training. Pretraining: the plan derived from the depth dial, the run record, evaluation (bits per byte,
//! samples) and the training loop ([`run`]). After it, the conversation stages mid_train ([`mid`]) and chat_sft
//! ([`sft`]), which share one loop ([`stage`]) over the task mixtures ([`mixtures`]), and reinforcement learning
//! ([`rl`]). The model interface is
//! [`crate::model`], checkpoint files are [`crate::checkpoint`].

pub mod eval;
pub mod grad_average;
pub mod metrics;
pub mod mid;
pub mod mixtures;
pub mod plan;
pub mod ranks;
pub mod rl;
pub mod run;
pub mod sft;
pub mod stage;
