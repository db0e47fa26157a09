//! Server start-up and a loopback HTTP client shared by the serving tests: the test tokenizer, a tiny CPU
//! engine, quiet options, a slow fake model, and one-request HTTP with chunked decoding and SSE parsing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use std::sync::Mutex;

use nanochat::config::ModelConfig;
use nanochat::cpu::infer::CpuInfer;
use nanochat::device::emu::EmuDevice;
use nanochat::device::model::KernelModel;
use nanochat::device::Schedule;
use nanochat::engine::{Engine, GenConfig, InferModel, TextStream};
use nanochat::params::ParamTable;
use nanochat::rng::Rng;
use nanochat::serve::api::{parse_request, render_prompt};
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

/// The model of [`cpu_engine`] with noise on every parameter (so that zero-initialized projections matter
/// and the logits are spread out) on the CPU reference and as an inference model on the emulator.
pub fn noisy_engines() -> (Engine<CpuInfer>, Engine<KernelModel>) {
    let engine = cpu_engine();
    let cfg = engine.model.config.clone();
    let table = ParamTable::new(&cfg);
    let mut p = vec![0.0; table.numel];
    table.init(&mut p, 9);
    let mut rng = Rng::new(10);
    p.iter_mut().for_each(|x| *x += 0.1 * rng.normal());
    let emu = KernelModel::for_inference(Box::new(EmuDevice::new(Schedule::Forward)), &cfg, &p).unwrap();
    (
        Engine::new(CpuInfer::new(&cfg, p).unwrap(), engine.tokenizer.clone()),
        Engine::new(emu, engine.tokenizer),
    )
}

/// A model that records the logits of its every forward.
pub struct Recording<M> {
    pub inner: M,
    pub logits: Mutex<Vec<Vec<f32>>>,
}

impl<M: InferModel> InferModel for Recording<M> {
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
        let l = self.inner.forward_rows(c, rows, lens, ids)?;
        self.logits.lock().unwrap().push(l.clone());
        Ok(l)
    }
}

/// One generation alone (one sample): every token the engine emits (the end token included) and the
/// logits each was drawn from.
pub type Recorded = (Vec<u32>, Vec<Vec<f32>>);

pub fn generate_recorded<M: InferModel + Sync>(engine: &Engine<M>, prompt: &[u32], cfg: &GenConfig) -> Recorded {
    let rec = Engine::new(
        Recording {
            inner: &engine.model,
            logits: Mutex::new(Vec::new()),
        },
        engine.tokenizer.clone(),
    );
    let mut tokens = Vec::new();
    rec.generate(prompt, cfg, &mut |col, _| {
        tokens.push(col[0]);
        true
    })
    .unwrap();
    let logits = rec.model.logits.into_inner().unwrap();
    (tokens, logits)
}

/// bf16 tolerance on the softcapped logits of the tiny models (bf16 weights and activations, two layers).
pub const LOGIT_TOL: f32 = 0.1;

/// Whether the kernel run `dev` drew the CPU run's tokens. Where it did not, a bf16 near-tie flipped a draw:
/// this asserts that the logits of the first differing draw agree within [`LOGIT_TOL`] and says so.
pub fn same_or_near_tie(cpu: &Recorded, dev: &Recorded, what: &str) -> bool {
    let Some(i) = cpu.0.iter().zip(&dev.0).position(|(a, b)| a != b) else {
        assert_eq!(cpu.0.len(), dev.0.len(), "{what}: the same tokens, but not as many");
        return true;
    };
    let (a, b) = (&cpu.1[i], &dev.1[i]);
    let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    let (ct, dt) = (cpu.0[i] as usize, dev.0[i] as usize);
    eprintln!(
        "{what}: token {i} differs (cpu {ct}, kernels {dt}): a near-tie, the cpu logits of the two are {} and {}, the logits agree within {d}",
        a[ct], a[dt]
    );
    assert!(d <= LOGIT_TOL, "{what}: token {i}: the logits differ by {d}");
    false
}

/// The reply text a request's tokens stream as (up to the end token), and the token count.
pub fn reply_text(engine_tok: &Tokenizer, tokens: &[u32]) -> (String, usize) {
    let end = engine_tok.special_id("<|assistant_end|>").unwrap();
    let (mut stream, mut text, mut n) = (TextStream::new(), String::new(), 0);
    for &t in tokens {
        if t == end || t == engine_tok.bos_id() {
            break;
        }
        n += 1;
        text.push_str(&stream.push(engine_tok, t));
    }
    (text, n)
}

/// The prompt and sampling settings the server runs a request `body` to `path` with.
pub fn request_settings(engine_tok: &Tokenizer, context: usize, path: &str, body: &Value) -> (Vec<u32>, GenConfig) {
    let defaults = Options::default().defaults;
    let chat = parse_request(body.to_string().as_bytes(), defaults, path.starts_with("/v1/")).unwrap();
    let (prompt, _) = render_prompt(engine_tok, &chat.messages, context, chat.max_tokens.min(context / 2)).unwrap();
    let cfg = GenConfig {
        num_samples: 1,
        max_tokens: Some(chat.max_tokens.min(context - prompt.len())),
        temperature: chat.temperature,
        top_k: Some(chat.top_k),
        seed: chat.seed.expect("the request sets its seed"),
    };
    (prompt, cfg)
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
