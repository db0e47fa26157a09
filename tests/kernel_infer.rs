//! KV-cached inference on the kernel emulator against the CPU reference engine: logits at every position,
//! greedy generation, rows of different lengths in one batch, windows below / equal to / above the
//! context, GQA groups 1, 2 and 4, the flash-attention prefill (head_dim 64) and the naive one (16).

use nanochat::config::ModelConfig;
use nanochat::cpu::infer::CpuInfer;
use nanochat::device::emu::EmuDevice;
use nanochat::device::model::KernelModel;
use nanochat::device::Schedule;
use nanochat::engine::InferModel;
use nanochat::params::ParamTable;
use nanochat::rng::Rng;

/// Layers S, L, L: the short window is 128 (its minimum), the long one 256, so a context of 140 positions
/// has queries whose short window is above (p < 128), equal to (p = 128) and below (p > 128) their context.
fn config(n_head: usize, n_kv_head: usize, n_embd: usize) -> ModelConfig {
    ModelConfig {
        sequence_len: 256,
        vocab_size: 300,
        n_layer: 3,
        n_head,
        n_kv_head,
        n_embd,
        window_pattern: "SL".to_string(),
    }
}

/// Initialized parameters plus noise everywhere, so that zero-initialized projections and scalars matter.
fn params(cfg: &ModelConfig, seed: u64) -> Vec<f32> {
    let table = ParamTable::new(cfg);
    let mut p = vec![0.0; table.numel];
    table.init(&mut p, seed);
    let mut rng = Rng::new(seed + 1);
    p.iter_mut().for_each(|x| *x += 0.1 * rng.normal());
    p
}

fn models(cfg: &ModelConfig, schedule: Schedule) -> (CpuInfer, KernelModel) {
    let p = params(cfg, 7);
    let cpu = CpuInfer::new(cfg, p.clone()).unwrap();
    let dev = KernelModel::new(Box::new(EmuDevice::new(schedule)), cfg, &p, &Default::default()).unwrap();
    (cpu, dev)
}

fn tokens(rng: &mut Rng, n: usize, v: usize) -> Vec<u32> {
    (0..n).map(|_| rng.below(v as u64) as u32).collect()
}

/// bf16 tolerance on softcapped logits (|z| < 15): bf16 activations and weights through three layers.
const TOL: f32 = 0.08;

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn argmax(x: &[f32]) -> usize {
    x.iter().enumerate().fold(0, |b, (i, &v)| if v > x[b] { i } else { b })
}

/// Prefill `prefill` tokens, then decode one token at a time to `total`: the logits after every step equal
/// the CPU engine's. Returns the largest difference seen.
fn check_every_position(cfg: &ModelConfig, prefill: usize, total: usize) -> f32 {
    let (cpu, dev) = models(cfg, Schedule::Forward);
    let mut rng = Rng::new(3);
    let seq = tokens(&mut rng, total, cfg.vocab_size);
    let (mut cc, mut dc) = (cpu.new_cache(1, total), dev.new_cache(1, total));
    let want = cpu.forward_last(&mut cc, &seq[..prefill], prefill).unwrap();
    let got = dev.forward_last(&mut dc, &seq[..prefill], prefill).unwrap();
    let mut worst = max_diff(&got, &want);
    assert!(worst < TOL, "prefill of {prefill}: logits differ by {worst}");
    for p in prefill..total {
        let want = cpu.forward_last(&mut cc, &seq[p..p + 1], 1).unwrap();
        let got = dev.forward_last(&mut dc, &seq[p..p + 1], 1).unwrap();
        let d = max_diff(&got, &want);
        assert!(d < TOL, "position {p}: logits differ by {d} ({cfg:?})");
        worst = worst.max(d);
    }
    assert_eq!(dc.lens(), &[total]);
    worst
}

#[test]
fn logits_at_every_position_gqa_1_2_4_windows_below_equal_above() {
    // head_dim 16 (naive prefill attention), 140 positions: the short window is crossed at p = 128.
    for (h, hkv) in [(4, 4), (4, 2), (4, 1)] {
        let w = check_every_position(&config(h, hkv, 64), 9, 140);
        eprintln!("gqa {}: worst logit difference {w}", h / hkv);
    }
}

#[test]
fn logits_at_every_position_flash_prefill_head_dim_64() {
    // head_dim 64: the prefill runs the flash-attention forward on the cache; GQA 2.
    let w = check_every_position(&config(2, 1, 128), 70, 80);
    eprintln!("flash prefill: worst logit difference {w}");
}

#[test]
fn greedy_32_tokens_match_the_cpu_engine() {
    let cfg = config(4, 2, 64);
    let (cpu, dev) = models(&cfg, Schedule::Reverse);
    let prompt = tokens(&mut Rng::new(9), 12, cfg.vocab_size);
    let total = prompt.len() + 32;
    let run = |m: &dyn Fn(&[u32], usize, bool) -> Vec<f32>| {
        let mut seq = prompt.clone();
        let mut all = Vec::new();
        let mut logits = m(&prompt, prompt.len(), true);
        for _ in 0..32 {
            let next = argmax(&logits) as u32;
            all.push(logits.clone());
            seq.push(next);
            logits = m(&[next], 1, false);
        }
        (seq, all)
    };
    let mut cc = cpu.new_cache(1, total);
    let cc = std::cell::RefCell::new(&mut cc);
    let (want, want_logits) = run(&|ids, t, _| cpu.forward_last(&mut cc.borrow_mut(), ids, t).unwrap());
    let mut dc = dev.new_cache(1, total);
    let dc = std::cell::RefCell::new(&mut dc);
    let (got, got_logits) = run(&|ids, t, _| dev.forward_last(&mut dc.borrow_mut(), ids, t).unwrap());
    if got != want {
        // A bf16 near-tie may flip a token: then the two logits at the first difference are within tolerance.
        let i = got.iter().zip(&want).position(|(a, b)| a != b).unwrap() - prompt.len();
        let (a, b) = (got[prompt.len() + i] as usize, want[prompt.len() + i] as usize);
        let l = &want_logits[i];
        panic!(
            "token {i} differs: kernel {a}, cpu {b}; cpu logits {} vs {} (kernel {} vs {})",
            l[a], l[b], got_logits[i][a], got_logits[i][b]
        );
    }
}

#[test]
fn rows_of_different_lengths_in_one_batch() {
    // Prompts of 3, 9 and 14 tokens are prefilled alone and put into the rows of one cache; then the rows
    // step together, each at its own position (a two-token chunk, then one token at a time). Every row's
    // logits equal those of its own sequence on the CPU engine.
    let cfg = config(4, 1, 64);
    let (cpu, dev) = models(&cfg, Schedule::Random(5));
    let mut rng = Rng::new(4);
    let (lens, steps, t_max) = ([3, 9, 14], 12, 40);
    let v = cfg.vocab_size;
    let mut cache = dev.new_cache(lens.len(), t_max);
    let mut cpu_caches = Vec::new();
    let seqs: Vec<Vec<u32>> = lens.iter().map(|&l| tokens(&mut rng, l + steps + 1, v)).collect();
    for (r, &l) in lens.iter().enumerate() {
        let mut one = dev.new_cache(1, l);
        let got = dev.forward_last(&mut one, &seqs[r][..l], l).unwrap();
        dev.insert_row(&mut cache, r, &one).unwrap();
        let mut c = cpu.new_cache(1, t_max);
        let want = cpu.forward_last(&mut c, &seqs[r][..l], l).unwrap();
        assert!(max_diff(&got, &want) < TOL, "prefill of row {r}");
        cpu_caches.push(c);
    }
    assert_eq!(cache.lens(), &lens);
    let mut at = lens;
    let mut t = 2;
    while at[0] < lens[0] + steps + 1 {
        let ids: Vec<u32> = (0..lens.len()).flat_map(|r| seqs[r][at[r]..][..t].to_vec()).collect();
        let got = dev.forward_last(&mut cache, &ids, t).unwrap();
        for r in 0..lens.len() {
            let want = cpu
                .forward_last(&mut cpu_caches[r], &ids[r * t..(r + 1) * t], t)
                .unwrap();
            let d = max_diff(&got[r * v..(r + 1) * v], &want);
            assert!(d < TOL, "row {r} at {}: logits differ by {d}", at[r]);
            at[r] += t;
        }
        t = 1;
    }
    assert_eq!(cache.lens(), &at);
}

#[test]
fn errors_are_reported() {
    let cfg = config(4, 2, 64);
    let (_, dev) = models(&cfg, Schedule::Forward);
    let mut c = dev.new_cache(1, 4);
    let e = dev.forward_last(&mut c, &[1, 2, 3, 4, 5], 5).unwrap_err();
    assert!(e.contains("KV cache holds 4"), "{e}");
    let e = dev.forward_last(&mut c, &[1, 400], 2).unwrap_err();
    assert!(e.contains("outside the vocabulary"), "{e}");
    let e = dev.forward_last(&mut c, &[1, 2, 3], 2).unwrap_err();
    assert!(e.contains("expected 1x2"), "{e}");
    dev.forward_last(&mut c, &[1, 2], 2).unwrap();
    let e = dev.expand(&c, 2, 1).err().unwrap();
    assert!(e.contains("cannot expand"), "{e}");
}
