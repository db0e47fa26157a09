//! The chat page in a real browser: headless Chromium opens the page served by the chat server, a message is
//! sent (the page's `?q=` link), and the streamed reply appears in the page. Needs Debian's `chromium` package
//! (`.ci/run` installs it), so it is ignored in a plain `cargo test`; run with `--ignored`.

use std::process::Command;
use std::time::Duration;

use nanochat::config::ModelConfig;
use nanochat::engine::{Engine, InferModel};
use nanochat::serve::{Options, Server};
use nanochat::tokenizer::Tokenizer;

const REPLY: &str = "Hello from nanochat \u{2713} <ok> & done";

/// Writes `REPLY` byte by byte (one byte-level token per step, so the check mark arrives in three pieces), then
/// `<|assistant_end|>`. The cache counts the steps.
struct Scripted {
    cfg: ModelConfig,
    script: Vec<u32>,
}

impl InferModel for Scripted {
    /// Steps per row.
    type Cache = Vec<usize>;
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    fn new_cache(&self, rows: usize, _: usize) -> Result<Vec<usize>, String> {
        Ok(vec![0; rows])
    }
    fn row_len(&self, steps: &Vec<usize>, row: usize) -> usize {
        steps.get(row).copied().unwrap_or(0)
    }
    fn clear_row(&self, steps: &mut Vec<usize>, row: usize) -> Result<(), String> {
        steps[row] = 0;
        Ok(())
    }
    fn copy_row(&self, steps: &mut Vec<usize>, src: usize, dst: usize) -> Result<(), String> {
        steps[dst] = steps[src];
        Ok(())
    }
    fn forward_rows(&self, steps: &mut Vec<usize>, rows: &[usize], _: &[usize], _: &[u32]) -> Result<Vec<f32>, String> {
        let mut out = Vec::new();
        for &r in rows {
            let next = self.script[steps[r].min(self.script.len() - 1)];
            steps[r] += 1;
            let mut row = vec![0.0; self.cfg.vocab_size];
            row[next as usize] = 30.0;
            out.extend(row);
        }
        Ok(out)
    }
}

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

/// Runs headless Chromium on `url` and returns the DOM once the page settled.
fn dump_dom(browser: &str, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=20000",
            "--timeout=60000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs headless Chromium; .ci/run installs it and runs this test"]
fn page_streams_a_reply_in_headless_chromium() {
    let browser = chromium().expect("no chromium on PATH (apt-get install chromium)");
    let docs = (0..50).map(|i| format!("hello {i}"));
    let tok = Tokenizer::train(docs, 280, 64, &mut |_, _| {}).unwrap();
    let mut script: Vec<u32> = REPLY.bytes().map(|b| tok.encode_ordinary_bytes(&[b])[0]).collect();
    script.push(tok.special_id("<|assistant_end|>").unwrap());
    let cfg = ModelConfig {
        sequence_len: 256,
        vocab_size: tok.vocab_size(),
        n_layer: 1,
        n_head: 1,
        n_kv_head: 1,
        n_embd: 32,
        window_pattern: "L".into(),
    };
    let engine = Engine::new(Scripted { cfg, script }, tok);
    let opts = Options {
        log: false,
        ..Options::default()
    };
    let srv = Server::start(vec![engine], vec!["cpu".into()], opts, "127.0.0.1:0").unwrap();
    let url = format!("http://{}/?q=Hi%20there&temperature=0", srv.addr());
    // --dump-dom snapshots the page once the load settles; a stream still arriving can miss the snapshot on a
    // loaded machine, so a few attempts are allowed for the reply to be complete.
    let mut dom = String::new();
    for _ in 0..3 {
        dom = dump_dom(browser, &url);
        if dom.contains("data-done=\"true\"") {
            break;
        }
    }
    // The user's message and the finished, streamed reply are in the page.
    assert!(dom.contains(">Hi there</div>"), "{dom}");
    let start = dom
        .find("class=\"msg assistant\"")
        .unwrap_or_else(|| panic!("no assistant message in the page: {dom}"));
    let tag_end = start + dom[start..].find('>').unwrap();
    assert!(
        dom[start..tag_end].contains("data-done=\"true\""),
        "reply not finished: {}",
        &dom[start..]
    );
    let text_end = tag_end + dom[tag_end..].find("</div>").unwrap();
    assert_eq!(unescape(&dom[tag_end + 1..text_end]), REPLY);
    srv.shutdown(Duration::from_secs(5));
}
