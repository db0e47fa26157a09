//! The `--device` choice of every program (train_gpt, parity, base_eval, the chat programs, the benchmarks):
//! the CPU reference in fp32 or with bf16 storage, or the CUDA kernels on a GPU or on the CPU emulator.

use crate::cpu::gpt::Storage;
use crate::device::{cuda::CudaDevice, emu::EmuDevice, Device, Schedule};
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
        match self {
            Backend::Cuda => Ok(Box::new(
                CudaDevice::open(0).map_err(|e| format!("{}: {e}", self.flag()))?,
            )),
            Backend::Emu => Ok(Box::new(EmuDevice::new(emu_schedule))),
            Backend::Cpu | Backend::CpuBf16 => Err(format!(
                "{}: this program runs the kernels: choose --device cuda or --device emu",
                self.flag()
            )),
        }
    }
}
