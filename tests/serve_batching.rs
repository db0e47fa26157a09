//! Continuous batching in the server: 16 concurrent clients, greedy and seeded sampling, prompts of different
//! lengths, all three answer formats, each get the reply the engine gives their request alone with the same
//! seed; the forwards are shared (rows per forward above 1, fewer forwards than tokens); with fewer rows than
//! clients, requests wait and join as rows free up; a full KV cache and queue answer 503.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use nanochat::config::ModelConfig;
use nanochat::engine::{Engine, InferModel};
use nanochat::serve::Options;
use serde_json::{json, Value};

mod common;
use common::serve::{
    chat, cpu_engine, events, generate_recorded, http, noisy_engines, quiet, reply_text, request_settings,
    same_or_near_tie, start, Recorded, Slow,
};

/// A model recording the rows of every forward, slowed to 10 ms a step so that concurrent requests overlap
/// even on a loaded machine.
struct Counting<M> {
    inner: M,
    rows: Arc<Mutex<Vec<usize>>>,
}

impl<M: InferModel> InferModel for Counting<M> {
    type Cache = M::Cache;
    fn config(&self) -> &ModelConfig {
        self.inner.config()
    }
    fn new_cache(&self, rows: usize, t_max: usize) -> Result<M::Cache, String> {
        self.inner.new_cache(rows, t_max)
    }
    fn row_len(&self, c: &M::Cache, row: usize) -> usize {
        self.inner.row_len(c, row)
    }
    fn clear_row(&self, c: &mut M::Cache, row: usize) -> Result<(), String> {
        self.inner.clear_row(c, row)
    }
    fn copy_row(&self, c: &mut M::Cache, src: usize, dst: usize) -> Result<(), String> {
        self.inner.copy_row(c, src, dst)
    }
    fn forward_rows(&self, c: &mut M::Cache, rows: &[usize], lens: &[usize], ids: &[u32]) -> Result<Vec<f32>, String> {
        self.rows.lock().unwrap().push(rows.len());
        std::thread::sleep(Duration::from_millis(10));
        InferModel::forward_rows(&self.inner, c, rows, lens, ids)
    }
}

/// Client i's request: prompts of different lengths, greedy for even i and seeded top-k sampling for odd i,
/// and one of the three answer formats.
fn request(i: usize) -> (String, Value) {
    let words = ["hello", "the cat sat on the mat", "number", "héllo wörld", "there"];
    let content: Vec<&str> = (0..1 + i % 6).map(|j| words[(i + j) % words.len()]).collect();
    let mut body = json!({
        "messages": [{"role": "user", "content": format!("{} {i}", content.join(" "))}],
        "max_tokens": 12 + i % 5,
        "seed": 1000 + i,
    });
    if i % 2 == 0 {
        body["temperature"] = json!(0.0);
    } else {
        body["temperature"] = json!(0.9);
        body["top_k"] = json!(20);
    }
    let path = match i % 3 {
        0 => "/chat/completions",
        1 => {
            body["stream"] = json!(false);
            "/v1/chat/completions"
        }
        _ => {
            body["stream"] = json!(true);
            "/v1/chat/completions"
        }
    };
    (path.to_string(), body)
}

/// What the engine writes for this request alone: (text as the server streams it, tokens, finish reason),
/// and the run's tokens and logits.
fn alone<M: InferModel + Sync>(
    engine: &Engine<M>,
    path: &str,
    body: &Value,
) -> (String, usize, &'static str, Recorded) {
    let tok = &engine.tokenizer;
    let (prompt, cfg) = request_settings(tok, engine.model.config().sequence_len, path, body);
    let run = generate_recorded(engine, &prompt, &cfg);
    let (text, n) = reply_text(tok, &run.0);
    let finish = if n < run.0.len() { "stop" } else { "length" };
    (text, n, finish, run)
}

/// The reply text, its token count where the format says it, and the finish reason where it says it.
fn reply(path: &str, body: &Value, raw: &[u8]) -> (String, Option<usize>, Option<String>) {
    if path == "/chat/completions" {
        let mut text = String::new();
        for e in events(raw) {
            let v: Value = serde_json::from_str(&e).unwrap();
            if let Some(t) = v["token"].as_str() {
                text.push_str(t);
            }
        }
        return (text, None, None);
    }
    if body["stream"] == json!(false) {
        let v: Value = serde_json::from_slice(raw).unwrap();
        let c = &v["choices"][0];
        return (
            c["message"]["content"].as_str().unwrap().to_string(),
            v["usage"]["completion_tokens"].as_u64().map(|n| n as usize),
            c["finish_reason"].as_str().map(String::from),
        );
    }
    let (mut text, mut finish) = (String::new(), None);
    for e in events(raw) {
        if e == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(&e).unwrap();
        let c = &v["choices"][0];
        if let Some(t) = c["delta"]["content"].as_str() {
            text.push_str(t);
        }
        if let Some(f) = c["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    (text, None, finish)
}

/// 16 clients at once against `batch_rows` rows of `engine`; every reply equals the request's reply alone on
/// `reference` (the same model). Returns the rows of every forward and each request's run alone.
fn sixteen_clients<M: InferModel + Sync + 'static>(
    engine: Engine<M>,
    reference: &Engine<M>,
    batch_rows: usize,
) -> (Vec<usize>, Vec<Recorded>) {
    let rows = Arc::new(Mutex::new(Vec::new()));
    let model = Counting {
        inner: engine.model,
        rows: rows.clone(),
    };
    let opts = Options {
        batch_rows,
        max_queue: 16,
        queue_timeout: Duration::from_secs(600),
        ..quiet()
    };
    let srv = start(Engine::new(model, engine.tokenizer), opts);
    let a = srv.addr();
    let handles: Vec<_> = (0..16)
        .map(|i| {
            std::thread::spawn(move || {
                let (path, body) = request(i);
                let (st, _, raw) = http(a, "POST", &path, body.to_string().as_bytes());
                (st, raw)
            })
        })
        .collect();
    let results: Vec<(u16, Vec<u8>)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let stats: Value = serde_json::from_slice(&http(a, "GET", "/stats", b"").2).unwrap();
    assert_eq!(stats["batching"], "continuous");
    assert_eq!(stats["batch_rows"], batch_rows);
    assert_eq!(stats["completions"], 16, "{stats}");
    srv.shutdown(Duration::from_secs(5));

    let mut tokens = 0;
    let mut runs = Vec::new();
    for (i, (st, raw)) in results.iter().enumerate() {
        let (path, body) = request(i);
        assert_eq!(*st, 200, "client {i}: {}", String::from_utf8_lossy(raw));
        let (want, n, finish, run) = alone(reference, &path, &body);
        let (got, count, fin) = reply(&path, &body, raw);
        // A row's logits do not depend on the other rows of its step (the CPU reference: engine test
        // ragged_rows_equal_each_row_alone_and_the_full_forward; the kernels: kernel_infer's
        // continuous_batching_jobs_on_the_kernels_equal_each_alone), so no near-tie can flip a token here.
        assert_eq!(
            got, want,
            "client {i} ({path}, {body}): the batched reply differs from the reply alone"
        );
        if let Some(c) = count {
            assert_eq!(c, n, "client {i}: completion tokens");
        }
        if let Some(f) = fin {
            assert_eq!(f, finish, "client {i}: finish reason");
        }
        tokens += n;
        runs.push(run);
    }
    let per_forward = rows.lock().unwrap().clone();
    assert!(
        per_forward.len() < tokens,
        "{} forwards for {tokens} tokens: the requests did not share forwards",
        per_forward.len()
    );
    assert!(per_forward.iter().all(|&r| r <= batch_rows));
    (per_forward, runs)
}

#[test]
fn sixteen_concurrent_clients_get_the_tokens_they_get_alone() {
    let (per_forward, _) = sixteen_clients(cpu_engine(), &cpu_engine(), 16);
    assert!(per_forward.iter().any(|&r| r > 4), "rows per forward: {per_forward:?}");
}

#[test]
fn with_fewer_rows_than_clients_requests_wait_and_join_as_rows_free_up() {
    let (per_forward, _) = sixteen_clients(cpu_engine(), &cpu_engine(), 3);
    assert!(per_forward.contains(&3), "rows per forward: {per_forward:?}");
}

#[test]
fn sixteen_concurrent_clients_on_the_emulator_get_the_tokens_they_get_alone() {
    // The same 16 clients on the kernels (an inference model on the emulator), 8 rows: each reply equals the
    // request alone on the emulator, and each request's tokens alone equal the CPU reference's, or where a
    // bf16 near-tie flips one, the logits of that draw agree within tolerance.
    let (cpu, emu) = noisy_engines();
    let (_, reference) = noisy_engines();
    let (per_forward, runs) = sixteen_clients(emu, &reference, 8);
    assert!(per_forward.iter().any(|&r| r > 2), "rows per forward: {per_forward:?}");
    let mut same = 0;
    for (i, run) in runs.iter().enumerate() {
        let (path, body) = request(i);
        let (_, _, _, want) = alone(&cpu, &path, &body);
        same += same_or_near_tie(&want, run, &format!("client {i}")) as usize;
    }
    eprintln!("{same} of 16 requests drew the CPU reference's tokens exactly");
    assert!(same >= 4, "only {same} of 16 requests match the CPU reference");
}

#[test]
fn a_full_kv_cache_and_queue_answer_503() {
    // 2 rows and a queue of 1: of 6 requests of ~0.4 s each, 2 run, 1 waits, the rest get 503 at once.
    let opts = Options {
        batch_rows: 2,
        max_queue: 1,
        queue_timeout: Duration::from_secs(30),
        ..quiet()
    };
    let srv = start(Slow::engine(512), opts);
    let a = srv.addr();
    let handles: Vec<_> = (0..6)
        .map(|i| {
            std::thread::spawn(move || {
                let path = if i % 2 == 0 {
                    "/chat/completions"
                } else {
                    "/v1/chat/completions"
                };
                let (st, _, body) = http(a, "POST", path, &chat("hi", json!({"max_tokens": 10})));
                (path, st, body)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.1 == 200).count();
    let busy = results.iter().filter(|r| r.1 == 503).count();
    assert_eq!(ok + busy, 6, "{:?}", results.iter().map(|r| r.1).collect::<Vec<_>>());
    assert!(ok >= 3, "the two running and the queued request finish");
    assert!(busy >= 1, "beyond the rows and the queue requests get 503");
    for (path, st, body) in &results {
        if *st == 503 {
            let v: Value = serde_json::from_slice(body).unwrap();
            let msg = if *path == "/chat/completions" {
                v["error"].as_str().unwrap().to_string()
            } else {
                assert_eq!(v["error"]["type"], "server_error");
                v["error"]["message"].as_str().unwrap().to_string()
            };
            assert!(msg.contains("KV cache is full"), "{msg}");
        } else if *path == "/chat/completions" {
            assert_eq!(events(body).len(), 11, "10 tokens and done");
        }
    }
    let stats: Value = serde_json::from_slice(&http(a, "GET", "/stats", b"").2).unwrap();
    assert_eq!(stats["rejected_busy"], busy);
    assert_eq!(stats["active_rows"], 0);
    srv.shutdown(Duration::from_secs(5));
}

#[test]
fn a_seed_repeats_a_sampled_reply_and_a_bad_seed_is_400() {
    let srv = start(
        cpu_engine(),
        Options {
            batch_rows: 4,
            ..quiet()
        },
    );
    let a = srv.addr();
    let body = chat("hello", json!({"temperature": 1.0, "seed": 7, "max_tokens": 16}));
    let one = http(a, "POST", "/v1/chat/completions", &body);
    let two = http(a, "POST", "/v1/chat/completions", &body);
    assert_eq!(one.0, 200);
    let text = |b: &[u8]| serde_json::from_slice::<Value>(b).unwrap()["choices"][0]["message"]["content"].clone();
    assert_eq!(text(&one.2), text(&two.2));
    let (st, _, b) = http(a, "POST", "/v1/chat/completions", &chat("hi", json!({"seed": -1})));
    assert_eq!(st, 400);
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["error"]["param"], "seed");
    srv.shutdown(Duration::from_secs(5));
}

/// A model whose forwards wait while `closed` is set: a request holds its row for as long as a test wants.
struct Gated<M> {
    inner: M,
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl<M: InferModel> InferModel for Gated<M> {
    type Cache = M::Cache;
    fn config(&self) -> &ModelConfig {
        self.inner.config()
    }
    fn new_cache(&self, rows: usize, t_max: usize) -> Result<M::Cache, String> {
        self.inner.new_cache(rows, t_max)
    }
    fn row_len(&self, c: &M::Cache, row: usize) -> usize {
        self.inner.row_len(c, row)
    }
    fn clear_row(&self, c: &mut M::Cache, row: usize) -> Result<(), String> {
        self.inner.clear_row(c, row)
    }
    fn copy_row(&self, c: &mut M::Cache, src: usize, dst: usize) -> Result<(), String> {
        self.inner.copy_row(c, src, dst)
    }
    fn forward_rows(&self, c: &mut M::Cache, rows: &[usize], lens: &[usize], ids: &[u32]) -> Result<Vec<f32>, String> {
        while self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(2));
        }
        self.inner.forward_rows(c, rows, lens, ids)
    }
}

#[test]
fn a_full_kv_cache_on_the_emulator_answers_503() {
    // One row and no queue on the kernels (the emulator): while a request holds the row (its forward held
    // back), the next one gets 503 at once with the KV-cache message; once it finishes, a request runs again.
    let (_, emu) = noisy_engines();
    let closed = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let model = Gated {
        inner: emu.model,
        closed: closed.clone(),
    };
    let opts = Options {
        batch_rows: 1,
        max_queue: 0,
        ..quiet()
    };
    let srv = start(Engine::new(model, emu.tokenizer), opts);
    let a = srv.addr();
    let long = std::thread::spawn(move || {
        http(
            a,
            "POST",
            "/v1/chat/completions",
            &chat("hello", json!({"max_tokens": 8})),
        )
    });
    loop {
        let stats: Value = serde_json::from_slice(&http(a, "GET", "/stats", b"").2).unwrap();
        if stats["active_rows"] == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for path in ["/v1/chat/completions", "/chat/completions"] {
        let (st, _, body) = http(a, "POST", path, &chat("hi", json!({"max_tokens": 4})));
        assert_eq!(st, 503, "{}", String::from_utf8_lossy(&body));
        let v: Value = serde_json::from_slice(&body).unwrap();
        let msg = v["error"]["message"].as_str().or(v["error"].as_str()).unwrap();
        assert!(msg.contains("KV cache is full (1 of 1 rows"), "{msg}");
    }
    closed.store(false, std::sync::atomic::Ordering::SeqCst);
    let (st, _, body) = long.join().unwrap();
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let (st, _, _) = http(a, "POST", "/v1/chat/completions", &chat("hi", json!({"max_tokens": 4})));
    assert_eq!(st, 200, "the row is free again");
    let stats: Value = serde_json::from_slice(&http(a, "GET", "/stats", b"").2).unwrap();
    assert_eq!(stats["rejected_busy"], 2);
    srv.shutdown(Duration::from_secs(5));
}
