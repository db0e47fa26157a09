//! Request bodies of the chat endpoints, their validation (upstream chat_web's limits, spec §7.2) and the prompt
//! they render to.

use serde::Deserialize;
use serde_json::Value;

use crate::tokenizer::Tokenizer;

pub const MAX_MESSAGES: usize = 500;
pub const MAX_MESSAGE_CHARS: usize = 8000;
pub const MAX_TOTAL_CHARS: usize = 32000;
pub const MAX_TOP_K: usize = 200;
pub const MAX_MAX_TOKENS: usize = 4096;

#[derive(Clone, Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// A validated chat request: messages with roles user/assistant (a leading system message of the OpenAI
/// endpoint is merged into the first user message), sampling settings with the server defaults filled in.
#[derive(Clone, Debug)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub temperature: f64,
    pub top_k: usize,
    pub max_tokens: usize,
    /// OpenAI endpoint only: stream or answer at once.
    pub stream: bool,
}

/// Defaults for fields a request leaves out (the server's command-line settings).
#[derive(Clone, Copy, Debug)]
pub struct Defaults {
    pub temperature: f64,
    pub top_k: usize,
    pub max_tokens: usize,
}

fn number(v: &Value, key: &str) -> Result<Option<f64>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("{key} must be a number")),
    }
}

fn integer(v: &Value, key: &str) -> Result<Option<i64>, String> {
    match number(v, key)? {
        None => Ok(None),
        Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => Ok(Some(x as i64)),
        Some(_) => Err(format!("{key} must be an integer")),
    }
}

/// Parses and validates a request body; the error is the message of a 400 answer.
pub fn parse_request(body: &[u8], defaults: Defaults, openai: bool) -> Result<ChatRequest, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    if !v.is_object() {
        return Err("the request body must be a JSON object".into());
    }
    let raw = v
        .get("messages")
        .ok_or("missing field: messages")?
        .as_array()
        .ok_or("messages must be an array")?;
    let mut messages = Vec::with_capacity(raw.len());
    for (i, m) in raw.iter().enumerate() {
        let m: ChatMessage = serde_json::from_value(m.clone()).map_err(|e| {
            format!("message {i}: {e} (expected {{\"role\": ..., \"content\": \"...\"}})")
        })?;
        messages.push(m);
    }
    if openai && messages.first().is_some_and(|m| m.role == "system") {
        let sys = messages.remove(0);
        match messages.first_mut() {
            Some(first) if first.role == "user" => {
                first.content = format!("{}\n\n{}", sys.content, first.content)
            }
            _ => return Err("a system message must be followed by a user message".into()),
        }
    }
    if messages.is_empty() {
        return Err("at least one message is required".into());
    }
    if messages.len() > MAX_MESSAGES {
        return Err(format!(
            "too many messages: {} (at most {MAX_MESSAGES})",
            messages.len()
        ));
    }
    let mut total = 0;
    for (i, m) in messages.iter().enumerate() {
        if m.content.is_empty() {
            return Err(format!("message {i} has empty content"));
        }
        let n = m.content.chars().count();
        if n > MAX_MESSAGE_CHARS {
            return Err(format!(
                "message {i} is too long: {n} characters (at most {MAX_MESSAGE_CHARS})"
            ));
        }
        total += n;
        if m.role != "user" && m.role != "assistant" {
            return Err(format!(
                "message {i} has invalid role {:?} (must be user or assistant)",
                m.role
            ));
        }
    }
    if total > MAX_TOTAL_CHARS {
        return Err(format!(
            "conversation is too long: {total} characters (at most {MAX_TOTAL_CHARS})"
        ));
    }
    let temperature = number(&v, "temperature")?.unwrap_or(defaults.temperature);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(format!(
            "temperature must be between 0.0 and 2.0, got {temperature}"
        ));
    }
    let top_k = integer(&v, "top_k")?.unwrap_or(defaults.top_k as i64);
    if !(0..=MAX_TOP_K as i64).contains(&top_k) {
        return Err(format!(
            "top_k must be between 0 and {MAX_TOP_K}, got {top_k}"
        ));
    }
    let max_tokens = integer(&v, "max_tokens")?.unwrap_or(defaults.max_tokens as i64);
    if !(1..=MAX_MAX_TOKENS as i64).contains(&max_tokens) {
        return Err(format!(
            "max_tokens must be between 1 and {MAX_MAX_TOKENS}, got {max_tokens}"
        ));
    }
    let stream = match v.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("stream must be a boolean".into()),
    };
    Ok(ChatRequest {
        messages,
        temperature,
        top_k: top_k as usize,
        max_tokens: max_tokens as usize,
        stream,
    })
}

/// Tokens of one message in the chat layout.
fn render_message(tok: &Tokenizer, m: &ChatMessage) -> Result<Vec<u32>, String> {
    let sp = |name: &str| {
        tok.special_id(name)
            .ok_or_else(|| format!("the tokenizer has no special token {name}"))
    };
    let (start, end) = if m.role == "user" {
        (sp("<|user_start|>")?, sp("<|user_end|>")?)
    } else {
        (sp("<|assistant_start|>")?, sp("<|assistant_end|>")?)
    };
    let mut ids = vec![start];
    ids.extend(tok.encode_ordinary(&m.content));
    ids.push(end);
    Ok(ids)
}

/// `[BOS]` + the messages + `<|assistant_start|>`, keeping room for `reserve` new tokens inside `context`:
/// the oldest messages are dropped until it fits. Returns the prompt and how many messages were dropped; an
/// error when even the last message alone does not fit.
pub fn render_prompt(
    tok: &Tokenizer,
    messages: &[ChatMessage],
    context: usize,
    reserve: usize,
) -> Result<(Vec<u32>, usize), String> {
    let parts: Vec<Vec<u32>> = messages
        .iter()
        .map(|m| render_message(tok, m))
        .collect::<Result<_, _>>()?;
    let budget = context.saturating_sub(reserve + 2); // BOS and <|assistant_start|>
    let mut used = 0;
    let mut keep = 0;
    for p in parts.iter().rev() {
        if used + p.len() > budget {
            break;
        }
        used += p.len();
        keep += 1;
    }
    if keep == 0 {
        return Err(format!(
            "the last message is {} tokens, which with {reserve} tokens to generate does not fit the context of {context}",
            parts.last().map_or(0, Vec::len)
        ));
    }
    let mut dropped = parts.len() - keep;
    // Start at a user message, so the model sees whole exchanges.
    while dropped > 0 && dropped + 1 < parts.len() && messages[dropped].role != "user" {
        dropped += 1;
    }
    let mut ids = vec![tok.bos_id()];
    for p in &parts[dropped..] {
        ids.extend_from_slice(p);
    }
    ids.push(
        tok.special_id("<|assistant_start|>")
            .ok_or("the tokenizer has no special token <|assistant_start|>")?,
    );
    Ok((ids, dropped))
}
