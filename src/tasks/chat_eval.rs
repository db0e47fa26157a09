//! Chat evaluation (spec §8.4), shared by the `chat_eval` program and chat_sft's periodic ChatCORE.
//!
//! Categorical tasks: batches of prompts (`render_for_completion`, right-padded with BOS), one forward, and at
//! each prompt's last position the logits restricted to the task's answer letters (each a single token); the
//! argmax letter is the answer. Generative tasks: one problem at a time through the engine (`num_samples`
//! samples, temperature, top-k, the calculator tool); a problem passes if any sample passes (pass@k).
//! ChatCORE is the mean over ARC-Easy, ARC-Challenge, MMLU, GSM8K and HumanEval of the centered accuracy
//! `(acc − baseline) / (1 − baseline)`.

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;

use super::registry::{baseline, CHATCORE_TASKS};
use super::{EvalType, Examples, TaskSlice};
use crate::engine::{Engine, GenConfig, InferModel};
use crate::model::ModelDevice;
use crate::tokenizer::Tokenizer;

/// chat_eval's sampling and batching settings.
#[derive(Clone, Debug)]
pub struct EvalSettings {
    pub batch_size: usize,
    pub num_samples: usize,
    pub max_new_tokens: usize,
    pub temperature: f64,
    pub top_k: Option<usize>,
    /// At most this many problems per task.
    pub max_problems: Option<usize>,
    pub seed: u64,
}

impl Default for EvalSettings {
    /// Upstream's defaults: batch 8, one greedy sample of up to 512 tokens, top-k 50.
    fn default() -> Self {
        EvalSettings {
            batch_size: 8,
            num_samples: 1,
            max_new_tokens: 512,
            temperature: 0.0,
            top_k: Some(50),
            max_problems: None,
            seed: 42,
        }
    }
}

/// The score of one task.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskResult {
    pub task: String,
    pub passed: usize,
    pub total: usize,
    pub accuracy: f64,
    /// Why the task was not scored ("skipped: no python3").
    pub skipped: Option<String>,
    pub seconds: f64,
}

impl TaskResult {
    fn new(task: String, passed: usize, total: usize, seconds: f64) -> TaskResult {
        TaskResult {
            task,
            passed,
            total,
            accuracy: if total > 0 { passed as f64 / total as f64 } else { 0.0 },
            skipped: None,
            seconds,
        }
    }

    fn skipped(task: String, why: String, seconds: f64) -> TaskResult {
        TaskResult {
            skipped: Some(why),
            ..TaskResult::new(task, 0, 0, seconds)
        }
    }
}

fn num_problems(task: &TaskSlice, s: &EvalSettings) -> usize {
    s.max_problems.map_or(task.len(), |m| m.min(task.len()))
}

/// The single token of an answer letter.
fn letter_id(tok: &Tokenizer, cache: &mut HashMap<String, u32>, letter: &str) -> Result<u32, String> {
    if let Some(&id) = cache.get(letter) {
        return Ok(id);
    }
    let ids = tok.encode_ordinary(letter);
    if ids.len() != 1 {
        return Err(format!(
            "the answer letter {letter:?} is {} tokens; each letter must be one token",
            ids.len()
        ));
    }
    cache.insert(letter.to_string(), ids[0]);
    Ok(ids[0])
}

/// Scores a categorical task: `progress(done, total, passed)` is called after every batch.
pub fn eval_categorical(
    model: &mut dyn ModelDevice,
    tok: &Tokenizer,
    task: &TaskSlice,
    s: &EvalSettings,
    progress: &mut dyn FnMut(usize, usize, usize),
) -> Result<TaskResult, String> {
    let start = Instant::now();
    let n = num_problems(task, s);
    let bos = tok.bos_id();
    let v = model.config().vocab_size;
    let mut letters_cache = HashMap::new();
    let (mut passed, mut total) = (0, 0);
    let bs = s.batch_size.max(1);
    for i0 in (0..n).step_by(bs) {
        let i1 = (i0 + bs).min(n);
        let examples: Vec<_> = (i0..i1).map(|i| task.get(i)).collect::<Result<_, _>>()?;
        let prompts: Vec<Vec<u32>> = examples
            .iter()
            .map(|e| tok.render_for_completion(&e.conversation))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", task.name()))?;
        let t = prompts.iter().map(Vec::len).max().unwrap_or(1);
        let mut ids = Vec::with_capacity(prompts.len() * t);
        for p in &prompts {
            ids.extend_from_slice(p);
            ids.extend(std::iter::repeat_n(bos, t - p.len()));
        }
        let logits = model
            .logits(&ids, prompts.len(), t)
            .map_err(|e| format!("{}: problems {i0}..{i1}: {e}", task.name()))?;
        for (r, (ex, p)) in examples.iter().zip(&prompts).enumerate() {
            if ex.letters.is_empty() {
                return Err(format!("{}: problem {} has no answer letters", task.name(), i0 + r));
            }
            let row = &logits[(r * t + p.len() - 1) * v..(r * t + p.len()) * v];
            // Argmax over the allowed letters; the first wins a tie (torch's argmax).
            let mut best = 0;
            let mut best_logit = f32::NEG_INFINITY;
            for (j, letter) in ex.letters.iter().enumerate() {
                let l = row[letter_id(tok, &mut letters_cache, letter)? as usize];
                if l > best_logit {
                    best = j;
                    best_logit = l;
                }
            }
            passed += usize::from(task.evaluate(ex, &ex.letters[best])?);
            total += 1;
        }
        progress(total, n, passed);
    }
    Ok(TaskResult::new(
        task.name(),
        passed,
        total,
        start.elapsed().as_secs_f64(),
    ))
}

/// Scores a generative task through the engine: a problem passes when any of its samples does. A task that
/// cannot judge (HumanEval without python3) is reported skipped.
pub fn eval_generative<M: InferModel>(
    engine: &Engine<M>,
    task: &TaskSlice,
    s: &EvalSettings,
    progress: &mut dyn FnMut(usize, usize, usize),
) -> Result<TaskResult, String> {
    let start = Instant::now();
    let n = num_problems(task, s);
    let cfg = GenConfig {
        num_samples: s.num_samples.max(1),
        max_tokens: Some(s.max_new_tokens),
        temperature: s.temperature,
        top_k: s.top_k,
        seed: s.seed,
    };
    let tok = &engine.tokenizer;
    let (mut passed, mut total) = (0, 0);
    for i in 0..n {
        let ex = task.get(i)?;
        let prompt = tok
            .render_for_completion(&ex.conversation)
            .map_err(|e| format!("{} problem {i}: {e}", task.name()))?;
        let (seqs, _) = engine
            .generate_batch(&prompt, &cfg)
            .map_err(|e| format!("{} problem {i}: {e}", task.name()))?;
        let mut any = false;
        for seq in &seqs {
            let completion = tok.decode_lossy(&seq[prompt.len()..]);
            match task.evaluate(&ex, &completion) {
                Ok(ok) => any |= ok,
                Err(why) => return Ok(TaskResult::skipped(task.name(), why, start.elapsed().as_secs_f64())),
            }
        }
        passed += usize::from(any);
        total += 1;
        progress(total, n, passed);
    }
    Ok(TaskResult::new(
        task.name(),
        passed,
        total,
        start.elapsed().as_secs_f64(),
    ))
}

/// Scores any task with the method its eval type asks for.
pub fn eval_task<M: InferModel>(
    model: &mut dyn ModelDevice,
    engine: &Engine<M>,
    task: &TaskSlice,
    s: &EvalSettings,
    progress: &mut dyn FnMut(usize, usize, usize),
) -> Result<TaskResult, String> {
    match task.eval_type() {
        EvalType::Categorical => eval_categorical(model, &engine.tokenizer, task, s, progress),
        EvalType::Generative => eval_generative(engine, task, s, progress),
    }
}

/// `(acc − baseline) / (1 − baseline)`.
pub fn centered(task: &str, accuracy: f64) -> f64 {
    let b = baseline(task);
    (accuracy - b) / (1.0 - b)
}

/// The mean centered accuracy over `tasks`: `Some` only when every one of them was scored (none skipped).
pub fn centered_mean(results: &[TaskResult], tasks: &[&str]) -> Option<f64> {
    let mut sum = 0.0;
    for &name in tasks {
        let r = results.iter().find(|r| r.task == name && r.skipped.is_none())?;
        sum += centered(name, r.accuracy);
    }
    Some(sum / tasks.len() as f64)
}

/// ChatCORE: the centered mean over ARC-Easy, ARC-Challenge, MMLU, GSM8K and HumanEval.
pub fn chatcore(results: &[TaskResult]) -> Option<f64> {
    centered_mean(results, &CHATCORE_TASKS)
}

/// ChatCORE_cat (logged by SFT): the centered mean over the three categorical tasks.
pub fn chatcore_cat(results: &[TaskResult]) -> Option<f64> {
    centered_mean(results, &CHATCORE_TASKS[..3])
}

/// ChatCORE in the middle of a training run (spec §9.1): the five tasks' evaluation splits from `base`,
/// categorical ones on at most `max_cat` problems, generative ones on at most `max_sample`, greedy,
/// `max_new_tokens` new tokens (upstream: 512), `batch_size` prompts per forward, sampling by full forwards on `model` (no copy of it is made).
/// A task whose data is missing (or HumanEval without python3) is a skipped result, not an error.
pub fn chatcore_eval(
    model: &mut (dyn ModelDevice + Send),
    tok: &Tokenizer,
    base: &std::path::Path,
    batch_size: usize,
    max_cat: Option<usize>,
    max_sample: Option<usize>,
    max_new_tokens: usize,
) -> Result<Vec<TaskResult>, String> {
    use super::humaneval::{python_available, Sandbox};
    let engine = Engine::new(crate::engine::full::FullForward::borrowed(model), tok.clone());
    let mut results = Vec::new();
    for name in CHATCORE_TASKS {
        let skipped = |why: String| TaskResult::skipped(name.to_string(), why, 0.0);
        if name == "HumanEval" && !python_available() {
            results.push(skipped("skipped: no python3".into()));
            continue;
        }
        let task = match super::registry::eval_task(base, name, std::sync::Arc::new(Sandbox)) {
            Ok(t) => TaskSlice::all(t),
            Err(e) => {
                results.push(skipped(format!("skipped: no data ({e})")));
                continue;
            }
        };
        let s = EvalSettings {
            batch_size,
            max_new_tokens,
            max_problems: match task.eval_type() {
                EvalType::Categorical => max_cat,
                EvalType::Generative => max_sample,
            },
            ..EvalSettings::default()
        };
        let r = match task.eval_type() {
            EvalType::Categorical => engine
                .model
                .with_model(|m| eval_categorical(m, tok, &task, &s, &mut |_, _, _| {}))??,
            EvalType::Generative => eval_generative(&engine, &task, &s, &mut |_, _, _| {})?,
        };
        results.push(r);
    }
    Ok(results)
}

/// The results as a table: task, passed/total, accuracy, centered accuracy, seconds.
pub fn table(results: &[TaskResult]) -> String {
    let mut out = format!(
        "{:<16} {:>11} {:>9} {:>9} {:>8}\n",
        "task", "passed", "accuracy", "centered", "seconds"
    );
    for r in results {
        match &r.skipped {
            Some(why) => out.push_str(&format!("{:<16} {why}\n", r.task)),
            None => out.push_str(&format!(
                "{:<16} {:>11} {:>9.4} {:>9.4} {:>8.1}\n",
                r.task,
                format!("{}/{}", r.passed, r.total),
                r.accuracy,
                centered(&r.task, r.accuracy),
                r.seconds
            )),
        }
    }
    out
}
