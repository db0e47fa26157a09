//! CPU MuonAdamW step time: `cargo bench --bench optim_step [-- DEPTH [STEPS]]` (default depth 4, 5 steps).
//!
//! Model from the depth dial (aspect 64, head_dim 128, vocab 32768, "SSSL"), random gradients, upstream's
//! base_train lrs. Prints milliseconds per step and parameters updated per second; one warm-up step first
//! (it allocates nothing the timed steps do not, but touches the state buffers).

use nanochat::config::ModelConfig;
use nanochat::optim::{MuonAdamW, SetupArgs, StepSettings};
use nanochat::params::{Group, ParamTable};
use nanochat::rng::Rng;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let depth: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(4);
    let steps: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let cfg = ModelConfig::from_depth(depth, 64, 128, 2048, 32768, "SSSL");
    let table = ParamTable::new(&cfg);
    let muon: usize = table
        .slots
        .iter()
        .filter(|s| s.group == Group::Muon)
        .map(|s| s.numel())
        .sum();
    let mut rng = Rng::new(1);
    let mut params = vec![0.0; table.numel];
    table.init(&mut params, 1);
    let grads: Vec<f32> = (0..table.numel).map(|_| 0.01 * rng.normal()).collect();
    let args = SetupArgs {
        unembedding_lr: 0.008,
        embedding_lr: 0.3,
        matrix_lr: 0.02,
        weight_decay: 0.28,
        scalar_lr: 0.5,
    };
    let mut opt = MuonAdamW::new(&table, &args);
    let s = StepSettings {
        lr_multiplier: 1.0,
        muon_momentum: 0.95,
        muon_weight_decay: 0.28,
    };
    opt.step(&mut params, &grads, &s);
    let t0 = Instant::now();
    for _ in 0..steps {
        opt.step(&mut params, &grads, &s);
    }
    let per_step = t0.elapsed().as_secs_f64() / steps as f64;
    println!(
        "optim_step depth {depth} (n_embd {}, {} params, {} in Muon matrices), {} threads: {:.1} ms/step, {:.0} M params/s",
        cfg.n_embd,
        table.numel,
        muon,
        rayon::current_num_threads(),
        per_step * 1e3,
        table.numel as f64 / per_step / 1e6
    );
}
