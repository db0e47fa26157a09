//! `parity <fixture-dir> [--device cpu|cpu-bf16|emu|cuda]`: compares loss, logits, every gradient and two optimizer steps with a
//! reference fixture produced by upstream nanochat; prints one row per tensor and exits non-zero on a mismatch.

use clap::{Parser, ValueEnum};
use nanochat::cpu::gpt::Storage;
use nanochat::device::DeviceKind;
use nanochat::parity::{self, Tolerances};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Device {
    /// The fp32 CPU reference.
    Cpu,
    /// The CPU reference rounding to bf16 wherever the kernels store bf16 (bf16 tolerances): the error the
    /// kernels are expected to show, to tell bf16 rounding from a kernel bug.
    CpuBf16,
    /// The CUDA kernels run by the CPU emulator (bf16 tolerances).
    Emu,
    /// The CUDA kernels on a GPU (bf16 tolerances).
    Cuda,
}

#[derive(Parser)]
#[command(about = "Check numerical parity with an upstream nanochat fixture")]
struct Args {
    /// Fixture directory (config.json, model.safetensors, batch.safetensors, expected.safetensors).
    fixture: PathBuf,
    /// Which implementation to check.
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.device {
        Device::Cpu => parity::run_cpu(&args.fixture, Tolerances::FP32, Storage::F32),
        Device::CpuBf16 => parity::run_cpu(&args.fixture, Tolerances::BF16, Storage::Bf16),
        Device::Emu | Device::Cuda => {
            let kind = if matches!(args.device, Device::Cuda) {
                DeviceKind::Cuda
            } else {
                DeviceKind::Emu
            };
            nanochat::device::open(kind)
                .map_err(|e| {
                    format!(
                        "--device {}: {e}",
                        format!("{:?}", args.device).to_lowercase()
                    )
                })
                .and_then(|dev| parity::run_kernels(&args.fixture, Tolerances::BF16, dev))
        }
    };
    match result {
        Ok(rows) => {
            if parity::print_rows(&rows) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("parity: {e}");
            ExitCode::from(2)
        }
    }
}
