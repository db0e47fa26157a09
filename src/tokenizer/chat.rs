//! Chat rendering: a conversation to token ids plus a supervision mask (1 = the model is trained to
//! predict this token), as upstream's `render_conversation` / `render_for_completion`.
//!
//! Layout: `<|bos|>`, then per turn `<|user_start|> text <|user_end|>` (mask 0) or
//! `<|assistant_start|>` (mask 0) + content (mask 1) + `<|assistant_end|>` (mask 1). Assistant content
//! may be a list of parts: `text` (mask 1), `python` wrapped in `<|python_start|>`..`<|python_end|>`
//! (mask 1: the model writes tool calls), `python_output` wrapped in `<|output_start|>`..`<|output_end|>`
//! (mask 0: the tool writes those). A leading system message is merged into the first user message as
//! `system + "\n\n" + user`.

use serde::{Deserialize, Serialize};

use super::{Tokenizer, TokenizerError};

/// Upstream's fixed truncation length for rendered conversations.
pub const DEFAULT_MAX_TOKENS: usize = 2048;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartKind {
    Text,
    Python,
    PythonOutput,
}

/// One part of a structured assistant message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: PartKind,
    pub text: String,
}

/// Message content: a plain string or (assistant only) a list of parts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: Content,
}

impl Message {
    pub fn new(role: Role, text: &str) -> Message {
        Message {
            role,
            content: Content::Text(text.to_string()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    pub messages: Vec<Message>,
}

fn chat_err(msg: String) -> TokenizerError {
    TokenizerError::Chat(msg)
}

impl Tokenizer {
    fn special(&self, name: &str) -> Result<u32, TokenizerError> {
        self.special_id(name)
            .ok_or_else(|| chat_err(format!("the tokenizer has no special token {name}")))
    }

    /// Render a conversation for training: (ids, mask), both truncated to `max_tokens`.
    pub fn render_conversation(
        &self,
        conv: &Conversation,
        max_tokens: usize,
    ) -> Result<(Vec<u32>, Vec<u8>), TokenizerError> {
        let msgs = &conv.messages;
        // Merge a leading system message into the first user message.
        let merged;
        let messages: &[Message] = match msgs.first() {
            Some(m) if m.role == Role::System => {
                let Content::Text(system) = &m.content else {
                    return Err(chat_err("the system message must be a string".into()));
                };
                let Some(user) = msgs.get(1).filter(|u| u.role == Role::User) else {
                    return Err(chat_err("a system message must be followed by a user message".into()));
                };
                let Content::Text(user_text) = &user.content else {
                    return Err(chat_err("user messages must be strings".into()));
                };
                let mut rest = msgs[1..].to_vec();
                rest[0] = Message::new(Role::User, &format!("{system}\n\n{user_text}"));
                merged = rest;
                &merged
            }
            _ => msgs,
        };
        if messages.is_empty() {
            return Err(chat_err("the conversation has no messages".into()));
        }

        let user_start = self.special("<|user_start|>")?;
        let user_end = self.special("<|user_end|>")?;
        let assistant_start = self.special("<|assistant_start|>")?;
        let assistant_end = self.special("<|assistant_end|>")?;
        let python_start = self.special("<|python_start|>")?;
        let python_end = self.special("<|python_end|>")?;
        let output_start = self.special("<|output_start|>")?;
        let output_end = self.special("<|output_end|>")?;
        let bos = self.special(super::BOS)?;

        let mut ids = Vec::new();
        let mut mask = Vec::new();
        let mut add = |toks: &[u32], m: u8| {
            ids.extend_from_slice(toks);
            mask.extend(std::iter::repeat_n(m, toks.len()));
        };
        add(&[bos], 0);
        for (i, msg) in messages.iter().enumerate() {
            let expected = if i % 2 == 0 { Role::User } else { Role::Assistant };
            if msg.role != expected {
                return Err(chat_err(format!(
                    "message {i} is from {:?} but should be from {expected:?}",
                    msg.role
                )));
            }
            match (msg.role, &msg.content) {
                (Role::User, Content::Text(text)) => {
                    add(&[user_start], 0);
                    add(&self.encode_ordinary(text), 0);
                    add(&[user_end], 0);
                }
                (Role::User, Content::Parts(_)) => {
                    return Err(chat_err(format!("message {i}: user messages must be strings")));
                }
                (_, content) => {
                    add(&[assistant_start], 0);
                    match content {
                        Content::Text(text) => add(&self.encode_ordinary(text), 1),
                        Content::Parts(parts) => {
                            for part in parts {
                                let toks = self.encode_ordinary(&part.text);
                                match part.kind {
                                    PartKind::Text => add(&toks, 1),
                                    PartKind::Python => {
                                        add(&[python_start], 1);
                                        add(&toks, 1);
                                        add(&[python_end], 1);
                                    }
                                    PartKind::PythonOutput => {
                                        add(&[output_start], 0);
                                        add(&toks, 0);
                                        add(&[output_end], 0);
                                    }
                                }
                            }
                        }
                    }
                    add(&[assistant_end], 1);
                }
            }
        }
        ids.truncate(max_tokens);
        mask.truncate(max_tokens);
        Ok((ids, mask))
    }

    /// Render a conversation whose last message is the assistant's, for sampling: drop that message,
    /// render the rest and append `<|assistant_start|>`.
    pub fn render_for_completion(&self, conv: &Conversation) -> Result<Vec<u32>, TokenizerError> {
        match conv.messages.last() {
            Some(m) if m.role == Role::Assistant => {}
            _ => return Err(chat_err("the last message must be from the assistant".into())),
        }
        let head = Conversation {
            messages: conv.messages[..conv.messages.len() - 1].to_vec(),
        };
        let (mut ids, _) = self.render_conversation(&head, DEFAULT_MAX_TOKENS)?;
        ids.push(self.special("<|assistant_start|>")?);
        Ok(ids)
    }
}
