//! Decode speed of the engine on the CPU reference: time to first token (the batch-1 prefill of the prompt) and
//! decode tokens/s with the KV cache, for 1 and several samples, at tiny depths; plus the speed-up over
//! re-running the full forward per token (what generation costs without a cache); and the host sampling's cost
//! per token at a 32768 vocabulary (greedy, top-k 50 by a one-pass heap and by a full sort, all tokens).
//! Run with `cargo bench --bench decode`.

use std::time::Instant;

use nanochat::config::ModelConfig;
use nanochat::cpu::gpt::Gpt;
use nanochat::cpu::infer::{CpuInfer, KvCache};
use nanochat::engine::{sample_next_token, InferModel};
use nanochat::params::ParamTable;
use nanochat::rng::Rng;

fn model(depth: usize) -> (ModelConfig, Vec<f32>) {
    // Upstream's dial (aspect ratio 64, head dim 128 is too wide for these depths; 64 keeps several heads).
    let cfg = ModelConfig::from_depth(depth, 64, 64, 1024, 32768, "SSSL");
    let table = ParamTable::new(&cfg);
    let mut p = vec![0.0; table.numel];
    table.init(&mut p, 0);
    (cfg, p)
}

fn bench(depth: usize, prompt_len: usize, new_tokens: usize, rows: usize) {
    let (cfg, params) = model(depth);
    let inf = CpuInfer::new(&cfg, params).expect("valid model");
    let mut rng = Rng::new(1);
    let prompt: Vec<u32> = (0..prompt_len)
        .map(|_| rng.below(cfg.vocab_size as u64) as u32)
        .collect();
    let (mut ttft, mut tps) = (f64::MAX, 0f64);
    for _ in 0..2 {
        let t0 = Instant::now();
        let mut one = KvCache::new(&cfg, 1, prompt_len);
        let last = inf.forward_last(&mut one, &prompt, prompt_len).expect("prefill");
        let mut logits = last.repeat(rows);
        let _ = sample_next_token(&logits[..cfg.vocab_size], &mut rng, 1.0, Some(50));
        ttft = ttft.min(t0.elapsed().as_secs_f64());
        let mut cache = one.expand(rows, prompt_len + new_tokens).expect("expand");
        let t1 = Instant::now();
        for _ in 0..new_tokens {
            let col: Vec<u32> = (0..rows)
                .map(|r| {
                    let row = &logits[r * cfg.vocab_size..(r + 1) * cfg.vocab_size];
                    sample_next_token(row, &mut rng, 1.0, Some(50)).expect("sample")
                })
                .collect();
            logits = inf.forward_last(&mut cache, &col, 1).expect("decode");
        }
        tps = tps.max((new_tokens * rows) as f64 / t1.elapsed().as_secs_f64());
    }
    println!(
        "d{depth:<2} ({:>5.1}M params) prompt {prompt_len:>4}, {rows} row(s): time to first token {:>7.1} ms, decode {:>7.1} tok/s",
        ParamTable::new(&cfg).numel as f64 / 1e6,
        ttft * 1e3,
        tps
    );
}

/// Tokens/s of generating without a cache: the full forward over the growing sequence for every token.
fn no_cache(depth: usize, prompt_len: usize, new_tokens: usize) {
    let (cfg, params) = model(depth);
    let gpt = Gpt::new(&cfg).expect("valid model");
    let mut rng = Rng::new(1);
    let mut ids: Vec<u32> = (0..prompt_len)
        .map(|_| rng.below(cfg.vocab_size as u64) as u32)
        .collect();
    let t0 = Instant::now();
    for _ in 0..new_tokens {
        let n = ids.len();
        let f = gpt.forward(&params, &ids, None, 1, n).expect("forward");
        let vp = cfg.padded_vocab();
        let last = &f.logits[(n - 1) * vp..(n - 1) * vp + cfg.vocab_size];
        ids.push(sample_next_token(last, &mut rng, 1.0, Some(50)).expect("sample"));
    }
    println!(
        "d{depth:<2} prompt {prompt_len:>4}, no KV cache (full forward per token): {:>7.1} tok/s",
        new_tokens as f64 / t0.elapsed().as_secs_f64()
    );
}

/// Host sampling per token and row at vocabulary `v`: greedy, top-k by a one-pass heap (what the engine
/// runs), top-k by a full sort of the vocabulary (what it replaced), and softmax over all tokens; plus the
/// bf16 logits a kernel device copies to the host for it.
fn sampling(v: usize, k: usize) {
    let mut rng = Rng::new(3);
    let rows: Vec<Vec<f32>> = (0..64).map(|_| (0..v).map(|_| rng.normal() * 3.0).collect()).collect();
    let time = |f: &mut dyn FnMut(&[f32]) -> u32| {
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t0 = Instant::now();
            let mut sum = 0u64;
            for r in &rows {
                sum += f(r) as u64;
            }
            std::hint::black_box(sum);
            best = best.min(t0.elapsed().as_secs_f64() / rows.len() as f64);
        }
        best * 1e6
    };
    let greedy = time(&mut |r| sample_next_token(r, &mut rng, 0.0, None).expect("sample"));
    let topk = time(&mut |r| sample_next_token(r, &mut rng, 1.0, Some(k)).expect("sample"));
    let full_sort = time(&mut |r| {
        let mut cand: Vec<usize> = (0..r.len()).collect();
        cand.sort_by(|&a, &b| r[b].total_cmp(&r[a]).then(a.cmp(&b)));
        cand.truncate(k);
        let mx = r[cand[0]] as f64;
        let w: Vec<f64> = cand.iter().map(|&i| (r[i] as f64 - mx).exp()).collect();
        let mut u = rng.next_f64() * w.iter().sum::<f64>();
        for (j, &wj) in w.iter().enumerate() {
            if u < wj {
                return cand[j] as u32;
            }
            u -= wj;
        }
        cand[k - 1] as u32
    });
    let all = time(&mut |r| sample_next_token(r, &mut rng, 1.0, None).expect("sample"));
    println!(
        "sampling V={v}: greedy {greedy:.1} us, top-k {k} (one-pass heap) {topk:.1} us, top-k {k} (full sort) \
         {full_sort:.1} us, all tokens {all:.1} us per token; the logits copied from a device: {} KiB per row",
        v * 2 / 1024
    );
}

fn main() {
    println!("threads: {}", rayon::current_num_threads());
    sampling(32768, 50);
    bench(2, 64, 64, 1);
    bench(4, 64, 64, 1);
    bench(4, 256, 64, 1);
    bench(4, 64, 32, 4);
    bench(8, 64, 32, 1);
    no_cache(4, 256, 16);
}
