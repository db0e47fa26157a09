//! `report`: the report card of a run (upstream nanochat/report.py). `report` (or `report generate`) writes
//! `$NANOCHAT_BASE_DIR/report/report.md` from what the stages recorded, with the loss curves as SVG next to
//! it; `report reset` starts the run's wall clock (the speedrun calls it first).

use clap::{Parser, Subcommand};
use nanochat::common::base_dir;
use nanochat::train::report::{generate, reset, ReportOptions};

#[derive(Parser)]
#[command(about = "Write the report card of a run (report.md and loss curves) from the stages' records")]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Checkpoint tag of the stages (default: the largest d<N> of each).
    #[arg(long)]
    model_tag: Option<String>,
    /// Price of one GPU for one hour in dollars (the cost is wall time x GPUs x this).
    #[arg(long, default_value_t = 3.0)]
    gpu_hour_cost: f64,
    /// GPUs the run held (default: the world size pretraining recorded).
    #[arg(long)]
    gpus: Option<usize>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write report/report.md (the default).
    Generate,
    /// Start a new run's wall clock and remove the old report.md.
    Reset,
}

fn main() {
    let args = Args::parse();
    let base = base_dir();
    let result = match args.cmd {
        Some(Cmd::Reset) => reset(&base).map(|()| println!("report: run started; records in {}", base.display())),
        _ => generate(
            &base,
            &ReportOptions {
                model_tag: args.model_tag,
                gpu_hour_cost: args.gpu_hour_cost,
                gpus: args.gpus,
            },
        )
        .map(|p| println!("report: wrote {}", p.display())),
    };
    if let Err(e) = result {
        eprintln!("report: {e}");
        std::process::exit(1);
    }
}
