//! The CORE metric: each task type on hand-written examples scored by a model whose losses and predictions
//! are known (so every example's correctness is worked out by hand below), upstream's seeds (the shuffle and the
//! few-shot draws, values from CPython), the prompt rendering, centering; the bundle's files; its download
//! (loopback server, truncated archives refused); and a tiny bundle end to end through `base_eval --eval core`
//! on the CPU reference, on the kernel emulator and on two ranks.

use clap::Parser;
use nanochat::config::ModelConfig;
use nanochat::core_eval::{
    self, centered, common_length, evaluate_example, evaluate_task, fewshot_indices, parse_baselines, parse_core_yaml,
    render_prompts, tokenize_prompts, Bundle, Example, Ranks, TaskMeta, TaskType,
};
use nanochat::data::{self, parquet::write_text_parquet};
use nanochat::model::ModelDevice;
use nanochat::optim::StepSettings;
use nanochat::params::ParamTable;
use nanochat::rng::Rng;
use nanochat::safetensors::Tensor;
use nanochat::tasks::pyrandom::PyRandom;
use nanochat::tokenizer::{Tokenizer, TOKENIZER_FILE};
use nanochat::train::run::{train, TrainArgs};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

/// Byte-level tokenizer (no merges): one token per byte, so every span below is counted in characters.
fn bytes_tok() -> Tokenizer {
    Tokenizer::from_merges(&[]).unwrap()
}

/// A model whose loss at position p is `cost(target) + 1 if the input token there is 'x'`, with cost
/// a=1, b=2, c=3, d=4 and 0 for every other byte; its greedy prediction after token i is i + 1.
struct Stub(ModelConfig, ParamTable);

fn cost(y: i32) -> f32 {
    match y as u8 {
        b'a'..=b'd' => (y as u8 - b'a' + 1) as f32,
        _ => 0.0,
    }
}

impl ModelDevice for Stub {
    fn config(&self) -> &ModelConfig {
        &self.0
    }
    fn device_name(&self) -> String {
        "stub".into()
    }
    fn table(&self) -> &ParamTable {
        &self.1
    }
    fn forward_backward(&mut self, _: &[u32], _: &[i32], _: usize, _: usize, _: f32) -> Result<f32, String> {
        unreachable!()
    }
    fn token_losses(&mut self, ids: &[u32], targets: &[i32], _: usize, _: usize) -> Result<Vec<f32>, String> {
        Ok(ids
            .iter()
            .zip(targets)
            .map(|(&i, &y)| {
                if y < 0 {
                    0.0
                } else {
                    cost(y) + if i == b'x' as u32 { 1.0 } else { 0.0 }
                }
            })
            .collect())
    }
    fn logits(&mut self, ids: &[u32], _: usize, _: usize) -> Result<Vec<f32>, String> {
        let v = self.0.vocab_size;
        let mut out = vec![0.0; ids.len() * v];
        for (p, &i) in ids.iter().enumerate() {
            out[p * v + (i as usize + 1) % v] = 1.0;
        }
        Ok(out)
    }
    fn last_logits(&mut self, _: &[u32], _: usize, _: usize) -> Result<Vec<f32>, String> {
        unreachable!()
    }
    fn grads(&mut self) -> Result<Vec<f32>, String> {
        unreachable!()
    }
    fn step(&mut self, _: &StepSettings) -> Result<(), String> {
        unreachable!()
    }
    fn params(&self) -> Result<Vec<f32>, String> {
        Ok(Vec::new())
    }
    fn optimizer_state(&mut self) -> Result<BTreeMap<String, Tensor>, String> {
        Ok(BTreeMap::new())
    }
    fn load_optimizer_state(&mut self, _: &BTreeMap<String, Tensor>) -> Result<(), String> {
        Ok(())
    }
}

fn stub(seq: usize) -> Stub {
    let cfg = ModelConfig {
        sequence_len: seq,
        vocab_size: bytes_tok().vocab_size(),
        n_layer: 1,
        n_head: 1,
        n_kv_head: 1,
        n_embd: 32,
        window_pattern: "L".into(),
    };
    let t = ParamTable::new(&cfg);
    Stub(cfg, t)
}

fn meta(kind: TaskType, shots: usize, delim: &str) -> TaskMeta {
    TaskMeta {
        label: "t".into(),
        dataset_uri: "t.jsonl".into(),
        num_fewshot: shots,
        task_type: kind,
        continuation_delimiter: delim.into(),
    }
}

fn mc(query: &str, choices: &[&str], gold: usize) -> Example {
    Example::MultipleChoice {
        query: query.into(),
        choices: choices.iter().map(|s| s.to_string()).collect(),
        gold,
    }
}

fn schema(options: &[&str], continuation: &str, gold: usize) -> Example {
    Example::Schema {
        context_options: options.iter().map(|s| s.to_string()).collect(),
        continuation: continuation.into(),
        gold,
    }
}

fn lm(context: &str, continuation: &str) -> Example {
    Example::LanguageModeling {
        context: context.into(),
        continuation: continuation.into(),
    }
}

fn judge(data: &[Example], m: &TaskMeta) -> Vec<bool> {
    let (tok, mut model) = (bytes_tok(), stub(4096));
    (0..data.len())
        .map(|i| evaluate_example(&mut model, &tok, data, i, m).unwrap())
        .collect()
}

#[test]
fn python_random_sample_and_shuffle_match_cpython() {
    // random.Random(1234).sample(list(range(1, 20)), 10): the pool algorithm (19 <= 21 + 64).
    let got: Vec<usize> = PyRandom::new(1234)
        .sample_indices(19, 10)
        .iter()
        .map(|i| i + 1)
        .collect();
    assert_eq!(got, [15, 4, 1, 3, 19, 13, 10, 17, 11, 2]);
    // Few-shot draws of upstream: random.Random(1234 + 5).sample([i for i in range(200) if i != 5], 10) (the
    // set algorithm), and random.Random(1234 + 2).sample([0, 1, 3, 4], 3).
    assert_eq!(
        fewshot_indices(5, 200, 10),
        [20, 72, 117, 7, 13, 27, 123, 124, 176, 165]
    );
    assert_eq!(fewshot_indices(2, 5, 3), [4, 3, 1]);
    assert!(fewshot_indices(2, 5, 0).is_empty());
    // random.Random(1337).shuffle(list(range(10))).
    let mut x: Vec<usize> = (0..10).collect();
    PyRandom::new(1337).shuffle(&mut x);
    assert_eq!(x, [0, 3, 7, 2, 1, 6, 4, 5, 8, 9]);
}

#[test]
fn prompts_render_like_upstreams_templates() {
    let shots = [mc("Q1", &["no", "yes"], 1), mc("Q2", &["up", "down"], 0)];
    let refs: Vec<&Example> = shots.iter().collect();
    assert_eq!(
        render_prompts(&mc("Q3", &["a", "b"], 0), &refs, "\nAnswer: "),
        [
            "Q1\nAnswer: yes\n\nQ2\nAnswer: up\n\nQ3\nAnswer: a",
            "Q1\nAnswer: yes\n\nQ2\nAnswer: up\n\nQ3\nAnswer: b"
        ]
    );
    let s = [schema(&["He", "She"], "ran.", 1)];
    let refs: Vec<&Example> = s.iter().collect();
    assert_eq!(
        render_prompts(&schema(&["A", "B"], "sat.", 0), &refs, " "),
        ["She ran.\n\nA sat.", "She ran.\n\nB sat."]
    );
    // Language modelling: contexts trimmed, both prompts stripped (the trailing delimiter goes).
    let l = [lm("  one two ", "three")];
    let refs: Vec<&Example> = l.iter().collect();
    assert_eq!(
        render_prompts(&lm("\tfour ", " five"), &refs, " "),
        ["one two three\n\nfour", "one two three\n\nfour  five"]
    );
    assert_eq!(render_prompts(&lm(" x ", "y "), &[], ": "), ["x:", "x: y"]);
}

#[test]
fn scored_spans_are_the_common_prefix_and_suffix() {
    let tok = bytes_tok();
    let bos = tok.bos_id();
    assert_eq!(common_length(&[vec![1, 2, 3], vec![1, 2, 4], vec![1, 5]], false), 1);
    assert_eq!(common_length(&[vec![1, 2, 3], vec![9, 2, 3]], true), 2);
    assert_eq!(common_length(&[vec![1, 2], vec![1, 2, 3]], false), 2);
    // Multiple choice: "Q Zb" and "Q Zab" share BOS, Q, space, Z.
    let b = tokenize_prompts(&tok, TaskType::MultipleChoice, &["Q Zb".into(), "Q Zab".into()]).unwrap();
    assert_eq!(b.rows[0], [bos, b'Q' as u32, b' ' as u32, b'Z' as u32, b'b' as u32]);
    assert_eq!(b.spans, [(4, 5), (4, 6)]);
    // Schema: "xa cd" and "xbb cd" share the suffix " cd".
    let b = tokenize_prompts(&tok, TaskType::Schema, &["xa cd".into(), "xbb cd".into()]).unwrap();
    assert_eq!(b.spans, [(3, 6), (4, 7)]);
    // Language modelling: one row, the continuation's tokens.
    let b = tokenize_prompts(&tok, TaskType::LanguageModeling, &["ab".into(), "ab cd".into()]).unwrap();
    assert_eq!((b.rows.len(), b.spans[0]), (1, (3, 6)));
    // A prompt that is not a prefix in token space is an error, not a silent mis-score.
    assert!(tokenize_prompts(&tok, TaskType::LanguageModeling, &["ab".into(), "ac".into()]).is_err());
    // Cropping keeps the last tokens and moves the spans.
    let mut b = tokenize_prompts(&tok, TaskType::MultipleChoice, &["xxxxQ a".into(), "xxxxQ bb".into()]).unwrap();
    core_eval::crop(&mut b, 4);
    assert_eq!(b.rows[1], [b'Q' as u32, b' ' as u32, b'b' as u32, b'b' as u32]);
    assert_eq!(b.rows[0], [b'x' as u32, b'Q' as u32, b' ' as u32, b'a' as u32]);
    assert_eq!(b.spans, [(3, 4), (2, 4)]);
}

#[test]
fn multiple_choice_picks_the_lowest_mean_loss_of_the_span() {
    let data = [
        // spans "ab" (1+2)/2 = 1.5, "c" 3, "aaaa" 1: choice 2, correct.
        mc("Q", &["ab", "c", "aaaa"], 2),
        // "ab" 1.5 and "ba" 1.5 tie: the first wins, gold 1 is wrong.
        mc("Q", &["ab", "ba"], 1),
        // The same tie with gold 0: correct.
        mc("Q", &["ab", "ba"], 0),
        // Common prefix "Q Z": spans "b" 2 and "ab" 1.5: choice 1, correct. (Scoring whole choices, Z included
        // at cost 0, would tie 1.0 and 1.0 and pick choice 0.)
        mc("Q", &["Zb", "Zab"], 1),
        // "d" 4 vs "cc" 3: choice 1, gold 0 is wrong.
        mc("Q", &["d", "cc"], 0),
    ];
    assert_eq!(
        judge(&data, &meta(TaskType::MultipleChoice, 0, " ")),
        [true, false, true, true, false]
    );
    // Few-shot blocks are common to every choice, so the verdicts stay; the draws come from the others.
    assert_eq!(
        judge(&data, &meta(TaskType::MultipleChoice, 2, " ")),
        [true, false, true, true, false]
    );
}

#[test]
fn schema_scores_the_common_continuation_after_each_context() {
    let data = [
        // "xa cd": x->a... the span " cd" from the position after the last context token: a->' ' 0, ' '->c 3,
        // c->d 4 = 7/3; "xbb cd": the same 7/3: tie, the first (0) wins.
        schema(&["xa", "xbb"], "cd", 0),
        schema(&["xa", "xbb"], "cd", 1),
        // "ax cd": x->' ' costs 0 + 1 (after x): (1+3+4)/3 = 8/3 vs "ab cd" 7/3: option 1.
        schema(&["ax", "ab"], "cd", 1),
        schema(&["ax", "ab"], "cd", 0),
    ];
    assert_eq!(
        judge(&data, &meta(TaskType::Schema, 0, " ")),
        [true, false, true, false]
    );
}

#[test]
fn language_modelling_needs_every_continuation_token_predicted() {
    // The stub predicts the next byte value.
    let data = [
        // "abc" + "de": predictions after c and d are d and e: correct.
        lm("ab", "de"),
        // "abc" + "df": after d it predicts e, not f: wrong.
        lm("ab", "df"),
        // Delimiter "c" and context trimmed: "  ab " -> "ab", "abc" + "de": correct.
        lm("  ab ", "de"),
    ];
    assert_eq!(
        judge(&data, &meta(TaskType::LanguageModeling, 0, "c")),
        [true, false, true]
    );
    // With delimiter " ": the prompt without the continuation is stripped, so the span starts at the space:
    // "ab" + " !\"": after b it predicts c, not ' ': wrong (unstripped, "!\"" alone would be right).
    assert_eq!(
        judge(&[lm("ab", "!\"")], &meta(TaskType::LanguageModeling, 0, " ")),
        [false]
    );
    // A few-shot block before it does not change the verdicts (same last tokens).
    let shots = [lm("ab", "de"), lm("ab", "df"), lm("zab", "de"), lm(" ab", "de")];
    assert_eq!(
        judge(&shots, &meta(TaskType::LanguageModeling, 2, "c")),
        [true, false, true, true]
    );
}

#[test]
fn task_accuracy_deals_examples_over_ranks_and_sums_the_counts() {
    let data = [
        mc("Q", &["ab", "c", "aaaa"], 2),
        mc("Q", &["ab", "ba"], 1),
        mc("Q", &["ab", "ba"], 0),
        mc("Q", &["Zb", "Zab"], 1),
        mc("Q", &["d", "cc"], 0),
    ];
    let m = meta(TaskType::MultipleChoice, 0, " ");
    let (tok, mut model) = (bytes_tok(), stub(4096));
    let mut id = |v: &[f64]| Ok(v.to_vec());
    let one = evaluate_task(
        &mut model,
        &tok,
        &data,
        &m,
        &mut Ranks {
            rank: 0,
            world: 1,
            sum: &mut id,
        },
    )
    .unwrap();
    assert_eq!(one, 3.0 / 5.0);
    // Two ranks: rank 1 takes examples 1 and 3 (one correct), rank 0 examples 0, 2, 4 (two); each rank's sum
    // adds the other's count.
    let mut counts = Vec::new();
    for rank in [1, 0] {
        let other: f64 = counts.iter().sum();
        let mut seen = 0.0;
        let mut sum = |v: &[f64]| {
            seen = v[0];
            Ok(vec![v[0] + other])
        };
        let acc = evaluate_task(
            &mut model,
            &tok,
            &data,
            &m,
            &mut Ranks {
                rank,
                world: 2,
                sum: &mut sum,
            },
        )
        .unwrap();
        counts.push(seen);
        if rank == 0 {
            assert_eq!(acc, one);
        }
    }
    assert_eq!(counts, [1.0, 2.0]);
}

#[test]
fn centering_against_the_random_baseline() {
    assert!((centered(0.5, 25.0) - 1.0 / 3.0).abs() < 1e-12);
    assert_eq!(centered(0.25, 25.0), 0.0);
    assert_eq!(centered(1.0, 50.0), 1.0);
    assert!((centered(0.0, 50.0) + 1.0).abs() < 1e-12);
    assert_eq!(centered(0.3, 0.0), 0.3);
}

const CORE_YAML: &str = r#"icl_tasks:
-
  label: tiny_mc
  dataset_uri: mc/tiny_mc.jsonl # a comment
  num_fewshot: [2]
  icl_task_type: multiple_choice
  continuation_delimiter: "\nAnswer: "
-
  label: tiny_schema
  dataset_uri: schema/tiny_schema.jsonl
  num_fewshot: [0]
  icl_task_type: schema
- label: tiny_lm
  dataset_uri: lm/tiny_lm.jsonl
  num_fewshot: [1]
  icl_task_type: language_modeling
  continuation_delimiter: ' '
"#;

const META_CSV: &str = "Eval Task,Task Category,Random baseline,Centered\n\
tiny_mc,\"reading, comprehension\",25,x\n\
tiny_schema,commonsense,50,x\n\
tiny_lm,language,0,x\n";

#[test]
fn bundle_files_parse() {
    let tasks = parse_core_yaml(CORE_YAML).unwrap();
    assert_eq!(tasks.len(), 3);
    assert_eq!(tasks[0].continuation_delimiter, "\nAnswer: ");
    assert_eq!(
        (tasks[0].num_fewshot, tasks[0].dataset_uri.as_str()),
        (2, "mc/tiny_mc.jsonl")
    );
    assert_eq!(tasks[1].continuation_delimiter, " ");
    assert_eq!(
        (tasks[2].label.as_str(), tasks[2].task_type),
        ("tiny_lm", TaskType::LanguageModeling)
    );
    let b = parse_baselines(META_CSV).unwrap();
    assert_eq!((b["tiny_mc"], b["tiny_schema"], b["tiny_lm"]), (25.0, 50.0, 0.0));
    assert!(parse_core_yaml("icl_tasks:\n- label: a\n  num_fewshot: [0]\n").is_err());
    // Block lists inside an item (llm-foundry's `metric_names:`, a block `num_fewshot:`) stay in the item.
    let block = "icl_tasks:\n  - label: a\n    dataset_uri: a.jsonl\n    num_fewshot:\n    - 3\n    - 5\n    \
                 metric_names:\n      - InContextLearningMultipleChoiceAccuracy\n    icl_task_type: schema\n  \
                 - label: b\n    dataset_uri: b.jsonl\n    num_fewshot: [0, 3]\n    icl_task_type: schema\n";
    let t = parse_core_yaml(block).unwrap();
    assert_eq!(t.len(), 2);
    assert_eq!(
        (t[0].label.as_str(), t[0].num_fewshot, t[0].task_type),
        ("a", 3, TaskType::Schema)
    );
    assert_eq!((t[1].label.as_str(), t[1].num_fewshot), ("b", 0));
    assert!(parse_core_yaml(&CORE_YAML.replace("schema\n", "essay\n")).is_err());
}

/// Writes the tiny bundle: 6 multiple-choice, 4 schema and 5 language-modelling examples.
fn write_bundle(dir: &Path) {
    let put = |rel: &str, text: &str| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    put("core.yaml", CORE_YAML);
    put("eval_meta_data.csv", META_CSV);
    let mut mcs = String::new();
    for (q, c, g) in [
        ("the cat sat on the", ["mat", "sky", "river"], 0),
        ("the dog ran to the", ["house", "blue", "quickly"], 0),
        ("the bird saw the", ["sky", "and", "on"], 0),
        ("a big red", ["tree", "the", "sat"], 0),
        ("the river ran", ["slowly", "the", "a"], 0),
        ("the small", ["dog", "on", "and"], 0),
    ] {
        mcs += &serde_json::json!({"query": q, "choices": c, "gold": g}).to_string();
        mcs.push('\n');
    }
    put("eval_data/mc/tiny_mc.jsonl", &mcs);
    let mut sch = String::new();
    for (o, c, g) in [
        (["the cat", "the sky"], "sat on the mat.", 0),
        (["a dog", "a under"], "ran to the house.", 0),
        (["the bird", "the and"], "jumped over the tree.", 0),
        (["a stone", "a quickly"], "sat under the river.", 0),
    ] {
        sch += &serde_json::json!({"context_options": o, "continuation": c, "gold": g}).to_string();
        sch.push('\n');
    }
    put("eval_data/schema/tiny_schema.jsonl", &sch);
    let mut lms = String::new();
    for (c, k) in [
        ("the cat sat on the", "mat"),
        ("the dog ran to the", "house"),
        ("the", "cat"),
        ("a big red", "tree"),
        ("the bird jumped over the", "river"),
    ] {
        lms += &serde_json::json!({"context": c, "continuation": k}).to_string();
        lms.push('\n');
    }
    put("eval_data/lm/tiny_lm.jsonl", &lms);
}

#[test]
fn a_bundle_loads_shuffled_and_truncated() {
    let tmp = tempfile::tempdir().unwrap();
    write_bundle(tmp.path());
    let b = Bundle::open(tmp.path()).unwrap();
    let all = b.load_task(&b.tasks[0], None).unwrap();
    // random.Random(1337).shuffle of 6 items: the order CPython gives.
    let mut order: Vec<usize> = (0..6).collect();
    PyRandom::new(1337).shuffle(&mut order);
    let Example::MultipleChoice { query, .. } = &all[0] else {
        panic!()
    };
    let first = [
        "the cat sat on the",
        "the dog ran to the",
        "the bird saw the",
        "a big red",
        "the river ran",
        "the small",
    ][order[0]];
    assert_eq!(query, first);
    assert_eq!(b.load_task(&b.tasks[0], Some(2)).unwrap(), all[..2]);
    // A missing baseline or a bad line names what is wrong.
    std::fs::write(
        tmp.path().join("eval_meta_data.csv"),
        "Eval Task,Random baseline\ntiny_mc,25\n",
    )
    .unwrap();
    let e = Bundle::open(tmp.path()).err().unwrap();
    assert!(e.contains("tiny_schema"), "{e}");
    write_bundle(tmp.path());
    std::fs::write(tmp.path().join("eval_data/lm/tiny_lm.jsonl"), "{\"context\": \"a\"}\n").unwrap();
    let b = Bundle::open(tmp.path()).unwrap();
    let e = b.load_task(&b.tasks[2], None).unwrap_err();
    assert!(e.contains("line 1") && e.contains("continuation"), "{e}");
}

// ---- end to end -------------------------------------------------------------------------------------------

const WORDS: &[&str] = &[
    "the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "house", "big", "small", "red", "blue", "green",
    "tree", "over", "under", "quickly", "slowly", "jumped", "saw", "bird", "sky", "river", "stone", "light", "day",
];

/// A base directory with a generated corpus, tokenizer, token shards, a 2-step checkpoint `core` and the bundle.
fn prepare(base: &Path) {
    let mut rng = Rng::new(7);
    let docs: Vec<String> = (0..600)
        .map(|_| {
            let n = 5 + rng.below(40) as usize;
            let words: Vec<&str> = (0..n).map(|_| WORDS[rng.below(WORDS.len() as u64) as usize]).collect();
            format!("{}.", words.join(" "))
        })
        .collect();
    let dir = base.join(data::DEFAULT_DIR);
    std::fs::create_dir_all(&dir).unwrap();
    for (i, chunk) in docs.chunks(300).enumerate() {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        write_text_parquet(&dir.join(format!("shard_{i:05}.parquet")), &refs, 100).unwrap();
    }
    let tok = Tokenizer::train(docs.iter().cloned(), 320, 64, &mut |_, _| {}).unwrap();
    std::fs::create_dir_all(base.join("tokenizer")).unwrap();
    tok.save(&base.join("tokenizer").join(TOKENIZER_FILE)).unwrap();
    data::tokenize::tokenize_dir(&dir, &data::tokens_dir_for(&dir), &tok, false).unwrap();
    let args = TrainArgs::try_parse_from([
        "train_gpt",
        "--depth",
        "2",
        "--aspect-ratio",
        "32",
        "--head-dim",
        "64",
        "--max-seq-len",
        "64",
        "--device-batch-size",
        "4",
        "--total-batch-size",
        "256",
        "--num-iterations",
        "2",
        "--eval-every",
        "0",
        "--sample-every",
        "0",
        "--core-metric-every",
        "0",
        "--model-tag",
        "core",
    ])
    .unwrap();
    train(&args, base).unwrap();
    write_bundle(&base.join("eval_bundle"));
}

fn base_eval(base: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_base_eval"));
    c.args(["--model-tag", "core", "--eval", "core"])
        .args(extra)
        .env("NANOCHAT_BASE_DIR", base);
    for v in [
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
    ] {
        c.env_remove(v);
    }
    c
}

fn run_ok(mut c: Command) -> String {
    let out = c.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    text
}

/// The CSV's rows checked against upstream's layout: (label, accuracy, centered), then CORE = their mean.
fn check_csv(text: &str) -> Vec<(String, f64, f64)> {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert_eq!(
        lines[0],
        format!("{:<35}, {:<10}, {:<10}", "Task", "Accuracy", "Centered")
    );
    let rows: Vec<(String, f64, f64)> = lines[1..4]
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            (f[0].to_string(), f[1].parse().unwrap(), f[2].parse().unwrap())
        })
        .collect();
    let labels: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(labels, ["tiny_mc", "tiny_schema", "tiny_lm"]);
    for ((_, acc, cen), (n, base)) in rows.iter().zip([(6.0, 25.0), (4.0, 50.0), (5.0, 0.0)]) {
        assert!(((acc * n) - (acc * n).round()).abs() < 1e-4, "{acc} is not k/{n}");
        assert!((cen - centered(*acc, base)).abs() < 2e-6, "{cen} vs {acc}");
    }
    let f: Vec<&str> = lines[4].split(',').map(str::trim).collect();
    assert_eq!((f[0], f[1]), ("CORE", ""));
    let mean = rows.iter().map(|r| r.2).sum::<f64>() / 3.0;
    assert!((f[2].parse::<f64>().unwrap() - mean).abs() < 2e-6, "{text}");
    rows
}

#[test]
fn base_eval_core_on_cpu_emu_and_two_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    prepare(base);
    let csv = core_eval::csv_path(base, 2);
    assert!(csv.ends_with("base_eval/base_model_000002.csv"));

    let t0 = std::time::Instant::now();
    let text = run_ok(base_eval(base, &["--device", "cpu"]));
    let cpu_secs = t0.elapsed().as_secs_f64();
    assert!(
        text.contains("CORE metric:") && text.contains("tiny_schema (0-shot, schema, 4 examples)"),
        "{text}"
    );
    let cpu_csv = std::fs::read_to_string(&csv).unwrap();
    let cpu = check_csv(&cpu_csv);
    // The record the report card reads agrees with the CSV.
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("base_eval/base_model_000002.json")).unwrap()).unwrap();
    let parsed = core_eval::parse_csv(&cpu_csv).unwrap();
    assert!((rec["core"]["metric"].as_f64().unwrap() - parsed.core).abs() < 1e-6);

    // --max-per-task keeps the first examples of the shuffled order.
    run_ok(base_eval(base, &["--max-per-task", "2"]));
    let short = core_eval::parse_csv(&std::fs::read_to_string(&csv).unwrap()).unwrap();
    assert_eq!(short.tasks.len(), 3);
    for t in &short.tasks {
        assert!([0.0, 0.5, 1.0].contains(&t.accuracy), "{t:?}");
    }

    // Two ranks on the CPU ring: examples dealt, counts summed, the same table.
    std::fs::remove_file(&csv).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let children: Vec<_> = (0..2)
        .map(|r| {
            let mut c = base_eval(base, &[]);
            c.env("RANK", r.to_string())
                .env("WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string());
            c.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    for ch in children {
        let out = ch.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(std::fs::read_to_string(&csv).unwrap(), cpu_csv);

    // The kernels on the emulator: the same table within one example per task (bf16 may flip a near tie).
    let t0 = std::time::Instant::now();
    run_ok(base_eval(base, &["--device", "emu"]));
    let emu_secs = t0.elapsed().as_secs_f64();
    let emu = check_csv(&std::fs::read_to_string(&csv).unwrap());
    for ((l, a, _), (_, b, _)) in cpu.iter().zip(&emu) {
        assert!((a - b).abs() <= 0.26, "{l}: cpu {a} emu {b}");
    }
    println!("CORE on the tiny bundle (15 examples): cpu {cpu_secs:.1}s, emu {emu_secs:.1}s (process wall time)");

    // Asking for core without a bundle is an error that says how to get one.
    std::fs::remove_dir_all(base.join("eval_bundle")).unwrap();
    let out = base_eval(base, &[]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("download_data --eval-bundle"));
}

// ---- download ---------------------------------------------------------------------------------------------

/// The tiny bundle as upstream ships it: a deflated zip with a top-level `eval_bundle/` folder.
fn bundle_zip() -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    write_bundle(tmp.path());
    let mut zw = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    zw.add_directory("eval_bundle/", opts).unwrap();
    for rel in [
        "core.yaml",
        "eval_meta_data.csv",
        "eval_data/mc/tiny_mc.jsonl",
        "eval_data/schema/tiny_schema.jsonl",
        "eval_data/lm/tiny_lm.jsonl",
    ] {
        zw.start_file(format!("eval_bundle/{rel}"), opts).unwrap();
        zw.write_all(&std::fs::read(tmp.path().join(rel)).unwrap()).unwrap();
    }
    zw.finish().unwrap().into_inner()
}

/// Serves `bodies` in turn (the last one for every later request), each as (bytes, announced length).
fn serve(bodies: Vec<(Vec<u8>, usize)>) -> (String, std::thread::JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/eval_bundle.zip", listener.local_addr().unwrap());
    let h = std::thread::spawn(move || {
        let mut n = 0;
        for s in listener.incoming() {
            let Ok(mut s) = s else { break };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            if head.starts_with(b"QUIT") {
                break;
            }
            let (body, announced) = &bodies[n.min(bodies.len() - 1)];
            n += 1;
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {announced}\r\nConnection: close\r\n\r\n"
            );
            let _ = s.write_all(body);
        }
        n
    });
    (url, h)
}

fn quit(url: &str) {
    let addr = url.trim_start_matches("http://").split('/').next().unwrap().to_string();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"QUIT\r\n\r\n").unwrap();
}

fn download(base: &Path, url: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_download_data"))
        .args([
            "--eval-bundle",
            "--attempts",
            "2",
            "--timeout",
            "10",
            "--eval-bundle-url",
            url,
        ])
        .env("NANOCHAT_BASE_DIR", base)
        .output()
        .unwrap()
}

#[test]
fn download_data_fetches_and_unpacks_the_bundle_and_refuses_a_truncated_zip() {
    let zip = bundle_zip();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();

    // A server whose file is truncated (it says so in its length): every attempt refused, nothing unpacked.
    let cut = zip[..zip.len() * 2 / 3].to_vec();
    let n = cut.len();
    let (url, h) = serve(vec![(cut, n)]);
    let out = download(base, &url);
    quit(&url);
    assert_eq!(h.join().unwrap(), 2, "one request per attempt");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not usable"), "{err}");
    assert!(!base.join("eval_bundle").exists() && !base.join("eval_bundle.zip").exists());

    // A transfer cut off midway, then the whole file: retried, checked, unpacked; the zip is gone.
    let (url, h) = serve(vec![(zip[..100].to_vec(), zip.len()), (zip.clone(), zip.len())]);
    let out = download(base, &url);
    quit(&url);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(h.join().unwrap(), 2);
    let b = Bundle::open(&base.join("eval_bundle")).unwrap();
    assert_eq!(b.tasks.len(), 3);
    assert_eq!(b.load_task(&b.tasks[1], None).unwrap().len(), 4);
    assert!(!base.join("eval_bundle.zip").exists());

    // Present: nothing fetched (a dead address would fail otherwise).
    let out = download(base, "http://127.0.0.1:9/eval_bundle.zip");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("already present"));
}
