//! The KV-cached forward against the full forward, sampling, generate / generate_batch, the tool state machine.

use nanochat::config::ModelConfig;
use nanochat::cpu::gpt::Gpt;
use nanochat::cpu::infer::{CpuInfer, KvCache};
use nanochat::engine::batch::Job;
use nanochat::engine::{sample_next_token, top_k_ids, Engine, GenConfig, InferModel, TextStream};
use nanochat::params::ParamTable;
use nanochat::rng::Rng;
use nanochat::tokenizer::Tokenizer;

fn config(pattern: &str, n_head: usize, n_kv_head: usize, n_layer: usize) -> ModelConfig {
    // sequence_len 512 gives a short window of 128, so sequences of ~170 positions exercise it.
    ModelConfig {
        sequence_len: 512,
        vocab_size: 300,
        n_layer,
        n_head,
        n_kv_head,
        n_embd: 64,
        window_pattern: pattern.to_string(),
    }
}

/// Initialized parameters plus noise everywhere, so zero-initialized projections and scalars all matter.
fn params(cfg: &ModelConfig, seed: u64) -> Vec<f32> {
    let table = ParamTable::new(cfg);
    let mut p = vec![0.0; table.numel];
    table.init(&mut p, seed);
    let mut rng = Rng::new(seed + 1);
    p.iter_mut().for_each(|x| *x += 0.1 * rng.normal());
    p
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Prefill `prefill` tokens at batch 1, expand to `rows`, decode the rest of each row's own sequence one token
/// at a time; every position's logits must match the full forward of that row's sequence.
fn check_cache_matches_full(cfg: &ModelConfig, prefill: usize, total: usize, rows: usize) {
    let p = params(cfg, 11);
    let gpt = Gpt::new(cfg).unwrap();
    let inf = CpuInfer::new(cfg, p.clone()).unwrap();
    let v = cfg.vocab_size;
    let mut rng = Rng::new(5);
    let shared: Vec<u32> = (0..prefill).map(|_| rng.below(v as u64) as u32).collect();
    let seqs: Vec<Vec<u32>> = (0..rows)
        .map(|_| {
            let mut s = shared.clone();
            s.extend((prefill..total).map(|_| rng.below(v as u64) as u32));
            s
        })
        .collect();

    let mut one = KvCache::new(cfg, 1, prefill);
    let pre = inf.forward(&mut one, &shared, prefill, true).unwrap();
    let mut cache = one.expand(rows, total).unwrap();
    assert_eq!(cache.pos(), prefill);
    let mut got: Vec<Vec<f32>> = vec![pre.clone(); rows];
    for t in prefill..total {
        let col: Vec<u32> = seqs.iter().map(|s| s[t]).collect();
        let step = inf.forward(&mut cache, &col, 1, true).unwrap();
        for r in 0..rows {
            got[r].extend_from_slice(&step[r * v..(r + 1) * v]);
        }
    }
    for r in 0..rows {
        let full = gpt.forward(&p, &seqs[r], None, 1, total).unwrap();
        let want = full.logits_unpadded(v);
        for t in 0..total {
            let d = max_diff(&got[r][t * v..(t + 1) * v], &want[t * v..(t + 1) * v]);
            assert!(d < 2e-4, "row {r} position {t}: logits differ by {d}");
        }
    }
}

#[test]
fn cached_forward_equals_full_forward_with_windows_gqa_smear() {
    // "SL" over 3 layers: short windows (128) on layer 0, full on 1-2; GQA 4 query heads over 2 kv heads.
    check_cache_matches_full(&config("SL", 4, 2, 3), 100, 170, 3);
}

#[test]
fn cached_forward_equals_full_forward_mha_and_tiny_prompt() {
    // A one-token prompt: nothing to smear in the prefill, every later position smears from the cache.
    check_cache_matches_full(&config("L", 2, 2, 2), 1, 40, 2);
    check_cache_matches_full(&config("SSL", 4, 1, 4), 140, 150, 2);
}

/// Rows of different lengths in one cache: prefills of different prompt lengths in one step, one-token decodes
/// at each row's own position, a row joining a running batch, one leaving and its row reused, and a copied row.
/// Every row's logits equal (bit for bit) those of the same chunks run alone in a one-row cache, and the full
/// forward of its sequence within fp32 tolerance.
#[test]
fn ragged_rows_equal_each_row_alone_and_the_full_forward() {
    let cfg = config("SL", 4, 2, 3);
    let p = params(&cfg, 21);
    let (gpt, inf, v) = (
        Gpt::new(&cfg).unwrap(),
        CpuInfer::new(&cfg, p.clone()).unwrap(),
        cfg.vocab_size,
    );
    let mut rng = Rng::new(9);
    let mut seq = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.below(v as u64) as u32).collect() };
    // Each sequence: (row, first step, chunk lengths: a prefill, then one-token decodes).
    let a = seq(30);
    let b = seq(150); // past the short window (128)
    let c = seq(12);
    let d = seq(20); // joins later, in row 0 after `a` leaves
    let plan: Vec<(usize, usize, Vec<usize>, &Vec<u32>)> = vec![
        (0, 0, [vec![25], vec![1; 5]].concat(), &a),
        (1, 0, [vec![140], vec![1; 10]].concat(), &b),
        (2, 2, [vec![1], vec![1; 11]].concat(), &c),
        (0, 7, [vec![13], vec![1; 7]].concat(), &d),
    ];
    let steps = plan.iter().map(|(_, s0, ch, _)| s0 + ch.len()).max().unwrap();
    let mut cache = inf.new_cache(3, 160).unwrap();
    // Per sequence: its own one-row cache and the position reached.
    let mut alone: Vec<KvCache> = plan.iter().map(|_| KvCache::new(&cfg, 1, 160)).collect();
    let mut at = vec![0usize; plan.len()];
    let mut checked = 0;
    for step in 0..steps {
        let (mut rows, mut lens, mut ids, mut who) = (vec![], vec![], vec![], vec![]);
        for (i, (row, s0, chunks, s)) in plan.iter().enumerate() {
            if step < *s0 || step >= s0 + chunks.len() {
                continue;
            }
            if step == *s0 {
                inf.clear_row(&mut cache, *row).unwrap();
            }
            let t = chunks[step - s0];
            rows.push(*row);
            lens.push(t);
            ids.extend_from_slice(&s[at[i]..at[i] + t]);
            who.push(i);
        }
        let got = inf.forward_rows(&mut cache, &rows, &lens, &ids).unwrap();
        assert_eq!(got.len(), rows.len() * v);
        for (j, &i) in who.iter().enumerate() {
            let (row, t, s) = (rows[j], lens[j], plan[i].3);
            let one = inf.forward_last(&mut alone[i], &s[at[i]..at[i] + t], t).unwrap();
            at[i] += t;
            assert_eq!(inf.row_len(&cache, row), at[i]);
            let mine = &got[j * v..(j + 1) * v];
            assert!(
                mine == &one[..],
                "step {step}, sequence {i}: batched logits differ from the row alone"
            );
            let full = gpt.forward(&p, &s[..at[i]], None, 1, at[i]).unwrap().logits_unpadded(v);
            let d = max_diff(mine, &full[(at[i] - 1) * v..at[i] * v]);
            assert!(
                d < 2e-4,
                "step {step}, sequence {i}: logits differ from the full forward by {d}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, plan.iter().map(|x| x.2.len()).sum::<usize>());
    // A copied row continues like its source.
    inf.copy_row(&mut cache, 1, 2).unwrap();
    assert_eq!(inf.row_len(&cache, 2), 150);
    let two = inf.forward_rows(&mut cache, &[1, 2], &[1, 1], &[7, 7]).unwrap();
    assert_eq!(two[..v], two[v..]);
    // Bad steps change nothing.
    let before = (inf.row_len(&cache, 0), inf.row_len(&cache, 1));
    for (rows, lens, ids, want) in [
        (&[0usize, 0][..], &[1usize, 1][..], &[1u32, 2][..], "twice"),
        (&[3], &[1], &[1], "does not exist"),
        (&[1], &[11], &[1; 11], "do not fit"),
        (&[0], &[0], &[], "at least 1"),
        (&[0, 1], &[1, 1], &[1], "expected 2 token ids"),
        (&[0], &[1], &[9999], "outside the vocabulary"),
    ] {
        let e = inf.forward_rows(&mut cache, rows, lens, ids).unwrap_err();
        assert!(e.contains(want), "{rows:?} {lens:?}: {e}");
    }
    assert_eq!(before, (inf.row_len(&cache, 0), inf.row_len(&cache, 1)));
}

#[test]
fn cache_errors_are_reported() {
    let cfg = config("L", 2, 2, 2);
    let inf = CpuInfer::new(&cfg, params(&cfg, 1)).unwrap();
    let mut c = KvCache::new(&cfg, 1, 4);
    let e = inf.forward(&mut c, &[1, 2, 3, 4, 5], 5, false).unwrap_err();
    assert!(e.contains("KV cache holds 4"), "{e}");
    let e = inf.forward(&mut c, &[1, 999], 2, false).unwrap_err();
    assert!(e.contains("outside the vocabulary"), "{e}");
    let e = inf.forward(&mut c, &[1, 2, 3], 2, false).unwrap_err();
    assert!(e.contains("expected 1x2"), "{e}");
    inf.forward(&mut c, &[1, 2], 2, false).unwrap();
    assert_eq!(c.pos(), 2);
    assert!(c.expand(3, 1).is_err());
    c.reset();
    assert_eq!(c.pos(), 0);
    assert!(CpuInfer::new(&cfg, vec![0.0; 3]).is_err());
}

#[test]
fn sampling_rules() {
    let logits = [0.0f32, 5.0, 1.0, 4.9];
    let mut rng = Rng::new(1);
    assert_eq!(sample_next_token(&logits, &mut rng, 0.0, None).unwrap(), 1);
    assert!(sample_next_token(&logits, &mut rng, -1.0, None).is_err());
    // top-k 2 only ever draws the two best.
    for _ in 0..200 {
        let t = sample_next_token(&logits, &mut rng, 1.0, Some(2)).unwrap();
        assert!(t == 1 || t == 3, "top-2 drew {t}");
    }
    // Without top-k every token with weight shows up at a high temperature.
    let mut seen = [false; 4];
    for _ in 0..2000 {
        seen[sample_next_token(&logits, &mut rng, 3.0, None).unwrap() as usize] = true;
    }
    assert!(seen.iter().all(|&s| s), "{seen:?}");
}

/// The top-k of sampling as it was first written: a full sort of the vocabulary (by logit, then id), the
/// first k kept; then the same softmax walk.
fn sample_by_full_sort(logits: &[f32], rng: &mut Rng, temperature: f64, k: usize) -> u32 {
    let mut cand: Vec<usize> = (0..logits.len()).collect();
    cand.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    cand.truncate(k);
    let mx = cand.iter().map(|&i| logits[i] as f64).fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = cand
        .iter()
        .map(|&i| ((logits[i] as f64 - mx) / temperature).exp())
        .collect();
    let mut u = rng.next_f64() * w.iter().sum::<f64>();
    for (j, &wj) in w.iter().enumerate() {
        if u < wj {
            return cand[j] as u32;
        }
        u -= wj;
    }
    cand[cand.len() - 1] as u32
}

#[test]
fn top_k_by_a_one_pass_heap_draws_what_the_full_sort_draws_on_ties() {
    // Logits of few distinct values (many ties at the k-th place), negative zeros and infinities, k from 1 to
    // V - 1: the one-pass top-k draws the same token as the full sort for every draw of the same RNG.
    let mut gen = Rng::new(11);
    let mut differs = 0;
    for case in 0..300 {
        let v = 2 + gen.below(300) as usize;
        let levels = 1 + gen.below(6);
        let mut logits: Vec<f32> = (0..v).map(|_| gen.below(levels) as f32 * 0.5 - 1.0).collect();
        if case % 7 == 0 {
            logits[gen.below(v as u64) as usize] = -0.0;
            logits[gen.below(v as u64) as usize] = f32::NEG_INFINITY;
        }
        let k = [1, 2, 5, 50, v - 1][case % 5].clamp(1, v - 1);
        let t = [0.5, 1.0, 3.0][case % 3];
        let mut sorted: Vec<usize> = (0..v).collect();
        sorted.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        assert_eq!(top_k_ids(&logits, k), sorted[..k], "case {case}: V {v}, k {k}");
        let (mut a, mut b) = (Rng::new(case as u64), Rng::new(case as u64));
        for _ in 0..10 {
            let got = sample_next_token(&logits, &mut a, t, Some(k)).unwrap();
            let want = sample_by_full_sort(&logits, &mut b, t, k);
            assert_eq!(got, want, "case {case}: V {v}, k {k}, logits {logits:?}");
            differs += (got as usize != logits.len() - 1) as usize;
        }
    }
    assert!(differs > 0);
}

fn tokenizer() -> Tokenizer {
    let docs = (0..200).map(|i| format!("the number {i} is 2+3 = 5, and hello world"));
    Tokenizer::train(docs, 300, 64, &mut |_, _| {}).unwrap()
}

fn engine() -> Engine<CpuInfer> {
    let tok = tokenizer();
    let mut cfg = config("L", 2, 2, 2);
    cfg.vocab_size = tok.vocab_size();
    Engine::new(CpuInfer::new(&cfg, params(&cfg, 3)).unwrap(), tok)
}

#[test]
fn generate_semantics() {
    let eng = engine();
    let prompt: Vec<u32> = vec![eng.tokenizer.bos_id(), 100, 101, 102];
    let gen = |n, temp, seed, max| {
        let cfg = GenConfig {
            num_samples: n,
            max_tokens: Some(max),
            temperature: temp,
            top_k: None,
            seed,
        };
        let mut cols = Vec::new();
        eng.generate(&prompt, &cfg, &mut |c, m| {
            assert!(m.iter().all(|&m| m == 1));
            cols.push(c.to_vec());
            true
        })
        .unwrap();
        cols
    };
    // Independent samples per row: the first tokens are not all identical.
    let a = gen(8, 1.0, 42, 6);
    assert!(a.len() <= 6 && !a.is_empty());
    assert!(a[0].iter().any(|&t| t != a[0][0]), "{:?}", a[0]);
    assert!(a.iter().all(|c| c.len() == 8));
    // Same seed, same output; different seeds differ at temperature 1.
    assert_eq!(a, gen(8, 1.0, 42, 6));
    assert_ne!(a, gen(8, 1.0, 43, 6));
    // Temperature 0 is deterministic across seeds.
    assert_eq!(gen(2, 0.0, 1, 5), gen(2, 0.0, 2, 5));
    // generate_batch: rows returned, prompt kept, max_tokens respected.
    let cfg = GenConfig {
        num_samples: 3,
        max_tokens: Some(7),
        ..GenConfig::default()
    };
    let (seqs, masks) = eng.generate_batch(&prompt, &cfg).unwrap();
    assert_eq!(seqs.len(), 3);
    for (s, m) in seqs.iter().zip(&masks) {
        assert_eq!(&s[..prompt.len()], &prompt[..]);
        assert!(s.len() <= prompt.len() + 7 && s.len() == m.len());
        assert!(m[..prompt.len()].iter().all(|&x| x == 0));
    }
    // A callback returning false stops generation.
    let mut steps = 0;
    eng.generate(&prompt, &cfg, &mut |_, _| {
        steps += 1;
        false
    })
    .unwrap();
    assert_eq!(steps, 1);
}

/// generate_jobs: prompts of different lengths, greedy and sampled, in one batch of fewer rows than jobs (rows
/// leave and new jobs join); each job's row equals generate_batch of that job alone.
#[test]
fn generate_jobs_rows_of_different_lengths_equal_each_alone() {
    let eng = engine();
    let mut rng = Rng::new(4);
    let jobs: Vec<Job> = (0..5)
        .map(|i| {
            let mut prompt = vec![eng.tokenizer.bos_id()];
            prompt.extend((0..1 + 7 * i).map(|_| 100 + rng.below(150) as u32));
            Job {
                prompt,
                max_tokens: 4 + 3 * i,
                temperature: if i % 2 == 0 { 0.0 } else { 1.0 },
                top_k: if i == 3 { Some(5) } else { None },
                seed: 50 + i as u64,
            }
        })
        .collect();
    for max_rows in [2, 5] {
        let (seqs, masks) = eng.generate_jobs(&jobs, max_rows).unwrap();
        assert_eq!(seqs.len(), jobs.len());
        for (i, j) in jobs.iter().enumerate() {
            let cfg = GenConfig {
                num_samples: 1,
                max_tokens: Some(j.max_tokens),
                temperature: j.temperature,
                top_k: j.top_k,
                seed: j.seed,
            };
            let (one, one_masks) = eng.generate_batch(&j.prompt, &cfg).unwrap();
            assert_eq!(seqs[i], one[0], "job {i} with {max_rows} rows");
            assert_eq!(masks[i], one_masks[0], "job {i} masks");
            assert!(seqs[i].len() > j.prompt.len(), "job {i} generated nothing");
        }
    }
    // Sampled jobs differ from their greedy twins (the seeds matter).
    let mut greedy = jobs[1].clone();
    greedy.temperature = 0.0;
    let (a, _) = eng.generate_jobs(&[jobs[1].clone(), greedy], 2).unwrap();
    assert_ne!(a[0], a[1]);
    // Bad jobs are refused before anything runs.
    let mut none = jobs[0].clone();
    none.max_tokens = 0;
    assert!(eng.generate_jobs(&[none], 1).unwrap_err().contains("at least 1"));
    let bad = Job {
        prompt: vec![],
        ..jobs[0].clone()
    };
    assert!(eng.generate_jobs(&[bad], 1).unwrap_err().contains("empty"));
}

/// A model that writes a fixed script (one-hot logits for the script token at each position), ignoring input.
struct Scripted {
    cfg: ModelConfig,
    script: Vec<u32>,
    prompt_len: usize,
}

impl InferModel for Scripted {
    /// Positions per row.
    type Cache = Vec<usize>;
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    fn new_cache(&self, rows: usize, _t_max: usize) -> Result<Vec<usize>, String> {
        Ok(vec![0; rows])
    }
    fn row_len(&self, lens: &Vec<usize>, row: usize) -> usize {
        lens.get(row).copied().unwrap_or(0)
    }
    fn clear_row(&self, lens: &mut Vec<usize>, row: usize) -> Result<(), String> {
        lens[row] = 0;
        Ok(())
    }
    fn copy_row(&self, lens: &mut Vec<usize>, src: usize, dst: usize) -> Result<(), String> {
        lens[dst] = lens[src];
        Ok(())
    }
    fn forward_rows(&self, lens: &mut Vec<usize>, rows: &[usize], t: &[usize], _: &[u32]) -> Result<Vec<f32>, String> {
        let mut out = Vec::new();
        for (&r, &t) in rows.iter().zip(t) {
            lens[r] += t;
            let next = self.script.get(lens[r] - self.prompt_len).copied().unwrap_or(0);
            let mut row = vec![0.0; self.cfg.vocab_size];
            row[next as usize] = 10.0;
            out.extend(row);
        }
        Ok(out)
    }
}

#[test]
fn calculator_output_is_forced_into_the_stream() {
    let tok = tokenizer();
    let id = |s: &str| tok.special_id(s).unwrap();
    let mut script = vec![id("<|python_start|>")];
    script.extend(tok.encode_ordinary("12/4"));
    script.push(id("<|python_end|>"));
    // While the forced tokens play, the script keeps advancing; pad it with filler the engine overrides.
    let forced = 2 + tok.encode_ordinary("3.0").len();
    script.extend(std::iter::repeat_n(100, forced));
    script.extend(tok.encode_ordinary(" done"));
    script.push(id("<|assistant_end|>"));
    let mut cfg = config("L", 2, 2, 2);
    cfg.vocab_size = tok.vocab_size();
    let prompt = vec![tok.bos_id(), 100];
    let model = Scripted {
        cfg,
        script: script.clone(),
        prompt_len: prompt.len(),
    };
    let eng = Engine::new(model, tok);
    let gcfg = GenConfig {
        num_samples: 2,
        max_tokens: Some(64),
        temperature: 0.0,
        ..GenConfig::default()
    };
    let (seqs, masks) = eng.generate_batch(&prompt, &gcfg).unwrap();
    let tok = &eng.tokenizer;
    let text = tok.decode_lossy(&seqs[0][prompt.len()..]);
    assert_eq!(
        text,
        "<|python_start|>12/4<|python_end|><|output_start|>3.0<|output_end|> done"
    );
    assert_eq!(seqs[0], seqs[1]);
    // Forced tokens (the output span) have mask 0, sampled ones 1.
    let gen_mask = &masks[0][prompt.len()..];
    let n_expr = tok.encode_ordinary("12/4").len();
    assert!(gen_mask[..n_expr + 2].iter().all(|&m| m == 1));
    assert!(gen_mask[n_expr + 2..n_expr + 2 + forced].iter().all(|&m| m == 0));
    assert!(gen_mask[n_expr + 2 + forced..].iter().all(|&m| m == 1));
}

#[test]
fn text_stream_never_splits_a_character() {
    let tok = tokenizer();
    let text = "héllo ✓ wörld 🙂!";
    // Byte-level tokens: multi-byte characters arrive over several tokens.
    let ids: Vec<u32> = text.bytes().map(|b| tok.encode_ordinary_bytes(&[b])[0]).collect();
    let mut s = TextStream::new();
    let mut out = String::new();
    for &i in &ids {
        let piece = s.push(&tok, i);
        assert!(!piece.contains('\u{FFFD}'));
        out.push_str(&piece);
    }
    assert_eq!(out, text);
}
