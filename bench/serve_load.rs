//! Load test of the `chat_web` program on loopback, as clients meet it: waves of 16 concurrent clients, each on
//! its own kept-alive HTTP/1.1 connection (no `Connection: close`, so a body that does not end hangs the
//! client), against one worker with `--max-queue 4`, twice: one request per worker at a time
//! (`--batch-rows 0`), then continuous batching (`--batch-rows 16`: the 16 clients share each decode step). Requests rotate over upstream's stream, the OpenAI stream
//! and the OpenAI answer. Every request must be answered 200 (a complete body) or 503 within 30 s; the
//! server's resident memory must grow by less than 32 MiB over the run (at least 1,000 requests). Bounded:
//! the waves stop at `REQUESTS` or after `DEADLINE`, every read has a 30 s timeout, and the server is killed at
//! the end. Prints requests/s, p50/p99 latency and the server's RSS before and after for each mode, then the
//! two side by side; exits 1 on a failure.
//!
//! `cargo bench --bench serve_load` (`--profile dev` skips the release build).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nanochat::checkpoint::{self, LoopState, Meta};
use nanochat::config::ModelConfig;
use nanochat::params::ParamTable;
use nanochat::tokenizer::{Tokenizer, TOKENIZER_FILE};

const CLIENTS: usize = 16;
const MIN_WAVES: usize = 4;
const REQUESTS: usize = 1008; // 63 waves
const MAX_TOKENS: usize = 16;
const ANSWER_LIMIT: Duration = Duration::from_secs(30);
const DEADLINE: Duration = Duration::from_secs(300);
const RSS_LIMIT_MIB: f64 = 32.0;

/// A tokenizer and a random base checkpoint under `base`, for chat_web to load.
fn prepare(base: &Path) {
    let docs = (0..300).map(|i| format!("the quick brown fox {i} jumps over the lazy dog. hello!"));
    let tok = Tokenizer::train(docs, 512, 64, &mut |_, _| {}).expect("tokenizer");
    std::fs::create_dir_all(base.join("tokenizer")).unwrap();
    tok.save(&base.join("tokenizer").join(TOKENIZER_FILE)).unwrap();
    let cfg = ModelConfig {
        sequence_len: 256,
        vocab_size: tok.vocab_size(),
        n_layer: 2,
        n_head: 2,
        n_kv_head: 2,
        n_embd: 64,
        window_pattern: "L".into(),
    };
    let table = ParamTable::new(&cfg);
    let mut p = vec![0.0; table.numel];
    table.init(&mut p, 3);
    let meta = Meta {
        step: 1,
        val_bpb: None,
        model_config: cfg,
        user_config: serde_json::json!({}),
        device_batch_size: 1,
        max_seq_len: 256,
        total_batch_size: 256,
        dataloader_state_dict: serde_json::json!({}),
        loop_state: LoopState::default(),
    };
    let dir = checkpoint::checkpoint_dir(base, "base", "d2");
    checkpoint::save(&dir, &meta, &table, &p, &BTreeMap::new(), 0).unwrap();
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Reads one response by its framing (Content-Length or chunked): (status, body).
fn read_response(s: &mut TcpStream) -> std::io::Result<(u16, Vec<u8>)> {
    let mut r = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("connection closed in the head"));
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    let mut body = Vec::new();
    if let Some(i) = head.find("content-length: ") {
        let n: usize = head[i + 16..]
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0);
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else if head.contains("transfer-encoding: chunked") {
        loop {
            let mut line = String::new();
            r.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim(), 16).map_err(std::io::Error::other)?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        return Err(std::io::Error::other(format!("no framing in {head}")));
    }
    Ok((status, body))
}

/// What one request got: status and latency, or what went wrong.
type Outcome = Result<(u16, Duration), String>;

fn request(addr: &str, i: usize) -> Outcome {
    let (path, extra, end): (&str, &str, &[u8]) = match i % 3 {
        0 => ("/chat/completions", "", b"data: {\"done\":true}\n\n"),
        1 => ("/v1/chat/completions", r#","stream":true"#, b"data: [DONE]\n\n"),
        _ => ("/v1/chat/completions", "", b"}"),
    };
    let body =
        format!(r#"{{"messages":[{{"role":"user","content":"hello number {i}"}}],"max_tokens":{MAX_TOKENS}{extra}}}"#);
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(ANSWER_LIMIT)).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| format!("send: {e}"))?;
    let (status, body) = read_response(&mut s).map_err(|e| format!("{path}: {e}"))?;
    let took = t0.elapsed();
    match status {
        200 if !body.ends_with(end) => Err(format!("{path}: 200 with an incomplete body")),
        200 | 503 if took <= ANSWER_LIMIT => Ok((status, took)),
        200 | 503 => Err(format!("{path}: {status} after {took:?}")),
        other => Err(format!("{path}: status {other}")),
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One mode's figures: requests/s, completed/s, p50 and p99 latency of the 200s (ms).
struct Figures {
    rps: f64,
    completed: f64,
    p50: f64,
    p99: f64,
}

fn main() {
    let tmp = tempfile::tempdir().expect("temp dir");
    prepare(tmp.path());
    let mut failed = false;
    let mut rows = Vec::new();
    for (name, batch_rows) in [("one request per worker", "0"), ("continuous batching", "16")] {
        let (f, bad) = run(tmp.path(), name, batch_rows);
        failed |= bad;
        rows.push((name, f));
    }
    println!(
        "serve_load: {:<24} {:>10} {:>12} {:>10} {:>10}",
        "mode", "requests/s", "completed/s", "p50 ms", "p99 ms"
    );
    for (name, f) in &rows {
        println!(
            "serve_load: {name:<24} {:>10.1} {:>12.1} {:>10.1} {:>10.1}",
            f.rps, f.completed, f.p50, f.p99
        );
    }
    if failed {
        std::process::exit(1);
    }
    println!("serve_load: ok");
}

/// Runs the waves against a fresh chat_web with `--batch-rows batch_rows`: (figures, whether it failed).
fn run(base: &Path, name: &str, batch_rows: &str) -> (Figures, bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat_web"))
        .args(["--host", "127.0.0.1", "--port", "0", "-i", "base"])
        .args(["--max-queue", "4", "-n", "1", "--batch-rows", batch_rows])
        .env("NANOCHAT_BASE_DIR", base)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chat_web");
    let stdout = child.stdout.take().unwrap();
    let server = Killed(child);
    let pid = server.0.id();
    let first = BufReader::new(stdout).lines().next().unwrap().unwrap();
    let addr = first
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_string();
    let rss_start = rss_mib(pid);

    let t0 = Instant::now();
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut rss_after_wave1 = f64::NAN;
    let mut waves = 0;
    while (outcomes.len() < REQUESTS || waves < MIN_WAVES) && t0.elapsed() < DEADLINE {
        let base = outcomes.len();
        let handles: Vec<_> = (0..CLIENTS)
            .map(|k| {
                let a = addr.clone();
                std::thread::spawn(move || request(&a, base + k))
            })
            .collect();
        outcomes.extend(
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("client panicked".into()))),
        );
        waves += 1;
        if waves == 1 {
            rss_after_wave1 = rss_mib(pid);
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let rss_end = rss_mib(pid);

    let mut ok = Vec::new();
    let mut all = Vec::new();
    let (mut busy, mut errors) = (0, Vec::new());
    for o in &outcomes {
        match o {
            Ok((200, d)) => {
                ok.push(*d);
                all.push(*d);
            }
            Ok((_, d)) => {
                busy += 1;
                all.push(*d);
            }
            Err(e) => errors.push(e.clone()),
        }
    }
    ok.sort();
    all.sort();
    println!(
        "serve_load, {name}: {} requests in {waves} waves of {CLIENTS} (one worker, --max-queue 4, --batch-rows {batch_rows}, {MAX_TOKENS} tokens each) in {wall:.1} s",
        outcomes.len()
    );
    println!(
        "  answered: {} x 200, {busy} x 503, {} failed; {:.1} requests/s ({:.1} completed/s)",
        ok.len(),
        errors.len(),
        outcomes.len() as f64 / wall,
        ok.len() as f64 / wall
    );
    println!(
        "  latency of 200s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; of all answers: p50 {:.1} ms, p99 {:.1} ms",
        pct(&ok, 0.5),
        pct(&ok, 0.99),
        pct(&ok, 1.0),
        pct(&all, 0.5),
        pct(&all, 0.99)
    );
    let growth = rss_end - rss_start;
    println!(
        "  server RSS: {rss_start:.1} MiB at start, {rss_after_wave1:.1} MiB after the first wave, {rss_end:.1} MiB at the end (growth {growth:.1} MiB, limit {RSS_LIMIT_MIB})"
    );
    let mut failed = false;
    for e in errors.iter().take(10) {
        println!("  FAILED request: {e}");
        failed = true;
    }
    if outcomes.len() < REQUESTS {
        println!(
            "  FAILED: only {} requests before the {DEADLINE:?} deadline",
            outcomes.len()
        );
        failed = true;
    }
    if ok.is_empty() {
        println!("  FAILED: no request was answered 200");
        failed = true;
    }
    if growth.is_nan() || growth >= RSS_LIMIT_MIB {
        println!("  FAILED: RSS grew {growth:.1} MiB");
        failed = true;
    }
    drop(server);
    let figures = Figures {
        rps: outcomes.len() as f64 / wall,
        completed: ok.len() as f64 / wall,
        p50: pct(&ok, 0.5),
        p99: pct(&ok, 0.99),
    };
    (figures, failed)
}
