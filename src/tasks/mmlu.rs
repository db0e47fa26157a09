//! MMLU (`cais/mmlu`): 57-subject multiple choice with letters A–D, categorical. Subset `all` has the splits
//! auxiliary_train (~99.8K rows, used for SFT), validation, dev and test; the assistant answers with the letter
//! of `answer`.

use std::path::Path;

use serde_json::Value;

use super::hub::{self, Rows};
use super::{qa, render_mc, EvalType, Example, Task};

pub const REPO: &str = "cais/mmlu";
pub const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

pub struct Mmlu {
    rows: Rows,
}

impl Mmlu {
    /// `subset` is `all` or `auxiliary_train`; `split` one of auxiliary_train, validation, dev, test (for the
    /// `auxiliary_train` subset: train).
    pub fn load(base: &Path, subset: &str, split: &str) -> Result<Mmlu, String> {
        let ok = match subset {
            "all" => matches!(split, "auxiliary_train" | "validation" | "dev" | "test"),
            "auxiliary_train" => split == "train",
            _ => false,
        };
        if !ok {
            return Err(format!(
                "MMLU has no subset {subset:?} split {split:?} (subset all: auxiliary_train, validation, dev, test)"
            ));
        }
        Ok(Mmlu::from_rows(Rows::load(&hub::dataset_dir(
            base, REPO, subset, split,
        ))?))
    }

    pub fn from_rows(rows: Rows) -> Mmlu {
        Mmlu { rows }
    }
}

/// One MMLU row as an example. Rows of the `auxiliary_train` subset wrap their fields in a `train` group.
pub fn example(row: &Value) -> Result<Example, String> {
    let row = row.get("train").filter(|v| v.is_object()).unwrap_or(row);
    let question = hub::str_field(row, "question")?;
    let choices = hub::str_list(row, "choices")?;
    if choices.len() != 4 {
        return Err(format!("MMLU rows have 4 choices, this one has {}", choices.len()));
    }
    let answer = row
        .get("answer")
        .and_then(Value::as_u64)
        .filter(|&a| a < 4)
        .ok_or_else(|| "MMLU row: answer must be 0..3".to_string())?;
    let letters: Vec<String> = LETTERS.iter().map(|s| s.to_string()).collect();
    let user = render_mc(question, &letters, &choices);
    let mut ex = Example::new(qa(&user, LETTERS[answer as usize]));
    ex.letters = letters;
    Ok(ex)
}

impl Task for Mmlu {
    fn name(&self) -> String {
        "MMLU".into()
    }
    fn eval_type(&self) -> EvalType {
        EvalType::Categorical
    }
    fn num_examples(&self) -> usize {
        self.rows.len()
    }
    fn get_example(&self, index: usize) -> Result<Example, String> {
        example(&self.rows.get(index)?).map_err(|e| format!("{}: {e}", self.rows.origin().display()))
    }
    fn evaluate(&self, example: &Example, answer: &str) -> Result<bool, String> {
        Ok(super::evaluate_letter(example, answer))
    }
}
