//! Writing the answers: JSON, the page, and the two streaming formats (upstream's SSE events and OpenAI's
//! `chat.completion.chunk` events ending in `[DONE]`).
//!
//! Every body must end where the client can see it. tiny_http keeps a connection open for the next request as
//! long as the client does (HTTP/1.1 keep-alive), so a stream cannot be ended by "closing" it: the socket stays
//! open. Streams to HTTP/1.1 clients therefore use chunked transfer encoding, one chunk per event, flushed, and
//! the last (empty) chunk at the end; HTTP/1.0 has no chunked encoding, so the events are collected and sent
//! with a Content-Length. A client that goes away mid-stream makes the next event's write fail, which stops
//! the generation and frees the worker.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Instant;

use serde_json::{json, Value};
use tiny_http::{Header, Request, Response};

use super::api::{self, ChatRequest};
use super::lanes::Msg;
use super::pool::{Busy, Lease};
use super::Shared;
use crate::engine::batch::Job;
use crate::engine::{Engine, GenConfig, InferModel, TextStream};

const PAGE: &str = include_str!("../../web/index.html");
const LOGO: &str = include_str!("../../web/logo.svg");

pub(super) enum Reply {
    Json(u16, Value),
    Page,
    Logo,
    Preflight,
    /// `id` names the answer (`chatcmpl-<id>`), unique per request.
    Chat {
        chat: ChatRequest,
        openai: bool,
        seed: u64,
        id: u64,
    },
}

/// The error body: OpenAI's error object on the `/v1` routes (its clients turn `message` into their
/// exceptions' text), upstream's `{"error": "..."}` elsewhere.
pub(super) fn error_body(v1: bool, status: u16, msg: &str, param: Option<&str>, code: Option<&str>) -> Value {
    if !v1 {
        return json!({ "error": msg });
    }
    let kind = match status {
        400..=499 => "invalid_request_error",
        _ => "server_error",
    };
    json!({"error": {"message": msg, "type": kind, "param": param, "code": code}})
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
        Reply::Chat { chat, openai, seed, id } => return chat_reply(sh, req, chat, openai, seed, id),
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
fn prepare<M: InferModel>(engine: &Engine<M>, chat: &ChatRequest) -> Result<(Vec<u32>, usize, usize), String> {
    let context = engine.model.config().sequence_len;
    let reserve = chat.max_tokens.min(context / 2);
    let (prompt, dropped) = api::render_prompt(&engine.tokenizer, &chat.messages, context, reserve)?;
    let max_new = chat.max_tokens.min(context - prompt.len());
    Ok((prompt, dropped, max_new))
}

/// Where a request's tokens come from.
enum Source<'a, M: InferModel> {
    /// A worker of the pool, held for the whole request.
    Worker(Lease<'a, Engine<M>>),
    /// A row of a lane's running batch: its tokens arrive here.
    Lane(std::sync::mpsc::Receiver<Msg>),
    /// Nothing to generate (no room left in the context).
    Nothing,
}

/// Generates the assistant's reply, handing each complete piece of text to `on_text` (false stops; with a
/// lane, dropping the receiver then makes the lane drop the row).
fn generate<M: InferModel>(
    engine: &Engine<M>,
    chat: &ChatRequest,
    (prompt, dropped, max_new): (Vec<u32>, usize, usize),
    seed: u64,
    source: &Source<'_, M>,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<Generated, String> {
    let tok = &engine.tokenizer;
    let end = tok.special_id("<|assistant_end|>");
    let bos = tok.bos_id();
    let mut stream = TextStream::new();
    let (mut text, mut finish, mut n) = (String::new(), "length", 0);
    let mut on_token = |t: u32| {
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
    };
    match source {
        Source::Worker(lease) => {
            let cfg = GenConfig {
                num_samples: 1,
                max_tokens: Some(max_new),
                temperature: chat.temperature,
                top_k: Some(chat.top_k),
                seed,
            };
            lease.worker().generate(&prompt, &cfg, &mut |col, _| on_token(col[0]))?;
        }
        Source::Lane(rx) => loop {
            match rx.recv() {
                Ok(Msg::Token { token, done }) => {
                    if !on_token(token) || done {
                        break;
                    }
                }
                Ok(Msg::Failed(e)) => return Err(e),
                Ok(Msg::Started | Msg::Timeout) => {}
                Err(_) => return Err("the batch stopped before the reply was complete".into()),
            }
        },
        Source::Nothing => {}
    }
    Ok(Generated {
        text,
        prompt_tokens: prompt.len(),
        tokens: n,
        finish,
        dropped,
    })
}

/// A streamed answer's body (see the module comment for the two framings).
enum EventStream {
    Chunked(Box<dyn Write + Send>),
    Buffered(Box<(Request, Vec<u8>)>),
}

impl EventStream {
    /// Starts the answer: the head now for a chunked stream, nothing yet for a buffered one.
    fn open(req: Request) -> std::io::Result<EventStream> {
        if *req.http_version() < (1, 1) {
            return Ok(EventStream::Buffered(Box::new((req, Vec::new()))));
        }
        // Say so when the client asked to close: tiny_http closes the socket after this answer then.
        let close = req
            .headers()
            .iter()
            .any(|h| h.field.equiv("Connection") && h.value.as_str().to_ascii_lowercase().contains("close"));
        let mut w = req.into_writer();
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n\
             Access-Control-Allow-Origin: *\r\nTransfer-Encoding: chunked\r\n{}\r\n",
            if close { "Connection: close\r\n" } else { "" }
        );
        w.write_all(head.as_bytes())?;
        w.flush()?;
        Ok(EventStream::Chunked(w))
    }

    /// Sends one `data:` event; false when the client is gone.
    fn event(&mut self, data: &str) -> bool {
        let ev = format!("data: {data}\n\n");
        match self {
            EventStream::Chunked(w) => {
                let chunk = format!("{:x}\r\n{ev}\r\n", ev.len());
                w.write_all(chunk.as_bytes()).and_then(|_| w.flush()).is_ok()
            }
            EventStream::Buffered(b) => {
                b.1.extend_from_slice(ev.as_bytes());
                true
            }
        }
    }

    /// Ends the body: the last chunk, or the whole buffered answer.
    fn finish(self) {
        match self {
            EventStream::Chunked(mut w) => {
                let _ = w.write_all(b"0\r\n\r\n").and_then(|_| w.flush());
            }
            EventStream::Buffered(b) => {
                let (req, body) = *b;
                let resp = cors(
                    Response::from_data(body)
                        .with_header(header("Content-Type", "text/event-stream; charset=utf-8"))
                        .with_header(header("Cache-Control", "no-cache")),
                );
                let _ = req.respond(resp);
            }
        }
    }
}

/// The last step of a chat answer, done after the worker is released.
enum Finish {
    /// Send this whole answer.
    Respond(Box<(Request, Response<std::io::Cursor<Vec<u8>>>)>),
    /// End the stream's body.
    End(EventStream),
    /// The client went away mid-stream: nothing more to send.
    Gone,
}

fn chat_reply<M: InferModel + Sync>(
    sh: &Shared<M>,
    req: Request,
    chat: ChatRequest,
    openai: bool,
    seed: u64,
    answer_id: u64,
) -> String {
    let t0 = Instant::now();
    let fail = |req: Request, status: u16, msg: &str, param: Option<&str>| {
        let body = error_body(openai, status, msg, param, None);
        let _ = req.respond(json_response(status, &body));
        format!("{status} ({msg})")
    };
    // All engines are replicas: the first one's tokenizer and context shape the prompt.
    let prepared = match prepare(sh.pool.first(), &chat) {
        Ok(p) => p,
        Err(e) => return fail(req, 400, &e, Some("messages")),
    };
    let busy = |req: Request, why: &str| {
        sh.counters.rejected_busy.fetch_add(1, Ordering::Relaxed);
        fail(req, 503, why, None)
    };
    let (source, gpu) = if prepared.2 == 0 {
        (Source::Nothing, 0)
    } else if sh.lanes.is_empty() {
        match sh.pool.acquire() {
            Ok(l) => {
                let i = l.index;
                (Source::Worker(l), i)
            }
            Err(b) => {
                let why = match b {
                    Busy::QueueFull => "all workers are busy and the queue is full",
                    Busy::Timeout => "timed out waiting for a free worker",
                };
                return busy(req, why);
            }
        }
    } else {
        // The lane with the fewest requests in it.
        let (i, lane) = sh
            .lanes
            .iter()
            .enumerate()
            .min_by_key(|(_, l)| {
                let (a, w) = l.counts();
                a + w
            })
            .expect("at least one lane");
        let job = Job {
            prompt: prepared.0.clone(),
            max_tokens: prepared.2,
            temperature: chat.temperature,
            top_k: Some(chat.top_k),
            seed,
        };
        let rx = match lane.submit(job) {
            Ok(rx) => rx,
            Err(full) => {
                let why = format!(
                    "server busy: the KV cache is full ({} of {} rows of {} positions in use) and {} requests wait",
                    full.active, lane.rows, lane.t_max, full.waiting
                );
                return busy(req, &why);
            }
        };
        // The lane answers Timeout itself after the queue timeout, between two steps; the extra second covers a
        // step in progress, and a lane that stopped.
        let waiting = "server busy: timed out waiting for a free row of the KV cache";
        match rx.recv_timeout(sh.opts.queue_timeout + std::time::Duration::from_secs(1)) {
            Ok(Msg::Started) => (Source::Lane(rx), i),
            Ok(Msg::Timeout) | Err(RecvTimeoutError::Timeout) => return busy(req, waiting),
            Ok(Msg::Failed(e)) => return fail(req, 500, &e, None),
            Ok(Msg::Token { .. }) | Err(RecvTimeoutError::Disconnected) => {
                return fail(req, 500, "the batch stopped", None)
            }
        }
    };
    let waited = t0.elapsed();
    let engine = sh.pool.first();
    let model = sh.opts.model.id.as_str();
    let id = format!("chatcmpl-{answer_id:x}");
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let usage = |g: &Generated| {
        json!({"prompt_tokens": g.prompt_tokens, "completion_tokens": g.tokens,
               "total_tokens": g.prompt_tokens + g.tokens})
    };
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        if chat.include_usage {
            // As OpenAI: every chunk has `usage: null` but the extra last one.
            c["usage"] = Value::Null;
        }
        c.to_string()
    };
    let t_gen = Instant::now();
    let mut gone = false;
    let (result, finish) = if openai && !chat.stream {
        let r = generate(engine, &chat, prepared, seed, &source, &mut |_| true);
        let resp = match &r {
            Ok(g) => json_response(
                200,
                &json!({"id": id, "object": "chat.completion", "created": created, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": g.text},
                                 "finish_reason": g.finish}],
                    "usage": usage(g)}),
            ),
            Err(e) => json_response(500, &error_body(true, 500, e, None, None)),
        };
        (r, Finish::Respond(Box::new((req, resp))))
    } else {
        let mut out = match EventStream::open(req) {
            Ok(o) => o,
            Err(_) => return "client gone before the stream started".into(),
        };
        if openai {
            gone = !out.event(&chunk(json!({"role": "assistant"}), Value::Null));
        }
        let r = if gone {
            Err("client gone".to_string())
        } else {
            generate(engine, &chat, prepared, seed, &source, &mut |piece| {
                let data = if openai {
                    chunk(json!({ "content": piece }), Value::Null)
                } else {
                    json!({"token": piece, "gpu": gpu}).to_string()
                };
                gone = !out.event(&data);
                !gone
            })
        };
        match &r {
            _ if gone => {}
            Ok(g) if openai => {
                out.event(&chunk(json!({}), json!(g.finish)));
                if chat.include_usage {
                    let last = json!({"id": id, "object": "chat.completion.chunk", "created": created,
                        "model": model, "choices": [], "usage": usage(g)});
                    out.event(&last.to_string());
                }
                out.event("[DONE]");
            }
            Ok(_) => {
                out.event(&json!({"done": true}).to_string());
            }
            Err(e) => {
                out.event(&error_body(openai, 500, e, None, None).to_string());
            }
        }
        (r, if gone { Finish::Gone } else { Finish::End(out) })
    };
    // Free the worker and count the request before the client sees the end, so /health and /stats agree with
    // what the client has seen.
    drop(source);
    if let Ok(g) = &result {
        sh.counters.tokens.fetch_add(g.tokens as u64, Ordering::Relaxed);
        let done = if gone {
            &sh.counters.cancelled
        } else {
            &sh.counters.completions
        };
        done.fetch_add(1, Ordering::Relaxed);
    }
    match finish {
        Finish::Respond(answer) => {
            let (req, resp) = *answer;
            let _ = req.respond(resp);
        }
        Finish::End(out) => out.finish(),
        Finish::Gone => {}
    }
    match result {
        Ok(g) => {
            let secs = t_gen.elapsed().as_secs_f64();
            let last = chat.messages.last().map_or("", |m| m.content.as_str());
            let clip = |s: &str| s.chars().take(120).collect::<String>();
            format!(
                "{} worker {gpu}, waited {:.0} ms, {} prompt tokens ({} old messages dropped), {} tokens in {:.2} s ({:.1} tok/s), {}; user: {:?} reply: {:?}",
                if gone { "200 (client gone, stopped)" } else { "200" },
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
        Err(e) if gone => format!("200 (client gone: {e})"),
        Err(e) => format!("error during generation: {e}"),
    }
}
