//! The chat server over loopback: SSE and OpenAI streams, validation (400), body cap (413), unknown routes
//! (404), and more concurrent requests than workers (queued or 503, the server stays up).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use nanochat::config::ModelConfig;
use nanochat::cpu::infer::CpuInfer;
use nanochat::engine::{Engine, InferModel};
use nanochat::params::ParamTable;
use nanochat::serve::{Options, Server};
use nanochat::tokenizer::Tokenizer;
use serde_json::{json, Value};

fn tokenizer() -> Tokenizer {
    let docs =
        (0..200).map(|i| format!("hello there, number {i}! the cat sat on the mat. héllo wörld"));
    Tokenizer::train(docs, 300, 64, &mut |_, _| {}).unwrap()
}

fn cpu_engine() -> Engine<CpuInfer> {
    let tok = tokenizer();
    let cfg = ModelConfig {
        sequence_len: 128,
        vocab_size: tok.vocab_size(),
        n_layer: 2,
        n_head: 2,
        n_kv_head: 1,
        n_embd: 64,
        window_pattern: "SL".into(),
    };
    let table = ParamTable::new(&cfg);
    let mut p = vec![0.0; table.numel];
    table.init(&mut p, 9);
    Engine::new(CpuInfer::new(&cfg, p).unwrap(), tok)
}

fn quiet() -> Options {
    Options {
        log: false,
        max_body: 64 * 1024,
        ..Options::default()
    }
}

/// One request with `Connection: close`; returns (status, head, body).
fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) before reading a large body; a failed write is fine then.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head[9..12].parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, head, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[nl + 4 + n..];
    }
}

/// The `data:` payloads of an event stream.
fn events(body: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(body).expect("the stream is valid UTF-8");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("data event").to_string())
        .collect()
}

fn chat(content: &str, extra: Value) -> Vec<u8> {
    let mut v = json!({"messages": [{"role": "user", "content": content}], "max_tokens": 40});
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    v.to_string().into_bytes()
}

#[test]
fn streams_page_health_and_errors() {
    let srv = Server::start(
        vec![cpu_engine()],
        vec!["cpu".into()],
        quiet(),
        "127.0.0.1:0",
    )
    .unwrap();
    let a = srv.addr();

    // Upstream's SSE stream.
    let (st, head, body) = http(a, "POST", "/chat/completions", &chat("hello", json!({})));
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
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
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
    assert_eq!(
        (v["status"].as_str(), v["num_gpus"].as_u64()),
        (Some("ok"), Some(1))
    );
    let (_, _, body) = http(a, "GET", "/stats", b"");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["total_workers"], 1);
    assert_eq!(v["workers"][0]["device"], "cpu");
    assert!(v["completions"].as_u64().unwrap() >= 3);

    // Every validation limit answers 400 with a JSON error.
    let long = "x".repeat(8001);
    let many: Vec<Value> = (0..501)
        .map(|_| json!({"role": "user", "content": "hi"}))
        .collect();
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

/// A model that is slow and never ends: 40 ms per step, always the same token.
struct Slow {
    cfg: ModelConfig,
}

impl InferModel for Slow {
    type Cache = ();
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    fn new_cache(&self, _: usize, _: usize) {}
    fn expand(&self, _: &(), _: usize, _: usize) -> Result<(), String> {
        Ok(())
    }
    fn forward_last(&self, _: &mut (), ids: &[u32], t: usize) -> Result<Vec<f32>, String> {
        std::thread::sleep(Duration::from_millis(40));
        let mut row = vec![0.0; self.cfg.vocab_size];
        row[b'a' as usize] = 30.0;
        Ok(row.repeat(ids.len() / t))
    }
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
                let (st, _, body) = http(
                    a,
                    "POST",
                    "/chat/completions",
                    &chat("hi", json!({"max_tokens": 10})),
                );
                (st, body)
            })
        })
        .collect();
    let results: Vec<(u16, Vec<u8>)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let busy = results.iter().filter(|r| r.0 == 503).count();
    assert_eq!(
        ok + busy,
        6,
        "{:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
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
    // A request that waits longer than the queue timeout gets 503 too.
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
    let first = std::thread::spawn(move || {
        http(
            a,
            "POST",
            "/chat/completions",
            &chat("hi", json!({"max_tokens": 25})),
        )
        .0
    });
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
        .map(|i| {
            msg(
                if i % 2 == 0 { "user" } else { "assistant" },
                "the cat sat on the mat",
            )
        })
        .collect();
    let (ids, dropped) = render_prompt(&tok, &conv, 100, 20).unwrap();
    let (ids_odd, _) = render_prompt(&tok, &conv[..19], 100, 20).unwrap();
    assert_eq!(ids_odd[1], tok.special_id("<|user_start|>").unwrap());
    assert!(dropped > 0 && ids.len() <= 80, "{dropped} {}", ids.len());
    assert_eq!(ids[0], tok.bos_id());
    assert_eq!(ids[1], tok.special_id("<|user_start|>").unwrap());
    assert_eq!(
        *ids.last().unwrap(),
        tok.special_id("<|assistant_start|>").unwrap()
    );
    let (all, none) = render_prompt(&tok, &conv, 4096, 20).unwrap();
    assert_eq!(none, 0);
    assert!(
        all.ends_with(&ids[1..]),
        "the kept messages are the latest ones"
    );
    // A last message that cannot fit is an error, not a panic.
    let huge = vec![msg("user", &"word ".repeat(500))];
    assert!(render_prompt(&tok, &huge, 100, 20).is_err());
}
