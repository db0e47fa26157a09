//! SmolTalk (`HuggingFaceTB/smol-smoltalk`): general conversations for SFT and midtraining (train ~460K,
//! test ~24K). Messages are used as given: an optional leading system message, then at least two strictly
//! alternating user/assistant string messages.

use std::path::Path;

use serde_json::Value;

use super::hub::{self, Rows};
use super::{EvalType, Example, Task};
use crate::tokenizer::{Content, Conversation, Message, Role};

pub const REPO: &str = "HuggingFaceTB/smol-smoltalk";
pub const SUBSET: &str = "default";

pub struct SmolTalk {
    rows: Rows,
}

impl SmolTalk {
    pub fn load(base: &Path, split: &str) -> Result<SmolTalk, String> {
        if !matches!(split, "train" | "test") {
            return Err(format!("SmolTalk splits are train and test, got {split:?}"));
        }
        Ok(SmolTalk::from_rows(Rows::load(&hub::dataset_dir(
            base, REPO, SUBSET, split,
        ))?))
    }

    pub fn from_rows(rows: Rows) -> SmolTalk {
        SmolTalk { rows }
    }
}

/// Parses `[{"role", "content"}, ...]` and checks upstream's rules: an optional system message first, then
/// user/assistant alternating from user, string contents, at least `min_turns` messages after the system one.
pub fn parse_messages(v: &Value, allow_system: bool, min_turns: usize) -> Result<Conversation, String> {
    let list = v.as_array().ok_or_else(|| "messages must be a list".to_string())?;
    let mut messages = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("message {i} has no role"))?;
        let content = m
            .get("content")
            .ok_or_else(|| format!("message {i} has no content"))?
            .as_str()
            .ok_or_else(|| format!("message {i}: content must be a string"))?;
        let role = match role {
            "system" if i == 0 && allow_system => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => return Err(format!("message {i} has an unexpected role {other:?}")),
        };
        messages.push(Message::new(role, content));
    }
    let offset = usize::from(messages.first().is_some_and(|m| m.role == Role::System));
    let rest = &messages[offset..];
    if rest.len() < min_turns {
        return Err(format!(
            "a conversation needs at least {min_turns} user/assistant messages, this one has {}",
            rest.len()
        ));
    }
    for (i, m) in rest.iter().enumerate() {
        let want = if i % 2 == 0 { Role::User } else { Role::Assistant };
        if m.role != want {
            return Err(format!(
                "message {} is from {:?} but should be from {want:?}",
                i + offset,
                m.role
            ));
        }
        debug_assert!(matches!(m.content, Content::Text(_)));
    }
    Ok(Conversation { messages })
}

impl Task for SmolTalk {
    fn name(&self) -> String {
        "SmolTalk".into()
    }
    fn eval_type(&self) -> EvalType {
        EvalType::Generative
    }
    fn num_examples(&self) -> usize {
        self.rows.len()
    }
    fn get_example(&self, index: usize) -> Result<Example, String> {
        let row = self.rows.get(index)?;
        let msgs = row
            .get("messages")
            .ok_or_else(|| format!("{}: row has no messages", self.rows.origin().display()))?;
        parse_messages(msgs, true, 2)
            .map(Example::new)
            .map_err(|e| format!("{} row {index}: {e}", self.rows.origin().display()))
    }
}
