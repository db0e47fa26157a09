//! The `--device` choice of every program (train_gpt, parity, base_eval, the chat programs, the benchmarks):
//! the CPU reference in fp32 or with bf16 storage, or the CUDA kernels on a GPU or on the CPU emulator.

use std::path::Path;

use crate::config::ModelConfig;
use crate::cpu::gpt::Storage;
use crate::cpu::infer::CpuInfer;
use crate::device::infer::Inference;
use crate::device::model::KernelModel;
use crate::device::{cuda::CudaDevice, emu::EmuDevice, Device, Schedule};
use crate::engine::load::{load_parts, ModelCard};
use crate::engine::Engine;
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// Where the model computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// The fp32 CPU reference (trains tiny models; no GPU needed).
    Cpu,
    /// The CPU reference rounding to bf16 wherever the kernels store bf16: the error the kernels are expected
    /// to show, to tell bf16 rounding from a kernel bug.
    CpuBf16,
    /// The CUDA kernels run by the CPU emulator (slow: for tests and debugging).
    Emu,
    /// The CUDA kernels on the first GPU.
    Cuda,
}

impl Backend {
    /// The flag as a user types it, for error messages: `--device cpu-bf16`.
    pub fn flag(self) -> String {
        let v = self.to_possible_value().expect("no variant is skipped");
        format!("--device {}", v.get_name())
    }

    /// Whether this choice runs the CUDA kernels (on a GPU or the emulator).
    pub fn is_kernels(self) -> bool {
        matches!(self, Backend::Emu | Backend::Cuda)
    }

    /// The storage of the CPU reference, `None` on a kernel device.
    pub fn cpu_storage(self) -> Option<Storage> {
        match self {
            Backend::Cpu => Some(Storage::F32),
            Backend::CpuBf16 => Some(Storage::Bf16),
            Backend::Emu | Backend::Cuda => None,
        }
    }

    /// Opens the kernel device: the first GPU (an error, not a panic, when there is none) or the emulator
    /// running its threads in `emu_schedule`. A CPU choice is an error naming the flags that work.
    pub fn kernel_device(self, emu_schedule: Schedule) -> Result<Box<dyn Device>, String> {
        self.kernel_device_at(0, emu_schedule)
    }

    /// [`Backend::kernel_device`] on GPU `gpu` (one emulator per call on emu).
    pub fn kernel_device_at(self, gpu: usize, emu_schedule: Schedule) -> Result<Box<dyn Device>, String> {
        match self {
            Backend::Cuda => Ok(Box::new(CudaDevice::open(gpu as i32).map_err(|e| match gpu {
                0 => format!("{}: {e}", self.flag()),
                _ => format!("{}: GPU {gpu}: {e}", self.flag()),
            })?)),
            Backend::Emu => Ok(Box::new(EmuDevice::new(emu_schedule))),
            Backend::Cpu | Backend::CpuBf16 => Err(format!(
                "{}: this program runs the kernels: choose --device cuda or --device emu",
                self.flag()
            )),
        }
    }
}

impl Backend {
    /// The one way every program opens a model for inference (KV-cached generation and forwards): the CPU
    /// reference's [`CpuInfer`] on cpu, the kernels' [`KernelModel::for_inference`] (weights only: no
    /// gradients, no optimizer state) on GPU `gpu` (cuda) or the emulator (emu). cpu-bf16 has no KV-cached
    /// path: an error naming the choices that do.
    pub fn open_inference(self, config: &ModelConfig, params: Vec<f32>, gpu: usize) -> Result<Inference, String> {
        match self {
            Backend::Cpu => Ok(Inference::Cpu(CpuInfer::new(config, params)?)),
            Backend::Cuda | Backend::Emu => {
                let dev = self.kernel_device_at(gpu, Schedule::Forward)?;
                Ok(Inference::Kernel(KernelModel::for_inference(dev, config, &params)?))
            }
            Backend::CpuBf16 => Err(self.no_inference()),
        }
    }

    fn no_inference(self) -> String {
        format!(
            "{}: inference runs on cpu (the fp32 reference), cuda or emu",
            self.flag()
        )
    }

    /// The chat engine of checkpoint `source` under `base` ([`load_parts`]) opened with
    /// [`Backend::open_inference`]: (engine, its checkpoint, a notice such as the sft -> base fallback).
    pub fn load_engine(
        self,
        gpu: usize,
        base: &Path,
        source: &str,
        model_tag: Option<&str>,
        step: Option<usize>,
    ) -> Result<(Engine<Inference>, ModelCard, Option<String>), String> {
        if self == Backend::CpuBf16 {
            return Err(self.no_inference());
        }
        let (cfg, params, tok, card, notice) = load_parts(base, source, model_tag, step)?;
        Ok((Engine::new(self.open_inference(&cfg, params, gpu)?, tok), card, notice))
    }
}
