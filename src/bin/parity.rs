//! `parity <fixture-dir> [--device cpu|cpu-bf16|emu|cuda]`: compares loss, logits, every gradient and two optimizer steps with a
//! reference fixture produced by upstream nanochat; prints one row per tensor and exits non-zero on a mismatch.

use clap::Parser;
use nanochat::backend::Backend;
use nanochat::cpu::gpt::Storage;
use nanochat::device::Schedule;
use nanochat::parity::{self, Tolerances};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(about = "Check numerical parity with an upstream nanochat fixture")]
struct Args {
    /// Fixture directory (config.json, model.safetensors, batch.safetensors, expected.safetensors).
    fixture: PathBuf,
    /// Which implementation to check (cpu: fp32 tolerances; the others: bf16 tolerances).
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    device: Backend,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.device {
        Backend::Cpu => parity::run_cpu(&args.fixture, Tolerances::FP32, Storage::F32),
        Backend::CpuBf16 => parity::run_cpu(&args.fixture, Tolerances::BF16, Storage::Bf16),
        Backend::Emu | Backend::Cuda => args
            .device
            .kernel_device(Schedule::Forward)
            .and_then(|dev| parity::run_kernels(&args.fixture, Tolerances::BF16, dev)),
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
