//! The CPU reference: plain-Rust fp32 implementations of every op and of the whole model. It is the readable
//! specification, the oracle the kernels are tested against, and the device that trains tiny models without
//! a GPU.

pub mod decode;
pub mod gemm;
pub mod gpt;
#[cfg(test)]
mod gradcheck;
pub mod infer;
pub mod model;
pub mod ops;
