//! The roofline projection of a training step (`nanochat::device::projection`): records one step of each
//! speedrun depth on a dry device (no GPU, no execution, seconds), prices every op on an H100 SXM and an
//! H200, and prints the "Step projection" section (markdown).
//!
//! ```text
//! step_projection                                   d12, d20 and d26 on 8 GPUs, to stdout
//! step_projection --depth 26 --world 1 --shapes     one GPU, with the per-shape tables
//! step_projection --counters counters.json --output projection.md
//! ```

use clap::Parser;
use nanochat::device::projection::{report, speedrun, Counters, Resources, StepProjection};
use nanochat::device::record::{record_step, RecordDevice};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Roofline projection of a training step on H100 SXM and H200, from the model's recorded launches")]
struct Args {
    /// Depths to project (speedrun settings: d12 32 x 2048, d20 and d26 16 x 2048 per micro-batch).
    #[arg(long, value_delimiter = ',', default_value = "12,20,26")]
    depth: Vec<usize>,
    /// Data-parallel GPUs (the total batch stays upstream's: fewer GPUs accumulate more micro-batches).
    #[arg(long, default_value_t = 8)]
    world: usize,
    /// Emulator counters (`kernel_bench --profile --device emu --json FILE`): sector, bank-conflict,
    /// divergence and occupancy deratings come from them; without, those deratings are 1 ("not measured").
    #[arg(long)]
    counters: Option<String>,
    /// A ptxas report to read registers and shared memory from instead of the built-in ptx/resources.txt.
    #[arg(long)]
    resources: Option<String>,
    /// Add the per-shape table of every launch.
    #[arg(long)]
    shapes: bool,
    /// Write the markdown here instead of stdout.
    #[arg(long)]
    output: Option<String>,
}

fn run(args: &Args) -> Result<(), String> {
    let counters = match &args.counters {
        Some(f) => {
            let text = std::fs::read_to_string(f).map_err(|e| format!("reading counters {f}: {e}"))?;
            Counters::parse(&text).map_err(|e| format!("{f}: {e}"))?
        }
        None => Counters::default(),
    };
    let res = match &args.resources {
        Some(f) => Resources::parse(&std::fs::read_to_string(f).map_err(|e| format!("reading {f}: {e}"))?),
        None => Resources::built_in(),
    };
    if res.is_empty() {
        return Err("the ptxas report has no sm_90 entries".into());
    }
    let mut projections = Vec::new();
    for &d in &args.depth {
        let (cfg, plan) = speedrun(d, args.world)?;
        let t0 = Instant::now();
        let ops = record_step(RecordDevice::dry(), &cfg, &plan).map_err(|e| format!("d{d}: {e}"))?;
        let p = StepProjection::price(&format!("d{d}"), &cfg, &plan, &ops, &res, &counters)?;
        let t = p.totals(0);
        eprintln!(
            "d{d}: {} ops recorded in {:.1} s; H100 SXM: {:.1} ms projected, MFU {:.1}%",
            ops.len(),
            t0.elapsed().as_secs_f64(),
            t.projected_s * 1e3,
            100.0 * t.mfu
        );
        projections.push(p);
    }
    let md = report(&projections, args.counters.as_deref(), args.shapes);
    match &args.output {
        Some(f) => std::fs::write(f, md).map_err(|e| format!("writing {f}: {e}"))?,
        None => print!("{md}"),
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("step_projection: {e}");
            ExitCode::FAILURE
        }
    }
}
