//! CPU reference throughput: forward + backward and the MuonAdamW step for a few small models.
//! Run with `cargo bench --bench cpu_model`. Prints tokens/s, time per step and achieved GFLOP/s
//! (model FLOPs per token from spec §1.7, so the figure is comparable with the MFU of the GPU path).

use nanochat::config::ModelConfig;
use nanochat::cpu::gpt::Gpt;
use nanochat::optim::{MuonAdamW, SetupArgs, StepSettings};
use nanochat::profile;
use nanochat::rng::Rng;
use std::time::Instant;

fn bench(name: &str, cfg: ModelConfig, b: usize, t: usize, iters: usize) -> f64 {
    let gpt = Gpt::new(&cfg).expect("valid config");
    let mut params = vec![0.0; gpt.table.numel];
    gpt.table.init(&mut params, 0);
    let mut rng = Rng::new(1);
    let v = cfg.vocab_size as u64;
    let ids: Vec<u32> = (0..b * t).map(|_| rng.below(v) as u32).collect();
    let targets: Vec<i32> = (0..b * t).map(|_| rng.below(v) as i32).collect();
    let mut opt = MuonAdamW::new(&gpt.table, &SetupArgs::default());
    let settings = StepSettings::BENCH;
    let mut grads = vec![0.0; gpt.table.numel];
    // Best step (forward + backward + optimizer) and, over all iterations, the mean time of each phase.
    let (mut best, mut best_fb, mut best_opt) = (f64::MAX, f64::MAX, f64::MAX);
    let mut phase_s = [0.0f64; 3];
    profile::reset();
    for _ in 0..iters {
        let t0 = Instant::now();
        let fwd = gpt.forward(&params, &ids, Some(&targets), b, t).expect("forward");
        let t1 = Instant::now();
        grads.fill(0.0);
        gpt.backward(&params, &fwd, &Gpt::mean_dloss(&fwd), &mut grads);
        drop(fwd);
        let t2 = Instant::now();
        opt.step(&mut params, &grads, &settings);
        let t3 = Instant::now();
        for (acc, (a, z)) in phase_s.iter_mut().zip([(t0, t1), (t1, t2), (t2, t3)]) {
            *acc += (z - a).as_secs_f64();
        }
        best = best.min((t3 - t0).as_secs_f64());
        best_fb = best_fb.min((t2 - t0).as_secs_f64());
        best_opt = best_opt.min((t3 - t2).as_secs_f64());
    }
    let tokens = (b * t) as f64;
    let flops = cfg.flops_per_token() * tokens;
    println!(
        "{name:<28} params {:>10}  B×T {b}×{t}  step {:>7.1} ms  {:>6.0} tok/s  (fwd+bwd {:>7.1} ms, {:>5.1} GFLOP/s; optimizer {:>6.1} ms)",
        gpt.table.numel,
        best * 1e3,
        tokens / best,
        best_fb * 1e3,
        flops / best_fb / 1e9,
        best_opt * 1e3
    );
    print_breakdown(&phase_s, iters);
    tokens / best
}

/// GFLOP/s of `c (m, n) = a (m, k) · bᵀ` (the linear layers' forward shape), best of a few runs.
fn gemm_rate(m: usize, n: usize, k: usize) {
    use nanochat::gemm::{gemm, Trans};
    let a: Vec<f32> = (0..m * k).map(|i| (i % 17) as f32 * 0.01).collect();
    let b: Vec<f32> = (0..n * k).map(|i| (i % 13) as f32 * 0.01).collect();
    let mut c = vec![0.0f32; m * n];
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t0 = Instant::now();
        gemm(Trans::N, Trans::T, m, n, k, 1.0, &a, &b, 0.0, &mut c);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    println!(
        "gemm {m}×{n}×{k}: {:.2} ms, {:.1} GFLOP/s",
        best * 1e3,
        2.0 * (m * n * k) as f64 / best / 1e9
    );
}

/// Mean milliseconds per step of every (phase, op family) the profile recorded, and the rest of each phase
/// (allocation, copies, bf16 rounding and other glue between the ops) as "other".
fn print_breakdown(phase_s: &[f64; 3], iters: usize) {
    let totals = profile::totals();
    let per_step = |s: f64| s * 1e3 / iters as f64;
    for (phase, wall) in ["forward", "backward", "optimizer"].iter().zip(phase_s) {
        let mut rows: Vec<(&str, f64, u64)> = totals
            .iter()
            .filter(|e| e.phase == *phase)
            .map(|e| (e.op, e.time.as_secs_f64(), e.calls / iters as u64))
            .collect();
        rows.sort_by(|a, b| b.1.total_cmp(&a.1));
        let spanned: f64 = rows.iter().map(|r| r.1).sum();
        print!("    {phase:<9} {:>7.1} ms:", per_step(*wall));
        for (op, s, calls) in &rows {
            print!("  {op} {:.1} ({calls}×)", per_step(*s));
        }
        println!("  other {:.1}", per_step(wall - spanned));
    }
}
fn main() {
    // `cargo bench --bench cpu_model -- d4` runs only the shapes whose name contains "d4";
    // `-- --shape L,C,H,V,T,B` one shape of L layers, width C, H heads, vocabulary V, T positions, batch B.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--shape") {
        let dims: Vec<usize> = args
            .get(i + 1)
            .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
            .unwrap_or_default();
        let [l, c, h, v, t, b] = dims[..] else {
            eprintln!("--shape wants six comma-separated integers: layers,width,heads,vocab,T,B");
            std::process::exit(2);
        };
        profile::enable(true);
        let cfg = ModelConfig {
            sequence_len: t,
            vocab_size: v,
            n_layer: l,
            n_head: h,
            n_kv_head: h,
            n_embd: c,
            window_pattern: "SSSL".into(),
        };
        let tok_s = bench(&format!("L{l} C{c} H{h} V{v}"), cfg, b, t, 4);
        println!("this tok/s {tok_s:.0}");
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--gemm") {
        let dims: Vec<usize> = args
            .get(i + 1)
            .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
            .unwrap_or_default();
        let [m, n, k] = dims[..] else {
            eprintln!("--gemm wants three comma-separated integers: m,n,k");
            std::process::exit(2);
        };
        gemm_rate(m, n, k);
        return;
    }
    let filter: Option<String> = args.into_iter().find(|a| !a.starts_with('-'));
    println!(
        "CPU reference, {} threads; step = best of the iterations, breakdown = mean ms per step",
        rayon::current_num_threads()
    );
    profile::enable(true);
    let fixture = ModelConfig {
        sequence_len: 256,
        vocab_size: 512,
        n_layer: 4,
        n_head: 2,
        n_kv_head: 2,
        n_embd: 128,
        window_pattern: "SSSL".into(),
    };
    let shapes = [
        ("fixture-a (d4, C128)", fixture, 2, 256, 5),
        (
            "d4 C256 vocab 8192",
            ModelConfig::from_depth(4, 64, 64, 256, 8192, "SSSL"),
            8,
            256,
            4,
        ),
        (
            "d6 C384 vocab 32768 (runcpu)",
            ModelConfig::from_depth(6, 64, 64, 512, 32768, "SSSL"),
            4,
            512,
            3,
        ),
    ];
    for (name, cfg, b, t, iters) in shapes {
        if filter.as_ref().is_none_or(|f| name.contains(f.as_str())) {
            bench(name, cfg, b, t, iters);
        }
    }
}
