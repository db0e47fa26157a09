//! Server start-up and a loopback HTTP client shared by the serving tests: the test tokenizer, a tiny CPU
//! engine, quiet options, a slow fake model, and one-request HTTP with chunked decoding and SSE parsing.

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

pub fn tokenizer() -> Tokenizer {
    let docs = (0..200).map(|i| format!("hello there, number {i}! the cat sat on the mat. héllo wörld"));
    Tokenizer::train(docs, 300, 64, &mut |_, _| {}).unwrap()
}

/// A 2-layer, 64-wide model on the CPU reference (GQA 2 over 1, windows "SL"), context 128.
pub fn cpu_engine() -> Engine<CpuInfer> {
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

/// No request log, a 64 KiB body cap.
pub fn quiet() -> Options {
    Options {
        log: false,
        max_body: 64 * 1024,
        ..Options::default()
    }
}

/// One engine on 127.0.0.1, any free port.
pub fn start<M: InferModel + Sync + 'static>(engine: Engine<M>, opts: Options) -> Server {
    Server::start(vec![engine], vec!["cpu".into()], opts, "127.0.0.1:0").unwrap()
}

/// A slow model that never ends: 40 ms per step, always the byte 'a'.
pub struct Slow {
    pub cfg: ModelConfig,
}

impl Slow {
    pub fn engine(sequence_len: usize) -> Engine<Slow> {
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
        Engine::new(Slow { cfg }, tok)
    }
}

impl InferModel for Slow {
    type Cache = ();
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    fn new_cache(&self, _: usize, _: usize) -> Result<(), String> {
        Ok(())
    }
    fn row_len(&self, _: &(), _: usize) -> usize {
        0
    }
    fn clear_row(&self, _: &mut (), _: usize) -> Result<(), String> {
        Ok(())
    }
    fn copy_row(&self, _: &mut (), _: usize, _: usize) -> Result<(), String> {
        Ok(())
    }
    fn forward_rows(&self, _: &mut (), rows: &[usize], _: &[usize], _: &[u32]) -> Result<Vec<f32>, String> {
        std::thread::sleep(Duration::from_millis(40));
        let mut row = vec![0.0; self.cfg.vocab_size];
        row[b'a' as usize] = 30.0;
        Ok(row.repeat(rows.len()))
    }
}

/// One request with `Connection: close`; returns (status, head, body), the body de-chunked.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
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
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, head, body)
}

pub fn dechunk(mut b: &[u8]) -> Vec<u8> {
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
pub fn events(body: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(body).expect("the stream is valid UTF-8");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("data event").to_string())
        .collect()
}

/// A one-message chat body (40 tokens unless `extra` says otherwise) with the fields of `extra`.
pub fn chat(content: &str, extra: Value) -> Vec<u8> {
    let mut v = json!({"messages": [{"role": "user", "content": content}], "max_tokens": 40});
    v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    v.to_string().into_bytes()
}
