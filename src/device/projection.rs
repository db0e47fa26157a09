//! A roofline projection of the training step: each op of a recorded step ([`super::record`]) gets its
//! FLOPs and DRAM bytes from its shapes, a roofline time on an H100 SXM and an H200 (`max(FLOPs / peak,
//! bytes / bandwidth)`), and a projected time: the roofline derated for what keeps the kernel off it.
//!
//! Deratings, and where each comes from:
//! - grid fill and occupancy, from the launch geometry and `ptx/resources.txt` (registers and static shared
//!   memory on sm_90a, plus the launch's dynamic shared memory): resident warps per SM, and the waves of a
//!   grid over the 132 SMs. A memory-bound kernel reaches the bandwidth with [`OCC_SAT`] of the warp slots
//!   busy; a tensor-core kernel needs [`TENSOR_WARPS_SAT`] warps per SM. With emulator counters
//!   ([`Counters`]) their measured occupancy replaces the computed one;
//! - sector inefficiency (actual / ideal 32-byte sectors per request) on the memory term, bank conflicts
//!   (the worst bank's distinct words per access) on the shared-memory share of the compute term, and the
//!   active lanes on the CUDA-core compute term: from the counters only; without them these are 1 and the
//!   report says "not measured";
//! - fixed efficiencies that no counter can give, stated as assumptions until a GPU calibrates them:
//!   cuBLASLt's fraction of the dense peak ([`GEMM_EFF`], with wave quantisation over 128x256 tiles and
//!   split-K for the long-k weight-gradient GEMMs), the mma.sync attention kernels' fraction ([`MMA_SYNC_EFF`]),
//!   the achievable DRAM fraction ([`MEM_EFF`]), a gap between dependent launches ([`LAUNCH_GAP_S`]), the
//!   NVLink bus bandwidth of the collectives and the PCIe bandwidth of host transfers.
//!
//! The step is one stream: the projected step time is the sum over its ops (no overlap of collectives with
//! compute). MFU is upstream's: `flops_per_token · tokens / time / peak`.

use super::profile;
use super::record::{Op, Recorded, StepPlan};
use super::{Arg, Dim3, Dtype, Gemm};
use crate::common::{peak_bandwidth, peak_bf16_flops};
use crate::config::ModelConfig;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Fraction of the dense bf16 peak cuBLASLt reaches on a large, full-wave GEMM (assumed).
pub const GEMM_EFF: f64 = 0.75;
/// Fraction of the dense bf16 peak the FlashAttention-2-style mma.sync kernels reach at full occupancy
/// (assumed, from published FlashAttention-2 figures on H100: wgmma is needed for more).
pub const MMA_SYNC_EFF: f64 = 0.40;
/// Fraction of the peak DRAM bandwidth a streaming kernel reaches (assumed).
pub const MEM_EFF: f64 = 0.90;
/// Share of the warp slots a memory-bound kernel needs busy to reach [`MEM_EFF`] (assumed).
pub const OCC_SAT: f64 = 0.5;
/// Warps per SM a tensor-core kernel needs to keep the tensor cores fed (assumed).
pub const TENSOR_WARPS_SAT: f64 = 8.0;
/// Time between two dependent launches on a stream without CUDA graphs (assumed).
pub const LAUNCH_GAP_S: f64 = 2e-6;
/// Share of the attention kernels' time in shared-memory accesses, what bank conflicts stretch (assumed).
pub const SMEM_SHARE: f64 = 0.25;
/// GEMM tile of the projection (cuBLASLt's usual sm_90 bf16 tile).
const GEMM_TILE: (usize, usize) = (128, 256);

/// One GPU of the projection.
#[derive(Clone, Debug)]
pub struct Gpu {
    pub name: &'static str,
    /// Dense bf16 tensor FLOP/s.
    pub flops: f64,
    /// fp32 CUDA-core FLOP/s (non-tensor).
    pub fp32_flops: f64,
    pub bytes_per_s: f64,
    pub sms: u32,
    /// NCCL ring bus bandwidth over NVLink (assumed: 80% of 450 GB/s per direction).
    pub nvlink_bus: f64,
    /// Host <-> device bandwidth (assumed: PCIe 5 x16, achieved).
    pub pcie: f64,
}

/// The two GPUs of the projection, with the peaks of the device table (`common`).
pub fn gpus() -> [Gpu; 2] {
    let mk = |name: &'static str, device: &str| Gpu {
        name,
        flops: peak_bf16_flops(device).expect("in the peak table"),
        fp32_flops: 67e12,
        bytes_per_s: peak_bandwidth(device).expect("in the peak table"),
        sms: 132,
        nvlink_bus: 360e9,
        pcie: 50e9,
    };
    [mk("H100 SXM", "NVIDIA H100 80GB HBM3"), mk("H200", "NVIDIA H200")]
}

/// Warps an sm_90 SM holds.
const SM_WARPS: u32 = profile::sm90::WARPS;

/// Registers per thread and static shared memory of each kernel, from a ptxas report (`ptx/resources.txt`).
#[derive(Clone, Debug, Default)]
pub struct Resources(BTreeMap<String, (u32, u32)>);

impl Resources {
    /// The sm_90a entries of a ptxas report.
    pub fn parse(report: &str) -> Resources {
        let map = profile::parse_resources(report, "sm_90a")
            .into_iter()
            .map(|(name, r)| (name, (r.regs, r.static_smem)))
            .collect();
        Resources(map)
    }

    /// The report built into the program (`ptx/resources.txt`).
    pub fn built_in() -> Resources {
        Resources::parse(include_str!("../../ptx/resources.txt"))
    }

    /// (registers per thread, static shared memory bytes) of `kernel`.
    pub fn get(&self, kernel: &str) -> Option<(u32, u32)> {
        self.0.get(kernel).copied()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Measured counters of one kernel (`kernel_bench --profile --device emu --json`), averaged over its shapes.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelCounters {
    pub sectors_per_request: f64,
    pub ideal_sectors_per_request: f64,
    pub bank_conflict_degree: f64,
    pub active_lanes: f64,
    pub occupancy: Option<f64>,
}

/// Counters by kernel name.
#[derive(Clone, Debug, Default)]
pub struct Counters(pub BTreeMap<String, KernelCounters>);

impl Counters {
    /// Reads the profiler's output: a JSON array of objects, or one object per line. Each object has at
    /// least "kernel"; "sectors_per_request", "ideal_sectors_per_request", "bank_conflict_degree",
    /// "active_lanes" and "occupancy" are used when present. Several shapes of a kernel are averaged.
    pub fn parse(text: &str) -> Result<Counters, String> {
        let values: Vec<serde_json::Value> = match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Array(v)) => v,
            Ok(v @ serde_json::Value::Object(_)) => vec![v],
            _ => text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("counters line {}: {e}", i + 1)))
                .collect::<Result<_, _>>()?,
        };
        let mut sums: BTreeMap<String, ([f64; 5], [usize; 5])> = BTreeMap::new();
        for (i, v) in values.iter().enumerate() {
            let kernel = v
                .get("kernel")
                .and_then(|k| k.as_str())
                .ok_or_else(|| format!("counters entry {}: no \"kernel\" name", i + 1))?;
            let e = sums.entry(kernel.to_string()).or_default();
            let fields = [
                "sectors_per_request",
                "ideal_sectors_per_request",
                "bank_conflict_degree",
                "active_lanes",
                "occupancy",
            ];
            for (j, f) in fields.iter().enumerate() {
                if let Some(x) = v.get(*f).and_then(|x| x.as_f64()).filter(|x| x.is_finite()) {
                    e.0[j] += x;
                    e.1[j] += 1;
                }
            }
        }
        let avg = |s: &([f64; 5], [usize; 5]), j: usize| (s.1[j] > 0).then(|| s.0[j] / s.1[j] as f64);
        let map = sums
            .iter()
            .map(|(k, s)| {
                (
                    k.clone(),
                    KernelCounters {
                        sectors_per_request: avg(s, 0).unwrap_or(1.0),
                        ideal_sectors_per_request: avg(s, 1).unwrap_or(1.0),
                        bank_conflict_degree: avg(s, 2).unwrap_or(1.0),
                        active_lanes: avg(s, 3).unwrap_or(32.0),
                        occupancy: avg(s, 4),
                    },
                )
            })
            .collect();
        Ok(Counters(map))
    }

    pub fn get(&self, kernel: &str) -> Option<&KernelCounters> {
        self.0.get(kernel)
    }
}

/// What limits an op, for its roofline and its deratings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A cuBLASLt GEMM.
    Gemm,
    /// A tensor-core (mma.sync) kernel.
    Tensor,
    /// A CUDA-core kernel (elementwise, row statistics, reductions).
    Cuda,
    /// cudaMemcpyAsync / cudaMemsetAsync on the device.
    Memcpy,
    /// Host <-> device copies over PCIe.
    Transfer,
    /// NCCL over NVLink.
    Collective,
}

/// The shape-derived cost of one op.
#[derive(Clone, Debug, PartialEq)]
pub struct Cost {
    /// Grouping key: the kernel name, "gemm forward", "copy", "all_gather", ...
    pub family: String,
    /// The shape, for the per-shape table.
    pub shape: String,
    pub phase: String,
    pub kind: Kind,
    pub grid: Option<Dim3>,
    pub block: Option<Dim3>,
    /// Dynamic shared memory of a launch.
    pub smem: u32,
    /// FLOPs the op executes (attention: the causal pairs, with the backward's recomputation).
    pub flops: f64,
    /// FLOPs as the model's `flops_per_token` counts them (GEMMs of the forward and backward, attention with
    /// the full window); 0 for everything else.
    pub model_flops: f64,
    /// DRAM bytes read and written (compulsory traffic), or bytes moved by a transfer or collective.
    pub bytes: f64,
    /// Ranks of a collective.
    pub world: usize,
}

fn int(args: &[Arg], i: usize) -> Result<f64, String> {
    match args.get(i) {
        Some(Arg::I32(v)) => Ok(*v as f64),
        Some(Arg::I64(v)) => Ok(*v as f64),
        Some(Arg::U32(v)) => Ok(*v as f64),
        Some(Arg::U64(v)) => Ok(*v as f64),
        other => Err(format!("argument {i} is {other:?}, not an integer")),
    }
}

fn f32_arg(args: &[Arg], i: usize) -> Result<f64, String> {
    match args.get(i) {
        Some(Arg::F32(v)) => Ok(*v as f64),
        other => Err(format!("argument {i} is {other:?}, not a float")),
    }
}

fn non_null(args: &[Arg], i: usize) -> bool {
    matches!(args.get(i), Some(Arg::Ptr(p)) if p.0 != 0)
}

/// Query-key pairs a causal window-`w` attention over `t` positions visits per head (query p sees
/// min(p, w) + 1 keys).
fn causal_pairs(t: f64, w: f64) -> f64 {
    let w = w.min(t);
    // Σ_{p<t} min(p, w) + 1 = (w(w+1)/2) + (t − w − 1)·w + t for t > w.
    if t <= w + 1.0 {
        t * (t + 1.0) / 2.0
    } else {
        w * (w + 1.0) / 2.0 + (t - w - 1.0) * w + t
    }
}

/// The cost of a kernel launch from its name and arguments (see `cuda/`); `tokens` is the micro-batch's
/// token count (the embedding backward's arguments do not carry it).
fn launch_cost(name: &str, grid: Dim3, args: &[Arg], tokens: f64) -> Result<(Kind, f64, f64, f64, String), String> {
    use Kind::{Cuda, Tensor};
    let a = |i| int(args, i);
    let blocks = grid.x as f64 * grid.y as f64 * grid.z as f64;
    // (kind, flops, model flops, bytes, shape)
    let r = match name {
        "embedding_forward" => {
            let (n, c) = (a(3)?, a(4)?);
            (Cuda, 0.0, 0.0, 4.0 * n * c + 4.0 * n, format!("n={n} c={c}"))
        }
        "embedding_backward" => {
            let (nb, c) = (a(5)?, a(6)?);
            let f = tokens * c;
            (
                Cuda,
                f,
                0.0,
                2.0 * tokens * c + 8.0 * nb * c + 4.0 * tokens,
                format!("buckets={nb} c={c}"),
            )
        }
        "rmsnorm_forward" => {
            let (n, c) = (a(3)?, a(4)?);
            (Cuda, 4.0 * n * c, 0.0, 4.0 * n * c + 4.0 * n, format!("n={n} c={c}"))
        }
        "mix_rmsnorm_forward" => {
            let (n, c) = (a(6)?, a(7)?);
            (Cuda, 8.0 * n * c, 0.0, 8.0 * n * c + 4.0 * n, format!("n={n} c={c}"))
        }
        "rmsnorm_backward" => {
            let (n, c) = (a(4)?, a(5)?);
            (Cuda, 8.0 * n * c, 0.0, 8.0 * n * c + 4.0 * n, format!("n={n} c={c}"))
        }
        "mix_backward" => {
            let (n, c) = (a(7)?, a(8)?);
            (Cuda, 6.0 * n * c, 0.0, 16.0 * n * c + 8.0 * n, format!("n={n} c={c}"))
        }
        "rmsnorm_mix_backward" => {
            let (n, c) = (a(10)?, a(11)?);
            (Cuda, 14.0 * n * c, 0.0, 20.0 * n * c + 12.0 * n, format!("n={n} c={c}"))
        }
        "rmsnorm_backout_backward" | "backout_backward" => {
            let (n, c) = if name == "backout_backward" {
                (a(6)?, a(7)?)
            } else {
                (a(8)?, a(9)?)
            };
            (Cuda, 8.0 * n * c, 0.0, 10.0 * n * c + 8.0 * n, format!("n={n} c={c}"))
        }
        "column_sums_accumulate" => {
            let (m, n) = (a(2)?, a(3)?);
            (Cuda, m * n, 0.0, 4.0 * m * n + 8.0 * m, format!("{m} sums of {n}"))
        }
        "reduce_partials_f32" | "reduce_partials_bf16" => {
            let n = a(2)?;
            let size = if name.ends_with("f32") { 4.0 } else { 2.0 };
            (Cuda, 2.0 * n, 0.0, size * n, format!("n={n}"))
        }
        "reduce_finish" => {
            let p = a(2)?;
            (Cuda, p, 0.0, 4.0 * p + 4.0, format!("parts={p}"))
        }
        "smear_forward" => {
            let (n, c) = (a(5)?, a(7)?);
            (Cuda, 4.0 * n * c, 0.0, 4.0 * n * c + 4.0 * n, format!("n={n} c={c}"))
        }
        "smear_backward" => {
            let (n, c, k) = (a(6)?, a(8)?, a(9)?);
            (
                Cuda,
                6.0 * n * c,
                0.0,
                8.0 * n * c + 4.0 * (1.0 + k) * n,
                format!("n={n} c={c}"),
            )
        }
        "ve_gate_forward" => {
            let (n, hkv, d, k) = (a(5)?, a(7)?, a(8)?, a(9)?);
            let kvd = hkv * d;
            let bytes = 2.0 * n * k + 2.0 * n * kvd + 4.0 * n * kvd + 4.0 * n * hkv;
            (
                Cuda,
                2.0 * n * hkv * k + 2.0 * n * kvd,
                0.0,
                bytes,
                format!("n={n} kv={kvd} k={k}"),
            )
        }
        "ve_gate_backward" => {
            let (n, hkv, d, k) = (a(8)?, a(10)?, a(11)?, a(12)?);
            let kvd = hkv * d;
            let bytes = 6.0 * n * kvd + 6.0 * n * k + 4.0 * n * hkv + 4.0 * hkv * k * n;
            (
                Cuda,
                4.0 * n * hkv * k + 4.0 * n * kvd,
                0.0,
                bytes,
                format!("n={n} kv={kvd} k={k}"),
            )
        }
        "backout_forward" => {
            let n = a(4)?;
            (Cuda, 2.0 * n, 0.0, 6.0 * n, format!("n={n}"))
        }
        "rope_qknorm_forward" => {
            let (n, t, h, d) = (a(5)?, a(6)?, a(7)?, a(8)?);
            let bytes = 4.0 * n * h * d + 4.0 * n * h + 4.0 * t * d;
            (Cuda, 10.0 * n * h * d, 0.0, bytes, format!("n={n} heads={h} d={d}"))
        }
        "rope_qknorm_backward" => {
            let (n, t, h, d, acc) = (a(6)?, a(7)?, a(8)?, a(9)?, a(13)?);
            let bytes = (6.0 + 2.0 * acc) * n * h * d + 4.0 * n * h + 4.0 * t * d;
            (Cuda, 16.0 * n * h * d, 0.0, bytes, format!("n={n} heads={h} d={d}"))
        }
        "attention_delta" => {
            let (b, t, h, d) = (a(3)?, a(4)?, a(5)?, a(6)?);
            (
                Cuda,
                2.0 * b * t * h * d,
                0.0,
                4.0 * b * t * h * d + 4.0 * b * h * t,
                format!("b={b} t={t} h={h}"),
            )
        }
        n if n.starts_with("attention_") => {
            // Forward: out, lse, q, k, v, shape; dq: dq, dout, lse, delta, q, k, v, shape; dkdv: one more.
            let first = if n.contains("forward") {
                5
            } else if n.contains("dkdv") {
                8
            } else {
                7
            };
            let (b, t, h, hkv, d, w) = (
                a(first)?,
                a(first + 1)?,
                a(first + 2)?,
                a(first + 3)?,
                a(first + 4)?,
                a(first + 5)?,
            );
            let pairs = b * h * causal_pairs(t, w);
            let full = b * h * t * w.min(t);
            let (q, kv, stats) = (2.0 * b * t * h * d, 2.0 * b * t * hkv * d, 4.0 * b * h * t);
            // Matmuls of 2·pairs·d FLOPs each: forward QKᵀ, PV; dq recomputes QKᵀ and dO·Vᵀ, then dS·K;
            // dk/dv recomputes both, then Pᵀ·dO and dSᵀ·Q. The model counts 2 forward + 4 backward, full window.
            let (mm, model_mm, bytes) = if n.contains("forward") {
                (2.0, 2.0, 2.0 * q + 2.0 * kv + stats)
            } else if n.contains("dkdv") {
                (4.0, 2.0, 2.0 * q + 4.0 * kv + 2.0 * stats)
            } else {
                (3.0, 2.0, 3.0 * q + 2.0 * kv + 2.0 * stats)
            };
            let kind = if n.contains("flash") { Tensor } else { Cuda };
            let shape = format!("b={b} t={t} h={h}/{hkv} d={d} window={w}");
            (kind, mm * 2.0 * pairs * d, model_mm * 2.0 * full * d, bytes, shape)
        }
        "softcap_ce" => {
            let (dloss, n, v, vp) = (f32_arg(args, 3)?, a(4)?, a(5)?, a(6)?);
            let bytes = 2.0 * n * vp * if dloss != 0.0 { 2.0 } else { 1.0 } + 8.0 * n;
            (Cuda, 20.0 * n * v, 0.0, bytes, format!("n={n} vocab={vp}"))
        }
        "relu2_forward" => {
            let n = a(2)?;
            (Cuda, 2.0 * n, 0.0, 4.0 * n, format!("n={n}"))
        }
        "relu2_backward" => {
            let n = a(3)?;
            (Cuda, 3.0 * n, 0.0, 6.0 * n, format!("n={n}"))
        }
        "cast_f32_to_bf16" | "cast_bf16_to_f32" | "add_bf16" => {
            let n = a(2)?;
            (Cuda, n, 0.0, 6.0 * n, format!("n={n}"))
        }
        "add_f32_bf16" => {
            let n = a(3)?;
            (Cuda, 2.0 * n, 0.0, 8.0 * n, format!("n={n}"))
        }
        "adamw_step" => {
            let n = a(5)?;
            let bf = if non_null(args, 1) { 2.0 } else { 0.0 };
            (Cuda, 15.0 * n, 0.0, (28.0 + bf) * n, format!("n={n}"))
        }
        "muon_nesterov" => {
            let n = a(3)?;
            (Cuda, 6.0 * n, 0.0, 16.0 * n, format!("n={n}"))
        }
        "muon_cautious_update" => {
            let n = a(3)?;
            let bf = if non_null(args, 1) { 2.0 } else { 0.0 };
            (Cuda, 6.0 * n, 0.0, (12.0 + bf) * n, format!("n={n}"))
        }
        // The per-matrix stages read their matrix twice (statistics, then the rescale) and write it once.
        "muon_eq" | "muon_plus" => {
            let (m, n) = (a(1)?, a(2)?);
            let per = m * n;
            (
                Cuda,
                4.0 * per * blocks,
                0.0,
                12.0 * per * blocks,
                format!("{blocks}x({m},{n})"),
            )
        }
        "muon_frobenius_norm" => {
            let len = a(1)?;
            (
                Cuda,
                3.0 * len * blocks,
                0.0,
                12.0 * len * blocks,
                format!("{blocks}x{len}"),
            )
        }
        "muon_normuon" => {
            let (m, n) = (a(2)?, a(3)?);
            let stats = m.max(n);
            let bytes = (12.0 * m * n + 8.0 * stats) * blocks;
            (Cuda, 4.0 * m * n * blocks, 0.0, bytes, format!("{blocks}x({m},{n})"))
        }
        // The wide per-matrix stages: statistics over the stack, per-matrix sums, elementwise rescales.
        "muon_rows_sumsq" => {
            let (rows, n) = (a(2)?, a(3)?);
            (
                Cuda,
                2.0 * rows * n,
                0.0,
                4.0 * rows * n + 4.0 * rows,
                format!("{rows} rows of {n}"),
            )
        }
        "muon_cols_sumsq" => {
            let (m, n) = (a(2)?, a(3)?);
            let k = grid.y as f64;
            (
                Cuda,
                2.0 * k * m * n,
                0.0,
                4.0 * k * m * n + 4.0 * k * n,
                format!("{k}x({m},{n})"),
            )
        }
        "muon_stack_sums" => {
            let len = a(2)?;
            (Cuda, blocks * len, 0.0, 4.0 * blocks * len, format!("{blocks}x{len}"))
        }
        "muon_normuon_stats" => {
            let (m, n) = (a(3)?, a(4)?);
            let len = m.max(n);
            (
                Cuda,
                10.0 * blocks * len,
                0.0,
                16.0 * blocks * len,
                format!("{blocks}x({m},{n})"),
            )
        }
        "muon_eq_apply" | "muon_normuon_apply" => {
            let (m, n, total) = (a(3)?, a(4)?, a(5)?);
            let stats = total / n;
            (
                Cuda,
                3.0 * total,
                0.0,
                8.0 * total + 4.0 * stats,
                format!("n={total} ({m},{n})"),
            )
        }
        "muon_frobenius_apply" | "muon_plus_apply" => {
            let total = a(3)?;
            (Cuda, 3.0 * total, 0.0, 8.0 * total, format!("n={total}"))
        }
        other => return Err(format!("no cost model for kernel {other}")),
    };
    Ok(r)
}

/// The role of a GEMM in the step, from its phase and its output.
fn gemm_family(phase: &str, g: &Gemm) -> String {
    match phase {
        "forward" => "gemm forward".into(),
        "backward" if g.c_dtype == Dtype::F32 => "gemm backward dW".into(),
        "backward" => "gemm backward dX".into(),
        "optimizer" => "gemm polar express".into(),
        p => format!("gemm {p}"),
    }
}

/// The cost of a recorded op; `tokens` is the micro-batch's token count.
pub fn cost_of(r: &Recorded, tokens: usize) -> Result<Cost, String> {
    let base = |family: String, shape: String, kind: Kind, bytes: f64| Cost {
        family,
        shape,
        phase: r.phase.clone(),
        kind,
        grid: None,
        block: None,
        smem: 0,
        flops: 0.0,
        model_flops: 0.0,
        bytes,
        world: 1,
    };
    Ok(match &r.op {
        Op::Launch {
            name,
            grid,
            block,
            smem,
            args,
        } => {
            let (kind, flops, model_flops, bytes, shape) =
                launch_cost(name, *grid, args, tokens as f64).map_err(|e| format!("{name}: {e}"))?;
            Cost {
                grid: Some(*grid),
                block: Some(*block),
                smem: *smem,
                flops,
                model_flops: if r.phase == "optimizer" { 0.0 } else { model_flops },
                ..base(name.clone(), shape, kind, bytes)
            }
        }
        Op::Gemm(g) => {
            let (m, n, k, batch) = (g.m as f64, g.n as f64, g.k as f64, g.batch as f64);
            let c_size = g.c_dtype.size() as f64;
            let c_reads = if g.beta != 0.0 { 2.0 } else { 1.0 };
            let bytes = batch * (2.0 * m * k + 2.0 * k * n + c_reads * c_size * m * n);
            let flops = 2.0 * m * n * k * batch;
            let family = gemm_family(&r.phase, g);
            let counted = matches!(r.phase.as_str(), "forward" | "backward");
            let shape = format!(
                "{}x{}x{}{}{}",
                g.m,
                g.n,
                g.k,
                if g.batch > 1 {
                    format!(" x{}", g.batch)
                } else {
                    String::new()
                },
                if g.c_dtype == Dtype::F32 { " f32" } else { "" }
            );
            Cost {
                flops,
                model_flops: if counted { flops } else { 0.0 },
                ..base(family, shape, Kind::Gemm, bytes)
            }
        }
        Op::Copy { bytes } => base("copy".into(), format!("{bytes} B"), Kind::Memcpy, 2.0 * *bytes as f64),
        Op::Zero { bytes } => base("memset".into(), format!("{bytes} B"), Kind::Memcpy, *bytes as f64),
        Op::Upload { bytes } => base("upload".into(), format!("{bytes} B"), Kind::Transfer, *bytes as f64),
        Op::Download { bytes } => base("download".into(), format!("{bytes} B"), Kind::Transfer, *bytes as f64),
        Op::Collective { kind, floats, world } => {
            let bytes = 4.0 * *floats as f64;
            Cost {
                world: *world,
                ..base(
                    kind.to_string(),
                    format!("{floats} f32 over {world}"),
                    Kind::Collective,
                    bytes,
                )
            }
        }
    })
}

/// The time of one op on one GPU: roofline, projected, and the deratings applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    pub roofline_s: f64,
    pub projected_s: f64,
    /// Grid fill × occupancy factor (1 = full), where it applies.
    pub fill: f64,
    /// Resident blocks per SM and what limits them.
    pub blocks_per_sm: Option<(u32, &'static str)>,
    /// Sector inefficiency applied to the memory term (1 = ideal or not measured).
    pub sectors: f64,
    /// Bank-conflict factor applied to the compute term.
    pub conflicts: f64,
    /// Whether counters were found for the kernel.
    pub measured: bool,
    /// "compute" or "memory": the larger term after derating.
    pub bound: &'static str,
}

/// Fraction of the full rate a grid of `blocks` reaches when `slots` blocks fit on the GPU at once and a
/// wave of `b` resident blocks runs at `eff(b)`: the full waves at their rate, the tail at its own.
fn wave_fill(blocks: f64, slots: f64, eff: impl Fn(f64) -> f64) -> f64 {
    if blocks <= 0.0 || slots <= 0.0 {
        return 1.0;
    }
    let full = (blocks / slots).floor();
    let tail = blocks - full * slots;
    let mut units = 0.0;
    if full > 0.0 {
        units += full * slots / eff(slots);
    }
    if tail > 0.0 {
        units += tail / eff(tail);
    }
    blocks / units
}

/// Fill of a cuBLASLt GEMM: its 128x256 output tiles over the SMs, one per SM at a time, with split-K
/// (as cuBLASLt's heuristics choose it) when the tiles do not fill the GPU and k is long.
fn gemm_fill(g_m: f64, g_n: f64, k: f64, batch: f64, sms: f64) -> f64 {
    let tiles = (g_m / GEMM_TILE.0 as f64).ceil() * (g_n / GEMM_TILE.1 as f64).ceil() * batch;
    let split = if tiles < sms {
        (sms / tiles).floor().min((k / 1024.0).floor()).max(1.0)
    } else {
        1.0
    };
    wave_fill(tiles * split, sms, |b| (b / sms).min(1.0))
}

/// Times `c` (from op `r`) on `gpu`.
pub fn time_on(gpu: &Gpu, r: &Recorded, c: &Cost, res: &Resources, counters: &Counters) -> Timing {
    let sms = gpu.sms as f64;
    let mut t = Timing {
        roofline_s: 0.0,
        projected_s: 0.0,
        fill: 1.0,
        blocks_per_sm: None,
        sectors: 1.0,
        conflicts: 1.0,
        measured: false,
        bound: "memory",
    };
    let mem = c.bytes / gpu.bytes_per_s;
    match c.kind {
        Kind::Gemm => {
            let Op::Gemm(g) = &r.op else {
                unreachable!("a GEMM cost comes from a GEMM")
            };
            let comp = c.flops / gpu.flops;
            t.roofline_s = comp.max(mem);
            t.fill = gemm_fill(g.m as f64, g.n as f64, g.k as f64, g.batch as f64, sms);
            let (pc, pm) = (comp / (GEMM_EFF * t.fill), mem / (MEM_EFF * t.fill));
            t.bound = if pc >= pm { "compute" } else { "memory" };
            t.projected_s = pc.max(pm) + LAUNCH_GAP_S;
        }
        Kind::Tensor | Kind::Cuda => {
            let (grid, block) = (c.grid.expect("a launch"), c.block.expect("a launch"));
            let name = &c.family;
            let peak = if c.kind == Kind::Tensor {
                gpu.flops
            } else {
                gpu.fp32_flops
            };
            let comp = c.flops / peak;
            t.roofline_s = comp.max(mem);
            let threads = block.x * block.y * block.z;
            let warps = threads.div_ceil(32) as f64;
            let (regs, static_smem) = res.get(name).unwrap_or((32, 0));
            let (mut bps, why) = profile::blocks_per_sm90(threads, regs, static_smem + c.smem);
            let kc = counters.get(name);
            if let Some(occ) = kc.and_then(|k| k.occupancy) {
                bps = ((occ * SM_WARPS as f64 / warps).round() as u32).max(1);
            }
            t.blocks_per_sm = Some((bps, why));
            let blocks = grid.x as f64 * grid.y as f64 * grid.z as f64;
            let slots = sms * bps as f64;
            let (mut lanes, mut conflict) = (32.0, 1.0);
            if let Some(k) = kc {
                t.measured = true;
                t.sectors = (k.sectors_per_request / k.ideal_sectors_per_request.max(1e-9)).max(1.0);
                conflict = k.bank_conflict_degree.max(1.0);
                lanes = k.active_lanes.clamp(1.0, 32.0);
            }
            let (pc, pm) = if c.kind == Kind::Tensor {
                t.fill = wave_fill(blocks, slots, |b| (b * warps / (sms * TENSOR_WARPS_SAT)).min(1.0));
                t.conflicts = 1.0 + SMEM_SHARE * (conflict - 1.0);
                (
                    comp * t.conflicts / (MMA_SYNC_EFF * t.fill),
                    mem * t.sectors / (MEM_EFF * t.fill),
                )
            } else {
                t.fill = wave_fill(blocks, slots, |b| {
                    (b * warps / (sms * SM_WARPS as f64 * OCC_SAT)).min(1.0)
                });
                (comp * (32.0 / lanes) / t.fill, mem * t.sectors / (MEM_EFF * t.fill))
            };
            t.bound = if pc >= pm { "compute" } else { "memory" };
            t.projected_s = pc.max(pm) + LAUNCH_GAP_S;
        }
        Kind::Memcpy => {
            t.roofline_s = mem;
            t.projected_s = mem / MEM_EFF + LAUNCH_GAP_S;
        }
        Kind::Transfer => {
            // What the step needs of these bytes is a pass through device memory (the collectives' buffers
            // staying on the device); crossing PCIe is the implementation's cost.
            t.roofline_s = mem;
            t.projected_s = c.bytes / gpu.pcie + LAUNCH_GAP_S;
            t.bound = "PCIe";
        }
        Kind::Collective => {
            let w = c.world as f64;
            let factor = match c.family.as_str() {
                "all_reduce" => 2.0 * (w - 1.0) / w,
                _ => (w - 1.0) / w,
            };
            t.roofline_s = factor * c.bytes / gpu.nvlink_bus;
            t.projected_s = t.roofline_s + 10e-6;
            t.bound = "NVLink";
        }
    }
    t
}

/// One priced op.
#[derive(Clone, Debug)]
pub struct Priced {
    pub cost: Cost,
    /// One timing per GPU of [`gpus`].
    pub times: Vec<Timing>,
}

/// The projection of one configuration's step.
#[derive(Clone, Debug)]
pub struct StepProjection {
    pub label: String,
    pub config: ModelConfig,
    pub plan: StepPlan,
    pub ops: Vec<Priced>,
    pub gpus: Vec<Gpu>,
}

/// Totals of a projection on one GPU.
#[derive(Clone, Debug, PartialEq)]
pub struct Totals {
    pub roofline_s: f64,
    pub projected_s: f64,
    /// Per GPU.
    pub tok_per_s: f64,
    pub mfu: f64,
    pub roofline_mfu: f64,
}

impl StepProjection {
    /// Prices a recorded step.
    pub fn price(
        label: &str,
        config: &ModelConfig,
        plan: &StepPlan,
        ops: &[Recorded],
        res: &Resources,
        counters: &Counters,
    ) -> Result<StepProjection, String> {
        let gpus = gpus().to_vec();
        let tokens = plan.device_batch * plan.seq;
        let mut priced = Vec::with_capacity(ops.len());
        for r in ops {
            let cost = cost_of(r, tokens)?;
            let times = gpus.iter().map(|g| time_on(g, r, &cost, res, counters)).collect();
            priced.push(Priced { cost, times });
        }
        Ok(StepProjection {
            label: label.to_string(),
            config: config.clone(),
            plan: *plan,
            ops: priced,
            gpus,
        })
    }

    /// Σ model FLOPs of the step's ops: what `flops_per_token × tokens` should equal.
    pub fn model_flops(&self) -> f64 {
        self.ops.iter().map(|p| p.cost.model_flops).sum()
    }

    pub fn totals(&self, gpu: usize) -> Totals {
        let roof: f64 = self.ops.iter().map(|p| p.times[gpu].roofline_s).sum();
        let proj: f64 = self.ops.iter().map(|p| p.times[gpu].projected_s).sum();
        let tokens = self.plan.tokens_per_gpu() as f64;
        let flops = self.config.flops_per_token() * tokens;
        let peak = self.gpus[gpu].flops;
        Totals {
            roofline_s: roof,
            projected_s: proj,
            tok_per_s: tokens / proj,
            mfu: flops / proj / peak,
            roofline_mfu: flops / roof / peak,
        }
    }

    /// Per family: (family, kind, launches, flops, bytes, roofline per GPU, projected per GPU, the
    /// first launch's timing on GPU 0), in step order of first appearance.
    pub fn families(&self) -> Vec<Family> {
        let mut out: Vec<Family> = Vec::new();
        for p in &self.ops {
            let f = match out.iter_mut().find(|f| f.name == p.cost.family) {
                Some(f) => f,
                None => {
                    out.push(Family {
                        name: p.cost.family.clone(),
                        kind: p.cost.kind,
                        count: 0,
                        flops: 0.0,
                        bytes: 0.0,
                        roofline_s: vec![0.0; self.gpus.len()],
                        projected_s: vec![0.0; self.gpus.len()],
                        fill_min: 1.0,
                        measured: false,
                        sample: p.clone(),
                    });
                    out.last_mut().expect("just pushed")
                }
            };
            f.count += 1;
            f.flops += p.cost.flops;
            f.bytes += p.cost.bytes;
            for (g, t) in p.times.iter().enumerate() {
                f.roofline_s[g] += t.roofline_s;
                f.projected_s[g] += t.projected_s;
            }
            f.fill_min = f.fill_min.min(p.times[0].fill);
            f.measured |= p.times[0].measured;
        }
        out
    }
}

/// The ops of one family (kernel name or GEMM role) summed.
#[derive(Clone, Debug)]
pub struct Family {
    pub name: String,
    pub kind: Kind,
    pub count: usize,
    pub flops: f64,
    pub bytes: f64,
    pub roofline_s: Vec<f64>,
    pub projected_s: Vec<f64>,
    /// The worst fill of its launches on GPU 0.
    pub fill_min: f64,
    pub measured: bool,
    pub sample: Priced,
}

impl Family {
    /// Projected minus roofline time on GPU `g`.
    pub fn gap(&self, g: usize) -> f64 {
        self.projected_s[g] - self.roofline_s[g]
    }
}

/// The group a family's gap is ranked in: the families one change closes together.
pub fn gap_group(family: &str) -> &str {
    match family {
        "muon_eq"
        | "muon_frobenius_norm"
        | "muon_plus"
        | "muon_normuon"
        | "muon_rows_sumsq"
        | "muon_cols_sumsq"
        | "muon_stack_sums"
        | "muon_normuon_stats"
        | "muon_eq_apply"
        | "muon_frobenius_apply"
        | "muon_plus_apply"
        | "muon_normuon_apply" => "Muon per-matrix stages",
        "upload" | "download" => "host transfers",
        "relu2_forward" | "relu2_backward" => "relu²",
        "reduce_scatter" | "all_gather" | "all_reduce" => "collectives",
        "gemm forward" | "gemm backward dX" | "gemm backward dW" => "model GEMMs",
        f if f.starts_with("attention_flash_backward") => "flash attention backward",
        f if f.starts_with("attention_flash_forward") => "flash attention forward",
        f => f,
    }
}

/// Families summed by [`gap_group`], largest gap (projected − roofline on GPU `g`) first.
pub fn gap_groups(fams: &[Family], g: usize) -> Vec<Family> {
    let mut out: Vec<Family> = Vec::new();
    for f in fams {
        let name = gap_group(&f.name);
        match out.iter_mut().find(|x| x.name == name) {
            Some(x) => {
                x.count += f.count;
                x.flops += f.flops;
                x.bytes += f.bytes;
                for i in 0..x.roofline_s.len() {
                    x.roofline_s[i] += f.roofline_s[i];
                    x.projected_s[i] += f.projected_s[i];
                }
                x.fill_min = x.fill_min.min(f.fill_min);
                x.measured |= f.measured;
            }
            None => out.push(Family {
                name: name.to_string(),
                ..f.clone()
            }),
        }
    }
    out.sort_by(|a, b| b.gap(g).total_cmp(&a.gap(g)));
    out
}

/// The change that closes the gap of a family or group, as far as the projection can tell.
pub fn remedy(f: &Family) -> String {
    let name = f.name.as_str();
    let fill = f.fill_min;
    match name {
        "Muon per-matrix stages"
            if !matches!(
                f.sample.cost.family.as_str(),
                "muon_eq" | "muon_frobenius_norm" | "muon_plus" | "muon_normuon"
            ) =>
        {
            "the wide stages read each matrix four times (MuonEq, Frobenius, Muon+ and NorMuon statistics) and \
             write it four times: fuse each statistics pass into the previous stage's rescale, and the Frobenius \
             rescale into the bf16 cast before Polar Express"
                .into()
        }
        "Muon per-matrix stages" | "muon_eq" | "muon_frobenius_norm" | "muon_plus" | "muon_normuon" => format!(
            "one block per matrix fills {:.0}% of the GPU: split each matrix's reduction over many blocks \
             (fixed-order partial sums, then a scale pass over the whole stack on an elementwise grid)",
            100.0 * fill
        ),
        "gemm polar express" => "batched Gram and update GEMMs of a few small matrices: batch all Muon groups of \
             one shape into one call and keep the bf16 copies (C ≠ D in cuBLASLt instead of the copies before \
             each GEMM)"
            .into(),
        "model GEMMs" | "gemm forward" | "gemm backward dX" | "gemm backward dW" => format!(
            "mostly cuBLASLt's own efficiency (assumed {:.0}% of peak: calibrate on the GPU), then wave \
             quantisation (worst fill {:.0}%): time several cuBLASLt algorithms per shape at start-up and keep the \
             fastest (split-K for the dW GEMMs), and fold the elementwise neighbours into epilogues (relu² into \
             the c_fc GEMM, C ≠ D for the residual adds)",
            100.0 * GEMM_EFF,
            100.0 * fill
        ),
        n if n.starts_with("attention_flash_backward") || n == "flash attention backward" => format!(
            "mma.sync kernels at the assumed {:.0}% of peak, and dQ and dK/dV each recompute S and dP (7 matmuls \
             where 5 suffice): one backward kernel per K/V tile accumulating dQ (FlashAttention-2's scheme), \
             then wgmma + TMA (FlashAttention-3) for the rest",
            100.0 * MMA_SYNC_EFF
        ),
        n if n.starts_with("attention_flash_forward") || n == "flash attention forward" => format!(
            "mma.sync at the assumed {:.0}% of peak: wgmma with TMA loads and warp specialisation \
             (FlashAttention-3) reaches ~75%",
            100.0 * MMA_SYNC_EFF
        ),
        "host transfers" | "upload" | "download" => {
            "the collectives stage the gradients and parameters through host memory over PCIe: \
             run NCCL on the device buffers (reduce-scatter of the gradient buffer, all-gather of the parameters) \
             and overlap it with the backward"
                .into()
        }
        "collectives" | "reduce_scatter" | "all_gather" | "all_reduce" => {
            "not overlapped with compute: start each group's reduce-scatter as soon as its gradients are final \
             (during the backward) and the all-gathers during the next forward"
                .into()
        }
        "copy" => "device copies before the accumulating GEMMs (xb = xa, res = xb, Polar Express's B = A, Y = X): \
             cuBLASLt's separate C and D operands make them unnecessary"
            .into(),
        "memset" => "zeroing of whole gradient buffers: write the first micro-batch's gradients with beta = 0 \
             instead"
            .into(),
        "relu²" | "relu2_forward" | "relu2_backward" => {
            "relu² is a separate pass over the (n, 4c) activation three times per \
             layer (forward, recomputed in the backward for the c_proj dW GEMM, and its backward): compute it in \
             the c_fc GEMM's epilogue (saving h and relu²(h) together) and fold its backward into the dX GEMM's \
             epilogue"
                .into()
        }
        _ if fill < 0.5 => format!(
            "the grid fills {:.0}% of the GPU: more blocks (or fewer threads per block and more rows per thread)",
            100.0 * fill
        ),
        _ if f.projected_s[0] > 4.0 * f.roofline_s[0] => format!(
            "launch-bound ({} launches of {:.1} µs roofline each): fuse into a neighbour or capture the step in \
             a CUDA graph",
            f.count,
            1e6 * f.roofline_s[0] / f.count.max(1) as f64
        ),
        _ => "memory-bound near its roofline: only fusing it into its producer or consumer (keeping its bytes \
             on chip) makes it faster"
            .into(),
    }
}

fn ms(s: f64) -> String {
    format!("{:.3}", s * 1e3)
}

/// The "Step projection" section for `projections` (markdown), with the counters' provenance.
pub fn report(projections: &[StepProjection], counters_from: Option<&str>, with_shapes: bool) -> String {
    let mut o = String::new();
    let gpus = gpus();
    let _ = writeln!(o, "## Step projection\n");
    let _ = writeln!(
        o,
        "Every op of one training step, recorded from the model's own code on a dry device (no execution), \
         priced from its shapes: FLOPs (GEMMs 2mnk; attention over the causal-window pairs, with the \
         backward's recomputation) and compulsory DRAM bytes (bf16 activations, fp32 statistics, gradients \
         and optimizer state), then a roofline time per GPU and a derated, projected time. The step is one \
         stream (times add up; no overlap of collectives with compute). MFU is upstream's: \
         flops_per_token × tokens / time / peak.\n"
    );
    let _ = writeln!(
        o,
        "| GPU | bf16 dense | HBM | SMs | NVLink bus (assumed) | PCIe (assumed) |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|");
    for g in &gpus {
        let _ = writeln!(
            o,
            "| {} | {:.0} TFLOP/s | {:.2} TB/s | {} | {:.0} GB/s | {:.0} GB/s |",
            g.name,
            g.flops / 1e12,
            g.bytes_per_s / 1e12,
            g.sms,
            g.nvlink_bus / 1e9,
            g.pcie / 1e9
        );
    }
    let _ = writeln!(o, "\nDeratings and where they come from:\n");
    let counters = match counters_from {
        Some(f) => format!("from the emulator counters in `{f}`"),
        None => "not measured (no counters given: factor 1)".to_string(),
    };
    let _ = writeln!(
        o,
        "- grid fill and occupancy: computed from each launch's grid and block and `ptx/resources.txt` (sm_90a \
         registers and static shared memory, plus the launch's dynamic shared memory), {};",
        if counters_from.is_some() {
            "with the counters' measured occupancy where they have one"
        } else {
            "no measured occupancy"
        }
    );
    let _ = writeln!(
        o,
        "- sector inefficiency (actual / ideal sectors per request, on the memory term), bank conflicts (on {:.0}% \
         of the attention kernels' compute term) and active lanes (on the CUDA-core compute term): {counters};",
        100.0 * SMEM_SHARE
    );
    let _ = writeln!(
        o,
        "- assumed until a GPU calibrates them: cuBLASLt at {:.0}% of the dense peak (128x256 tiles, waves over \
         the SMs, split-K for long k), mma.sync attention at {:.0}%, DRAM at {:.0}% of peak, memory-bound \
         kernels need {:.0}% of the warp slots busy, tensor-core kernels {:.0} warps per SM, {:.0} µs between \
         dependent launches.\n",
        100.0 * GEMM_EFF,
        100.0 * MMA_SYNC_EFF,
        100.0 * MEM_EFF,
        100.0 * OCC_SAT,
        TENSOR_WARPS_SAT,
        LAUNCH_GAP_S * 1e6
    );
    let _ = writeln!(o, "### Projected step, per GPU\n");
    let _ = writeln!(
        o,
        "| config | GPUs | tokens/GPU/step | GPU | roofline step | projected step | tok/s per GPU | tok/s all GPUs \
         | MFU (roofline) | MFU (projected) | upstream |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|");
    for p in projections {
        for (g, gpu) in gpus.iter().enumerate() {
            let t = p.totals(g);
            let _ = writeln!(
                o,
                "| {} | {} | {} ({} x {} x {}) | {} | {} ms | {} ms | {:.0} | {:.0} | {:.1}% | {:.1}% | ≈48% MFU |",
                p.label,
                p.plan.world,
                p.plan.tokens_per_gpu(),
                p.plan.device_batch,
                p.plan.seq,
                p.plan.grad_accum,
                gpu.name,
                ms(t.roofline_s),
                ms(t.projected_s),
                t.tok_per_s,
                t.tok_per_s * p.plan.world as f64,
                100.0 * t.roofline_mfu,
                100.0 * t.mfu
            );
        }
    }
    let _ = writeln!(o);
    for p in projections {
        let fams = p.families();
        let _ = writeln!(
            o,
            "### {}: {} launches and GEMMs, {} other ops per step\n",
            p.label,
            p.ops
                .iter()
                .filter(|x| matches!(x.cost.kind, Kind::Gemm | Kind::Tensor | Kind::Cuda))
                .count(),
            p.ops
                .iter()
                .filter(|x| !matches!(x.cost.kind, Kind::Gemm | Kind::Tensor | Kind::Cuda))
                .count()
        );
        let by_gap = gap_groups(&fams, 0);
        let step = p.totals(0).projected_s;
        let _ = writeln!(
            o,
            "Five largest gaps (projected − roofline on the H100 SXM; kernels that one change fixes together \
             are one group) and the change that closes each:\n"
        );
        for (i, f) in by_gap.iter().take(5).enumerate() {
            let _ = writeln!(
                o,
                "{}. **{}** ({} ops): {} ms projected vs {} ms roofline ({:.1}% of the step): {}.",
                i + 1,
                f.name,
                f.count,
                ms(f.projected_s[0]),
                ms(f.roofline_s[0]),
                100.0 * f.projected_s[0] / step,
                remedy(f)
            );
        }
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "| family | ops | GFLOP | GB | H100 roofline ms | H100 projected ms | H200 projected ms | worst fill | bound | counters |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|");
        let mut sorted: Vec<&Family> = fams.iter().collect();
        sorted.sort_by(|a, b| b.projected_s[0].total_cmp(&a.projected_s[0]));
        for f in sorted {
            let _ = writeln!(
                o,
                "| {} | {} | {:.1} | {:.2} | {} | {} | {} | {:.0}% | {} | {} |",
                f.name,
                f.count,
                f.flops / 1e9,
                f.bytes / 1e9,
                ms(f.roofline_s[0]),
                ms(f.projected_s[0]),
                ms(f.projected_s[1]),
                100.0 * f.fill_min,
                f.sample.times[0].bound,
                match f.kind {
                    Kind::Gemm | Kind::Memcpy | Kind::Transfer | Kind::Collective => "n/a",
                    _ if f.measured => "measured",
                    _ => "not measured",
                }
            );
        }
        let _ = writeln!(o);
        if with_shapes {
            let _ = writeln!(o, "<details><summary>{}: every launch shape</summary>\n", p.label);
            let _ = writeln!(
                o,
                "| phase | op | shape | count | grid | block | smem | blocks/SM (limit) | fill | H100 roofline µs | H100 projected µs |"
            );
            let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|");
            let mut shapes: Vec<(String, String, String, usize, &Priced)> = Vec::new();
            for x in &p.ops {
                let c = &x.cost;
                match shapes
                    .iter_mut()
                    .find(|s| s.0 == c.phase && s.1 == c.family && s.2 == c.shape)
                {
                    Some(s) => s.3 += 1,
                    None => shapes.push((c.phase.clone(), c.family.clone(), c.shape.clone(), 1, x)),
                }
            }
            for (phase, fam, shape, n, x) in shapes {
                let t = &x.times[0];
                let dim = |d: Option<Dim3>| d.map_or("-".to_string(), |d| format!("{}x{}x{}", d.x, d.y, d.z));
                let _ = writeln!(
                    o,
                    "| {phase} | {fam} | {shape} | {n} | {} | {} | {} | {} | {:.0}% | {:.1} | {:.1} |",
                    dim(x.cost.grid),
                    dim(x.cost.block),
                    x.cost.smem,
                    t.blocks_per_sm
                        .map_or("-".to_string(), |(b, why)| format!("{b} ({why})")),
                    100.0 * t.fill,
                    t.roofline_s * 1e6,
                    t.projected_s * 1e6
                );
            }
            let _ = writeln!(o, "\n</details>\n");
        }
    }
    o
}

/// Upstream's speedrun batch settings (spec §3.2, 8 GPUs): (label, depth, device batch, grad accum).
pub const SPEEDRUN: [(&str, usize, usize, usize); 3] = [("d12", 12, 32, 1), ("d20", 20, 16, 4), ("d26", 26, 16, 4)];

/// The model and plan of a speedrun depth (aspect 64, head_dim 128, T 2048, vocab 32768, "SSSL").
pub fn speedrun(depth: usize, world: usize) -> Result<(ModelConfig, StepPlan), String> {
    let &(_, _, device_batch, grad_accum) = SPEEDRUN
        .iter()
        .find(|s| s.1 == depth)
        .ok_or_else(|| format!("no speedrun settings for depth {depth} (have 12, 20, 26)"))?;
    let cfg = ModelConfig::from_depth(depth, 64, 128, 2048, 32768, "SSSL");
    cfg.validate()?;
    // The total batch (2^19 at d12, 2^20 at d20 and d26) is fixed: fewer GPUs accumulate more.
    let total = device_batch * 2048 * grad_accum * 8;
    let per_micro = device_batch * 2048 * world;
    if world == 0 || total % per_micro != 0 {
        return Err(format!("{world} GPUs do not divide the total batch of {total} tokens"));
    }
    Ok((
        cfg,
        StepPlan {
            device_batch,
            seq: 2048,
            grad_accum: total / per_micro,
            world,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_grids_are_derated_and_full_ones_are_not() {
        let eff = |b: f64| (b * 8.0 / (132.0 * 64.0 * OCC_SAT)).min(1.0);
        // 12 blocks of 8 warps: 96 of the 4224 warps needed.
        let small = wave_fill(12.0, 132.0 * 8.0, eff);
        assert!((small - 96.0 / 4224.0).abs() < 1e-12, "{small}");
        assert_eq!(wave_fill(132.0 * 8.0 * 100.0, 132.0 * 8.0, eff), 1.0);
        // A GEMM of 132 tiles fills one wave; 133 need two.
        assert_eq!(gemm_fill(128.0 * 12.0, 256.0 * 11.0, 4096.0, 1.0, 132.0), 1.0);
        let f = gemm_fill(128.0 * 7.0, 256.0 * 19.0, 64.0, 1.0, 132.0);
        assert!((f - 133.0 / 264.0).abs() < 1e-12, "{f}");
    }

    #[test]
    fn causal_pairs_count_the_visible_keys() {
        let brute = |t: usize, w: usize| (0..t).map(|p| p.min(w) + 1).sum::<usize>() as f64;
        for (t, w) in [(1, 1), (8, 8), (8, 3), (100, 7), (64, 64), (64, 200)] {
            assert_eq!(causal_pairs(t as f64, w as f64), brute(t, w), "t={t} w={w}");
        }
    }

    #[test]
    fn resources_and_counters_parse() {
        let report = "ptxas info    : Compiling entry function 'k' for 'sm_80'\n\
                      ptxas info    : Used 40 registers, used 1 barriers, 64 bytes smem, 360 bytes cmem[0]\n\
                      ptxas info    : Compiling entry function 'k' for 'sm_90a'\n\
                      ptxas info    : Function properties for k\n\
                      ptxas info    : Used 48 registers, used 1 barriers, 128 bytes smem\n";
        assert_eq!(Resources::parse(report).get("k"), Some((48, 128)));
        let built = Resources::built_in();
        assert!(built.get("muon_eq").is_some() && built.len() > 40);
        let c = Counters::parse(
            "{\"kernel\":\"a\",\"sectors_per_request\":8,\"ideal_sectors_per_request\":4}\n\
             {\"kernel\":\"a\",\"sectors_per_request\":4,\"ideal_sectors_per_request\":4,\"occupancy\":0.5}\n",
        )
        .unwrap();
        let a = c.get("a").unwrap();
        assert_eq!((a.sectors_per_request, a.ideal_sectors_per_request), (6.0, 4.0));
        assert_eq!((a.bank_conflict_degree, a.occupancy), (1.0, Some(0.5)));
        let arr = Counters::parse("[{\"kernel\":\"b\",\"bank_conflict_degree\":32}]").unwrap();
        assert_eq!(arr.get("b").unwrap().bank_conflict_degree, 32.0);
        assert!(Counters::parse("{\"shape\":\"x\"}").unwrap_err().contains("kernel"));
    }
}
