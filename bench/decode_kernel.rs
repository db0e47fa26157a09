//! Decode-attention benchmark: the flash-decoding kernel over a bf16 KV cache (one new query per row) in
//! GB/s of cache read against the device's memory bandwidth, at batch 1, 8, 32 and 128.
//!
//! ```text
//! decode_bench                 on a GPU: the decode checks against the CPU reference, then the timings
//! decode_bench --device emu    the checks on the kernel emulator and the timing path once (no timings)
//! ```
//! Bytes count every visible key and value once per (row, kv head): what the kernel must read at least.

use clap::Parser;
use half::bf16;
use nanochat::backend::Backend;
use nanochat::device::check::{self, Scale};
use nanochat::device::kernels::decode::{
    cache_bytes_read, choose_splits, decode_attention, max_keys, split_scratch, StepShape, StepTokens, TokenTable,
};
use nanochat::device::roofline::{pct_cell, time, Peaks};
use nanochat::device::{Device, Result, Schedule};
use nanochat::rng::Rng;
use std::process::ExitCode;

#[derive(Parser)]
#[command(about = "Decode attention benchmark (GB/s of KV cache read) with correctness checks")]
struct Args {
    /// Device to run on.
    #[arg(long, value_enum, default_value_t = Backend::Cuda)]
    device: Backend,
    /// Timed iterations per shape (after 3 warm-up runs).
    #[arg(long, default_value_t = 50)]
    iters: usize,
}

fn bench(d: &dyn Device, peaks: &Peaks, s: StepShape, ctx: usize, splits: Option<usize>, iters: usize) -> Result<()> {
    let mut rng = Rng::new(8);
    let rows = s.n; // one new token per row
    let nq = s.n * s.h * s.d;
    let nk = rows * s.t_max * s.hkv * s.d;
    let mut gen = |n: usize| -> Vec<bf16> { (0..n).map(|_| bf16::from_f32(rng.uniform(-1.0, 1.0))).collect() };
    let (q, k, v) = (
        d.upload_new(&gen(nq))?,
        d.upload_new(&gen(nk))?,
        d.upload_new(&gen(nk))?,
    );
    let all: Vec<usize> = (0..rows).collect();
    let tok = StepTokens::new(&all, &vec![1; rows], &vec![ctx - 1; rows]);
    let tb = d.upload_new(&tok.table(&all))?;
    let table = TokenTable::at(tb.ptr(), rows, rows);
    let splits = splits.unwrap_or_else(|| choose_splits(&s, rows, max_keys(&s, &tok, &all)));
    let (po, pml) = split_scratch(&s, splits);
    let (part_o, part_ml, out) = (d.alloc(po.max(1) * 4)?, d.alloc(pml.max(1) * 4)?, d.alloc(nq * 2)?);
    let sec = time(d, iters, || {
        decode_attention(
            d,
            out.ptr(),
            part_o.ptr(),
            part_ml.ptr(),
            q.ptr(),
            k.ptr(),
            v.ptr(),
            &table,
            &tok,
            &all,
            s,
            rows,
            splits,
        )
    })?;
    let bytes = cache_bytes_read(&s, &tok, &all) as f64;
    println!(
        "decode b{:<3} ctx {:<5} h{}/{} d{} window {:<5} splits {:<2} {:>8.1} us {:>7.1} GB/s {:>6} of bandwidth",
        s.n,
        ctx,
        s.h,
        s.hkv,
        s.d,
        s.window,
        splits,
        sec * 1e6,
        bytes / sec / 1e9,
        pct_cell(peaks.bytes_pct(bytes, sec))
    );
    Ok(())
}

fn shape(rows: usize, h: usize, hkv: usize, d: usize, t_max: usize, window: usize) -> StepShape {
    StepShape {
        n: rows,
        h,
        hkv,
        d,
        t_max,
        window,
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let dev = match args.device.kernel_device(Schedule::Forward) {
        Ok(d) => d,
        Err(e) => {
            eprintln!(
                "decode_bench: {e}\n(run `decode_bench --device emu` for the correctness checks on the emulator)"
            );
            return ExitCode::from(2);
        }
    };
    let d = dev.as_ref();
    let peaks = Peaks::of(d);
    println!("device: {}", d.name());
    println!("{}", peaks.describe());
    let scale = if args.device == Backend::Emu {
        Scale::Small
    } else {
        Scale::Large
    };
    let checks = check::all()
        .into_iter()
        .filter(|c| c.name.starts_with("decode") || c.name.starts_with("kv_rope_append"));
    let mut ok = check::run(d, scale, checks) == 0;
    let runs: Vec<(StepShape, usize, Option<usize>)> = if args.device == Backend::Cuda {
        // d20-like heads (10 of 128, GQA 1) and GQA 4 at d32's 16 heads; full and sliding windows.
        let mut r = Vec::new();
        for &b in &[1, 8, 32, 128] {
            r.push((shape(b, 10, 10, 128, 2048, 2048), 2048, None));
            r.push((shape(b, 16, 4, 128, 4096, 4096), 4096, None));
            r.push((shape(b, 16, 4, 128, 4096, 1024), 4096, None));
        }
        // One split against the chosen split count, batch 1: what the key-axis split buys.
        r.push((shape(1, 16, 4, 128, 4096, 4096), 4096, Some(1)));
        r
    } else {
        vec![
            (shape(2, 4, 2, 64, 40, 40), 33, Some(3)),
            (shape(1, 2, 1, 128, 20, 20), 20, None),
        ]
    };
    for (s, ctx, splits) in runs {
        if let Err(e) = bench(
            d,
            &peaks,
            s,
            ctx,
            splits,
            if args.device == Backend::Cuda { args.iters } else { 1 },
        ) {
            println!("decode {s:?} failed: {e}");
            ok = false;
        }
    }
    if !ok {
        println!("failures");
        return ExitCode::FAILURE;
    }
    println!("all checks passed");
    ExitCode::SUCCESS
}
