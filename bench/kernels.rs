//! Kernel benchmark and GPU self-check.
//!
//! ```text
//! kernel_bench                    on a GPU: validate every kernel against the CPU reference, then sweep
//!                                 block sizes and print time, GB/s (TFLOP/s for GEMM) and % of H100 SXM peak
//! kernel_bench --selfcheck        on a GPU: every kernel vs the CPU reference at training-like sizes, the
//!                                 GEMM wrapper vs the CPU GEMM, the PTX helpers asm vs reference, and the
//!                                 emulator's self-test kernels GPU vs emulator; a report, exit 1 on failure
//! kernel_bench --device emu       the correctness half on the kernel emulator, CI-sized (no timings);
//!                                 with --selfcheck also reverse vs forward schedule on the self-test kernels
//! kernel_bench --profile --device emu [--json FILE] [--doc bench/KERNEL_PROFILE.md]
//!                                 the emulator's counters (sectors per request, bank conflicts, active
//!                                 lanes, instruction counts) for every kernel of the d12 and d26 training
//!                                 steps, with registers, shared memory and sm_90 occupancy (needs
//!                                 `--features emu-profile`; see bench/kernel_profile.rs)
//! ```
//! Build it here (`cargo build --release --bin kernel_bench`) and carry the binary to a GPU machine: the
//! kernels are embedded. cuBLASLt must be on `LD_LIBRARY_PATH` there for the GEMM rows.

use clap::Parser;
use nanochat::backend::Backend;
use nanochat::device::check::{self, Scale};
use nanochat::device::emu::EmuDevice;
use nanochat::device::kernels::muon::{self, MuonScratch, Stack};
use nanochat::device::kernels::{elementwise, embedding};
use nanochat::device::roofline::{pct_cell, time, Peaks};
use nanochat::device::{Arg, Buffer, Device, Dim3, Dtype, Gemm, Result, Schedule};
use nanochat::optim::muon::MuonHyper;
use std::process::ExitCode;

#[derive(Parser)]
#[command(about = "Kernel benchmark (roofline table) and GPU self-check")]
struct Args {
    /// Device to run on.
    #[arg(long, value_enum, default_value_t = Backend::Cuda)]
    device: Backend,
    /// Run the self-check report instead of the benchmark.
    #[arg(long)]
    selfcheck: bool,
    /// Timed iterations per configuration (after 3 warm-up launches).
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Print the emulator's counters for the kernels of the training steps instead (needs --device emu and
    /// a build with --features emu-profile).
    #[arg(long)]
    profile: bool,
    /// With --profile: also write one JSON object per kernel and launch shape to this file (a JSON array).
    #[arg(long, value_name = "FILE", requires = "profile")]
    json: Option<std::path::PathBuf>,
    /// With --profile: write the tables into this Markdown file, between its "kernel counters" markers
    /// (appended when it has none).
    #[arg(long, value_name = "FILE", requires = "profile")]
    doc: Option<std::path::PathBuf>,
    /// With --profile: the depths whose training steps are profiled.
    #[arg(long, value_delimiter = ',', default_values_t = [12usize, 26])]
    profile_depths: Vec<usize>,
    /// With --profile: tokens of the profiled micro-batch (one row; the real step has 32 x 2048).
    #[arg(long, default_value_t = 256)]
    profile_seq: usize,
    /// With --profile: layers of the profiled model (each layer launches the same kernels).
    #[arg(long, default_value_t = 2)]
    profile_layers: usize,
    /// With --profile: run at most this many blocks of each launch (an even sample; 0 = all).
    #[arg(long, default_value_t = 16)]
    profile_blocks: usize,
    /// With --profile: vocabulary size.
    #[arg(long, default_value_t = 32768)]
    profile_vocab: usize,
}

mod kernel_profile;

/// `--profile`: the counters' tables on stdout, and the JSON and document files asked for.
fn run_profile(args: &Args) -> std::result::Result<(), String> {
    if args.device != Backend::Emu {
        return Err("--profile runs on the kernel emulator: add --device emu".into());
    }
    if args.profile_seq == 0 || args.profile_layers == 0 || args.profile_depths.is_empty() {
        return Err("--profile-seq, --profile-layers and --profile-depths must be positive".into());
    }
    let pa = kernel_profile::ProfileArgs {
        depths: args.profile_depths.clone(),
        seq: args.profile_seq,
        layers: args.profile_layers,
        max_blocks: args.profile_blocks,
        vocab: args.profile_vocab,
    };
    let resources = nanochat::device::profile::parse_resources(include_str!("../ptx/resources.txt"), "sm_90a");
    let rows = kernel_profile::rows(&pa, &resources)?;
    let table = kernel_profile::markdown(&rows, &pa);
    print!("{table}");
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&kernel_profile::json(&rows, &pa)).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.doc {
        let doc = std::fs::read_to_string(path).unwrap_or_default();
        std::fs::write(path, kernel_profile::splice(&doc, &table))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("updated {}", path.display());
    }
    Ok(())
}

/// Launches one benchmark configuration with the given block size.
type LaunchFn = Box<dyn Fn(&dyn Device, u32) -> Result<()>>;

/// One benchmark row: a launch as a function of the block size, and the bytes or FLOPs it must move.
struct Bench {
    name: String,
    blocks: Vec<u32>,
    bytes: f64,
    flops: f64,
    launch: LaunchFn,
}

fn elementwise_bench(name: &'static str, bufs: Vec<Buffer>, n: usize, bytes_per: f64) -> Bench {
    Bench {
        name: name.into(),
        blocks: vec![128, 256, 512, 1024],
        bytes: n as f64 * bytes_per,
        flops: 0.0,
        launch: Box::new(move |d, b| {
            let mut args: Vec<Arg> = bufs.iter().map(Arg::from).collect();
            args.push(Arg::I64(n as i64));
            d.launch(
                name,
                Dim3::x(n.div_ceil(elementwise::ELEMS_PER_THREAD).div_ceil(b as usize) as u32),
                Dim3::x(b),
                0,
                &args,
            )
        }),
    }
}

fn rows(name: &'static str, args: Vec<Arg>, n: usize, bytes: f64) -> Bench {
    Bench {
        name: name.into(),
        blocks: vec![128, 256, 512, 1024],
        bytes,
        flops: 0.0,
        launch: Box::new(move |d, b| d.launch(name, Dim3::x(n as u32), Dim3::x(b), 0, &args)),
    }
}

/// The benchmark rows at depth-20 sizes, or (`small`) at sizes the emulator runs in a second, and the
/// buffers the rows' raw pointers point into (they must outlive the rows).
fn benches(d: &dyn Device, small: bool) -> Result<(Vec<Bench>, Vec<Buffer>)> {
    // Elements; B*T rows, model width and vocab at depth 20.
    let (n, r, c, v) = if small {
        (1usize << 12, 64usize, 128usize, 512usize)
    } else {
        (1 << 26, 16384, 1280, 32768)
    };
    let a = || d.alloc(4 * n);
    let mut out = vec![
        elementwise_bench("relu2_forward", vec![a()?, a()?], n, 4.0),
        elementwise_bench("relu2_backward", vec![a()?, a()?, a()?], n, 6.0),
        elementwise_bench("cast_f32_to_bf16", vec![a()?, a()?], n, 6.0),
        elementwise_bench("cast_bf16_to_f32", vec![a()?, a()?], n, 6.0),
        elementwise_bench("add_bf16", vec![a()?, a()?], n, 6.0),
        elementwise_bench("add_f32_bf16", vec![a()?, a()?, a()?], n, 8.0),
    ];
    let (y, x, x0, dx) = (
        d.alloc(2 * r * c)?,
        d.alloc(2 * r * c)?,
        d.alloc(2 * r * c)?,
        d.alloc(2 * r * c)?,
    );
    let (rstd, lambdas) = (d.alloc(4 * r)?, d.upload_new(&[1.0f32, 0.5])?);
    for buf in [&x, &x0, &dx] {
        d.zero(buf.ptr(), 2 * r * c)?;
    }
    let rc = (r * c) as f64;
    out.push(rows(
        "rmsnorm_forward",
        vec![
            (&y).into(),
            (&rstd).into(),
            (&x).into(),
            Arg::I32(r as i32),
            Arg::I32(c as i32),
        ],
        r,
        rc * 4.0,
    ));
    out.push(rows(
        "mix_rmsnorm_forward",
        vec![
            (&dx).into(),
            (&y).into(),
            (&rstd).into(),
            (&x).into(),
            (&x0).into(),
            (&lambdas).into(),
            Arg::I32(r as i32),
            Arg::I32(c as i32),
        ],
        r,
        rc * 8.0,
    ));
    out.push(rows(
        "rmsnorm_backward",
        vec![
            (&dx).into(),
            (&y).into(),
            (&x).into(),
            (&rstd).into(),
            Arg::I32(r as i32),
            Arg::I32(c as i32),
        ],
        r,
        rc * 8.0,
    ));
    // The fused backward kernels (without their second, tiny reduction of the per-row lambda partials).
    let (dx0, dmid, parts) = (d.alloc(4 * r * c)?, d.alloc(2 * r * c)?, d.alloc(4 * 2 * r)?);
    d.zero(dx0.ptr(), 4 * r * c)?;
    // Reads dres (aliasing dx), dy, xmix, x, x0 and dx0 (fp32), writes dx and dx0.
    out.push(rows(
        "rmsnorm_mix_backward",
        vec![
            (&dx).into(),
            (&dx0).into(),
            (&parts).into(),
            (&dx).into(),
            (&y).into(),
            (&x).into(),
            (&rstd).into(),
            (&x).into(),
            (&x0).into(),
            (&lambdas).into(),
            Arg::I32(r as i32),
            Arg::I32(c as i32),
        ],
        r,
        rc * 20.0,
    ));
    // Reads dy, xf and x_mid, writes dx and dx_mid.
    out.push(rows(
        "rmsnorm_backout_backward",
        vec![
            (&dx).into(),
            (&dmid).into(),
            (&parts).into(),
            (&y).into(),
            (&x).into(),
            (&rstd).into(),
            (&x0).into(),
            (&lambdas).into(),
            Arg::I32(r as i32),
            Arg::I32(c as i32),
        ],
        r,
        rc * 10.0,
    ));
    let (logits, losses, targets) = (d.alloc(2 * r * v)?, d.alloc(4 * r)?, d.upload_new(&vec![1i32; r])?);
    d.zero(logits.ptr(), 2 * r * v)?;
    // Minimal traffic: read the logits once, write the gradient once (the kernel's second read hits L2
    // only for small rows, so this is a lower bound and the % is honest).
    out.push(rows(
        "softcap_ce",
        vec![
            (&logits).into(),
            (&losses).into(),
            (&targets).into(),
            Arg::F32(1e-4),
            Arg::I32(r as i32),
            Arg::I32(v as i32),
            Arg::I32(v as i32),
        ],
        r,
        r as f64 * v as f64 * 4.0,
    ));
    let m = n / 4;
    let (p, pb, g, mm, vv) = (
        d.alloc(4 * m)?,
        d.alloc(2 * m)?,
        d.alloc(4 * m)?,
        d.alloc(4 * m)?,
        d.alloc(4 * m)?,
    );
    for buf in [&p, &g, &mm, &vv] {
        d.zero(buf.ptr(), 4 * m)?;
    }
    out.push(Bench {
        name: "adamw_step".into(),
        blocks: vec![128, 256, 512, 1024],
        bytes: m as f64 * (4.0 * 4.0 + 3.0 * 4.0 + 2.0),
        flops: 0.0,
        launch: Box::new(move |d, b| {
            let args = [
                (&p).into(),
                (&pb).into(),
                (&g).into(),
                (&mm).into(),
                (&vv).into(),
                Arg::I64(m as i64),
                Arg::F32(1.0),
                Arg::F32(0.2),
                Arg::F32(0.05),
                Arg::F32(1e-3),
                Arg::F32(0.5),
                Arg::F32(1e-10),
            ];
            d.launch(
                "adamw_step",
                Dim3::x(m.div_ceil(b as usize) as u32),
                Dim3::x(b),
                0,
                &args,
            )
        }),
    });
    // GEMM: the MLP up-projection of depth 20 at B*T = 16384 (bf16 out) and its weight gradient (fp32, beta = 1).
    let (ga, gb, gc) = (d.alloc(2 * r * c)?, d.alloc(2 * 4 * c * c)?, d.alloc(4 * r * 4 * c)?);
    for (buf, bytes) in [(&ga, 2 * r * c), (&gb, 8 * c * c), (&gc, 16 * r * c)] {
        d.zero(buf.ptr(), bytes)?;
    }
    let fwd = Gemm::new(r, 4 * c, c, ga.ptr(), gb.ptr(), gc.ptr(), Dtype::Bf16).transpose_b();
    let mut keep = vec![
        y, x, x0, dx, rstd, lambdas, dx0, dmid, parts, logits, losses, targets, ga, gb, gc,
    ];
    out.push(Bench {
        name: format!("gemm bf16 ({r}x{}x{c}, B^T)", 4 * c),
        blocks: vec![0],
        bytes: 0.0,
        flops: 2.0 * r as f64 * 4.0 * c as f64 * c as f64,
        launch: Box::new(move |d, _| d.gemm(&fwd)),
    });
    // Embedding gather (bf16 table) and its deterministic scatter-add (fp32 table gradient), d20 sizes.
    let mut rng = nanochat::rng::Rng::new(1);
    let ids: Vec<u32> = (0..r).map(|_| rng.below(v as u64) as u32).collect();
    let (table, dtable, emb) = (d.alloc(2 * v * c)?, d.alloc(4 * v * c)?, d.alloc(2 * r * c)?);
    let ids_dev = d.alloc(embedding::ids_bytes(ids.len()))?;
    let dids = embedding::upload_ids(d, ids_dev.ptr(), &ids, v)?;
    for (buf, bytes) in [(&table, 2 * v * c), (&dtable, 4 * v * c), (&emb, 2 * r * c)] {
        d.zero(buf.ptr(), bytes)?;
    }
    let (tp, ep, ip, dp) = (table.ptr(), emb.ptr(), dids.ids, dtable.ptr());
    let fwd_ids = ids.clone();
    out.push(Bench {
        name: "embedding_forward".into(),
        blocks: vec![0],
        bytes: rc * 4.0,
        flops: 0.0,
        launch: Box::new(move |d, _| embedding::embedding_forward(d, ep, ip, tp, &fwd_ids, v, c)),
    });
    // Reads the rows' gradients (bf16) and read-modify-writes their table rows (fp32); the buckets were
    // uploaded once, as the model does once per micro-batch.
    out.push(Bench {
        name: "embedding_backward".into(),
        blocks: vec![0],
        bytes: rc * (2.0 + 8.0),
        flops: 0.0,
        launch: Box::new(move |d, _| embedding::embedding_backward(d, dp, ep, &dids, c)),
    });
    keep.extend([table, dtable, emb, ids_dev]);
    // One Muon step over d20's stacks of c_fc (20 x 5120x1280) and of q/k/v/proj (80 x 1280x1280): Nesterov,
    // MuonEq, Polar Express (bf16 GEMMs: the FLOPs counted), Muon+, NorMuon, cautious update.
    let (k1, k2) = if small { (2, 3) } else { (20, 80) };
    for (k, m, nn) in [(k1, 4 * c, c), (k2, c, c)] {
        let st = Stack { k, m, n: nn };
        let scratch = MuonScratch::new(d, st)?;
        let total = k * m * nn;
        let (mp, mpb, mg, mm, ms) = (
            d.alloc(4 * total)?,
            d.alloc(2 * total)?,
            d.alloc(4 * total)?,
            d.alloc(4 * total)?,
            d.alloc(4 * k * m.max(nn))?,
        );
        for (buf, bytes) in [
            (&mp, 4 * total),
            (&mg, 4 * total),
            (&mm, 4 * total),
            (&ms, 4 * k * m.max(nn)),
        ] {
            d.zero(buf.ptr(), bytes)?;
        }
        let (small, big) = (m.min(nn) as f64, m.max(nn) as f64);
        let h = MuonHyper {
            lr: 0.02,
            momentum: 0.95,
            weight_decay: 0.2,
            beta2: 0.9,
            ns_steps: 5,
            bf16: true,
        };
        out.push(Bench {
            name: format!("muon_step ({k} x {m}x{nn})"),
            blocks: vec![0],
            bytes: 0.0,
            flops: k as f64 * 5.0 * (4.0 * big * small * small + 2.0 * small.powi(3)),
            launch: Box::new(move |d, _| {
                muon::muon_step(d, &scratch, mp.ptr(), Some(mpb.ptr()), mg.ptr(), mm.ptr(), ms.ptr(), &h)
            }),
        });
    }
    Ok((out, keep))
}

/// Runs `kernel` on `d` with `inputs` uploaded (as i32 words) and an output of `out_words` i32, and
/// returns the output.
#[allow(clippy::too_many_arguments)]
fn run_words(
    d: &dyn Device,
    kernel: &str,
    grid: Dim3,
    block: Dim3,
    smem: u32,
    inputs: &[Vec<i32>],
    scalars: &[Arg],
    out_words: usize,
) -> Result<Vec<i32>> {
    let out = d.alloc(4 * out_words)?;
    d.zero(out.ptr(), 4 * out_words)?;
    let bufs = inputs.iter().map(|v| d.upload_new(v)).collect::<Result<Vec<_>>>()?;
    let mut args: Vec<Arg> = vec![(&out).into()];
    args.extend(bufs.iter().map(Arg::from));
    args.extend_from_slice(scalars);
    d.launch(kernel, grid, block, smem, &args)?;
    d.download_vec::<i32>(out.ptr(), out_words)
}

/// The emulator's self-test kernels on the GPU and on the emulator: outputs must agree bit for bit
/// (integer-valued data, so no rounding differences).
fn cross_check(gpu: &dyn Device) -> Result<usize> {
    let emu = EmuDevice::new(Schedule::Forward);
    let mut failures = 0;
    let mut report = |name: String, outs: Vec<Vec<i32>>| {
        let ok = outs[0] == outs[1];
        failures += !ok as usize;
        println!(
            "  {} {name}: this device vs the emulator",
            if ok { "PASS" } else { "FAIL" }
        );
    };
    let both = |f: &dyn Fn(&dyn Device) -> Result<Vec<i32>>| -> Result<Vec<Vec<i32>>> { Ok(vec![f(gpu)?, f(&emu)?]) };
    for (mode, arg, width) in [(0, 5, 32), (1, 3, 16), (2, 1, 8), (3, 16, 32), (3, 5, 4)] {
        let scalars = [Arg::I32(mode), Arg::I32(arg), Arg::I32(width)];
        let outs = both(&|d| run_words(d, "emu_shuffle", Dim3::x(1), Dim3::x(64), 0, &[], &scalars, 64))?;
        report(format!("emu_shuffle mode {mode} arg {arg} width {width}"), outs);
    }
    let pred: Vec<i32> = (0..96).map(|i| ((i % 3 == 0) || i >= 64) as i32).collect();
    let outs = both(&|d| {
        run_words(
            d,
            "emu_votes",
            Dim3::x(1),
            Dim3::x(96),
            0,
            std::slice::from_ref(&pred),
            &[],
            6 * 96,
        )
    })?;
    report("emu_votes (ballot, any, all, __syncthreads_count/and/or)".into(), outs);
    let outs = both(&|d| run_words(d, "emu_half_warps", Dim3::x(1), Dim3::x(64), 0, &[], &[], 64))?;
    report(
        "emu_half_warps (half-warp masks, __syncwarp, __reduce_add_sync)".into(),
        outs,
    );
    let (m, n, k) = (33usize, 20usize, 48usize);
    let a: Vec<i32> = (0..m * k)
        .map(|i| (((i * 7) % 11) as f32 - 5.0).to_bits() as i32)
        .collect();
    let b: Vec<i32> = (0..k * n)
        .map(|i| (((i * 5) % 13) as f32 - 6.0).to_bits() as i32)
        .collect();
    let dims = [Arg::I32(m as i32), Arg::I32(n as i32), Arg::I32(k as i32)];
    let grid = Dim3::xy(n.div_ceil(16) as u32, m.div_ceil(16) as u32);
    let outs = both(&|d| {
        run_words(
            d,
            "emu_tiled_matmul",
            grid,
            Dim3::xy(16, 16),
            1024,
            &[a.clone(), b.clone()],
            &dims,
            m * n,
        )
    })?;
    report(
        "emu_tiled_matmul (static + dynamic shared memory, 2-D blocks)".into(),
        outs,
    );
    Ok(failures)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.profile {
        return match run_profile(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kernel_bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // Reverse, so that the self-check's comparison with the (forward) emulator means something.
    let dev = match args.device.kernel_device(Schedule::Reverse) {
        Ok(d) => d,
        Err(e) => {
            eprintln!(
                "kernel_bench: {e}\n(run `kernel_bench --device emu` for the correctness checks on the emulator)"
            );
            return ExitCode::from(2);
        }
    };
    let d = dev.as_ref();
    let scale = if args.device == Backend::Emu {
        Scale::Small
    } else {
        Scale::Large
    };
    println!("device: {}", d.name());
    println!("kernel checks against the CPU reference ({scale:?} shapes):");
    let mut failures = check::run(d, scale, check::all().into_iter().chain(check::ptx_helper_checks()));
    let peaks = Peaks::of(d);
    if args.selfcheck {
        println!("self-test kernels, this device vs the emulator (forward schedule):");
        match cross_check(d) {
            Ok(f) => failures += f,
            Err(e) => {
                failures += 1;
                println!("  FAIL cross-check: {e}");
            }
        }
    }
    if !args.selfcheck {
        let emu = args.device == Backend::Emu;
        if emu {
            println!("\nbenchmark rows at emulator sizes, once each (a functional run: the times mean nothing):");
        }
        let iters = if emu { 1 } else { args.iters };
        let (bs, _buffers) = match benches(d, emu) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("setting up the benchmarks failed: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!(
            "\n{:<36} {:>6} {:>10} {:>12} {:>8}",
            "kernel", "block", "time (us)", "GB/s|TFLOP/s", "% peak"
        );
        for b in &bs {
            for &block in &b.blocks {
                match time(d, iters, || (b.launch)(d, block)) {
                    Ok(t) => {
                        let (rate, pct) = if b.flops > 0.0 {
                            (b.flops / t / 1e12, peaks.flops_pct(b.flops, t))
                        } else {
                            (b.bytes / t / 1e9, peaks.bytes_pct(b.bytes, t))
                        };
                        let pct = pct_cell(pct);
                        println!(
                            "{:<36} {:>6} {:>10.1} {:>12.1} {:>8}",
                            b.name,
                            block,
                            t * 1e6,
                            rate,
                            pct
                        );
                    }
                    Err(e) => {
                        failures += 1;
                        println!("{:<36} {:>6} failed: {e}", b.name, block);
                    }
                }
            }
        }
        println!("({})", peaks.describe());
    }
    if failures > 0 {
        println!("{failures} failure(s)");
        return ExitCode::FAILURE;
    }
    println!("all checks passed");
    ExitCode::SUCCESS
}
