//! The CORE metric of base models (the DCLM paper's; upstream nanochat/core_eval.py and base_eval's
//! `evaluate_core`): in-context-learning tasks of three kinds, scored by the model's losses on the answer tokens.
//!
//! - **multiple_choice** (`query`, `choices`, `gold`): one prompt per choice, `fewshot + query + delim + choice`;
//!   the tokens (BOS first) share a prefix, and each choice is scored from the end of the common prefix.
//! - **schema** (`context_options`, `continuation`, `gold`): one prompt per context, `fewshot + context + delim
//!   + continuation`; the scored span is the common suffix (the continuation).
//! - **language_modeling** (`context`, `continuation`): the prompt with and without the continuation (both
//!   whitespace-stripped); correct when greedy prediction reproduces every continuation token.
//!
//! Multiple-choice and schema pick the option with the lowest mean loss over its span (the first of equal
//! ones). Each task's examples are shuffled with Python's `random.Random(1337)` and truncated; example `i`'s
//! few-shot examples are `random.Random(1234 + i).sample` of the others; its prompts are scored as one batch,
//! right-padded with BOS. Accuracy is centered on the bundle's random baseline (percent):
//! `(acc − b/100) / (1 − b/100)`; CORE is the mean of the centered accuracies.
//!
//! The bundle (`eval_bundle/` in the base directory) holds `core.yaml` (the task list), `eval_meta_data.csv`
//! (the baselines) and `eval_data/<dataset_uri>` (one JSON object per line).

use crate::model::ModelDevice;
use crate::tasks::pyrandom::PyRandom;
use crate::tokenizer::Tokenizer;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Upstream's address of the bundle.
pub const EVAL_BUNDLE_URL: &str = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip";
/// The bundle's directory name under the base directory.
pub const EVAL_BUNDLE_DIR: &str = "eval_bundle";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskType {
    MultipleChoice,
    Schema,
    LanguageModeling,
}

impl TaskType {
    pub fn parse(s: &str) -> Result<TaskType, String> {
        match s {
            "multiple_choice" => Ok(TaskType::MultipleChoice),
            "schema" => Ok(TaskType::Schema),
            "language_modeling" => Ok(TaskType::LanguageModeling),
            _ => Err(format!(
                "unknown icl_task_type {s:?} (expected multiple_choice, schema or language_modeling)"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TaskType::MultipleChoice => "multiple_choice",
            TaskType::Schema => "schema",
            TaskType::LanguageModeling => "language_modeling",
        }
    }
}

/// One entry of `core.yaml`'s `icl_tasks`.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskMeta {
    pub label: String,
    pub dataset_uri: String,
    pub num_fewshot: usize,
    pub task_type: TaskType,
    /// Between the context and the answer (default one space).
    pub continuation_delimiter: String,
}

/// One example of a task.
#[derive(Clone, Debug, PartialEq)]
pub enum Example {
    MultipleChoice {
        query: String,
        choices: Vec<String>,
        gold: usize,
    },
    Schema {
        context_options: Vec<String>,
        continuation: String,
        gold: usize,
    },
    LanguageModeling {
        context: String,
        continuation: String,
    },
}

impl Example {
    /// Reads an example of `kind` from one JSON object of the task's file.
    pub fn from_json(kind: TaskType, v: &Value) -> Result<Example, String> {
        let s = |k: &str| -> Result<String, String> {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("missing string field {k:?}"))
        };
        let list = |k: &str| -> Result<Vec<String>, String> {
            v.get(k)
                .and_then(Value::as_array)
                .and_then(|a| a.iter().map(|x| x.as_str().map(str::to_string)).collect())
                .ok_or_else(|| format!("missing list of strings {k:?}"))
        };
        let gold = |n: usize| -> Result<usize, String> {
            let g = v
                .get("gold")
                .and_then(Value::as_u64)
                .ok_or("missing integer field \"gold\"")? as usize;
            if g >= n {
                return Err(format!("gold {g} but only {n} options"));
            }
            Ok(g)
        };
        Ok(match kind {
            TaskType::MultipleChoice => {
                let choices = list("choices")?;
                if choices.is_empty() {
                    return Err("no choices".into());
                }
                Example::MultipleChoice {
                    query: s("query")?,
                    gold: gold(choices.len())?,
                    choices,
                }
            }
            TaskType::Schema => {
                let context_options = list("context_options")?;
                if context_options.is_empty() {
                    return Err("no context_options".into());
                }
                Example::Schema {
                    continuation: s("continuation")?,
                    gold: gold(context_options.len())?,
                    context_options,
                }
            }
            TaskType::LanguageModeling => Example::LanguageModeling {
                context: s("context")?,
                continuation: s("continuation")?,
            },
        })
    }
}

/// Python's `str.strip()` (its whitespace includes the separators U+001C..U+001F, which Rust's does not).
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// The prompts of `item` after the few-shot examples `shots`, as upstream's Jinja templates render them:
/// each shot with its answer and a blank line, then the item once per option (multiple choice, schema), or
/// without and with the continuation (language modelling, both stripped).
pub fn render_prompts(item: &Example, shots: &[&Example], delim: &str) -> Vec<String> {
    let mut fewshot = String::new();
    for shot in shots {
        match shot {
            Example::MultipleChoice { query, choices, gold } => {
                fewshot += &format!("{query}{delim}{}\n\n", choices[*gold]);
            }
            Example::Schema {
                context_options,
                continuation,
                gold,
            } => fewshot += &format!("{}{delim}{continuation}\n\n", context_options[*gold]),
            Example::LanguageModeling { context, continuation } => {
                fewshot += &format!("{}{delim}{continuation}\n\n", py_strip(context))
            }
        }
    }
    match item {
        Example::MultipleChoice { query, choices, .. } => {
            choices.iter().map(|c| format!("{fewshot}{query}{delim}{c}")).collect()
        }
        Example::Schema {
            context_options,
            continuation,
            ..
        } => context_options
            .iter()
            .map(|o| format!("{fewshot}{o}{delim}{continuation}"))
            .collect(),
        Example::LanguageModeling { context, continuation } => {
            let without = format!("{fewshot}{}{delim}", py_strip(context));
            let with = format!("{without}{continuation}");
            vec![py_strip(&without).to_string(), py_strip(&with).to_string()]
        }
    }
}

/// The length of the common prefix (`from_right` false) or suffix of the sequences.
pub fn common_length(seqs: &[Vec<u32>], from_right: bool) -> usize {
    let min = seqs.iter().map(Vec::len).min().unwrap_or(0);
    for i in 0..min {
        let at = |s: &Vec<u32>| if from_right { s[s.len() - 1 - i] } else { s[i] };
        let t = at(&seqs[0]);
        if !seqs.iter().all(|s| at(s) == t) {
            return i;
        }
    }
    min
}

/// The token rows of an example (BOS first) and the scored span `[start, end)` of each row.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub rows: Vec<Vec<u32>>,
    pub spans: Vec<(usize, usize)>,
}

/// Tokenizes the prompts of an example of `kind` and finds the spans to score.
pub fn tokenize_prompts(tok: &Tokenizer, kind: TaskType, prompts: &[String]) -> Result<Batch, String> {
    let rows: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            let mut r = vec![tok.bos_id()];
            r.extend(tok.encode_ordinary(p));
            r
        })
        .collect();
    let spans = match kind {
        TaskType::MultipleChoice => {
            let start = common_length(&rows, false);
            rows.iter().map(|r| (start, r.len())).collect()
        }
        TaskType::Schema => {
            let suffix = common_length(&rows, true);
            rows.iter().map(|r| (r.len() - suffix, r.len())).collect()
        }
        TaskType::LanguageModeling => {
            let (without, with) = (&rows[0], &rows[1]);
            let (start, end) = (without.len(), with.len());
            if start >= end || with[..start] != without[..] {
                return Err(format!(
                    "the prompt without the continuation does not tokenize to a prefix of the prompt with it \
                     ({start} and {end} tokens)"
                ));
            }
            return Ok(Batch {
                rows: vec![with.clone()],
                spans: vec![(start, end)],
            });
        }
    };
    Ok(Batch { rows, spans })
}

/// Keeps the last `max_len` tokens of longer rows and moves their spans with them (upstream does this for
/// models with a maximum length; a span start is kept at 1 or later, since position `start − 1` predicts it).
pub fn crop(batch: &mut Batch, max_len: usize) {
    for (row, span) in batch.rows.iter_mut().zip(batch.spans.iter_mut()) {
        if row.len() > max_len {
            let cut = row.len() - max_len;
            row.drain(..cut);
            span.0 = span.0.saturating_sub(cut).max(1);
            span.1 = span.1.saturating_sub(cut).max(span.0);
        }
    }
}

/// Scores one example's batch: the rows right-padded with BOS into one `(rows, longest)` forward pass.
/// Multiple choice and schema: the index of the option with the lowest mean loss over its span (the first of
/// equal ones) equals `gold`. Language modelling: the argmax prediction at every position `start−1 .. end−1`
/// equals the next token.
pub fn score(
    model: &mut dyn ModelDevice,
    pad: u32,
    kind: TaskType,
    batch: &Batch,
    gold: usize,
) -> Result<bool, String> {
    let b = batch.rows.len();
    let t = batch.rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = vec![pad; b * t];
    for (r, row) in batch.rows.iter().enumerate() {
        ids[r * t..r * t + row.len()].copy_from_slice(row);
    }
    if kind == TaskType::LanguageModeling {
        let (start, end) = batch.spans[0];
        let v = model.config().vocab_size;
        let logits = model.logits(&ids, b, t)?;
        let row = &batch.rows[0];
        return Ok((start..end).all(|p| {
            let l = &logits[(p - 1) * v..p * v];
            let arg = l
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |m, (i, &x)| if x > m.1 { (i, x) } else { m })
                .0;
            arg as u32 == row[p]
        }));
    }
    // Targets only on the scored spans, so every other loss is 0 and nothing else is computed on.
    let mut targets = vec![-1i32; b * t];
    for (r, (row, &(start, end))) in batch.rows.iter().zip(&batch.spans).enumerate() {
        for p in start..end {
            targets[r * t + p - 1] = row[p] as i32;
        }
    }
    let losses = model.token_losses(&ids, &targets, b, t)?;
    let means: Vec<f64> = batch
        .spans
        .iter()
        .enumerate()
        .map(|(r, &(start, end))| {
            let sum: f64 = (start..end).map(|p| losses[r * t + p - 1] as f64).sum();
            sum / (end - start) as f64
        })
        .collect();
    // Python's `means.index(min(means))`: the first strictly smaller value wins.
    let mut best = 0;
    for (i, &m) in means.iter().enumerate().skip(1) {
        if m < means[best] {
            best = i;
        }
    }
    Ok(best == gold)
}

/// The few-shot examples of example `idx` of `n`: `random.Random(1234 + idx).sample` of `k` of the others.
pub fn fewshot_indices(idx: usize, n: usize, k: usize) -> Vec<usize> {
    if k == 0 {
        return Vec::new();
    }
    let available: Vec<usize> = (0..n).filter(|&i| i != idx).collect();
    let k = k.min(available.len());
    PyRandom::new(1234 + idx as u64)
        .sample_indices(available.len(), k)
        .into_iter()
        .map(|j| available[j])
        .collect()
}

/// Evaluates example `idx` of `data` (few-shot examples drawn from `data`).
pub fn evaluate_example(
    model: &mut dyn ModelDevice,
    tok: &Tokenizer,
    data: &[Example],
    idx: usize,
    meta: &TaskMeta,
) -> Result<bool, String> {
    let item = &data[idx];
    let shots: Vec<&Example> = fewshot_indices(idx, data.len(), meta.num_fewshot)
        .into_iter()
        .map(|i| &data[i])
        .collect();
    let prompts = render_prompts(item, &shots, &meta.continuation_delimiter);
    let mut batch = tokenize_prompts(tok, meta.task_type, &prompts)?;
    crop(&mut batch, model.config().sequence_len);
    let gold = match item {
        Example::MultipleChoice { gold, .. } | Example::Schema { gold, .. } => *gold,
        Example::LanguageModeling { .. } => 0,
    };
    score(model, tok.bos_id(), meta.task_type, &batch, gold)
}

/// Sums values over the ranks (every rank gets the sums).
pub type SumOverRanks<'a> = &'a mut dyn FnMut(&[f64]) -> Result<Vec<f64>, String>;

/// Which rank this is and how the ranks' counts are summed (identity for one rank).
pub struct Ranks<'a> {
    pub rank: usize,
    pub world: usize,
    pub sum: SumOverRanks<'a>,
}

/// The accuracy of the model on `data`: examples `rank, rank + world, ...` here, the counts summed over ranks.
pub fn evaluate_task(
    model: &mut dyn ModelDevice,
    tok: &Tokenizer,
    data: &[Example],
    meta: &TaskMeta,
    ranks: &mut Ranks,
) -> Result<f64, String> {
    let mut correct = 0usize;
    for idx in (ranks.rank..data.len()).step_by(ranks.world.max(1)) {
        if evaluate_example(model, tok, data, idx, meta).map_err(|e| format!("{} example {idx}: {e}", meta.label))? {
            correct += 1;
        }
    }
    let total = (ranks.sum)(&[correct as f64])?[0];
    Ok(if data.is_empty() {
        0.0
    } else {
        total / data.len() as f64
    })
}

/// `(acc − baseline/100) / (1 − baseline/100)`, the baseline in percent.
pub fn centered(accuracy: f64, baseline_percent: f64) -> f64 {
    (accuracy - 0.01 * baseline_percent) / (1.0 - 0.01 * baseline_percent)
}

/// Parses the subset of YAML `core.yaml` uses: `icl_tasks:` followed by a list of mappings whose values are
/// plain or quoted scalars or flow lists (`[10]`).
pub fn parse_core_yaml(text: &str) -> Result<Vec<TaskMeta>, String> {
    let mut items: Vec<BTreeMap<String, String>> = Vec::new();
    let mut in_tasks = false;
    // The indentation of the items' `-`, and the key a deeper block list (`metric_names:` then `- x`) belongs to.
    let mut item_indent = None;
    let mut last_key = String::new();
    for (n, raw) in text.lines().enumerate() {
        let line = strip_comment(raw);
        if line.trim().is_empty() {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let body = line.trim();
        if indent == 0 && !body.starts_with('-') {
            in_tasks = body == "icl_tasks:";
            continue;
        }
        if !in_tasks {
            continue;
        }
        let rest = if let Some(r) = body.strip_prefix('-') {
            if item_indent.is_some_and(|i| indent > i) {
                // An entry of a block list under the last key: kept as flow-list text, `[a, b]`.
                let v = yaml_scalar(r.trim()).map_err(|e| format!("core.yaml line {}: {e}", n + 1))?;
                if let Some(item) = items.last_mut() {
                    let list = item.entry(last_key.clone()).or_default();
                    *list = match list.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                        Some(inner) if !inner.is_empty() => format!("[{inner}, {v}]"),
                        _ => format!("[{v}]"),
                    };
                }
                continue;
            }
            item_indent = Some(indent);
            items.push(BTreeMap::new());
            r.trim()
        } else {
            body
        };
        if rest.is_empty() {
            continue;
        }
        let item = items
            .last_mut()
            .ok_or_else(|| format!("core.yaml line {}: a key before the first list item", n + 1))?;
        let (k, v) = rest
            .split_once(':')
            .ok_or_else(|| format!("core.yaml line {}: expected `key: value`, got {rest:?}", n + 1))?;
        let v = yaml_scalar(v.trim()).map_err(|e| format!("core.yaml line {}: {e}", n + 1))?;
        last_key = k.trim().to_string();
        item.insert(last_key.clone(), v);
    }
    if items.is_empty() {
        return Err("core.yaml: no icl_tasks".into());
    }
    items
        .iter()
        .map(|m| {
            let get = |k: &str| {
                m.get(k)
                    .cloned()
                    .ok_or_else(|| format!("core.yaml: a task without {k:?}: {m:?}"))
            };
            let label = get("label")?;
            let shots = get("num_fewshot")?;
            let first = shots
                .trim_start_matches('[')
                .split([',', ']'])
                .next()
                .unwrap_or("")
                .trim();
            let num_fewshot = first
                .parse()
                .map_err(|_| format!("core.yaml: {label}: num_fewshot {shots:?} is not a number or [number]"))?;
            Ok(TaskMeta {
                dataset_uri: get("dataset_uri")?,
                num_fewshot,
                task_type: TaskType::parse(&get("icl_task_type")?).map_err(|e| format!("core.yaml: {label}: {e}"))?,
                continuation_delimiter: m.get("continuation_delimiter").cloned().unwrap_or_else(|| " ".into()),
                label,
            })
        })
        .collect()
}

fn strip_comment(line: &str) -> &str {
    // A `#` starts a comment outside quotes when it begins the line or follows a space.
    let (mut quote, mut prev) = (None, ' ');
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q && prev != '\\' => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && prev.is_whitespace() => return &line[..i],
            None => {}
        }
        prev = c;
    }
    line
}

/// A YAML scalar: double-quoted (with escapes), single-quoted (`''` for a quote), a flow list kept as text,
/// or plain.
fn yaml_scalar(v: &str) -> Result<String, String> {
    if let Some(inner) = v.strip_prefix('"') {
        let inner = inner
            .strip_suffix('"')
            .ok_or_else(|| format!("unterminated string {v}"))?;
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some('0') => out.push('\0'),
                Some(' ') => out.push(' '),
                Some('"') => out.push('"'),
                Some('/') => out.push('/'),
                Some('\\') => out.push('\\'),
                other => return Err(format!("unsupported escape \\{} in {v}", other.unwrap_or(' '))),
            }
        }
        Ok(out)
    } else if let Some(inner) = v.strip_prefix('\'') {
        let inner = inner
            .strip_suffix('\'')
            .ok_or_else(|| format!("unterminated string {v}"))?;
        Ok(inner.replace("''", "'"))
    } else {
        Ok(v.to_string())
    }
}

/// Parses `eval_meta_data.csv`: the `Random baseline` (percent) of every `Eval Task`.
pub fn parse_baselines(text: &str) -> Result<BTreeMap<String, f64>, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = csv_fields(lines.next().ok_or("eval_meta_data.csv is empty")?);
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| format!("eval_meta_data.csv has no {name:?} column (columns: {header:?})"))
    };
    let (task, base) = (col("Eval Task")?, col("Random baseline")?);
    let mut out = BTreeMap::new();
    for line in lines {
        let f = csv_fields(line);
        let (Some(t), Some(b)) = (f.get(task), f.get(base)) else {
            return Err(format!("eval_meta_data.csv: short row {line:?}"));
        };
        let b: f64 = b
            .trim()
            .parse()
            .map_err(|_| format!("eval_meta_data.csv: baseline {b:?} of {t} is not a number"))?;
        out.insert(t.trim().to_string(), b);
    }
    Ok(out)
}

/// The fields of one CSV line (quoted fields may hold commas and doubled quotes).
fn csv_fields(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// The bundle's tasks and baselines, read from `dir` (usually `<base>/eval_bundle`).
pub struct Bundle {
    pub dir: PathBuf,
    pub tasks: Vec<TaskMeta>,
    pub baselines: BTreeMap<String, f64>,
}

impl Bundle {
    pub fn open(dir: &Path) -> Result<Bundle, String> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name)).map_err(|e| {
                format!(
                    "cannot read {}: {e} (fetch the CORE bundle with `download_data --eval-bundle`)",
                    dir.join(name).display()
                )
            })
        };
        let tasks = parse_core_yaml(&read("core.yaml")?)?;
        let baselines = parse_baselines(&read("eval_meta_data.csv")?)?;
        if let Some(t) = tasks.iter().find(|t| !baselines.contains_key(&t.label)) {
            return Err(format!(
                "eval_meta_data.csv has no random baseline for task {}",
                t.label
            ));
        }
        Ok(Bundle {
            dir: dir.to_path_buf(),
            tasks,
            baselines,
        })
    }

    /// A task's examples: every line of its file, shuffled with `random.Random(1337)`, the first `max_per_task`
    /// kept (all when `None`).
    pub fn load_task(&self, meta: &TaskMeta, max_per_task: Option<usize>) -> Result<Vec<Example>, String> {
        let path = self.dir.join("eval_data").join(&meta.dataset_uri);
        let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut data = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value =
                serde_json::from_str(line.trim()).map_err(|e| format!("{} line {}: {e}", path.display(), n + 1))?;
            data.push(
                Example::from_json(meta.task_type, &v)
                    .map_err(|e| format!("{} line {}: {e}", path.display(), n + 1))?,
            );
        }
        PyRandom::new(1337).shuffle(&mut data);
        if let Some(m) = max_per_task {
            data.truncate(m);
        }
        Ok(data)
    }
}

/// One task's result.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskResult {
    pub label: String,
    pub accuracy: f64,
    pub centered: f64,
    pub examples: usize,
    pub seconds: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CoreResult {
    pub tasks: Vec<TaskResult>,
    /// The mean of the centered accuracies.
    pub core: f64,
}

/// Every task of the bundle, in its order (progress printed by `say` on the main rank).
pub fn evaluate_core(
    model: &mut dyn ModelDevice,
    tok: &Tokenizer,
    bundle: &Bundle,
    max_per_task: Option<usize>,
    ranks: &mut Ranks,
    say: &mut dyn FnMut(&str),
) -> Result<CoreResult, String> {
    let mut tasks = Vec::new();
    for meta in &bundle.tasks {
        let t0 = std::time::Instant::now();
        let data = bundle.load_task(meta, max_per_task)?;
        let accuracy = evaluate_task(model, tok, &data, meta, ranks)?;
        let c = centered(accuracy, bundle.baselines[&meta.label]);
        let seconds = t0.elapsed().as_secs_f64();
        say(&format!(
            "core | {} ({}-shot, {}, {} examples): accuracy {accuracy:.4} | centered {c:.4} | {seconds:.2}s",
            meta.label,
            meta.num_fewshot,
            meta.task_type.name(),
            data.len()
        ));
        tasks.push(TaskResult {
            label: meta.label.clone(),
            accuracy,
            centered: c,
            examples: data.len(),
            seconds,
        });
    }
    let core = if tasks.is_empty() {
        0.0
    } else {
        tasks.iter().map(|t| t.centered).sum::<f64>() / tasks.len() as f64
    };
    Ok(CoreResult { tasks, core })
}

/// Upstream's CSV: `Task, Accuracy, Centered` padded columns, a row per task, then `CORE`.
pub fn render_csv(r: &CoreResult) -> String {
    let mut s = format!("{:<35}, {:<10}, {:<10}\n", "Task", "Accuracy", "Centered");
    for t in &r.tasks {
        s += &format!("{:<35}, {:<10.6}, {:<10.6}\n", t.label, t.accuracy, t.centered);
    }
    s += &format!("{:<35}, {:<10}, {:<10.6}\n", "CORE", "", r.core);
    s
}

/// Where base_eval writes the CSV of step `step`: `<base>/base_eval/base_model_<step:06>.csv`.
pub fn csv_path(base: &Path, step: usize) -> PathBuf {
    base.join("base_eval").join(format!("base_model_{step:06}.csv"))
}

/// Reads a CSV [`render_csv`] wrote back: (task, accuracy, centered) rows and the CORE value.
pub fn parse_csv(text: &str) -> Result<CoreResult, String> {
    let mut tasks = Vec::new();
    let mut core = None;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() != 3 {
            continue;
        }
        let num = |s: &str| s.parse::<f64>().map_err(|_| format!("CORE csv: {s:?} is not a number"));
        if f[0] == "CORE" {
            core = Some(num(f[2])?);
        } else {
            tasks.push(TaskResult {
                label: f[0].to_string(),
                accuracy: num(f[1])?,
                centered: num(f[2])?,
                examples: 0,
                seconds: 0.0,
            });
        }
    }
    Ok(CoreResult {
        tasks,
        core: core.ok_or("CORE csv: no CORE row")?,
    })
}

/// The bundle's entries that must be there: the task list and the baselines.
const BUNDLE_REQUIRED: [&str; 2] = ["core.yaml", "eval_meta_data.csv"];

/// The bundle-relative path of a zip entry (`eval_bundle/` stripped), or None for a directory or an entry that
/// would land outside the bundle.
fn bundle_entry_path(name: &str) -> Option<PathBuf> {
    let rel = name.strip_prefix("eval_bundle/").unwrap_or(name);
    if rel.is_empty() || rel.ends_with('/') {
        return None;
    }
    let p = Path::new(rel);
    p.components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
        .then(|| p.to_path_buf())
}

/// Checks a downloaded `eval_bundle.zip`: a readable archive whose every entry decompresses with a matching
/// checksum, holding `core.yaml` and `eval_meta_data.csv` (a truncated or corrupt download fails here).
pub fn validate_bundle_zip(path: &Path) -> Result<(), String> {
    unpack_bundle(path, None)
}

/// Reads every entry of the bundle zip (checking checksums) and, given `into`, writes them below it.
fn unpack_bundle(path: &Path, into: Option<&Path>) -> Result<(), String> {
    let f = std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(f))
        .map_err(|e| format!("{}: not a zip archive: {e}", path.display()))?;
    let mut found = [false; 2];
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| format!("{}: entry {i}: {e}", path.display()))?;
        let name = entry.name().to_string();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).map_err(|e| format!("{}: {name}: {e}", path.display()))?;
        let Some(rel) = bundle_entry_path(&name) else {
            continue;
        };
        for (k, r) in BUNDLE_REQUIRED.iter().enumerate() {
            found[k] |= rel == Path::new(r);
        }
        if let Some(dir) = into {
            let out = dir.join(&rel);
            if let Some(parent) = out.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            std::fs::write(&out, &bytes).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
        }
    }
    if let Some(k) = found.iter().position(|f| !f) {
        return Err(format!("{}: no {} in the archive", path.display(), BUNDLE_REQUIRED[k]));
    }
    Ok(())
}

/// What [`download_eval_bundle`] did.
#[derive(Debug, PartialEq)]
pub enum BundleOutcome {
    Present,
    Downloaded { bytes: u64 },
}

/// Fetches `eval_bundle.zip` from `url` into the base directory (retries, a resumable `.tmp`, the archive
/// checked before it counts) and unpacks it into `<base>/eval_bundle/` (through a temporary directory renamed
/// into place, so a bundle directory is always complete). A bundle already there is kept.
pub fn download_eval_bundle(
    base: &Path,
    url: &str,
    opts: &crate::data::download::DownloadOptions,
) -> Result<BundleOutcome, String> {
    let dir = base.join(EVAL_BUNDLE_DIR);
    if dir.join("core.yaml").is_file() {
        return Ok(BundleOutcome::Present);
    }
    std::fs::create_dir_all(base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
    let zip_path = base.join("eval_bundle.zip");
    let bytes = if zip_path.is_file() && validate_bundle_zip(&zip_path).is_ok() {
        std::fs::metadata(&zip_path).map(|m| m.len()).unwrap_or(0)
    } else {
        let _ = std::fs::remove_file(&zip_path);
        let agent = crate::data::download::agent(opts);
        let check = |p: &Path| validate_bundle_zip(p).map_err(crate::data::DataError);
        crate::data::download::download_validated(&agent, url, &zip_path, opts, &check).map_err(|e| e.to_string())?
    };
    let tmp = base.join("eval_bundle.unpacking");
    let _ = std::fs::remove_dir_all(&tmp);
    unpack_bundle(&zip_path, Some(&tmp))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(|e| format!("cannot move {} to {}: {e}", tmp.display(), dir.display()))?;
    std::fs::remove_file(&zip_path).map_err(|e| format!("cannot remove {}: {e}", zip_path.display()))?;
    Ok(BundleOutcome::Downloaded { bytes })
}
