//! Kernel checks against the CPU references, runnable on any [`Device`]: the correctness half of the
//! kernel benchmark (`bench/kernels.rs`) and the GPU self-check (`kernel_bench --selfcheck`), and, on the
//! Emu device, part of `cargo test`. Each check builds inputs of a given [`Scale`], runs the kernel, and
//! compares with the reference; a mismatch beyond the tolerance is an error naming the element. The checks
//! of each launcher file `kernels/<op>.rs` are in `check/<op>.rs`; `tests/kernels_checks.rs` runs each one
//! under every emulator schedule, `kernel_bench` runs them before timing.

mod adamw;
mod attention;
mod cross_entropy;
mod decode;
mod elementwise;
mod embedding;
mod gemm;
mod model_ops;
mod muon;
mod ptx_helpers;
mod reduce;
mod rmsnorm;
mod rope_qknorm;

use crate::device::err;
use crate::device::DevPtr;
use crate::device::Device;
use crate::device::Result;
use crate::rng::Rng;
use half::bf16;
use std::time::Instant;

/// Problem sizes: `Small` for the emulator (CI: ragged shapes, not multiples of the block sizes), `Large`
/// for a GPU (close to training shapes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Small,
    Large,
}

impl Scale {
    /// `small` at [`Scale::Small`], else `large`.
    pub fn pick<T>(self, small: T, large: T) -> T {
        match self {
            Scale::Small => small,
            Scale::Large => large,
        }
    }
}

/// One named check; returns a one-line summary (largest error seen) or the first mismatch.
pub struct Check {
    pub name: &'static str,
    pub run: fn(&dyn Device, Scale) -> Result<String>,
}

/// Every kernel check, in file order of `cuda/`.
pub fn all() -> Vec<Check> {
    vec![
        Check {
            name: "adamw_step",
            run: adamw::check_adamw,
        },
        Check {
            name: "softcap_ce",
            run: cross_entropy::check_softcap_ce,
        },
        Check {
            name: "relu2_forward/backward",
            run: elementwise::check_relu2,
        },
        Check {
            name: "cast_f32_to_bf16/bf16_to_f32",
            run: elementwise::check_casts,
        },
        Check {
            name: "add_bf16/add_f32_bf16",
            run: elementwise::check_adds,
        },
        Check {
            name: "embedding_forward/backward",
            run: embedding::check_embedding,
        },
        Check {
            name: "reduce (sum, norm)",
            run: reduce::check_reduce,
        },
        Check {
            name: "rmsnorm fwd/bwd, residual mix fwd/bwd",
            run: rmsnorm::check_rmsnorm,
        },
        Check {
            name: "rmsnorm_mix_backward (fused)",
            run: rmsnorm::check_rmsnorm_mix_backward,
        },
        Check {
            name: "rmsnorm_backout_backward (fused)",
            run: rmsnorm::check_rmsnorm_backout_backward,
        },
        Check {
            name: "gemm (transposes, batches, beta)",
            run: gemm::check_gemm,
        },
        Check {
            name: "gemm on the parameter table's slots (alignment)",
            run: gemm::check_gemm_on_slots,
        },
        Check {
            name: "attention flash fwd/bwd (d64, d128)",
            run: attention::check_attention_flash,
        },
        Check {
            name: "attention naive fwd/bwd",
            run: attention::check_attention_naive,
        },
        Check {
            name: "kv_rope_append (per-row positions into the KV cache)",
            run: decode::check_kv_rope_append,
        },
        Check {
            name: "decode_attention (KV cache, splits, combine)",
            run: decode::check_decode_attention,
        },
        Check {
            name: "decode_smear (from the cached previous embedding)",
            run: decode::check_decode_smear,
        },
        Check {
            name: "rope_qknorm fwd/bwd (strided q, k)",
            run: rope_qknorm::check_rope_qknorm,
        },
        Check {
            name: "ve_gate fwd/bwd",
            run: model_ops::check_ve_gate,
        },
        Check {
            name: "smear fwd/bwd",
            run: model_ops::check_smear,
        },
        Check {
            name: "backout fwd/bwd",
            run: model_ops::check_backout,
        },
        Check {
            name: "muon_step (bf16 Polar Express), cautious update",
            run: muon::check_muon_step,
        },
        Check {
            name: "muon stages (nesterov, eq, frobenius, plus, normuon, cautious)",
            run: muon::check_muon_stages,
        },
        Check {
            name: "polar_express (bf16, through the GEMM)",
            run: muon::check_polar_express,
        },
    ]
}

pub(super) fn rand(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| bf16::from_f32(rng.uniform(-scale, scale)).to_f32())
        .collect()
}

pub(super) fn bf(x: &[f32]) -> Vec<bf16> {
    x.iter().map(|&v| bf16::from_f32(v)).collect()
}

pub(super) fn round(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()
}

pub(super) fn down_bf(dev: &dyn Device, p: DevPtr, n: usize) -> Result<Vec<f32>> {
    Ok(dev.download_vec::<bf16>(p, n)?.iter().map(|v| v.to_f32()).collect())
}

/// Largest |got - want| / (abs + rel |want|); an error if any element exceeds 1.
pub(super) fn compare(what: &str, got: &[f32], want: &[f32], rel: f32, abs: f32) -> Result<f32> {
    if got.len() != want.len() {
        return err(format!("{what}: {} values, expected {}", got.len(), want.len()));
    }
    let mut worst = 0f32;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g == w {
            continue;
        }
        let e = (g - w).abs() / (abs + rel * w.abs());
        if e.is_nan() || e > 1.0 {
            return err(format!(
                "{what}[{i}]: got {g}, expected {w} (tolerance {abs} + {rel}·|expected|)"
            ));
        }
        worst = worst.max(e);
    }
    Ok(worst)
}

pub(super) fn summary(worst: f32) -> String {
    format!("ok (worst error {:.0}% of tolerance)", worst * 100.0)
}

/// Largest |x| (0 for an empty slice).
pub(super) fn peak(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// Absolute tolerance of an fp32 sum of `terms` products of O(1) values, accumulated in another order.
pub(super) fn sum_tol(terms: usize) -> f32 {
    1e-4 * (terms as f32).sqrt().max(10.0)
}

/// Columns `[col, col + w)` of each row of a row-major `(n, stride)` matrix.
pub(super) fn columns(x: &[f32], stride: usize, col: usize, w: usize) -> Vec<f32> {
    x.chunks_exact(stride)
        .flat_map(|r| r[col..col + w].iter().copied())
        .collect()
}

/// The PTX helper checks.
pub fn ptx_helper_checks() -> Vec<Check> {
    vec![
        Check {
            name: "mma.m16n8k16 bf16 (helper, reference, loop)",
            run: ptx_helpers::check_mma,
        },
        Check {
            name: "ldmatrix x1/x2/x4 (.trans) (helper, reference)",
            run: ptx_helpers::check_ldmatrix,
        },
        Check {
            name: "cp.async + ldmatrix + mma pipeline",
            run: ptx_helpers::check_pipeline,
        },
    ]
}

/// Runs `checks` on `dev` at `scale`, one PASS/FAIL line each (with its largest error and time), and returns
/// the number that failed: what kernel_bench, attention_bench and model_ops_bench print before timing.
pub fn run(dev: &dyn Device, scale: Scale, checks: impl IntoIterator<Item = Check>) -> usize {
    let mut failures = 0;
    for c in checks {
        let t0 = Instant::now();
        match (c.run)(dev, scale) {
            Ok(s) => println!("  PASS {:<48} {s} ({:.1} s)", c.name, t0.elapsed().as_secs_f64()),
            Err(e) => {
                failures += 1;
                println!("  FAIL {:<48} {e}", c.name)
            }
        }
    }
    failures
}
