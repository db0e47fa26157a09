//! Collective bandwidth, nccl-tests style, and the per-rank memory of ZeRO-2 training.
//!
//! ```text
//! comm_bench --nproc-per-node 4                      CPU ring over localhost, 1 MB .. 1 GB
//! mpirun -np 8 comm_bench --backend nccl             NCCL, one GPU per rank
//! comm_bench --memory-report --depth 26 --world 8    per-rank device memory of d26 on 8 ranks (no run)
//! ```
//! For each size (bytes of the full buffer: all-reduce's buffer, reduce-scatter's input, all-gather's
//! output) it times `--iters` operations after a warm-up and prints, per nccl-tests' definitions, the time,
//! the algorithm bandwidth `size / time` and the bus bandwidth: `algbw · 2(n−1)/n` for all-reduce and
//! `algbw · (n−1)/n` for reduce-scatter and all-gather (what each link carries; comparable across n).
//! The time is the slowest rank's (reduced with a max over ranks). Ranks come from the launcher's
//! variables (see the README's launch section) or from `--nproc-per-node`.

use clap::{Parser, ValueEnum};
use nanochat::config::ModelConfig;
use nanochat::device::kernels::muon::{MuonScratch, Stack};
use nanochat::device::memory::{static_memory, ArenaLayout};
use nanochat::dist::launch::{run_local, LocalLaunch};
use nanochat::dist::{env, nccl, ring, Collectives, Fingerprint, ReduceOp, Timeouts};
use nanochat::optim::zero::ShardedMuonAdamW;
use nanochat::optim::{MuonAdamW, SetupArgs};
use nanochat::params::ParamTable;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// the CPU ring over TCP
    Cpu,
    /// NCCL on the GPU LOCAL_RANK picks (device buffers, no host copies in the timing)
    Nccl,
}

#[derive(Parser)]
#[command(about = "All-reduce / reduce-scatter / all-gather bus bandwidth, and ZeRO-2 memory per rank")]
struct Args {
    /// Communication backend.
    #[arg(long, value_enum, default_value = "cpu")]
    backend: Backend,
    /// Smallest buffer in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    min_bytes: usize,
    /// Largest buffer in bytes.
    #[arg(long, default_value_t = 1 << 30)]
    max_bytes: usize,
    /// Size multiplier between rows.
    #[arg(long, default_value_t = 4)]
    factor: usize,
    /// Timed operations per row (after one warm-up).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Start this many local ranks (torchrun-style) instead of reading the launcher's variables.
    #[arg(long)]
    nproc_per_node: Option<usize>,
    /// Seconds a rank waits for the others to join or to send data.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Print the per-rank device memory of ZeRO-2 training instead of measuring bandwidth.
    #[arg(long)]
    memory_report: bool,
    /// Depth for the memory report.
    #[arg(long, default_value_t = 26)]
    depth: usize,
    /// Ranks for the memory report.
    #[arg(long, default_value_t = 8)]
    world: usize,
    /// Device memory for the largest-batch search, GiB.
    #[arg(long, default_value_t = 80.0)]
    device_gib: f64,
    /// Sequence length for the memory report.
    #[arg(long, default_value_t = 2048)]
    seq: usize,
}

fn mib(b: usize) -> f64 {
    b as f64 / (1 << 20) as f64
}

/// Per-rank device memory of ZeRO-2 training (the kernel device's own accounting, with sharded state).
fn memory_report(a: &Args) -> String {
    let cfg = ModelConfig::from_depth(a.depth, 64, 128, a.seq, 32768, "SSSL");
    let table = ParamTable::new(&cfg);
    let opt = ShardedMuonAdamW::new(&table, &SetupArgs::default(), 0, a.world);
    let single: usize = static_memory(&table, &MuonAdamW::new(&table, &SetupArgs::default()))
        .values()
        .sum();
    let mut rows: Vec<(String, usize)> = vec![
        ("parameters (fp32 master)".into(), table.numel * 4),
        ("parameters (bf16 copy)".into(), table.numel * 2),
        ("gradients (fp32)".into(), table.numel * 4),
        (format!("optimizer state (1/{} shard)", a.world), opt.state_len() * 4),
    ];
    let (mut scratch, mut comm) = (0, 0);
    for ((m, n), chunk, owned) in opt.muon_chunks() {
        scratch += MuonScratch::sizes(Stack { k: owned, m, n }).iter().sum::<usize>();
        // The stacked gradients (chunk·W matrices, reused for the gather) and the reduced chunk.
        comm += (chunk * a.world + chunk) * m * n * 4;
    }
    comm += opt.adam_shard_lens().iter().sum::<usize>() * 4;
    if a.world == 1 {
        comm = 0; // one rank communicates nothing
    }
    rows.push(("Muon scratch (owned chunk)".into(), scratch));
    rows.push(("ZeRO-2 communication buffers".into(), comm));
    let fixed: usize = rows.iter().map(|r| r.1).sum();
    let avail = (a.device_gib * (1u64 << 30) as f64) as usize;
    let fits = |b: usize| fixed + ArenaLayout::size(&cfg, b, a.seq) <= avail;
    let mut best = 0;
    while best < 1024 && fits(best + 1) {
        best += 1;
    }
    let mut out = format!(
        "d{} ({} parameters, n_embd {}) on {} ranks, ZeRO-2, T = {}; per rank:\n",
        a.depth, table.numel, cfg.n_embd, a.world, a.seq
    );
    for (what, bytes) in &rows {
        out += &format!("  {what:<34} {:>10.1} MiB\n", mib(*bytes));
    }
    out += &format!(
        "  {:<34} {:>10.1} MiB (one rank on the kernel device today: {:.1} MiB)\n",
        "static total",
        mib(fixed),
        mib(single)
    );
    if best > 0 {
        out += &format!(
            "  activation arena, device batch {best}: {:.1} MiB\n  largest device batch in {} GiB: {best} (total {:.1} MiB)",
            mib(ArenaLayout::size(&cfg, best, a.seq)),
            a.device_gib,
            mib(fixed + ArenaLayout::size(&cfg, best, a.seq))
        );
    } else {
        out += &format!("  not even device batch 1 fits in {} GiB", a.device_gib);
    }
    out
}

/// The three operations on one backend.
trait Bench {
    fn comm(&mut self) -> &mut dyn Collectives;
    /// Runs `op` once on `n` fp32 values of the full buffer.
    fn run(&mut self, op: usize, n: usize) -> Result<(), String>;
}

struct CpuBench {
    c: Box<dyn Collectives>,
    full: Vec<f32>,
    part: Vec<f32>,
}

impl Bench for CpuBench {
    fn comm(&mut self) -> &mut dyn Collectives {
        self.c.as_mut()
    }
    fn run(&mut self, op: usize, n: usize) -> Result<(), String> {
        let w = self.c.world_size();
        self.full.resize(n, 1.0);
        self.part.resize(n / w, 1.0);
        let r = match op {
            0 => self.c.all_reduce(&mut self.full, ReduceOp::Sum),
            1 => self.c.reduce_scatter(&self.full, &mut self.part, ReduceOp::Sum),
            _ => self.c.all_gather(&self.part, &mut self.full),
        };
        r.map_err(String::from)
    }
}

struct NcclBench {
    c: nccl::Nccl,
}

impl Bench for NcclBench {
    fn comm(&mut self) -> &mut dyn Collectives {
        &mut self.c
    }
    fn run(&mut self, op: usize, n: usize) -> Result<(), String> {
        let w = self.c.world_size();
        let base = self.c.device_buffer((n + n / w) * 4)?;
        let part = base + n as u64 * 4;
        // SAFETY: the buffer holds n + n/w values.
        unsafe {
            match op {
                0 => self.c.all_reduce_device(base, n, ReduceOp::Sum)?,
                1 => self.c.reduce_scatter_device(base, part, n / w, ReduceOp::Sum)?,
                _ => self.c.all_gather_device(part, base, n / w)?,
            }
        }
        self.c.wait().map_err(String::from)
    }
}

fn bench(a: &Args) -> Result<(), String> {
    let info = env::from_env()?;
    let t = Timeouts {
        connect: Duration::from_secs(a.timeout),
        op: Duration::from_secs(a.timeout),
    };
    let fp = Fingerprint::new().with(
        "comm_bench sizes",
        format!("{}..{} x{}", a.min_bytes, a.max_bytes, a.factor),
    );
    let mut b: Box<dyn Bench> = match a.backend {
        Backend::Cpu => Box::new(CpuBench {
            c: ring::connect(&info, &fp, &t)?,
            full: Vec::new(),
            part: Vec::new(),
        }),
        Backend::Nccl => Box::new(NcclBench {
            c: nccl::connect(&info, &fp, &t)?,
        }),
    };
    let (rank, w) = (info.rank.value, info.world_size.value);
    if rank == 0 {
        println!("# {info}");
        println!(
            "# {:?} backend, {w} rank(s); time = slowest rank, mean of {} ops; busbw as nccl-tests",
            a.backend, a.iters
        );
        println!(
            "{:>12} {:>15} {:>11} {:>12} {:>12}",
            "bytes", "op", "time (us)", "algbw GB/s", "busbw GB/s"
        );
    }
    let names = ["all_reduce", "reduce_scatter", "all_gather"];
    let mut size = a.min_bytes.max(4 * w);
    while size <= a.max_bytes {
        // Whole fp32 values, divisible by the world size.
        let n = size / 4 / w * w;
        for (op, name) in names.iter().enumerate() {
            b.run(op, n)?;
            b.comm().barrier().map_err(String::from)?;
            let t0 = Instant::now();
            for _ in 0..a.iters {
                b.run(op, n)?;
            }
            let mut secs = [t0.elapsed().as_secs_f64() as f32 / a.iters as f32; 1];
            // Max over ranks through a sum of one-hot slots (the trait has no max).
            let mut slots = vec![0f32; w];
            slots[rank] = secs[0];
            b.comm().all_reduce(&mut slots, ReduceOp::Sum).map_err(String::from)?;
            secs[0] = slots.iter().cloned().fold(0.0, f32::max);
            if rank == 0 {
                let bytes = n * 4;
                let alg = bytes as f64 / secs[0] as f64 / 1e9;
                let factor = match op {
                    0 => 2.0 * (w as f64 - 1.0) / w as f64,
                    _ => (w as f64 - 1.0) / w as f64,
                };
                println!(
                    "{bytes:>12} {name:>15} {:>11.1} {alg:>12.3} {:>12.3}",
                    secs[0] as f64 * 1e6,
                    alg * factor
                );
            }
        }
        size *= a.factor.max(2);
    }
    Ok(())
}

fn main() -> ExitCode {
    let a = Args::parse();
    if a.memory_report {
        println!("{}", memory_report(&a));
        return ExitCode::SUCCESS;
    }
    let result = match a.nproc_per_node {
        Some(n) => {
            // Re-run this program as n ranks, without the flag.
            let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
            if let Some(i) = args.iter().position(|x| x == "--nproc-per-node") {
                args.drain(i..(i + 2).min(args.len()));
            } else {
                args.retain(|x| !x.to_string_lossy().starts_with("--nproc-per-node="));
            }
            let port = std::env::var("MASTER_PORT")
                .ok()
                .and_then(|p| p.parse().ok())
                .unwrap_or(29500);
            std::env::current_exe().map_err(|e| e.to_string()).and_then(|exe| {
                run_local(
                    &exe,
                    &args,
                    &LocalLaunch {
                        nproc_per_node: n,
                        nnodes: 1,
                        node_rank: 0,
                        master_addr: "127.0.0.1".into(),
                        master_port: port,
                        grace: Duration::from_secs(10),
                    },
                )
            })
        }
        None => bench(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("comm_bench: {e}");
            ExitCode::FAILURE
        }
    }
}
