//! chat_cli and chat_web as programs, on a base directory with a tokenizer and a (random) base checkpoint:
//! the sft → base fallback notice, a single-shot reply, an interactive session, and chat_web answering on
//! loopback then stopping cleanly on SIGTERM.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nanochat::checkpoint::{self, LoopState, Meta};
use nanochat::config::ModelConfig;
use nanochat::params::ParamTable;
use nanochat::tokenizer::{Tokenizer, TOKENIZER_FILE};

fn prepare(base: &Path) {
    let docs = (0..200).map(|i| format!("hello there, number {i}! the cat sat on the mat."));
    let tok = Tokenizer::train(docs, 300, 64, &mut |_, _| {}).unwrap();
    std::fs::create_dir_all(base.join("tokenizer")).unwrap();
    tok.save(&base.join("tokenizer").join(TOKENIZER_FILE)).unwrap();
    let cfg = ModelConfig {
        sequence_len: 64,
        vocab_size: tok.vocab_size(),
        n_layer: 2,
        n_head: 2,
        n_kv_head: 2,
        n_embd: 64,
        window_pattern: "L".into(),
    };
    let table = ParamTable::new(&cfg);
    let mut p = vec![0.0; table.numel];
    table.init(&mut p, 1);
    let meta = Meta {
        step: 5,
        val_bpb: None,
        model_config: cfg,
        user_config: serde_json::json!({}),
        device_batch_size: 1,
        max_seq_len: 64,
        total_batch_size: 64,
        dataloader_state_dict: serde_json::json!({}),
        loop_state: LoopState::default(),
    };
    let dir = checkpoint::checkpoint_dir(base, "base", "d2");
    checkpoint::save(&dir, &meta, &table, &p, &BTreeMap::new(), 0).unwrap();
}

#[test]
fn chat_cli_single_shot_and_interactive() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    // Nothing there yet: a clear error, no panic.
    let out = Command::new(env!("CARGO_BIN_EXE_chat_cli"))
        .args(["-p", "hi"])
        .env("NANOCHAT_BASE_DIR", base)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no base checkpoints"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    prepare(base);
    let out = Command::new(env!("CARGO_BIN_EXE_chat_cli"))
        .args(["-p", "hello there", "-t", "0"])
        .env("NANOCHAT_BASE_DIR", base)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("no sft checkpoint"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Assistant:"));

    // Interactive: many turns in a 64-token context (old turns get dropped), clear, empty lines, quit.
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat_cli"))
        .args(["-i", "base", "--max-tokens", "12"])
        .env("NANOCHAT_BASE_DIR", base)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let script = "hello\n\nthe cat sat\non the mat\nnumber one\nnumber two\nclear\nhi again\nquit\n";
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{se}");
    assert_eq!(so.matches("Assistant:").count(), 6, "{so}");
    assert!(so.contains("(conversation cleared)"));
    assert!(se.contains("dropping the"), "{se}");
    assert!(!se.contains("error"), "{se}");
}

#[test]
fn chat_web_serves_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    prepare(tmp.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat_web"))
        .args(["--host", "127.0.0.1", "--port", "0", "-i", "base"])
        .env("NANOCHAT_BASE_DIR", tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_string();
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = r#"{"messages":[{"role":"user","content":"hello"}],"max_tokens":8}"#;
    write!(
        s,
        "POST /chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    // Chunked: the done event is the last chunk with data, then the empty last chunk ends the body.
    assert!(resp.contains("Transfer-Encoding: chunked\r\n"), "{resp}");
    assert!(resp.ends_with("data: {\"done\":true}\n\n\r\n0\r\n\r\n"), "{resp}");

    // /v1/models describes the checkpoint that prepare() wrote.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let json = &resp[resp.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let m = &v["data"][0];
    assert_eq!(m["id"], "nanochat-base-d2", "{v}");
    assert_eq!((m["step"].as_u64(), m["context_length"].as_u64()), (Some(5), Some(64)));
    let ckpt = m["checkpoint"].as_str().unwrap();
    assert!(ckpt.ends_with("base_checkpoints/d2"), "{ckpt}");
    assert!(m["created"].as_u64().unwrap() > 1_600_000_000, "{m}");

    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains("POST /chat/completions -> 200"), "{err}");
    assert!(err.contains("stopped"), "{err}");
}
