//! The chat server over loopback: SSE and OpenAI streams, validation (400), body cap (413), unknown routes
//! (404), and more concurrent requests than workers (queued or 503, the server stays up).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use nanochat::config::ModelConfig;
use nanochat::engine::Engine;
use nanochat::serve::{Options, Server};
use serde_json::{json, Value};

mod common;
use common::serve::{chat, cpu_engine, events, http, quiet, tokenizer, Slow};

#[test]
fn streams_page_health_and_errors() {
    let srv = Server::start(vec![cpu_engine()], vec!["cpu".into()], quiet(), "127.0.0.1:0").unwrap();
    let a = srv.addr();

    // Upstream's SSE stream, greedy: its text is the engine's own greedy reply to the chat prompt, rendered
    // here by hand ([BOS] <|user_start|> hello <|user_end|> <|assistant_start|>) and decoded to the first
    // <|assistant_end|> (or 40 tokens).
    let reference = cpu_engine();
    let tok = &reference.tokenizer;
    let sp = |n: &str| tok.special_id(n).unwrap();
    let mut prompt = vec![tok.bos_id(), sp("<|user_start|>")];
    prompt.extend(tok.encode_ordinary("hello"));
    prompt.extend([sp("<|user_end|>"), sp("<|assistant_start|>")]);
    let greedy = nanochat::engine::GenConfig {
        num_samples: 1,
        max_tokens: Some(40),
        temperature: 0.0,
        top_k: None,
        seed: 0,
    };
    let mut reply = Vec::new();
    reference
        .generate(&prompt, &greedy, &mut |col, _| {
            if col[0] == sp("<|assistant_end|>") || col[0] == tok.bos_id() {
                return false;
            }
            reply.push(col[0]);
            true
        })
        .unwrap();
    let expected = String::from_utf8_lossy(&tok.decode(&reply)).into_owned();
    let (st, head, body) = http(
        a,
        "POST",
        "/chat/completions",
        &chat("hello", json!({"temperature": 0.0})),
    );
    assert_eq!(st, 200, "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    let ev = events(&body);
    assert_eq!(ev.last().unwrap(), r#"{"done":true}"#);
    let mut text = String::new();
    for e in &ev[..ev.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        assert_eq!(v["gpu"], 0);
        let piece = v["token"].as_str().unwrap();
        assert!(!piece.is_empty(), "no empty token events");
        text.push_str(piece);
    }
    assert!(!reply.is_empty());
    // A reply cut inside a character ends without its incomplete bytes (the stream waits for whole characters).
    assert_eq!(text, expected.trim_end_matches('\u{FFFD}'), "{reply:?}");

    // Same seed source is random per request, but temperature 0 is deterministic: the OpenAI stream and the
    // non-streaming answer agree with each other.
    let (st, _, body) = http(
        a,
        "POST",
        "/v1/chat/completions",
        &chat("the cat", json!({"stream": true, "temperature": 0.0})),
    );
    assert_eq!(st, 200);
    let ev = events(&body);
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    let last = chunks.last().unwrap();
    let finish = last["choices"][0]["finish_reason"].as_str().unwrap();
    assert!(finish == "stop" || finish == "length");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let (st, _, body) = http(
        a,
        "POST",
        "/v1/chat/completions",
        &chat("the cat", json!({"temperature": 0.0})),
    );
    assert_eq!(st, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], streamed);
    assert_eq!(v["choices"][0]["finish_reason"], finish);
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 40);

    // Page, health, stats.
    let (st, head, body) = http(a, "GET", "/", b"");
    assert_eq!(st, 200);
    assert!(head.contains("text/html"));
    assert!(String::from_utf8_lossy(&body).contains("/chat/completions"));
    let (st, _, body) = http(a, "GET", "/health", b"");
    assert_eq!(st, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((v["status"].as_str(), v["num_gpus"].as_u64()), (Some("ok"), Some(1)));
    let (_, _, body) = http(a, "GET", "/stats", b"");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["total_workers"], 1);
    assert_eq!(v["workers"][0]["device"], "cpu");
    assert!(v["completions"].as_u64().unwrap() >= 3);

    // Every validation limit answers 400 with a JSON error.
    let long = "x".repeat(8001);
    let many: Vec<Value> = (0..501).map(|_| json!({"role": "user", "content": "hi"})).collect();
    let total: Vec<Value> = (0..5)
        .map(|_| json!({"role": "user", "content": "y".repeat(7000)}))
        .collect();
    let bad = [
        json!({"messages": []}),
        json!({"messages": many}),
        json!({"messages": [{"role": "user", "content": ""}]}),
        json!({"messages": [{"role": "user", "content": long}]}),
        json!({"messages": total}),
        json!({"messages": [{"role": "system", "content": "hi"}]}),
        json!({"messages": [{"role": "user", "content": "hi"}], "temperature": 2.5}),
        json!({"messages": [{"role": "user", "content": "hi"}], "temperature": -0.1}),
        json!({"messages": [{"role": "user", "content": "hi"}], "top_k": 201}),
        json!({"messages": [{"role": "user", "content": "hi"}], "top_k": -1}),
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}),
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4097}),
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}),
        json!({"messages": [{"role": "user"}]}),
        json!({"nothing": 1}),
        json!([1, 2]),
    ];
    for b in &bad {
        let (st, _, body) = http(a, "POST", "/chat/completions", b.to_string().as_bytes());
        assert_eq!(st, 400, "{b}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(v["error"].is_string(), "{b}");
    }
    for malformed in [&b"{not json"[..], b"", b"\xff\xfe"] {
        let (st, _, _) = http(a, "POST", "/v1/chat/completions", malformed);
        assert_eq!(st, 400);
    }
    let huge = vec![b'a'; 65 * 1024];
    assert_eq!(http(a, "POST", "/chat/completions", &huge).0, 413);
    assert_eq!(http(a, "GET", "/nope", b"").0, 404);
    assert_eq!(http(a, "GET", "/chat/completions", b"").0, 405);
    // Still serving after all that.
    assert_eq!(http(a, "GET", "/health", b"").0, 200);
    srv.shutdown(Duration::from_secs(5));
}

#[test]
fn more_requests_than_workers_queue_or_get_503() {
    let tok = tokenizer();
    let cfg = ModelConfig {
        sequence_len: 512,
        vocab_size: tok.vocab_size(),
        n_layer: 1,
        n_head: 1,
        n_kv_head: 1,
        n_embd: 32,
        window_pattern: "L".into(),
    };
    let opts = Options {
        max_queue: 1,
        queue_timeout: Duration::from_millis(3000),
        ..quiet()
    };
    let srv = Server::start(
        vec![Engine::new(Slow { cfg }, tok)],
        vec!["cpu".into()],
        opts,
        "127.0.0.1:0",
    )
    .unwrap();
    let a = srv.addr();
    // 6 requests of ~0.4 s each against 1 worker and a queue of 1: the first runs, one waits, the rest get 503.
    let handles: Vec<_> = (0..6)
        .map(|i| {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(if i == 0 { 0 } else { 150 }));
                let (st, _, body) = http(a, "POST", "/chat/completions", &chat("hi", json!({"max_tokens": 10})));
                (st, body)
            })
        })
        .collect();
    let results: Vec<(u16, Vec<u8>)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let busy = results.iter().filter(|r| r.0 == 503).count();
    assert_eq!(ok + busy, 6, "{:?}", results.iter().map(|r| r.0).collect::<Vec<_>>());
    assert!(ok >= 2, "the running and the queued request both finish");
    assert!(busy >= 1, "beyond the queue requests get 503");
    for (st, body) in &results {
        if *st == 200 {
            let ev = events(body);
            assert_eq!(ev.len(), 11, "10 tokens and done");
            let first: Value = serde_json::from_str(&ev[0]).unwrap();
            assert_eq!(first, json!({"token": "a", "gpu": 0}));
        } else {
            let v: Value = serde_json::from_slice(body).unwrap();
            assert!(v["error"].as_str().unwrap().contains("busy"));
        }
    }
    // Still serving (a wait past the queue timeout is queue_timeout_gives_503).
    let (st, _, _) = http(a, "GET", "/health", b"");
    assert_eq!(st, 200);
    srv.shutdown(Duration::from_secs(5));
}

#[test]
fn queue_timeout_gives_503() {
    let tok = tokenizer();
    let cfg = ModelConfig {
        sequence_len: 512,
        vocab_size: tok.vocab_size(),
        n_layer: 1,
        n_head: 1,
        n_kv_head: 1,
        n_embd: 32,
        window_pattern: "L".into(),
    };
    let opts = Options {
        max_queue: 4,
        queue_timeout: Duration::from_millis(100),
        ..quiet()
    };
    let srv = Server::start(
        vec![Engine::new(Slow { cfg }, tok)],
        vec!["cpu".into()],
        opts,
        "127.0.0.1:0",
    )
    .unwrap();
    let a = srv.addr();
    let first =
        std::thread::spawn(move || http(a, "POST", "/chat/completions", &chat("hi", json!({"max_tokens": 25}))).0);
    std::thread::sleep(Duration::from_millis(300));
    let (st, _, body) = http(a, "POST", "/chat/completions", &chat("hi", json!({})));
    assert_eq!(st, 503);
    assert!(String::from_utf8_lossy(&body).contains("timed out"));
    assert_eq!(first.join().unwrap(), 200);
    srv.shutdown(Duration::from_secs(5));
}

#[test]
fn long_conversations_drop_the_oldest_messages() {
    use nanochat::serve::api::{render_prompt, ChatMessage};
    let tok = tokenizer();
    let msg = |role: &str, content: &str| ChatMessage {
        role: role.into(),
        content: content.into(),
    };
    let conv: Vec<ChatMessage> = (0..20)
        .map(|i| msg(if i % 2 == 0 { "user" } else { "assistant" }, "the cat sat on the mat"))
        .collect();
    let (ids, dropped) = render_prompt(&tok, &conv, 100, 20).unwrap();
    let (ids_odd, _) = render_prompt(&tok, &conv[..19], 100, 20).unwrap();
    assert_eq!(ids_odd[1], tok.special_id("<|user_start|>").unwrap());
    assert!(dropped > 0 && ids.len() <= 80, "{dropped} {}", ids.len());
    assert_eq!(ids[0], tok.bos_id());
    assert_eq!(ids[1], tok.special_id("<|user_start|>").unwrap());
    assert_eq!(*ids.last().unwrap(), tok.special_id("<|assistant_start|>").unwrap());
    let (all, none) = render_prompt(&tok, &conv, 4096, 20).unwrap();
    assert_eq!(none, 0);
    assert!(all.ends_with(&ids[1..]), "the kept messages are the latest ones");
    // A last message that cannot fit is an error, not a panic.
    let huge = vec![msg("user", &"word ".repeat(500))];
    assert!(render_prompt(&tok, &huge, 100, 20).is_err());
}

fn slow_server(sequence_len: usize, opts: Options) -> Server {
    let tok = tokenizer();
    let cfg = ModelConfig {
        sequence_len,
        vocab_size: tok.vocab_size(),
        n_layer: 1,
        n_head: 1,
        n_kv_head: 1,
        n_embd: 32,
        window_pattern: "L".into(),
    };
    Server::start(
        vec![Engine::new(Slow { cfg }, tok)],
        vec!["cpu".into()],
        opts,
        "127.0.0.1:0",
    )
    .unwrap()
}

fn stats(a: SocketAddr) -> Value {
    serde_json::from_slice(&http(a, "GET", "/stats", b"").2).unwrap()
}

/// A keep-alive request (no `Connection: close`) on `s`; reads exactly one response by its framing
/// (Content-Length or chunked) and returns (head, body), leaving the connection open.
fn keep_alive(s: &mut TcpStream, path: &str, body: &[u8]) -> (String, Vec<u8>) {
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        raw.push(byte[0]);
    }
    let head = String::from_utf8(raw).unwrap();
    let lower = head.to_ascii_lowercase();
    if let Some(i) = lower.find("content-length: ") {
        let n: usize = lower[i + 16..].lines().next().unwrap().trim().parse().unwrap();
        let mut b = vec![0; n];
        s.read_exact(&mut b).unwrap();
        return (head, b);
    }
    assert!(lower.contains("transfer-encoding: chunked"), "{head}");
    let mut out = Vec::new();
    loop {
        let mut line = Vec::new();
        while !line.ends_with(b"\r\n") {
            s.read_exact(&mut byte).unwrap();
            line.push(byte[0]);
        }
        let n = usize::from_str_radix(std::str::from_utf8(&line).unwrap().trim(), 16).unwrap();
        let mut chunk = vec![0; n + 2];
        s.read_exact(&mut chunk).unwrap();
        assert!(chunk.ends_with(b"\r\n"), "chunk framing");
        if n == 0 {
            return (head, out);
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn streams_end_on_kept_alive_and_http10_connections() {
    let srv = Server::start(vec![cpu_engine()], vec!["cpu".into()], quiet(), "127.0.0.1:0").unwrap();
    let a = srv.addr();
    // Three answers on one kept-alive connection: each stream's body ends (the last chunk), so the next
    // request is read. A stream that ended only by closing would block the second read forever (the 60 s
    // socket timeout fails the test then).
    let mut s = TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    for path in ["/chat/completions", "/v1/chat/completions", "/chat/completions"] {
        let stream = chat("hello", json!({"stream": true}));
        let (head, body) = keep_alive(&mut s, path, &stream);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(!head.to_ascii_lowercase().contains("connection: close"));
        let ev = events(&body);
        let end = if path.starts_with("/v1") {
            "[DONE]"
        } else {
            r#"{"done":true}"#
        };
        assert_eq!(ev.last().unwrap(), end, "{path}");
    }
    let (head, body) = keep_alive(&mut s, "/v1/chat/completions", &chat("hello", json!({})));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");

    // HTTP/1.0 has no chunked encoding: the stream comes with a Content-Length, and the socket is closed.
    let mut s = TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = chat("hello", json!({}));
    write!(
        s,
        "POST /chat/completions HTTP/1.0\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(&body).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap_or_else(|| panic!("no Content-Length in {head}"));
    assert_eq!(len.parse::<usize>().unwrap(), body.len());
    assert!(body.ends_with("data: {\"done\":true}\n\n"), "{body}");
    srv.shutdown(Duration::from_secs(5));
}

#[test]
fn a_client_that_leaves_mid_stream_frees_its_worker() {
    // 500 tokens at 40 ms would hold the worker for 20 s; the client reads 2 tokens and leaves.
    let srv = slow_server(1024, quiet());
    let a = srv.addr();
    for (k, path) in ["/chat/completions", "/v1/chat/completions"].iter().enumerate() {
        let before = stats(a)["generated_tokens"].as_u64().unwrap();
        let mut s = TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let body = chat("hi", json!({"max_tokens": 500, "stream": true}));
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(&body).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let tokens_seen = |got: &[u8]| {
            let text = String::from_utf8_lossy(got);
            text.matches(r#""token":"a""#).count() + text.matches(r#""content":"a""#).count()
        };
        while tokens_seen(&got) < 2 {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "the stream ended early");
            got.extend_from_slice(&buf[..n]);
        }
        drop(s);
        let left = std::time::Instant::now();
        // Bounded wait (a safety net far below the 20 s the whole request would take).
        let freed = loop {
            let v = stats(a);
            if v["busy_workers"] == 0 && v["cancelled"] == k as u64 + 1 {
                break Some(v);
            }
            if left.elapsed() > Duration::from_secs(10) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let v = freed.unwrap_or_else(|| panic!("{path}: worker still busy 10 s after the client left: {}", stats(a)));
        let generated = v["generated_tokens"].as_u64().unwrap() - before;
        println!(
            "{path}: worker free {:.0} ms after the client left, {generated} tokens generated",
            left.elapsed().as_secs_f64() * 1e3
        );
        // Stopped at the next writes: the 2 tokens read, one in flight, the write that the closed socket
        // answers with a reset and the one that fails, plus slack for a loaded machine: far below 500.
        assert!(
            generated <= 12,
            "{path}: {generated} tokens generated after 2 were read"
        );
        assert_eq!(v["completions"], 0, "a cancelled stream is not a completion");
    }
    // The worker serves the next request.
    let (st, _, body) = http(a, "POST", "/chat/completions", &chat("hi", json!({"max_tokens": 3})));
    assert_eq!(st, 200);
    assert_eq!(events(&body).len(), 4);
    srv.shutdown(Duration::from_secs(5));
}

#[test]
fn openai_models_errors_and_usage() {
    let srv = slow_server(256, quiet());
    let a = srv.addr();
    let (st, _, body) = http(a, "GET", "/v1/models", b"");
    assert_eq!(st, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    let m = &v["data"][0];
    assert_eq!(
        (&m["id"], &m["object"], &m["context_length"]),
        (&json!("nanochat"), &json!("model"), &json!(256))
    );
    let (st, _, body) = http(a, "GET", "/v1/models/nanochat", b"");
    assert_eq!(st, 200);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), *m);

    // Every /v1 error is an OpenAI error object: (status, param, code) as OpenAI's clients read them.
    let obj = |st: u16, body: &[u8]| -> (u16, Value, Value, Value) {
        let v: Value = serde_json::from_slice(body).unwrap();
        let e = &v["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        let kind = if st >= 500 {
            "server_error"
        } else {
            "invalid_request_error"
        };
        assert_eq!(e["type"], kind, "{v}");
        (st, e["param"].clone(), e["code"].clone(), e["message"].clone())
    };
    let post = |b: Value| {
        let (st, _, body) = http(a, "POST", "/v1/chat/completions", b.to_string().as_bytes());
        obj(st, &body)
    };
    let hi = json!([{"role": "user", "content": "hi"}]);
    let e = post(json!({"messages": hi, "temperature": 9}));
    assert_eq!((e.0, e.1), (400, json!("temperature")));
    let e = post(json!({"messages": hi, "max_completion_tokens": 0}));
    assert_eq!((e.0, e.1), (400, json!("max_completion_tokens")));
    let e = post(json!({"messages": []}));
    assert_eq!((e.0, e.1), (400, json!("messages")));
    let e = post(json!({"messages": hi, "stream_options": {"include_usage": true}}));
    assert_eq!((e.0, e.1), (400, json!("stream_options")));
    let (st, _, body) = http(a, "POST", "/v1/chat/completions", b"{oops");
    assert_eq!(obj(st, &body).0, 400);
    let (st, _, body) = http(a, "GET", "/v1/models/gpt-4", b"");
    let e = obj(st, &body);
    assert_eq!((e.0, e.1, e.2), (404, json!("model"), json!("model_not_found")));
    let (st, _, body) = http(a, "GET", "/v1/nothing", b"");
    assert_eq!(obj(st, &body).2, json!("unknown_url"));
    let (st, _, body) = http(a, "DELETE", "/v1/models/nanochat", b"");
    assert_eq!(obj(st, &body).0, 405);
    let (st, _, body) = http(a, "GET", "/v1/chat/completions", b"");
    assert_eq!(obj(st, &body).0, 405);
    let (st, _, body) = http(a, "POST", "/v1/chat/completions", &vec![b'x'; 65 * 1024]);
    assert_eq!(obj(st, &body).0, 413);
    // The upstream route keeps upstream's plain error.
    let (st, _, body) = http(a, "POST", "/chat/completions", b"{oops");
    assert_eq!(st, 400);
    assert!(serde_json::from_slice::<Value>(&body).unwrap()["error"].is_string());

    // include_usage: a last chunk with no choices and the token counts, after the finish chunk. The Slow model
    // writes 'a' once per token, so completion_tokens is the number of content chunks; the prompt is
    // [BOS] <|user_start|> "hi" <|user_end|> <|assistant_start|>.
    let req = json!({"messages": hi, "max_tokens": 5, "stream": true,
                     "stream_options": {"include_usage": true}});
    let (st, _, body) = http(a, "POST", "/v1/chat/completions", req.to_string().as_bytes());
    assert_eq!(st, 200);
    let ev = events(&body);
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    let prompt = 4 + tokenizer().encode_ordinary("hi").len();
    assert_eq!(
        last["usage"],
        json!({"prompt_tokens": prompt, "completion_tokens": 5, "total_tokens": prompt + 5})
    );
    let content: Vec<&Value> = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"]["content"].is_string())
        .collect();
    assert_eq!(content.len(), 5);
    assert_eq!(chunks[chunks.len() - 2]["choices"][0]["finish_reason"], "length");
    assert!(chunks[..chunks.len() - 1]
        .iter()
        .all(|c| c.get("usage") == Some(&Value::Null)));
    // Without include_usage no chunk has a usage field.
    let req = json!({"messages": hi, "max_tokens": 2, "stream": true});
    let (_, _, body) = http(a, "POST", "/v1/chat/completions", req.to_string().as_bytes());
    let ev = events(&body);
    assert!(ev[..ev.len() - 1]
        .iter()
        .all(|e| serde_json::from_str::<Value>(e).unwrap().get("usage").is_none()));
    srv.shutdown(Duration::from_secs(5));
}
