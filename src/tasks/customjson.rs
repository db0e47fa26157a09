//! CustomJSON: conversations from a JSONL file, one JSON array of `{"role", "content"}` messages per non-blank
//! line (user first, strictly alternating, string contents, at least two messages, no system message). Used
//! for the identity conversations; training only. A missing file warns and gives no rows, as upstream.

use std::path::{Path, PathBuf};

use super::smoltalk::parse_messages;
use super::{EvalType, Example, Task};
use crate::tokenizer::Conversation;

/// The identity conversations the project ships (who the model is, who built it, what it can do), written to
/// `<base>/identity_conversations.jsonl` by `download_data --tasks`.
pub const IDENTITY_CONVERSATIONS: &str = include_str!("identity_conversations.jsonl");
pub const IDENTITY_FILE: &str = "identity_conversations.jsonl";

pub struct CustomJson {
    path: PathBuf,
    conversations: Vec<Conversation>,
}

impl CustomJson {
    /// Reads and validates every line; any malformed line is an error naming it.
    pub fn load(path: &Path) -> Result<CustomJson, String> {
        if !path.exists() {
            eprintln!(
                "warning: {} does not exist, so CustomJSON has no conversations.\n\
                 warning: write the identity conversations with `download_data --tasks`.",
                path.display()
            );
            return Ok(CustomJson {
                path: path.to_path_buf(),
                conversations: Vec::new(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        CustomJson::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<CustomJson, String> {
        let mut conversations = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = || format!("{} line {}", path.display(), i + 1);
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("{}: {e}", at()))?;
            conversations.push(parse_messages(&v, false, 2).map_err(|e| format!("{}: {e}", at()))?);
        }
        Ok(CustomJson {
            path: path.to_path_buf(),
            conversations,
        })
    }
}

impl Task for CustomJson {
    fn name(&self) -> String {
        format!("CustomJSON({})", self.path.display())
    }
    fn eval_type(&self) -> EvalType {
        EvalType::Generative
    }
    fn num_examples(&self) -> usize {
        self.conversations.len()
    }
    fn get_example(&self, index: usize) -> Result<Example, String> {
        self.conversations
            .get(index)
            .cloned()
            .map(Example::new)
            .ok_or_else(|| format!("{}: no conversation {index}", self.path.display()))
    }
}
