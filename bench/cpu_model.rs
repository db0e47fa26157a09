//! CPU reference throughput: forward + backward and the MuonAdamW step for a few small models.
//! Run with `cargo bench --bench cpu_model`. Prints tokens/s, time per step and achieved GFLOP/s
//! (model FLOPs per token from spec §1.7, so the figure is comparable with the MFU of the GPU path).

use nanochat::config::ModelConfig;
use nanochat::cpu::gpt::Gpt;
use nanochat::optim::{MuonAdamW, SetupArgs, StepSettings};
use nanochat::rng::Rng;
use std::time::Instant;

fn bench(name: &str, cfg: ModelConfig, b: usize, t: usize, iters: usize) {
    let gpt = Gpt::new(&cfg).expect("valid config");
    let mut params = vec![0.0; gpt.table.numel];
    gpt.table.init(&mut params, 0);
    let mut rng = Rng::new(1);
    let v = cfg.vocab_size as u64;
    let ids: Vec<u32> = (0..b * t).map(|_| rng.below(v) as u32).collect();
    let targets: Vec<i32> = (0..b * t).map(|_| rng.below(v) as i32).collect();
    let mut opt = MuonAdamW::new(&gpt.table, &SetupArgs::default());
    let settings = StepSettings {
        lr_multiplier: 1.0,
        muon_momentum: 0.95,
        muon_weight_decay: 0.0,
    };
    let mut grads = vec![0.0; gpt.table.numel];
    let (mut fb, mut st) = (f64::MAX, f64::MAX);
    for _ in 0..iters {
        let t0 = Instant::now();
        let fwd = gpt.forward(&params, &ids, Some(&targets), b, t).expect("forward");
        grads.fill(0.0);
        gpt.backward(&params, &fwd, &Gpt::mean_dloss(&fwd), &mut grads);
        fb = fb.min(t0.elapsed().as_secs_f64());
        let t1 = Instant::now();
        opt.step(&mut params, &grads, &settings);
        st = st.min(t1.elapsed().as_secs_f64());
    }
    let tokens = (b * t) as f64;
    let flops = cfg.flops_per_token() * tokens;
    println!(
        "{name:<28} params {:>10}  B×T {b}×{t}  fwd+bwd {:>8.1} ms  {:>8.0} tok/s  {:>6.1} GFLOP/s   optimizer step {:>7.1} ms",
        gpt.table.numel,
        fb * 1e3,
        tokens / fb,
        flops / fb / 1e9,
        st * 1e3
    );
}

fn main() {
    println!(
        "CPU reference, {} threads, best of the iterations",
        rayon::current_num_threads()
    );
    let fixture = ModelConfig {
        sequence_len: 256,
        vocab_size: 512,
        n_layer: 4,
        n_head: 2,
        n_kv_head: 2,
        n_embd: 128,
        window_pattern: "SSSL".into(),
    };
    bench("fixture-a (d4, C128)", fixture, 2, 256, 5);
    let tiny = ModelConfig::from_depth(4, 64, 64, 256, 8192, "SSSL");
    bench("d4 C256 vocab 8192", tiny, 8, 256, 3);
    let d6 = ModelConfig::from_depth(6, 64, 64, 512, 32768, "SSSL");
    bench("d6 C384 vocab 32768 (runcpu)", d6, 4, 512, 2);
}
