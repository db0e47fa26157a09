//! Benchmark of the fused RoPE + QK-norm kernels and the gated model ops (value-embedding gate, smear,
//! backout): time per call and GB/s against the memory bandwidth of the device it runs on, at a depth-20 nanochat shape.
//!
//! ```text
//! model_ops_bench                 on a GPU: check the forward kernels against the CPU reference, then time
//!                                 every kernel, forward and backward
//! model_ops_bench --device emu    the correctness half on the kernel emulator, small shapes (no timings)
//! ```
//! Bytes are the compulsory traffic of each call (every tensor read or written once). Build here
//! (`cargo build --release --bin model_ops_bench`) and carry the binary to a GPU machine.

use clap::Parser;
use half::bf16;
use nanochat::backend::Backend;
use nanochat::cpu::ops;
use nanochat::device::check::{self, Scale};
use nanochat::device::kernels::model_ops::{self, GateShape};
use nanochat::device::kernels::rope_qknorm::{self, RopeShape};
use nanochat::device::roofline::{pct_cell, time, Peaks};
use nanochat::device::{Buffer, Device, Result, Schedule};
use nanochat::rng::Rng;
use std::process::ExitCode;

#[derive(Parser)]
#[command(about = "RoPE + QK-norm, value-embedding gate, smear and backout kernels: GB/s and checks")]
struct Args {
    /// Device to run on.
    #[arg(long, value_enum, default_value_t = Backend::Cuda)]
    device: Backend,
    /// Timed iterations per kernel (after 3 warm-up launches).
    #[arg(long, default_value_t = 20)]
    iters: usize,
}

/// Model shape: rows (batch · sequence), sequence length, width, heads, kv heads, head dim.
#[derive(Clone, Copy, Debug)]
struct Shape {
    n: usize,
    t: usize,
    c: usize,
    h: usize,
    hkv: usize,
    d: usize,
}

/// Device buffers of one problem.
struct Problem {
    s: Shape,
    qkv: Buffer,
    dqkv: Buffer,
    q: Buffer,
    rstd: Buffer,
    cos: Buffer,
    sin: Buffer,
    x: Buffer,
    x2: Buffer,
    out: Buffer,
    dx: Buffer,
    ve: Buffer,
    dve: Buffer,
    gate: Buffer,
    params: Buffer,
    dparams: Buffer,
    scratch: Buffer,
}

const K_VE: usize = 12;
const K_SMEAR: usize = 24;
const LAMBDA: f32 = 0.5;

fn problem(d: &dyn Device, s: Shape) -> Result<Problem> {
    let mut rng = Rng::new(3);
    let mut gen = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| bf16::from_f32(rng.uniform(-1.0, 1.0)).to_f32())
            .collect()
    };
    let stride = (s.h + 2 * s.hkv) * s.d;
    let (host_qkv, host_x, host_x2) = (gen(s.n * stride), gen(s.n * s.c), gen(s.n * s.c));
    let ve = gen(s.n * s.hkv * s.d);
    // Gate weights (ve, then smear), then the smear lambda.
    let mut params: Vec<f32> = gen(s.hkv * K_VE + K_SMEAR).iter().map(|v| 0.3 * v).collect();
    params.push(LAMBDA);
    let (host_cos, host_sin) = ops::rope_tables(s.t, s.d, 10000.0);
    let up = |x: &[f32]| d.upload_new(&x.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>());
    let scratch = model_ops::ve_gate_scratch(&gate_shape(s))
        .max(model_ops::smear_scratch(s.n, K_SMEAR))
        .max(model_ops::backout_scratch(s.n));
    Ok(Problem {
        s,
        qkv: up(&host_qkv)?,
        dqkv: up(&host_qkv)?,
        q: d.alloc(2 * s.n * s.h * s.d)?,
        rstd: d.alloc(4 * s.n * s.h)?,
        cos: d.upload_new(&host_cos)?,
        sin: d.upload_new(&host_sin)?,
        x: up(&host_x)?,
        x2: up(&host_x2)?,
        out: d.alloc(2 * s.n * s.c)?,
        dx: up(&host_x2)?,
        ve: up(&ve)?,
        dve: d.alloc(2 * s.n * s.hkv * s.d)?,
        gate: d.alloc(4 * s.n * s.hkv)?,
        dparams: d.upload_new(&vec![0f32; params.len()])?,
        params: d.upload_new(&params)?,
        scratch: d.alloc(4 * scratch)?,
    })
}

fn rope_shape(s: Shape) -> RopeShape {
    RopeShape {
        n: s.n,
        t: s.t,
        heads: s.h,
        d: s.d,
        pos0: 0,
        x_stride: (s.h + 2 * s.hkv) * s.d,
        positions: s.t,
    }
}

fn gate_shape(s: Shape) -> GateShape {
    GateShape {
        n: s.n,
        c: s.c,
        hkv: s.hkv,
        d: s.d,
        k: K_VE,
        v_stride: (s.h + 2 * s.hkv) * s.d,
    }
}

type Run<'a> = Box<dyn Fn() -> Result<()> + 'a>;

/// (name, bytes moved, launch) for every kernel.
fn kernels<'a>(d: &'a dyn Device, p: &'a Problem) -> Vec<(&'static str, f64, Run<'a>)> {
    let s = p.s;
    let (rs, gs) = (rope_shape(s), gate_shape(s));
    let (q_elems, v_elems, x_elems) = ((s.n * s.h * s.d) as f64, (s.n * s.hkv * s.d) as f64, (s.n * s.c) as f64);
    let vcol = (s.h + s.hkv) * s.d;
    let (wve, wsm, lam) = (
        p.params.ptr(),
        p.params.at::<f32>(s.hkv * K_VE),
        p.params.at::<f32>(s.hkv * K_VE + K_SMEAR),
    );
    let stride = (s.h + 2 * s.hkv) * s.d;
    vec![
        (
            "rope_qknorm_forward (q)",
            4.0 * q_elems,
            Box::new(move || {
                rope_qknorm::rope_qknorm_forward(d, p.q.ptr(), p.rstd.ptr(), p.qkv.ptr(), p.cos.ptr(), p.sin.ptr(), rs)
            }),
        ),
        (
            "rope_qknorm_backward (q)",
            6.0 * q_elems,
            Box::new(move || {
                rope_qknorm::rope_qknorm_backward(
                    d,
                    p.dqkv.ptr(),
                    p.q.ptr(),
                    p.qkv.ptr(),
                    p.rstd.ptr(),
                    p.cos.ptr(),
                    p.sin.ptr(),
                    rs,
                    stride,
                    false,
                )
            }),
        ),
        (
            "ve_gate_forward",
            6.0 * v_elems,
            Box::new(move || {
                model_ops::ve_gate_forward(d, p.dqkv.at::<bf16>(vcol), p.gate.ptr(), p.x.ptr(), p.ve.ptr(), wve, gs)
            }),
        ),
        (
            "ve_gate_backward",
            6.0 * v_elems,
            Box::new(move || {
                model_ops::ve_gate_backward(
                    d,
                    p.dve.ptr(),
                    p.dx.ptr(),
                    p.dparams.ptr(),
                    p.scratch.ptr(),
                    p.qkv.at::<bf16>(vcol),
                    p.gate.ptr(),
                    p.x.ptr(),
                    p.ve.ptr(),
                    wve,
                    gs,
                )
            }),
        ),
        (
            "smear_forward",
            4.0 * x_elems,
            Box::new(move || {
                model_ops::smear_forward(
                    d,
                    p.out.ptr(),
                    p.gate.ptr(),
                    p.x.ptr(),
                    wsm,
                    lam,
                    s.n,
                    s.t,
                    s.c,
                    K_SMEAR,
                )
            }),
        ),
        (
            "smear_backward",
            8.0 * x_elems,
            Box::new(move || {
                model_ops::smear_backward(
                    d,
                    p.dx.ptr(),
                    p.dparams.at::<f32>(s.hkv * K_VE),
                    p.dparams.at::<f32>(s.hkv * K_VE + K_SMEAR),
                    p.scratch.ptr(),
                    p.x2.ptr(),
                    p.x.ptr(),
                    wsm,
                    lam,
                    s.n,
                    s.t,
                    s.c,
                    K_SMEAR,
                )
            }),
        ),
        (
            "backout_forward",
            6.0 * x_elems,
            Box::new(move || model_ops::backout_forward(d, p.out.ptr(), p.x.ptr(), p.x2.ptr(), lam, s.n * s.c)),
        ),
        (
            "backout_backward",
            12.0 * x_elems,
            Box::new(move || {
                model_ops::backout_backward(
                    d,
                    p.dx.ptr(),
                    p.out.ptr(),
                    p.dparams.at::<f32>(s.hkv * K_VE + K_SMEAR),
                    p.scratch.ptr(),
                    p.x2.ptr(),
                    p.x.ptr(),
                    lam,
                    s.n,
                    s.c,
                )
            }),
        ),
    ]
}

fn main() -> ExitCode {
    let args = Args::parse();
    let dev = match args.device.kernel_device(Schedule::Forward) {
        Ok(d) => d,
        Err(e) => {
            eprintln!(
                "model_ops_bench: {e}\n(run `model_ops_bench --device emu` for the correctness checks on the emulator)"
            );
            return ExitCode::from(2);
        }
    };
    let d = dev.as_ref();
    println!("device: {}", d.name());
    // Depth 20: width 1280, 10 heads of 128, a 32 × 2048 token batch; the emulator gets a toy shape.
    let s = if args.device == Backend::Emu {
        Shape {
            n: 2 * 9,
            t: 9,
            c: 40,
            h: 4,
            hkv: 2,
            d: 64,
        }
    } else {
        Shape {
            n: 32 * 2048,
            t: 2048,
            c: 1280,
            h: 10,
            hkv: 10,
            d: 128,
        }
    };
    let scale = if args.device == Backend::Emu {
        Scale::Small
    } else {
        Scale::Large
    };
    let names = ["rope_qknorm", "ve_gate", "smear", "backout"];
    let model_op_checks = check::all()
        .into_iter()
        .filter(|c| names.iter().any(|n| c.name.starts_with(n)));
    let ok = check::run(d, scale, model_op_checks) == 0;
    let peaks = Peaks::of(d);
    let result = problem(d, s).and_then(|p| {
        if args.device == Backend::Cuda {
            println!("{s:?}");
            for (name, bytes, run) in kernels(d, &p) {
                let t = time(d, args.iters, &run)?;
                let bw = bytes / t;
                let pct = pct_cell(peaks.bytes_pct(bytes, t));
                println!("{name:<26} {:>8.1} us {:>7.0} GB/s {pct:>7} of peak", t * 1e6, bw / 1e9);
            }
            println!("({})", peaks.describe());
        } else {
            for (name, _, run) in kernels(d, &p) {
                run()?;
                println!("  ran {name}");
            }
        }
        Ok(ok)
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("model_ops_bench: {e}");
            ExitCode::from(1)
        }
    }
}
