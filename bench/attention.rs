//! Attention benchmark: the flash kernels' TFLOP/s next to FlashAttention-2's published H100 figure.
//!
//! ```text
//! attention_bench                 on a GPU: check flash vs the CPU reference and vs the naive kernels
//!                                 (the second oracle), then time forward, backward and both
//! attention_bench --device emu    the correctness half on the kernel emulator, small shapes (no timings)
//! ```
//! FLOPs count the (query, key) pairs a causal window really visits: 4·d per pair forward (QK^T, PV),
//! 2.5 times that backward (five matmuls), the convention of the FlashAttention papers. Build here
//! (`cargo build --release --bin attention_bench`) and carry the binary to a GPU machine.

use clap::Parser;
use half::bf16;
use nanochat::backend::Backend;
use nanochat::device::check::{self, Scale};
use nanochat::device::kernels::attention::{attention_backward, attention_forward, forward_flops, AttnImpl, AttnShape};
use nanochat::device::roofline::time;
use nanochat::device::{Buffer, Device, Result, Schedule};
use nanochat::rng::Rng;
use std::process::ExitCode;

/// FlashAttention-2 on H100 SXM, forward + backward, causal, T 2048, head_dim 128 (Dao, 2023, fig. 7).
const FA2_FWD_BWD_TFLOPS: f64 = 265.0;

#[derive(Parser)]
#[command(about = "Flash attention benchmark (TFLOP/s) with correctness checks")]
struct Args {
    /// Device to run on.
    #[arg(long, value_enum, default_value_t = Backend::Cuda)]
    device: Backend,
    /// Timed iterations per shape (after 3 warm-up runs).
    #[arg(long, default_value_t = 20)]
    iters: usize,
}

fn shape(b: usize, t: usize, h: usize, hkv: usize, d: usize, window: usize) -> AttnShape {
    AttnShape {
        b,
        t,
        h,
        hkv,
        d,
        window,
    }
}

/// Device buffers of one problem: inputs, forward outputs, gradients, scratch.
struct Problem {
    s: AttnShape,
    q: Buffer,
    k: Buffer,
    v: Buffer,
    dout: Buffer,
    out: Buffer,
    lse: Buffer,
    dq: Buffer,
    dk: Buffer,
    dv: Buffer,
    delta: Buffer,
}

fn problem(d: &dyn Device, s: AttnShape, seed: u64) -> Result<Problem> {
    let mut rng = Rng::new(seed);
    let nq = s.b * s.t * s.h * s.d;
    let nk = s.b * s.t * s.hkv * s.d;
    let nl = s.b * s.h * s.t;
    let mut gen =
        |n: usize, a: f32| -> Vec<f32> { (0..n).map(|_| bf16::from_f32(rng.uniform(-a, a)).to_f32()).collect() };
    let host = [gen(nq, 2.0), gen(nk, 1.0), gen(nk, 1.0), gen(nq, 1.0)];
    let up = |x: &[f32]| d.upload_new(&x.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>());
    Ok(Problem {
        s,
        q: up(&host[0])?,
        k: up(&host[1])?,
        v: up(&host[2])?,
        dout: up(&host[3])?,
        out: d.alloc(2 * nq)?,
        lse: d.alloc(4 * nl)?,
        dq: d.alloc(2 * nq)?,
        dk: d.alloc(2 * nk)?,
        dv: d.alloc(2 * nk)?,
        delta: d.alloc(4 * nl)?,
    })
}

fn forward(d: &dyn Device, p: &Problem, imp: AttnImpl) -> Result<()> {
    let ptr = |b: &Buffer| b.ptr();
    attention_forward(d, imp, ptr(&p.out), ptr(&p.lse), ptr(&p.q), ptr(&p.k), ptr(&p.v), p.s)
}

fn backward(d: &dyn Device, p: &Problem, imp: AttnImpl) -> Result<()> {
    attention_backward(
        d,
        imp,
        p.dq.ptr(),
        p.dk.ptr(),
        p.dv.ptr(),
        p.delta.ptr(),
        p.dout.ptr(),
        p.out.ptr(),
        p.lse.ptr(),
        p.q.ptr(),
        p.k.ptr(),
        p.v.ptr(),
        p.s,
    )
}

fn bench(d: &dyn Device, s: AttnShape, imp: AttnImpl, iters: usize) -> Result<()> {
    let p = problem(d, s, 5)?;
    let fl = forward_flops(&s);
    let tf = time(d, iters, || forward(d, &p, imp))?;
    let tb = time(d, iters, || backward(d, &p, imp))?;
    let w = if s.window >= s.t {
        "causal".to_string()
    } else {
        format!("window {}", s.window)
    };
    println!(
        "{imp:?} b{} t{} h{}/{} d{} {w:<12} fwd {:>7.2} ms {:>6.1} TF/s  bwd {:>7.2} ms {:>6.1} TF/s  fwd+bwd {:>6.1} TF/s",
        s.b,
        s.t,
        s.h,
        s.hkv,
        s.d,
        tf * 1e3,
        fl / tf / 1e12,
        tb * 1e3,
        2.5 * fl / tb / 1e12,
        3.5 * fl / (tf + tb) / 1e12
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let dev = match args.device.kernel_device(Schedule::Forward) {
        Ok(d) => d,
        Err(e) => {
            eprintln!(
                "attention_bench: {e}\n(run `attention_bench --device emu` for the correctness checks on the emulator)"
            );
            return ExitCode::from(2);
        }
    };
    let d = dev.as_ref();
    println!("device: {}", d.name());
    let scale = if args.device == Backend::Emu {
        Scale::Small
    } else {
        Scale::Large
    };
    let attention_checks = check::all().into_iter().filter(|c| c.name.starts_with("attention"));
    let mut ok = check::run(d, scale, attention_checks) == 0;
    if args.device == Backend::Cuda {
        // FlashAttention-2's shape: 16k tokens, hidden 2048, causal, T 2048 (head_dim 128 and 64), then
        // nanochat-like sliding windows and GQA; the naive kernels once, as the floor.
        let full = usize::MAX;
        let runs = [
            (shape(8, 2048, 16, 16, 128, full), AttnImpl::Flash),
            (shape(8, 2048, 32, 32, 64, full), AttnImpl::Flash),
            (shape(8, 2048, 16, 16, 128, 512), AttnImpl::Flash),
            (shape(8, 2048, 16, 4, 128, full), AttnImpl::Flash),
            (shape(2, 2048, 16, 16, 128, full), AttnImpl::Naive),
        ];
        for (s, imp) in runs {
            if let Err(e) = bench(d, s, imp, args.iters) {
                println!("{imp:?} {s:?} failed: {e}");
                ok = false;
            }
        }
        println!(
            "(FlashAttention-2, H100 SXM, causal, T 2048, head_dim 128: ~{FA2_FWD_BWD_TFLOPS:.0} TFLOP/s fwd+bwd)"
        );
    } else {
        // The timing path once at a toy shape (a functional run: emulator times mean nothing).
        for imp in [AttnImpl::Flash, AttnImpl::Naive] {
            if let Err(e) = bench(d, shape(1, 80, 2, 1, 64, 48), imp, 1) {
                println!("{imp:?} failed: {e}");
                ok = false;
            }
        }
    }
    if !ok {
        println!("failures");
        return ExitCode::FAILURE;
    }
    println!("all checks passed");
    ExitCode::SUCCESS
}
