//! Data-parallel step time on the cpu device with and without overlapping communication and the backward
//! pass (`train_gpt --overlap-comm`): the ranks are threads of this process over the CPU ring on localhost.
//!
//! ```text
//! cargo bench --bench overlap                       2, 3 and 4 ranks, the default model
//! cargo bench --bench overlap -- --ranks 2 --steps 8 --vocab 65536
//! ```
//! Each step is one micro-batch's forward and backward plus the ZeRO-2 optimizer step; the time of a step is
//! the slowest rank's, and the figure is the median over the timed steps. The final parameters of the two
//! modes are compared (they must be bitwise equal). The ranks share this machine's cores, so the figures say
//! how much of the reduce-scatter time hides behind the backward pass here, not on separate machines.

use clap::Parser;
use nanochat::config::ModelConfig;
use nanochat::cpu::model::CpuModel;
use nanochat::dist::env::discover;
use nanochat::dist::ring::connect;
use nanochat::dist::{Fingerprint, Timeouts};
use nanochat::model::ModelDevice;
use nanochat::optim::{SetupArgs, StepSettings};
use nanochat::params::ParamTable;
use nanochat::rng::Rng;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Data-parallel step time with and without overlapping the reduce-scatters with the backward")]
struct Args {
    /// World sizes to measure, comma-separated.
    #[arg(long, default_value = "2,3,4", value_delimiter = ',')]
    ranks: Vec<usize>,
    /// Timed steps per measurement (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Transformer layers.
    #[arg(long, default_value_t = 2)]
    depth: usize,
    /// Model width.
    #[arg(long, default_value_t = 128)]
    dim: usize,
    /// Vocabulary (lm_head and the value embeddings are what is reduced early).
    #[arg(long, default_value_t = 32768)]
    vocab: usize,
    /// Rows per micro-batch.
    #[arg(long, default_value_t = 2)]
    batch: usize,
    /// Sequence length.
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Accepted for `cargo bench` (ignored).
    #[arg(long)]
    bench: bool,
}

fn config(a: &Args) -> ModelConfig {
    ModelConfig {
        sequence_len: a.seq,
        vocab_size: a.vocab,
        n_layer: a.depth,
        n_head: a.dim / 64,
        n_kv_head: a.dim / 64,
        n_embd: a.dim,
        window_pattern: "L".into(),
    }
}

const S: StepSettings = StepSettings::BENCH;

/// Runs `world` ranks for 1 + `steps` steps; returns (per-step slowest-rank seconds, rank 0's parameters).
fn run(a: &Args, world: usize, overlap: bool) -> (Vec<f64>, Vec<f32>) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = config(a);
    let (b, t, steps) = (a.batch, a.seq, a.steps);
    let handles: Vec<_> = (0..world)
        .map(|r| {
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                let vars: HashMap<&str, String> = [
                    ("RANK", r.to_string()),
                    ("WORLD_SIZE", world.to_string()),
                    ("MASTER_PORT", port.to_string()),
                ]
                .into_iter()
                .collect();
                let info = discover(&|k| vars.get(k).cloned()).unwrap();
                let timeouts = Timeouts {
                    connect: Duration::from_secs(120),
                    op: Duration::from_secs(600),
                };
                let comm = Arc::new(Mutex::new(connect(&info, &Fingerprint::new(), &timeouts).unwrap()));
                let table = ParamTable::new(&cfg);
                let mut p = vec![0.0; table.numel];
                table.init(&mut p, 1);
                let mut model = CpuModel::new(&cfg, p, &SetupArgs::default())
                    .unwrap()
                    .data_parallel(&SetupArgs::default(), comm.clone(), r, world)
                    .with_overlap(overlap);
                let mut rng = Rng::new(7 + r as u64);
                let mut times = Vec::new();
                for _ in 0..=steps {
                    let ids: Vec<u32> = (0..b * t).map(|_| rng.below(cfg.vocab_size as u64) as u32).collect();
                    let targets: Vec<i32> = (0..b * t).map(|_| rng.below(cfg.vocab_size as u64) as i32).collect();
                    comm.lock().unwrap().barrier().unwrap();
                    let t0 = Instant::now();
                    model.final_micro_batch();
                    model.forward_backward(&ids, &targets, b, t, 1.0).unwrap();
                    model.step(&S).unwrap();
                    times.push(t0.elapsed().as_secs_f64());
                }
                (times, model.params().unwrap())
            })
        })
        .collect();
    let results: Vec<(Vec<f64>, Vec<f32>)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let per_step: Vec<f64> = (1..=steps)
        .map(|s| results.iter().map(|(t, _)| t[s]).fold(0.0, f64::max))
        .collect();
    (per_step, results.into_iter().next().unwrap().1)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let a = Args::parse();
    let table = ParamTable::new(&config(&a));
    println!(
        "cpu device, d{} dim {} vocab {} ({:.1} M parameters), micro-batch {} x {}, {} timed steps",
        a.depth,
        a.dim,
        a.vocab,
        table.numel as f64 / 1e6,
        a.batch,
        a.seq,
        a.steps
    );
    println!(
        "{:>5} {:>14} {:>14} {:>8} {:>16}",
        "ranks", "plain (ms)", "overlap (ms)", "saved", "same parameters"
    );
    for &w in &a.ranks {
        let (plain, p_plain) = run(&a, w, false);
        let (over, p_over) = run(&a, w, true);
        let (mp, mo) = (median(plain), median(over));
        println!(
            "{w:>5} {:>14.1} {:>14.1} {:>7.1}% {:>16}",
            mp * 1e3,
            mo * 1e3,
            100.0 * (mp - mo) / mp,
            if p_plain == p_over { "yes (bitwise)" } else { "NO" }
        );
        assert!(p_plain == p_over, "overlap changed the parameters on {w} ranks");
    }
}
