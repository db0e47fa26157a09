//! ARC (`allenai/ai2_arc`): grade-school science multiple choice, categorical. The labels come from the data
//! ("A".."E", sometimes digits) and the assistant answers with the label of `answerKey`.

use std::path::Path;

use serde_json::Value;

use super::hub::{self, Rows};
use super::{qa, render_mc, EvalType, Example, Task};

pub const REPO: &str = "allenai/ai2_arc";

pub struct Arc {
    subset: String,
    rows: Rows,
}

impl Arc {
    /// `subset` is `ARC-Easy` or `ARC-Challenge`; `split` is train, validation or test.
    pub fn load(base: &Path, subset: &str, split: &str) -> Result<Arc, String> {
        if !matches!(subset, "ARC-Easy" | "ARC-Challenge") {
            return Err(format!("ARC subset must be ARC-Easy or ARC-Challenge, got {subset:?}"));
        }
        if !matches!(split, "train" | "validation" | "test") {
            return Err(format!("ARC split must be train, validation or test, got {split:?}"));
        }
        let rows = Rows::load(&hub::dataset_dir(base, REPO, subset, split))?;
        Ok(Arc::from_rows(subset, rows))
    }

    pub fn from_rows(subset: &str, rows: Rows) -> Arc {
        Arc {
            subset: subset.to_string(),
            rows,
        }
    }
}

/// One ARC row as an example.
pub fn example(row: &Value) -> Result<Example, String> {
    let question = hub::str_field(row, "question")?;
    let choices = row.get("choices").ok_or_else(|| "ARC row has no choices".to_string())?;
    let texts = hub::str_list(choices, "text")?;
    let letters = hub::str_list(choices, "label")?;
    let answer = hub::str_field(row, "answerKey")?;
    if !letters.iter().any(|l| l == answer) {
        return Err(format!(
            "ARC row: answer {answer:?} is not among the labels {letters:?}"
        ));
    }
    let mut ex = Example::new(qa(&render_mc(question, &letters, &texts), answer));
    ex.letters = letters;
    Ok(ex)
}

impl Task for Arc {
    fn name(&self) -> String {
        self.subset.clone()
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
