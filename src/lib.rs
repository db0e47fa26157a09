//! nanochat in Rust with hand-written CUDA.
//!
//! The whole life of a small ChatGPT-like model without a tensor framework: a byte-level BPE tokenizer,
//! GPT pretraining over one flat parameter buffer, evaluation, chat fine-tuning and serving. Every op has
//! a plain-Rust fp32 reference (`cpu`), a CUDA kernel (`cuda/`), and an emulated run of that kernel on
//! the CPU (`device`), so the GPU path is checked against the reference on machines without a GPU.

pub mod backend;
pub mod checkpoint;
pub mod common;
pub mod config;
pub mod core_eval;
pub mod cpu;
pub mod data;
pub mod device;
pub mod dist;
pub mod engine;
pub mod execution;
pub mod gemm;
pub mod model;
pub mod optim;
pub mod params;
pub mod parity;
pub mod profile;
pub mod rng;
pub mod safetensors;
pub mod serve;
pub mod tasks;
pub mod tokenizer;
pub mod train;
pub mod upstream;
