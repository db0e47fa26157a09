//! Writing the answers: JSON, the page, and the two streaming formats (upstream's SSE events and OpenAI's
//! `chat.completion.chunk` events ending in `[DONE]`). Streams go straight to the socket, flushed per event,
//! with `Connection: close` so the body ends when the stream does.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::{json, Value};
use tiny_http::{Header, Request, Response};

use super::api::{self, ChatRequest};
use super::pool::Busy;
use super::Shared;
use crate::engine::{Engine, GenConfig, InferModel, TextStream};

const PAGE: &str = include_str!("../../web/index.html");
const LOGO: &str = include_str!("../../web/logo.svg");

pub(super) enum Reply {
    Json(u16, Value),
    Page,
    Logo,
    Preflight,
    Chat {
        chat: ChatRequest,
        openai: bool,
        seed: u64,
    },
}

impl Reply {
    pub(super) fn error(status: u16, msg: &str) -> Reply {
        Reply::Json(status, json!({ "error": msg }))
    }
}

fn header(k: &str, v: &str) -> Header {
    // Only called with fixed ASCII names and values.
    Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("static header")
}

fn cors(mut r: Response<std::io::Cursor<Vec<u8>>>) -> Response<std::io::Cursor<Vec<u8>>> {
    r.add_header(header("Access-Control-Allow-Origin", "*"));
    r.add_header(header("Access-Control-Allow-Methods", "GET, POST, OPTIONS"));
    r.add_header(header("Access-Control-Allow-Headers", "Content-Type"));
    r
}

pub(super) fn json_response(status: u16, v: &Value) -> Response<std::io::Cursor<Vec<u8>>> {
    cors(
        Response::from_string(v.to_string())
            .with_status_code(status)
            .with_header(header("Content-Type", "application/json")),
    )
}

fn text_response(body: &str, ctype: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    cors(Response::from_string(body).with_header(header("Content-Type", ctype)))
}

/// Sends the reply; returns a one-line summary for the log.
pub(super) fn send<M: InferModel + Sync>(sh: &Shared<M>, req: Request, reply: Reply) -> String {
    let (resp, status) = match reply {
        Reply::Json(s, v) => (json_response(s, &v), s),
        Reply::Page => (text_response(PAGE, "text/html; charset=utf-8"), 200),
        Reply::Logo => (text_response(LOGO, "image/svg+xml"), 200),
        Reply::Preflight => (cors(Response::from_string("").with_status_code(204)), 204),
        Reply::Chat { chat, openai, seed } => return chat_reply(sh, req, chat, openai, seed),
    };
    match req.respond(resp) {
        Ok(()) => status.to_string(),
        Err(e) => format!("{status} (client gone: {e})"),
    }
}

/// What a finished generation produced.
struct Generated {
    text: String,
    prompt_tokens: usize,
    tokens: usize,
    finish: &'static str,
    dropped: usize,
}

/// The prompt of a request for this engine's model: (ids, old messages dropped, tokens that may be generated).
fn prepare<M: InferModel>(
    engine: &Engine<M>,
    chat: &ChatRequest,
) -> Result<(Vec<u32>, usize, usize), String> {
    let context = engine.model.config().sequence_len;
    let reserve = chat.max_tokens.min(context / 2);
    let (prompt, dropped) =
        api::render_prompt(&engine.tokenizer, &chat.messages, context, reserve)?;
    let max_new = chat.max_tokens.min(context - prompt.len());
    Ok((prompt, dropped, max_new))
}

/// Generates the assistant's reply, handing each complete piece of text to `on_text` (false stops).
fn generate<M: InferModel>(
    engine: &Engine<M>,
    chat: &ChatRequest,
    (prompt, dropped, max_new): (Vec<u32>, usize, usize),
    seed: u64,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<Generated, String> {
    let tok = &engine.tokenizer;
    let end = tok.special_id("<|assistant_end|>");
    let bos = tok.bos_id();
    let cfg = GenConfig {
        num_samples: 1,
        max_tokens: Some(max_new),
        temperature: chat.temperature,
        top_k: Some(chat.top_k),
        seed,
    };
    let mut stream = TextStream::new();
    let (mut text, mut finish, mut n) = (String::new(), "length", 0);
    engine.generate(&prompt, &cfg, &mut |col, _| {
        let t = col[0];
        if Some(t) == end || t == bos {
            finish = "stop";
            return false;
        }
        n += 1;
        let piece = stream.push(tok, t);
        if piece.is_empty() {
            return true;
        }
        text.push_str(&piece);
        on_text(&piece)
    })?;
    Ok(Generated {
        text,
        prompt_tokens: prompt.len(),
        tokens: n,
        finish,
        dropped,
    })
}

/// The last step of a chat answer, done after the worker is released.
enum Finish {
    /// Send this whole answer.
    Respond(Box<(Request, Response<std::io::Cursor<Vec<u8>>>)>),
    /// Close the stream (the end of its body).
    Close(Box<dyn Write + Send>),
}

fn stream_head(w: &mut dyn Write) -> std::io::Result<()> {
    w.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n\
          Access-Control-Allow-Origin: *\r\nConnection: close\r\n\r\n",
    )?;
    w.flush()
}

fn event(w: &mut dyn Write, data: &str) -> bool {
    w.write_all(format!("data: {data}\n\n").as_bytes())
        .and_then(|_| w.flush())
        .is_ok()
}

fn chat_reply<M: InferModel + Sync>(
    sh: &Shared<M>,
    req: Request,
    chat: ChatRequest,
    openai: bool,
    seed: u64,
) -> String {
    let t0 = Instant::now();
    let lease = match sh.pool.acquire() {
        Ok(l) => l,
        Err(b) => {
            sh.counters.rejected_busy.fetch_add(1, Ordering::Relaxed);
            let why = match b {
                Busy::QueueFull => "all workers are busy and the queue is full",
                Busy::Timeout => "timed out waiting for a free worker",
            };
            let _ = req.respond(json_response(503, &json!({ "error": why })));
            return format!("503 ({why})");
        }
    };
    let waited = t0.elapsed();
    let (gpu, engine) = (lease.index, lease.worker());
    let id = format!("chatcmpl-{seed:x}");
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let chunk = |delta: Value, finish: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": "nanochat",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        .to_string()
    };
    let prepared = match prepare(engine, &chat) {
        Ok(p) => p,
        Err(e) => {
            let _ = req.respond(json_response(400, &json!({ "error": e })));
            return format!("400 ({e})");
        }
    };
    let t_gen = Instant::now();
    let (result, stream) = if openai && !chat.stream {
        let r = generate(engine, &chat, prepared, seed, &mut |_| true);
        let resp = match &r {
            Ok(g) => json_response(
                200,
                &json!({"id": id, "object": "chat.completion", "created": created, "model": "nanochat",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": g.text},
                                 "finish_reason": g.finish}],
                    "usage": {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.tokens,
                              "total_tokens": g.prompt_tokens + g.tokens}}),
            ),
            Err(e) => json_response(400, &json!({ "error": e })),
        };
        (r, Finish::Respond(Box::new((req, resp))))
    } else {
        let mut w = req.into_writer();
        if stream_head(&mut *w).is_err() {
            return "client gone before the stream started".into();
        }
        if openai {
            event(&mut *w, &chunk(json!({"role": "assistant"}), Value::Null));
        }
        let r = generate(engine, &chat, prepared, seed, &mut |piece| {
            let data = if openai {
                chunk(json!({ "content": piece }), Value::Null)
            } else {
                json!({"token": piece, "gpu": gpu}).to_string()
            };
            event(&mut *w, &data)
        });
        match &r {
            Ok(g) if openai => {
                event(&mut *w, &chunk(json!({}), json!(g.finish)));
                event(&mut *w, "[DONE]");
            }
            Ok(_) => {
                event(&mut *w, &json!({"done": true}).to_string());
            }
            Err(e) => {
                event(&mut *w, &json!({ "error": e }).to_string());
            }
        }
        (r, Finish::Close(w))
    };
    // Free the worker and count the request before the client sees the end, so /health and /stats agree with
    // what the client has seen.
    drop(lease);
    if result.is_ok() {
        sh.counters.completions.fetch_add(1, Ordering::Relaxed);
    }
    match stream {
        Finish::Respond(answer) => {
            let (req, resp) = *answer;
            let _ = req.respond(resp);
        }
        Finish::Close(w) => drop(w),
    }
    match result {
        Ok(g) => {
            sh.counters
                .tokens
                .fetch_add(g.tokens as u64, Ordering::Relaxed);
            let secs = t_gen.elapsed().as_secs_f64();
            let last = chat.messages.last().map_or("", |m| m.content.as_str());
            let clip = |s: &str| s.chars().take(120).collect::<String>();
            format!(
                "200 worker {gpu}, waited {:.0} ms, {} prompt tokens ({} old messages dropped), {} tokens in {:.2} s ({:.1} tok/s), {}; user: {:?} reply: {:?}",
                waited.as_secs_f64() * 1e3,
                g.prompt_tokens,
                g.dropped,
                g.tokens,
                secs,
                g.tokens as f64 / secs.max(1e-9),
                g.finish,
                clip(last),
                clip(&g.text)
            )
        }
        Err(e) => format!("error during generation: {e}"),
    }
}
