//! GSM8K (`openai/gsm8k`): grade-school math word problems, generative. The reference solution's calculator
//! annotations `<<expr=result>>` become tool calls: a `python` part with the text before the last `=` and a
//! `python_output` part with the text after it, so SFT teaches the model to call the calculator the engine runs.
//! The answer is the number after `#### `.

use std::path::Path;

use serde_json::Value;

use super::hub::{self, Rows};
use super::{EvalType, Example, Task};
use crate::tokenizer::{Content, Conversation, Message, Part, PartKind, Role};

pub const REPO: &str = "openai/gsm8k";

pub struct Gsm8k {
    rows: Rows,
}

impl Gsm8k {
    /// `subset` main or socratic, `split` train or test.
    pub fn load(base: &Path, subset: &str, split: &str) -> Result<Gsm8k, String> {
        if !matches!(subset, "main" | "socratic") || !matches!(split, "train" | "test") {
            return Err(format!(
                "GSM8K has subsets main|socratic and splits train|test, got {subset:?} {split:?}"
            ));
        }
        Ok(Gsm8k::from_rows(Rows::load(&hub::dataset_dir(
            base, REPO, subset, split,
        ))?))
    }

    pub fn from_rows(rows: Rows) -> Gsm8k {
        Gsm8k { rows }
    }
}

/// Python's `re.split(r'(<<[^>]+>>)', answer)` turned into parts (empty text pieces kept, as upstream does).
pub fn answer_parts(answer: &str) -> Vec<Part> {
    let text = |t: &str| Part {
        kind: PartKind::Text,
        text: t.to_string(),
    };
    let mut parts = Vec::new();
    let mut rest = answer;
    loop {
        // The next `<<` followed by at least one non-`>` character and then `>>`.
        let found = rest.match_indices("<<").find_map(|(i, _)| {
            let body = &rest[i + 2..];
            let end = body.find('>').unwrap_or(body.len());
            (end > 0 && body[end..].starts_with(">>")).then_some((i, i + 2 + end + 2))
        });
        let Some((s, e)) = found else {
            parts.push(text(rest));
            return parts;
        };
        parts.push(text(&rest[..s]));
        let inner = &rest[s + 2..e - 2];
        let (expr, result) = inner.rsplit_once('=').unwrap_or((inner, ""));
        parts.push(Part {
            kind: PartKind::Python,
            text: expr.to_string(),
        });
        parts.push(Part {
            kind: PartKind::PythonOutput,
            text: result.to_string(),
        });
        rest = &rest[e..];
    }
}

/// One GSM8K row as an example.
pub fn example(row: &Value) -> Result<Example, String> {
    let question = hub::str_field(row, "question")?;
    let answer = hub::str_field(row, "answer")?;
    Ok(Example::new(Conversation {
        messages: vec![
            Message::new(Role::User, question),
            Message {
                role: Role::Assistant,
                content: Content::Parts(answer_parts(answer)),
            },
        ],
    }))
}

/// Upstream's `extract_answer`: the first match of `#### (\-?[0-9\.\,]+)`, stripped, commas removed.
pub fn extract_answer(completion: &str) -> Option<String> {
    for (i, _) in completion.match_indices("#### ") {
        let rest = &completion[i + 5..];
        let sign = usize::from(rest.starts_with('-'));
        let body: String = rest[sign..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ',')
            .collect();
        if !body.is_empty() {
            return Some(format!("{}{body}", &rest[..sign]).replace(',', ""));
        }
    }
    None
}

/// Correct iff the numbers extracted from the reference's last text part and from the answer are equal
/// strings (`3.0` is not `3`; two missing answers compare equal, as upstream).
pub fn evaluate_parts(example: &Example, answer: &str) -> bool {
    let reference = match example.conversation.messages.last().map(|m| &m.content) {
        Some(Content::Parts(p)) => p.last().map(|p| p.text.clone()).unwrap_or_default(),
        Some(Content::Text(t)) => t.clone(),
        None => String::new(),
    };
    extract_answer(&reference) == extract_answer(answer)
}

impl Task for Gsm8k {
    fn name(&self) -> String {
        "GSM8K".into()
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
        Ok(evaluate_parts(example, answer))
    }
}
