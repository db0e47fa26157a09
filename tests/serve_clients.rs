//! The chat server against real HTTP clients: curl (streaming and not; it must exit 0 on its own, so a body
//! that never ends fails at curl's --max-time), and Python's `requests` (bodies read to their end, 16 concurrent
//! clients against a queue of 4) and the official `openai` package (models, both modes, usage, errors) from
//! tests/clients/clients.py. The Python clients live in a virtual environment that tools/client_venv.sh fills
//! from PyPI (`.ci/run` runs it first); the test runs it itself when the environment is missing, and skips,
//! saying why, only when there is no python3 with venv or no curl.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nanochat::config::ModelConfig;
use nanochat::cpu::infer::CpuInfer;
use nanochat::engine::{Engine, InferModel};
use nanochat::params::ParamTable;
use nanochat::serve::{ModelInfo, Options, Server};
use nanochat::tokenizer::Tokenizer;
use serde_json::Value;

const MODEL_ID: &str = "nanochat-test-d2";

fn tokenizer() -> Tokenizer {
    let docs = (0..200).map(|i| format!("hello there, number {i}! the cat sat on the mat. héllo wörld"));
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

/// 40 ms per step, always the byte 'a': a request of n tokens holds its worker n × 40 ms.
struct Slow {
    cfg: ModelConfig,
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

fn opts() -> Options {
    Options {
        log: false,
        model: ModelInfo {
            id: MODEL_ID.into(),
            step: Some(5),
            ..ModelInfo::default()
        },
        ..Options::default()
    }
}

fn cpu_server() -> Server {
    Server::start(vec![cpu_engine()], vec!["cpu".into()], opts(), "127.0.0.1:0").unwrap()
}

/// One slow worker with a queue of 4 (chat_web --max-queue 4).
fn busy_server() -> Server {
    let tok = tokenizer();
    let cfg = ModelConfig {
        sequence_len: 256,
        vocab_size: tok.vocab_size(),
        n_layer: 1,
        n_head: 1,
        n_kv_head: 1,
        n_embd: 32,
        window_pattern: "L".into(),
    };
    let o = Options { max_queue: 4, ..opts() };
    Server::start(
        vec![Engine::new(Slow { cfg }, tok)],
        vec!["cpu".into()],
        o,
        "127.0.0.1:0",
    )
    .unwrap()
}

/// Runs a command, killing it after `limit` (a safety net: the commands set their own timeouts).
fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let end = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn have(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// curl as a user types it (keep-alive HTTP/1.1, no Connection: close), with a 20 s cap: (exit code, body).
fn curl(args: &[&str]) -> (Option<i32>, String, String) {
    let out = run_bounded(
        Command::new("curl").args(["-sS", "-N", "--max-time", "20"]).args(args),
        Duration::from_secs(40),
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn curl_gets_bodies_that_end() {
    if !have("curl", "--version") {
        eprintln!("SKIPPED: curl is not installed (.ci/run installs it: apt-get install curl)");
        return;
    }
    let srv = cpu_server();
    let url = format!("http://{}", srv.addr());
    let chat = r#"{"messages":[{"role":"user","content":"Tell me"}],"max_tokens":8}"#;

    // The issue's command line: upstream's stream. curl exits 0 by itself only if the body ends.
    let (code, out, err) = curl(&["-X", "POST", &format!("{url}/chat/completions"), "-d", chat]);
    assert_eq!(code, Some(0), "curl: {err}\n{out}");
    assert!(out.ends_with("data: {\"done\":true}\n\n"), "{out}");
    assert!(out.starts_with("data: {\"gpu\":0,\"token\":"), "{out}");

    // The OpenAI stream, and the same over HTTP/1.0 (no chunked encoding there: a Content-Length).
    let stream = r#"{"messages":[{"role":"user","content":"Tell me"}],"max_tokens":8,"stream":true}"#;
    for extra in [&[][..], &["--http1.0"][..]] {
        let mut args = vec!["-X", "POST", "-H", "Content-Type: application/json"];
        args.extend_from_slice(extra);
        let target = format!("{url}/v1/chat/completions");
        args.extend_from_slice(&[target.as_str(), "-d", stream]);
        let (code, out, err) = curl(&args);
        assert_eq!(code, Some(0), "curl {extra:?}: {err}\n{out}");
        assert!(out.ends_with("data: [DONE]\n\n"), "{extra:?}: {out}");
    }

    // Not streaming: one JSON document.
    let (code, out, err) = curl(&["-X", "POST", &format!("{url}/v1/chat/completions"), "-d", chat]);
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL_ID);

    // Models, and an error object with its HTTP status (-w appends it after the body).
    let (code, out, _) = curl(&[&format!("{url}/v1/models")]);
    assert_eq!(code, Some(0));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["data"][0]["id"], MODEL_ID);
    assert_eq!(v["data"][0]["context_length"], 128);
    let bad = r#"{"messages":[{"role":"user","content":"hi"}],"top_k":500}"#;
    let (code, out, _) = curl(&[
        "-w",
        "\n%{http_code}",
        "-X",
        "POST",
        &format!("{url}/v1/chat/completions"),
        "-d",
        bad,
    ]);
    assert_eq!(code, Some(0));
    let (json, status) = out.rsplit_once('\n').unwrap();
    assert_eq!(status, "400");
    let v: Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["error"]["param"], "top_k");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    srv.shutdown(Duration::from_secs(5));
}

/// The clients' virtual environment, made by tools/client_venv.sh when missing; None when python3 or its venv
/// module is absent.
fn client_python(root: &Path) -> Option<PathBuf> {
    let venv = std::env::var_os("NANOCHAT_CLIENT_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv-clients"));
    let py = venv.join("bin").join("python");
    let ready = |py: &Path| {
        Command::new(py)
            .args(["-c", "import requests, openai"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if ready(&py) {
        return Some(py);
    }
    if !have("python3", "--version")
        || !Command::new("python3")
            .args(["-c", "import venv, ensurepip"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    {
        return None;
    }
    let out = run_bounded(
        Command::new("bash").arg(root.join("tools/client_venv.sh")).arg(&venv),
        Duration::from_secs(300),
    );
    assert!(
        out.status.success() && ready(&py),
        "tools/client_venv.sh could not install requests and openai from PyPI:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(py)
}

#[test]
fn python_requests_and_openai_clients() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let Some(py) = client_python(root) else {
        eprintln!(
            "SKIPPED: no python3 with the venv module (.ci/run installs python3-venv; then tools/client_venv.sh)"
        );
        return;
    };
    let (srv, busy) = (cpu_server(), busy_server());
    let out = run_bounded(
        Command::new(py).args([
            root.join("tests/clients/clients.py").to_str().unwrap(),
            &format!("http://{}", srv.addr()),
            MODEL_ID,
            &format!("http://{}", busy.addr()),
        ]),
        Duration::from_secs(240),
    );
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    println!("{so}");
    assert!(out.status.success(), "clients.py failed:\n{so}\n{se}");
    assert!(so.contains("all client checks passed"), "{so}");
    srv.shutdown(Duration::from_secs(5));
    busy.shutdown(Duration::from_secs(5));
}
