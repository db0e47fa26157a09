//! chat_eval: categorical scoring (answer-letter logits at the last prompt position, BOS right-padding never
//! read) against a scripted model and against unbatched single forwards, generative scoring through the engine
//! on the CPU and through full forwards on the kernel emulator, ChatCORE, and the program end to end on a base
//! directory with a tiny random checkpoint and the fixture task data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use nanochat::checkpoint::{self, LoopState, Meta};
use nanochat::config::ModelConfig;
use nanochat::cpu::infer::CpuInfer;
use nanochat::cpu::model::CpuModel;
use nanochat::device::emu::EmuDevice;
use nanochat::device::model::KernelModel;
use nanochat::device::Schedule;
use nanochat::engine::full::FullForward;
use nanochat::engine::{Engine, GenConfig};
use nanochat::model::ModelDevice;
use nanochat::optim::StepSettings;
use nanochat::params::ParamTable;
use nanochat::safetensors::Tensor;
use nanochat::tasks::chat_eval::{
    centered, chatcore, chatcore_cat, chatcore_eval, eval_categorical, eval_generative, EvalSettings, TaskResult,
};
use nanochat::tasks::{arc::Arc as ArcTask, gsm8k::Gsm8k, humaneval::NoRunner, mmlu::Mmlu, Examples, Task, TaskSlice};
use nanochat::tokenizer::{files, pattern, Tokenizer, SPECIAL_TOKENS, TOKENIZER_FILE};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tasks")
}

fn tok() -> Tokenizer {
    let ranks = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/rustbpe_ranks.tiktoken");
    let specials = SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect();
    files::import_tiktoken(&ranks, pattern::SPLIT_PATTERN, specials).unwrap()
}

fn config(vocab: usize) -> ModelConfig {
    ModelConfig {
        sequence_len: 128,
        vocab_size: vocab,
        n_layer: 2,
        n_head: 2,
        n_kv_head: 2,
        n_embd: 32,
        window_pattern: "L".into(),
    }
}

/// Initialized parameters plus noise, so the logits are far from uniform.
fn params(cfg: &ModelConfig) -> Vec<f32> {
    let table = ParamTable::new(cfg);
    let mut p = vec![0.0; table.numel];
    table.init(&mut p, 3);
    let mut rng = nanochat::rng::Rng::new(4);
    p.iter_mut().for_each(|x| *x += 0.2 * rng.normal());
    p
}

/// Logits 10 on `favourite` and 0 elsewhere at every real position; NaN at the BOS padding after a row's
/// prompt, so reading a padded position would make every comparison fail.
struct Scripted {
    cfg: ModelConfig,
    table: ParamTable,
    favourite: u32,
    bos: u32,
}

impl ModelDevice for Scripted {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    fn device_name(&self) -> String {
        "scripted".into()
    }
    fn table(&self) -> &ParamTable {
        &self.table
    }
    fn forward_backward(&mut self, _: &[u32], _: &[i32], _: usize, _: usize, _: f32) -> Result<f32, String> {
        unimplemented!()
    }
    fn token_losses(&mut self, _: &[u32], _: &[i32], _: usize, _: usize) -> Result<Vec<f32>, String> {
        unimplemented!()
    }
    fn logits(&mut self, ids: &[u32], b: usize, t: usize) -> Result<Vec<f32>, String> {
        let v = self.cfg.vocab_size;
        let mut out = vec![0.0f32; b * t * v];
        for r in 0..b {
            let row = &ids[r * t..(r + 1) * t];
            let content = row.iter().rposition(|&x| x != self.bos).map_or(0, |p| p + 1);
            for p in 0..t {
                let l = &mut out[(r * t + p) * v..(r * t + p + 1) * v];
                if p >= content {
                    l.fill(f32::NAN);
                } else {
                    l[self.favourite as usize] = 10.0;
                }
            }
        }
        Ok(out)
    }
    fn grads(&mut self) -> Result<Vec<f32>, String> {
        unimplemented!()
    }
    fn last_logits(&mut self, _: &[u32], _: usize, _: usize) -> Result<Vec<f32>, String> {
        unimplemented!()
    }
    fn step(&mut self, _: &StepSettings) -> Result<(), String> {
        unimplemented!()
    }
    fn params(&self) -> Result<Vec<f32>, String> {
        unimplemented!()
    }
    fn optimizer_state(&mut self) -> Result<BTreeMap<String, Tensor>, String> {
        unimplemented!()
    }
    fn load_optimizer_state(&mut self, _: &BTreeMap<String, Tensor>) -> Result<(), String> {
        unimplemented!()
    }
}

fn settings(batch: usize) -> EvalSettings {
    EvalSettings {
        batch_size: batch,
        ..EvalSettings::default()
    }
}

fn slice(t: impl Task + 'static) -> TaskSlice {
    TaskSlice::all(Arc::new(t))
}

#[test]
fn categorical_reads_the_answer_letters_at_the_last_prompt_position() {
    let tok = tok();
    let cfg = config(tok.vocab_size());
    let b_id = tok.encode_ordinary("B")[0];
    let mut m = Scripted {
        table: ParamTable::new(&cfg),
        cfg,
        favourite: b_id,
        bos: tok.bos_id(),
    };
    let arc = slice(ArcTask::load(&fixtures(), "ARC-Easy", "test").unwrap());
    let mmlu = slice(Mmlu::load(&fixtures(), "all", "test").unwrap());
    // A model that always says "B": ARC-Easy's answers are B, 2 (labels 1-3: the tie goes to the first, "1"),
    // B, C -> 2 of 4; MMLU's are B, C, A, D -> 1 of 4. Batches of 3 pad the shorter prompts with BOS.
    for batch in [1, 3, 8] {
        let r = eval_categorical(&mut m, &tok, &arc, &settings(batch), &mut |_, _, _| {}).unwrap();
        assert_eq!((r.passed, r.total), (2, 4), "batch {batch}");
        assert_eq!(r.accuracy, 0.5);
        let r = eval_categorical(&mut m, &tok, &mmlu, &settings(batch), &mut |_, _, _| {}).unwrap();
        assert_eq!((r.passed, r.total), (1, 4), "batch {batch}");
    }
    // -x limits the problems.
    let s = EvalSettings {
        max_problems: Some(2),
        ..settings(8)
    };
    let mut seen = Vec::new();
    let r = eval_categorical(&mut m, &tok, &arc, &s, &mut |d, n, p| seen.push((d, n, p))).unwrap();
    assert_eq!(r.total, 2);
    assert_eq!(seen.last(), Some(&(2, 2, r.passed)));
}

#[test]
fn categorical_batches_equal_single_forwards_on_a_real_model() {
    let tok = tok();
    let cfg = config(tok.vocab_size());
    let mut m = CpuModel::new(&cfg, params(&cfg), &Default::default()).unwrap();
    let arc = slice(ArcTask::load(&fixtures(), "ARC-Challenge", "test").unwrap());
    // The reference: each prompt alone, the argmax over its letters' logits at its last position.
    let mut want = 0;
    for i in 0..arc.len() {
        let ex = arc.get(i).unwrap();
        let p = tok.render_for_completion(&ex.conversation).unwrap();
        let logits = m.last_logits(&p, 1, p.len()).unwrap();
        let scores: Vec<f32> = ex
            .letters
            .iter()
            .map(|l| logits[tok.encode_ordinary(l)[0] as usize])
            .collect();
        let best = (0..scores.len()).fold(0, |b, j| if scores[j] > scores[b] { j } else { b });
        want += usize::from(ex.letters[best] == ex.reference());
    }
    for batch in [1, 2, 3] {
        let r = eval_categorical(&mut m, &tok, &arc, &settings(batch), &mut |_, _, _| {}).unwrap();
        assert_eq!((r.passed, r.total), (want, 3), "batch {batch}");
    }
    // The same on the kernel emulator.
    let mut k = KernelModel::new(
        Box::new(EmuDevice::new(Schedule::Forward)),
        &cfg,
        &params(&cfg),
        &Default::default(),
    )
    .unwrap();
    let r = eval_categorical(&mut k, &tok, &arc, &settings(3), &mut |_, _, _| {}).unwrap();
    assert_eq!(r.total, 3);
}

#[test]
fn generative_through_the_engine_cpu_and_emulator() {
    let tok = tok();
    let cfg = config(tok.vocab_size());
    let gsm = slice(Gsm8k::load(&fixtures(), "main", "test").unwrap());
    let s = EvalSettings {
        max_new_tokens: 6,
        num_samples: 2,
        temperature: 1.0,
        max_problems: Some(2),
        ..EvalSettings::default()
    };
    let cpu = Engine::new(CpuInfer::new(&cfg, params(&cfg)).unwrap(), tok.clone());
    let r = eval_generative(&cpu, &gsm, &s, &mut |_, _, _| {}).unwrap();
    assert_eq!(r.total, 2);
    assert!(r.skipped.is_none());

    // Full forwards over the tokens so far generate what the KV-cached engine generates.
    let full = Engine::new(
        FullForward::new(Box::new(
            CpuModel::new(&cfg, params(&cfg), &Default::default()).unwrap(),
        )),
        tok.clone(),
    );
    let prompt = tok.render_for_completion(&gsm.get(0).unwrap().conversation).unwrap();
    let g = GenConfig {
        num_samples: 3,
        max_tokens: Some(8),
        temperature: 0.0,
        top_k: None,
        seed: 1,
    };
    let a = cpu.generate_batch(&prompt, &g).unwrap();
    let b = full.generate_batch(&prompt, &g).unwrap();
    assert_eq!(a, b);
    assert!(a.0[0].len() > prompt.len());

    // The kernel emulator through the same path.
    let emu = Engine::new(
        FullForward::new(Box::new(
            KernelModel::new(
                Box::new(EmuDevice::new(Schedule::Forward)),
                &cfg,
                &params(&cfg),
                &Default::default(),
            )
            .unwrap(),
        )),
        tok.clone(),
    );
    let s1 = EvalSettings {
        max_new_tokens: 3,
        max_problems: Some(1),
        ..EvalSettings::default()
    };
    let r = eval_generative(&emu, &gsm, &s1, &mut |_, _, _| {}).unwrap();
    assert_eq!((r.total, r.skipped), (1, None));

    // A task that cannot judge is reported skipped.
    let he = slice(nanochat::tasks::humaneval::HumanEval::load(&fixtures(), Arc::new(NoRunner)).unwrap());
    let r = eval_generative(&cpu, &he, &s1, &mut |_, _, _| {}).unwrap();
    assert_eq!(r.skipped.as_deref(), Some("skipped: no code sandbox"));
}

#[test]
fn chatcore_is_the_mean_centered_accuracy_over_five_tasks() {
    let r = |task: &str, acc: f64| TaskResult {
        task: task.into(),
        passed: 0,
        total: 1,
        accuracy: acc,
        skipped: None,
        seconds: 0.0,
    };
    assert_eq!(centered("MMLU", 0.25), 0.0);
    assert_eq!(centered("ARC-Easy", 1.0), 1.0);
    assert_eq!(centered("GSM8K", 0.5), 0.5);
    let mut all = vec![
        r("ARC-Easy", 0.625),     // 0.5
        r("ARC-Challenge", 0.25), // 0
        r("MMLU", 0.0),           // -1/3
        r("GSM8K", 0.1),          // 0.1
        r("HumanEval", 0.2),      // 0.2
        r("SpellingBee", 1.0),    // not part of it
    ];
    let want = (0.5 + 0.0 - 1.0 / 3.0 + 0.1 + 0.2) / 5.0;
    assert!((chatcore(&all).unwrap() - want).abs() < 1e-12);
    let want_cat = (0.5 + 0.0 - 1.0 / 3.0) / 3.0;
    assert!((chatcore_cat(&all).unwrap() - want_cat).abs() < 1e-12);
    all[4].skipped = Some("skipped: no python3".into());
    assert_eq!(chatcore(&all), None);
    all.remove(4);
    assert_eq!(chatcore(&all), None);
}

/// A base directory: the fixture tokenizer, the fixture task data and word list, a random sft checkpoint.
fn prepare(base: &Path) {
    let tok = tok();
    std::fs::create_dir_all(base.join("tokenizer")).unwrap();
    tok.save(&base.join("tokenizer").join(TOKENIZER_FILE)).unwrap();
    let copy = |from: &Path, to: &Path| {
        let status = Command::new("cp").arg("-r").arg(from).arg(to).status().unwrap();
        assert!(status.success());
    };
    copy(&fixtures().join("task_data"), base);
    copy(&fixtures().join("words_alpha.txt"), base);
    let cfg = config(tok.vocab_size());
    let meta = Meta {
        step: 7,
        val_bpb: None,
        model_config: cfg.clone(),
        user_config: serde_json::json!({}),
        device_batch_size: 1,
        max_seq_len: 128,
        total_batch_size: 128,
        dataloader_state_dict: serde_json::json!({}),
        loop_state: LoopState::default(),
    };
    let dir = base.join("chatsft_checkpoints").join("d2");
    checkpoint::save(&dir, &meta, &ParamTable::new(&cfg), &params(&cfg), &BTreeMap::new(), 0).unwrap();
}

#[test]
fn chat_eval_program_on_cpu_and_emu() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_chat_eval"))
            .args(args)
            .env("NANOCHAT_BASE_DIR", base)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = run(&["-i", "sft"]);
    assert!(!ok && err.contains("no sft checkpoints"), "{err}");
    prepare(base);
    let (ok, _, err) = run(&["-i", "sft", "-a", "ARC-Easy|Nope"]);
    assert!(!ok && err.contains("unknown task \"Nope\""), "{err}");

    // Every task on small slices; ChatCORE is printed when the five ran.
    let (ok, out, err) = run(&["-i", "sft", "-x", "2", "-m", "6", "-b", "2"]);
    assert!(ok, "{err}");
    for t in ["ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee"] {
        assert!(out.contains(&format!("{t}:")), "{t} missing:\n{out}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("chat_eval/sft_d2_7.json")).unwrap()).unwrap();
    let results = json["results"].as_array().unwrap();
    assert_eq!(results.len(), 6);
    for r in results {
        let skipped = r["skipped"].as_str();
        if r["task"] == "HumanEval" && skipped.is_some() {
            assert_eq!(skipped, Some("skipped: no python3"));
            continue;
        }
        assert_eq!(r["total"], 2, "{r}");
    }
    if nanochat::tasks::humaneval::python_available() {
        assert!(out.contains("ChatCORE: "), "{out}");
        assert!(json["chatcore"].is_number());
    } else {
        assert!(out.contains("ChatCORE: n/a (not scored: HumanEval)"), "{out}");
    }

    // A task without data is skipped, the rest still run; the emulator runs the same program.
    std::fs::remove_dir_all(base.join("task_data/openai--gsm8k")).unwrap();
    let out_json = base.join("emu.json");
    let (ok, out, err) = run(&[
        "-i",
        "sft",
        "-a",
        "ARC-Easy|GSM8K",
        "-x",
        "1",
        "-m",
        "3",
        "--device",
        "emu",
        "--output",
        out_json.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("GSM8K: skipped"), "{out}");
    assert!(out.contains("ChatCORE: n/a"), "{out}");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out_json).unwrap()).unwrap();
    assert_eq!(json["results"][0]["total"], 1);
    assert_eq!(json["device"], "emu");
}

#[test]
fn chatcore_during_training_borrows_the_model() {
    let tok = tok();
    let cfg = config(tok.vocab_size());
    let mut m = CpuModel::new(&cfg, params(&cfg), &Default::default()).unwrap();
    let results = chatcore_eval(&mut m, &tok, &fixtures(), 2, Some(3), Some(1), 8).unwrap();
    let names: Vec<&str> = results.iter().map(|r| r.task.as_str()).collect();
    assert_eq!(names, ["ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval"]);
    for r in &results[..3] {
        assert_eq!(r.total, 3, "{r:?}");
    }
    assert_eq!(results[3].total, 1);
    // The model is still the caller's afterwards.
    assert!(m.last_logits(&[1, 2], 1, 2).is_ok());
    // Without task data every task is skipped, no error.
    let empty = tempfile::tempdir().unwrap();
    let results = chatcore_eval(&mut m, &tok, empty.path(), 2, None, None, 8).unwrap();
    assert!(results.iter().all(|r| r.skipped.is_some()));
    assert_eq!(chatcore(&results), None);
}
