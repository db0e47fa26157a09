//! Load test of the chat server on loopback: concurrent clients stream replies from a tiny CPU model through
//! `POST /chat/completions`. Bounded in count (`REQUESTS`) and time (`DEADLINE`). Prints requests/s, p50/p99
//! latency, errors and the process's resident memory before and after.
//! Run with `cargo bench --bench decode_load`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nanochat::config::ModelConfig;
use nanochat::cpu::infer::CpuInfer;
use nanochat::engine::Engine;
use nanochat::params::ParamTable;
use nanochat::serve::{Options, Server};
use nanochat::tokenizer::Tokenizer;

const REQUESTS: usize = 200;
const CLIENTS: usize = 8;
const WORKERS: usize = 2;
const MAX_TOKENS: usize = 16;
const DEADLINE: Duration = Duration::from_secs(120);

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn engine() -> Engine<CpuInfer> {
    let docs = (0..300).map(|i| format!("the quick brown fox {i} jumps over the lazy dog. hello!"));
    let tok = Tokenizer::train(docs, 512, 64, &mut |_, _| {}).expect("tokenizer");
    let mut cfg = ModelConfig::from_depth(2, 64, 64, 256, tok.vocab_size(), "SL");
    cfg.vocab_size = tok.vocab_size();
    let table = ParamTable::new(&cfg);
    let mut p = vec![0.0; table.numel];
    table.init(&mut p, 3);
    Engine::new(CpuInfer::new(&cfg, p).expect("model"), tok)
}

/// One streamed chat request; Ok(tokens events) when it ends with the done event.
fn request(addr: SocketAddr, i: usize) -> Result<usize, String> {
    let body = format!(r#"{{"messages":[{{"role":"user","content":"hello number {i}"}}],"max_tokens":{MAX_TOKENS}}}"#);
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "POST /chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    if !resp.starts_with("HTTP/1.1 200") {
        return Err(resp.lines().next().unwrap_or("").to_string());
    }
    if !resp.ends_with("data: {\"done\":true}\n\n") {
        return Err("stream did not finish".into());
    }
    Ok(resp.matches("data: {\"gpu\"").count())
}

fn main() {
    let engines: Vec<_> = (0..WORKERS).map(|_| engine()).collect();
    let opts = Options {
        log: false,
        max_queue: 64,
        ..Options::default()
    };
    let devices = vec!["cpu".to_string(); WORKERS];
    let srv = Server::start(engines, devices, opts, "127.0.0.1:0").expect("server");
    let addr = srv.addr();
    // Warm-up, then the baseline memory.
    request(addr, 0).expect("warm-up request");
    let rss0 = rss_mib();
    let next = Arc::new(AtomicUsize::new(0));
    let lat = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (next, lat, errors, tokens) = (next.clone(), lat.clone(), errors.clone(), tokens.clone());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= REQUESTS || t0.elapsed() > DEADLINE {
                    return;
                }
                let t = Instant::now();
                match request(addr, i) {
                    Ok(n) => {
                        tokens.fetch_add(n, Ordering::Relaxed);
                        lat.lock().expect("latency list").push(t.elapsed().as_secs_f64());
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("request {i}: {e}");
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client thread");
    }
    let wall = t0.elapsed().as_secs_f64();
    let rss1 = rss_mib();
    let mut lat = lat.lock().expect("latency list").clone();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
            * 1e3
    };
    println!(
        "{} requests ({CLIENTS} clients, {WORKERS} workers, up to {MAX_TOKENS} tokens each) in {wall:.1} s: {:.1} requests/s, {:.0} streamed events/s",
        lat.len(),
        lat.len() as f64 / wall,
        tokens.load(Ordering::Relaxed) as f64 / wall
    );
    println!(
        "latency p50 {:.0} ms, p99 {:.0} ms; errors: {}; memory (RSS) before {rss0:.1} MiB, after {rss1:.1} MiB",
        pct(0.5),
        pct(0.99),
        errors.load(Ordering::Relaxed)
    );
    srv.shutdown(Duration::from_secs(10));
}
