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
    let dev = KernelModel::for_inference(Box::new(EmuDevice::new(schedule)), cfg, &p).unwrap();
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
    let (mut cc, mut dc) = (cpu.new_cache(1, total).unwrap(), dev.new_cache(1, total).unwrap());
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

/// One cached forward step: ids, tokens per row; returns the last logits.
type Step<'a> = dyn Fn(&[u32], usize) -> Vec<f32> + 'a;

#[test]
fn greedy_32_tokens_match_the_cpu_engine() {
    let cfg = config(4, 2, 64);
    let (cpu, dev) = models(&cfg, Schedule::Reverse);
    let prompt = tokens(&mut Rng::new(9), 12, cfg.vocab_size);
    let total = prompt.len() + 32;
    let run = |m: &Step| {
        let mut seq = prompt.clone();
        let mut all = Vec::new();
        let mut logits = m(&prompt, prompt.len());
        for _ in 0..32 {
            let next = argmax(&logits) as u32;
            all.push(logits.clone());
            seq.push(next);
            logits = m(&[next], 1);
        }
        (seq, all)
    };
    let mut cc = cpu.new_cache(1, total).unwrap();
    let cc = std::cell::RefCell::new(&mut cc);
    let (want, want_logits) = run(&|ids, t| cpu.forward_last(&mut cc.borrow_mut(), ids, t).unwrap());
    let mut dc = dev.new_cache(1, total).unwrap();
    let dc = std::cell::RefCell::new(&mut dc);
    let (got, got_logits) = run(&|ids, t| dev.forward_last(&mut dc.borrow_mut(), ids, t).unwrap());
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

/// The CPU engine on one row alone: its own cache, fed the same chunks.
struct Alone {
    cache: nanochat::cpu::infer::KvCache,
    seq: Vec<u32>,
}

#[test]
fn rows_of_different_lengths_in_one_batch() {
    // Prompts of 3, 9 and 14 tokens prefill together in one step (row 3 stays empty); then steps mix a
    // two-token chunk with one-token decodes, feed a subset of the rows in another order, and a row is
    // cleared and starts a new prompt while the others decode (continuous batching). Every row's logits equal
    // those of its own sequence alone on the CPU engine.
    let cfg = config(4, 1, 64);
    let (cpu, dev) = models(&cfg, Schedule::Random(5));
    let mut rng = Rng::new(4);
    let v = cfg.vocab_size;
    let t_max = 40;
    let mut cache = dev.new_cache(4, t_max).unwrap();
    let mut alone: Vec<Alone> = (0..4)
        .map(|_| Alone {
            cache: cpu.new_cache(1, t_max).unwrap(),
            seq: tokens(&mut rng, t_max, v),
        })
        .collect();
    let mut at = [0usize; 4];
    let check_step = |cache: &mut _, alone: &mut Vec<Alone>, at: &mut [usize; 4], rows: &[usize], lens: &[usize]| {
        let ids: Vec<u32> = rows
            .iter()
            .zip(lens)
            .flat_map(|(&r, &t)| alone[r].seq[at[r]..at[r] + t].to_vec())
            .collect();
        let got = dev.forward_rows(cache, rows, lens, &ids).unwrap();
        let mut off = 0;
        for (i, (&r, &t)) in rows.iter().zip(lens).enumerate() {
            let want = cpu.forward_last(&mut alone[r].cache, &ids[off..off + t], t).unwrap();
            let d = max_diff(&got[i * v..(i + 1) * v], &want);
            assert!(d < TOL, "row {r}, {t} tokens at {}: logits differ by {d}", at[r]);
            at[r] += t;
            off += t;
        }
    };
    check_step(&mut cache, &mut alone, &mut at, &[0, 1, 2], &[3, 9, 14]);
    assert_eq!(cache.lens(), &[3, 9, 14, 0]);
    check_step(&mut cache, &mut alone, &mut at, &[0, 1, 2], &[1, 2, 1]);
    for _ in 0..4 {
        check_step(&mut cache, &mut alone, &mut at, &[2, 0, 1], &[1, 1, 1]);
    }
    check_step(&mut cache, &mut alone, &mut at, &[2, 0], &[1, 1]);
    // Row 1 leaves; a new request takes its place and prefills while rows 0 and 2 decode.
    dev.clear_row(&mut cache, 1).unwrap();
    at[1] = 0;
    alone[1] = Alone {
        cache: cpu.new_cache(1, t_max).unwrap(),
        seq: tokens(&mut rng, t_max, v),
    };
    check_step(&mut cache, &mut alone, &mut at, &[0, 1, 2], &[1, 5, 1]);
    for _ in 0..3 {
        check_step(&mut cache, &mut alone, &mut at, &[0, 1, 2], &[1, 1, 1]);
    }
    // A one-token prompt on the empty row 3 (nothing to smear from) next to decodes.
    check_step(&mut cache, &mut alone, &mut at, &[3, 1], &[1, 1]);
    check_step(&mut cache, &mut alone, &mut at, &[3, 1], &[1, 1]);
    assert_eq!(cache.lens(), &at);
    // copy_row: row 3 becomes row 2 (keys, values, smear state); both continue with the same token alike.
    dev.copy_row(&mut cache, 2, 3).unwrap();
    assert_eq!(cache.lens()[3], at[2]);
    let next = alone[2].seq[at[2]];
    let got = dev.forward_rows(&mut cache, &[2, 3], &[1, 1], &[next, next]).unwrap();
    assert_eq!(&got[..v], &got[v..], "a copied row must give the logits of its source");
}

#[test]
fn errors_are_reported() {
    let cfg = config(4, 2, 64);
    let (_, dev) = models(&cfg, Schedule::Forward);
    let mut c = dev.new_cache(2, 4).unwrap();
    let e = dev.forward_last(&mut c, &[1, 2, 3, 4, 5], 5).unwrap_err();
    assert!(e.contains("KV cache holds 4"), "{e}");
    let e = dev.forward_last(&mut c, &[1, 400], 1).unwrap_err();
    assert!(e.contains("outside the vocabulary"), "{e}");
    let e = dev.forward_rows(&mut c, &[0, 0], &[1, 1], &[1, 2]).unwrap_err();
    assert!(e.contains("twice"), "{e}");
    let e = dev.forward_rows(&mut c, &[2], &[1], &[1]).unwrap_err();
    assert!(e.contains("outside the cache"), "{e}");
    let e = dev.forward_rows(&mut c, &[0], &[2], &[1]).unwrap_err();
    assert!(e.contains("expected 2 token ids"), "{e}");
    // Nothing changed on errors.
    assert_eq!(c.lens(), &[0, 0]);
    dev.forward_rows(&mut c, &[1], &[2], &[1, 2]).unwrap();
    assert_eq!((dev.row_len(&c, 1), dev.row_len(&c, 0)), (2, 0));
    assert!(dev.clear_row(&mut c, 5).is_err());
}

#[test]
fn engine_generate_on_the_kernels_matches_the_cpu_engine() {
    // generate_batch through the kernel engine (prefill row 0, copy it into the samples' rows, decode all
    // rows together) equals the CPU engine's, greedy, 3 samples.
    use nanochat::engine::{Engine, GenConfig};
    use nanochat::tokenizer::{files, pattern, SPECIAL_TOKENS};
    let ranks =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/rustbpe_ranks.tiktoken");
    let specials = SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect();
    let tok = files::import_tiktoken(&ranks, pattern::SPLIT_PATTERN, specials).unwrap();
    let mut cfg = config(4, 2, 64);
    cfg.vocab_size = tok.vocab_size();
    let (cpu, dev) = models(&cfg, Schedule::Forward);
    let prompt = tok.encode_ordinary("The capital of France is");
    let gen = GenConfig {
        num_samples: 3,
        max_tokens: Some(12),
        temperature: 0.0,
        top_k: None,
        seed: 1,
    };
    let want = Engine::new(cpu, tok.clone()).generate_batch(&prompt, &gen).unwrap();
    let got = Engine::new(dev, tok).generate_batch(&prompt, &gen).unwrap();
    assert_eq!(got, want);
}

#[test]
fn continuous_batching_jobs_on_the_kernels_equal_each_alone() {
    // generate_jobs (rows of different lengths, fewer rows than jobs: rows leave and new jobs join) on the
    // kernel engine: each job equals the same job alone on the kernel engine (greedy and seeded sampling),
    // and the greedy jobs equal the CPU engine's.
    use nanochat::engine::batch::Job;
    use nanochat::engine::{Engine, GenConfig};
    use nanochat::tokenizer::{files, pattern, SPECIAL_TOKENS};
    let ranks =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/rustbpe_ranks.tiktoken");
    let specials = SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect();
    let tok = files::import_tiktoken(&ranks, pattern::SPLIT_PATTERN, specials).unwrap();
    let mut cfg = config(4, 2, 64);
    cfg.vocab_size = tok.vocab_size();
    let (cpu, dev) = models(&cfg, Schedule::Reverse);
    let (cpu, dev) = (Engine::new(cpu, tok.clone()), Engine::new(dev, tok.clone()));
    let mut rng = Rng::new(6);
    let jobs: Vec<Job> = (0..4)
        .map(|i| {
            let mut prompt = vec![tok.bos_id()];
            prompt.extend((0..1 + 5 * i).map(|_| 100 + rng.below(150) as u32));
            Job {
                prompt,
                max_tokens: 3 + 2 * i,
                temperature: if i % 2 == 0 { 0.0 } else { 1.0 },
                top_k: if i == 3 { Some(5) } else { None },
                seed: 70 + i as u64,
            }
        })
        .collect();
    let (seqs, _) = dev.generate_jobs(&jobs, 2).unwrap();
    let (cpu_seqs, _) = cpu.generate_jobs(&jobs, 2).unwrap();
    for (i, j) in jobs.iter().enumerate() {
        let g = GenConfig {
            num_samples: 1,
            max_tokens: Some(j.max_tokens),
            temperature: j.temperature,
            top_k: j.top_k,
            seed: j.seed,
        };
        let (alone, _) = dev.generate_batch(&j.prompt, &g).unwrap();
        assert_eq!(seqs[i], alone[0], "job {i}: batched vs alone on the kernels");
        if j.temperature == 0.0 {
            assert_eq!(seqs[i], cpu_seqs[i], "greedy job {i}: kernels vs the CPU engine");
        }
    }
}

#[test]
fn the_inference_model_holds_weights_kv_cache_and_activations_only() {
    // The device bytes of an inference model, counted by the emulator: after loading exactly the bf16
    // weights, the fp32 copies of the parameters read as fp32 (gates and lambdas, each padded to the slot
    // alignment), the lambda pairs, the RoPE tables and seven 4-byte placeholders (gradients, lambda
    // gradients, loss log, four optimizer states); a cache adds its keys, values and smear rows; a step adds
    // only its activations. The training model holds far more (fp32 masters, gradients, optimizer state).
    use nanochat::engine::batch::Job;
    use nanochat::engine::Engine;
    use nanochat::model::ModelDevice;
    use nanochat::params::{Slot, SLOT_ALIGN};
    let cfg = config(4, 2, 64);
    let table = ParamTable::new(&cfg);
    let p = params(&cfg, 7);
    let emu = EmuDevice::new(Schedule::Forward);
    let meter = emu.alloc_meter();
    let model = KernelModel::for_inference(Box::new(emu), &cfg, &p).unwrap();
    let scalars: usize = [
        Slot::ResidLambdas,
        Slot::X0Lambdas,
        Slot::SmearGate,
        Slot::SmearLambda,
        Slot::VeGate,
        Slot::BackoutLambda,
    ]
    .iter()
    .map(|&s| {
        let spec = table.slot(s);
        spec.count() * spec.numel_each().next_multiple_of(SLOT_ALIGN)
    })
    .sum();
    let rope = 2 * 10 * cfg.sequence_len * cfg.head_dim() / 2 * 4;
    let loaded = 2 * table.numel + 4 * scalars + 4 * 2 * cfg.n_layer + rope + 7 * 4;
    assert_eq!(meter.live_bytes(), loaded, "buffers {:?}", meter.sizes());
    assert!(
        meter.sizes().iter().all(|&b| b <= 2 * table.numel),
        "no fp32 copy of the weights"
    );

    let (rows, t_max) = (3, 40);
    let mut cache = model.new_cache(rows, t_max).unwrap();
    let kv = nanochat::device::infer::DeviceCache::kv_bytes(&cfg, rows, t_max) + rows * cfg.n_embd * 2;
    assert_eq!(meter.live_bytes(), loaded + kv);
    // A prefill of 3 rows of up to 10 tokens, then decode steps: the step scratch of up to 30 tokens.
    let mut rng = Rng::new(3);
    let ids = tokens(&mut rng, 30, cfg.vocab_size);
    model.forward_rows(&mut cache, &[0, 1, 2], &[10, 10, 10], &ids).unwrap();
    for _ in 0..3 {
        model
            .forward_rows(&mut cache, &[0, 1, 2], &[1, 1, 1], &ids[..3])
            .unwrap();
    }
    let acts = meter.live_bytes() - loaded - kv;
    // Per token: the residual stream and its copies (16 x C), q/k/v/y and their gathers (4 x (q + kv dims)),
    // the MLP hidden and its activation (2 x 4C), the padded logits, in bf16; its row statistics in fp32
    // (norm, heads' log-sum-exp, gates), the token table and ids; plus the split partials of the decode.
    let (c, qd, kvd) = (cfg.n_embd, cfg.q_dim(), cfg.kv_dim());
    let per_token =
        2 * (16 * c + 4 * (qd + kvd) + 2 * cfg.mlp_dim() + cfg.padded_vocab()) + 4 * (1 + 2 * cfg.n_head) + 64;
    let partials = 4 * cfg.n_head * 30 * nanochat::device::kernels::decode::MAX_SPLITS * (cfg.head_dim() + 2);
    assert!(
        acts > 0 && acts <= 30 * per_token + partials,
        "activations {acts} bytes"
    );
    drop(cache);
    assert_eq!(
        meter.live_bytes(),
        loaded,
        "the cache and its scratch are freed with it"
    );

    // Generation through the engine allocates nothing that stays.
    let tok = {
        use nanochat::tokenizer::{files, pattern, SPECIAL_TOKENS};
        let ranks = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tokenizer/rustbpe_ranks.tiktoken");
        let specials = SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect();
        files::import_tiktoken(&ranks, pattern::SPLIT_PATTERN, specials).unwrap()
    };
    let mut cfg2 = cfg.clone();
    cfg2.vocab_size = tok.vocab_size();
    let meter2;
    let engine = {
        let emu = EmuDevice::new(Schedule::Forward);
        meter2 = emu.alloc_meter();
        Engine::new(
            KernelModel::for_inference(Box::new(emu), &cfg2, &params(&cfg2, 7)).unwrap(),
            tok,
        )
    };
    let before = meter2.live_bytes();
    let job = Job {
        prompt: vec![engine.tokenizer.bos_id(), 100, 101, 102],
        max_tokens: 4,
        temperature: 0.0,
        top_k: None,
        seed: 1,
    };
    engine.generate_jobs(&[job], 2).unwrap();
    assert_eq!(meter2.live_bytes(), before);

    // The training model of the same weights: fp32 masters, gradients and the optimizer state on top.
    let emu = EmuDevice::new(Schedule::Forward);
    let train_meter = emu.alloc_meter();
    let mut train = KernelModel::new(Box::new(emu), &cfg, &p, &Default::default()).unwrap();
    assert!(
        train_meter.live_bytes() > loaded + 3 * 4 * table.numel,
        "training model {} bytes, inference model {loaded}",
        train_meter.live_bytes()
    );
    // Both compute the same logits; the inference model refuses the training methods.
    let mut model = model;
    let ids = tokens(&mut rng, 8, cfg.vocab_size);
    let a = ModelDevice::logits(&mut model, &ids, 1, 8).unwrap();
    let b = ModelDevice::logits(&mut train, &ids, 1, 8).unwrap();
    assert_eq!(a, b, "the inference model and the training model give the same logits");
    let e = model.forward_backward(&ids, &[1; 8], 1, 8, 1.0).unwrap_err();
    assert!(e.contains("opened for inference"), "{e}");
    let settings = nanochat::optim::StepSettings {
        lr_multiplier: 1.0,
        muon_momentum: 0.0,
        muon_weight_decay: 0.0,
    };
    assert!(model.step(&settings).is_err());
    assert!(model.optimizer_state().is_err());
    let back = model.params().unwrap();
    let r = table.range(Slot::SmearLambda, 0);
    assert_eq!(back[r.clone()], p[r], "the fp32 parameters read back as given");
}

#[test]
fn samples_and_rollouts_of_a_model_in_training_run_on_its_own_kv_cache() {
    // train_gpt's samples and chat_rl's rollouts take a KV-cached view of the model in training: on a kernel
    // device the training model itself (no copy of its weights), which generates as the inference model does.
    use nanochat::device::infer::{infer_view, InferView};
    use nanochat::tokenizer::{files, pattern, SPECIAL_TOKENS};
    use nanochat::train::eval::{sample_model, sample_prompts};
    let ranks =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/rustbpe_ranks.tiktoken");
    let specials = SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect();
    let tok = files::import_tiktoken(&ranks, pattern::SPLIT_PATTERN, specials).unwrap();
    let mut cfg = config(2, 1, 64);
    cfg.n_layer = 1;
    cfg.vocab_size = tok.vocab_size();
    let p = params(&cfg, 5);
    let train = KernelModel::new(
        Box::new(EmuDevice::new(Schedule::Forward)),
        &cfg,
        &p,
        &Default::default(),
    )
    .unwrap();
    assert!(matches!(infer_view(&train).unwrap(), InferView::Kernel(_)));
    let serving = KernelModel::for_inference(Box::new(EmuDevice::new(Schedule::Forward)), &cfg, &p).unwrap();
    let got = sample_model(&train, &tok, 4).unwrap();
    assert_eq!(
        got,
        sample_prompts(&nanochat::engine::Engine::new(serving, tok.clone()), 4).unwrap()
    );
    assert_eq!(got.len(), 7);
}
