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
    /// OpenAI endpoint only (`stream_options.include_usage`): a last chunk carrying the token counts.
    pub include_usage: bool,
    /// `seed` (as OpenAI's): the sampling seed, so a request can be repeated; None: the server picks one.
    pub seed: Option<u64>,
}

/// Why a request body was refused (a 400 answer): the message, and the request field at fault when there is
/// one (the `param` of an OpenAI error object).
#[derive(Clone, Debug, PartialEq)]
pub struct Invalid {
    pub message: String,
    pub param: Option<&'static str>,
}

impl Invalid {
    fn new(param: Option<&'static str>, message: impl Into<String>) -> Invalid {
        Invalid {
            message: message.into(),
            param,
        }
    }
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Defaults for fields a request leaves out (the server's command-line settings).
#[derive(Clone, Copy, Debug)]
pub struct Defaults {
    pub temperature: f64,
    pub top_k: usize,
    pub max_tokens: usize,
}

fn number(v: &Value, key: &'static str) -> Result<Option<f64>, Invalid> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_f64()
            .map(Some)
            .ok_or_else(|| Invalid::new(Some(key), format!("{key} must be a number"))),
    }
}

fn integer(v: &Value, key: &'static str) -> Result<Option<i64>, Invalid> {
    match number(v, key)? {
        None => Ok(None),
        Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => Ok(Some(x as i64)),
        Some(_) => Err(Invalid::new(Some(key), format!("{key} must be an integer"))),
    }
}

fn boolean(v: &Value, key: &'static str) -> Result<Option<bool>, Invalid> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(Invalid::new(Some(key), format!("{key} must be a boolean"))),
    }
}

/// Parses and validates a request body. The OpenAI endpoint also takes `stream`, `stream_options` and
/// `max_completion_tokens` (OpenAI's newer name of `max_tokens`), and merges a leading system message.
pub fn parse_request(body: &[u8], defaults: Defaults, openai: bool) -> Result<ChatRequest, Invalid> {
    let bad = |param: &'static str, m: String| Invalid::new(Some(param), m);
    let v: Value = serde_json::from_slice(body).map_err(|e| Invalid::new(None, format!("invalid JSON: {e}")))?;
    if !v.is_object() {
        return Err(Invalid::new(None, "the request body must be a JSON object"));
    }
    let raw = v
        .get("messages")
        .ok_or_else(|| bad("messages", "missing field: messages".into()))?
        .as_array()
        .ok_or_else(|| bad("messages", "messages must be an array".into()))?;
    let mut messages = Vec::with_capacity(raw.len());
    for (i, m) in raw.iter().enumerate() {
        let m: ChatMessage = serde_json::from_value(m.clone()).map_err(|e| {
            bad(
                "messages",
                format!("message {i}: {e} (expected {{\"role\": ..., \"content\": \"...\"}})"),
            )
        })?;
        messages.push(m);
    }
    if openai && messages.first().is_some_and(|m| m.role == "system") {
        let sys = messages.remove(0);
        match messages.first_mut() {
            Some(first) if first.role == "user" => first.content = format!("{}\n\n{}", sys.content, first.content),
            _ => {
                return Err(bad(
                    "messages",
                    "a system message must be followed by a user message".into(),
                ))
            }
        }
    }
    if messages.is_empty() {
        return Err(bad("messages", "at least one message is required".into()));
    }
    if messages.len() > MAX_MESSAGES {
        return Err(bad(
            "messages",
            format!("too many messages: {} (at most {MAX_MESSAGES})", messages.len()),
        ));
    }
    let mut total = 0;
    for (i, m) in messages.iter().enumerate() {
        if m.content.is_empty() {
            return Err(bad("messages", format!("message {i} has empty content")));
        }
        let n = m.content.chars().count();
        if n > MAX_MESSAGE_CHARS {
            return Err(bad(
                "messages",
                format!("message {i} is too long: {n} characters (at most {MAX_MESSAGE_CHARS})"),
            ));
        }
        total += n;
        if m.role != "user" && m.role != "assistant" {
            return Err(bad(
                "messages",
                format!("message {i} has invalid role {:?} (must be user or assistant)", m.role),
            ));
        }
    }
    if total > MAX_TOTAL_CHARS {
        return Err(bad(
            "messages",
            format!("conversation is too long: {total} characters (at most {MAX_TOTAL_CHARS})"),
        ));
    }
    let temperature = number(&v, "temperature")?.unwrap_or(defaults.temperature);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(bad(
            "temperature",
            format!("temperature must be between 0.0 and 2.0, got {temperature}"),
        ));
    }
    let top_k = integer(&v, "top_k")?.unwrap_or(defaults.top_k as i64);
    if !(0..=MAX_TOP_K as i64).contains(&top_k) {
        return Err(bad(
            "top_k",
            format!("top_k must be between 0 and {MAX_TOP_K}, got {top_k}"),
        ));
    }
    let (key, given) = match integer(&v, "max_tokens")? {
        Some(n) => ("max_tokens", Some(n)),
        None if openai => ("max_completion_tokens", integer(&v, "max_completion_tokens")?),
        None => ("max_tokens", None),
    };
    let max_tokens = given.unwrap_or(defaults.max_tokens as i64);
    if !(1..=MAX_MAX_TOKENS as i64).contains(&max_tokens) {
        return Err(bad(
            key,
            format!("{key} must be between 1 and {MAX_MAX_TOKENS}, got {max_tokens}"),
        ));
    }
    let seed = match integer(&v, "seed")? {
        Some(s) if s < 0 => return Err(bad("seed", format!("seed must be a non-negative integer, got {s}"))),
        s => s.map(|s| s as u64),
    };
    let stream = boolean(&v, "stream")?.unwrap_or(false);
    let include_usage = match v.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(o @ Value::Object(_)) if stream => boolean(o, "include_usage")
            .map_err(|e| bad("stream_options", e.message))?
            .unwrap_or(false),
        Some(Value::Object(_)) => {
            return Err(bad(
                "stream_options",
                "stream_options is only allowed when stream is true".into(),
            ))
        }
        Some(_) => return Err(bad("stream_options", "stream_options must be an object".into())),
    };
    Ok(ChatRequest {
        messages,
        temperature,
        top_k: top_k as usize,
        max_tokens: max_tokens as usize,
        stream,
        include_usage,
        seed,
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
