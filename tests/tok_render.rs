//! `tok_eval render`: conversations in upstream's JSON format on stdin, ids + mask + token strings out,
//! checked against the template written out from the spec (§5) piece by piece.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nanochat::tokenizer::{files, pattern, Tokenizer, SPECIAL_TOKENS};
use serde_json::Value;

fn fixture_tokenizer(dir: &std::path::Path) -> (Tokenizer, PathBuf) {
    let ranks = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/rustbpe_ranks.tiktoken");
    let specials = SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect();
    let tok = files::import_tiktoken(&ranks, pattern::SPLIT_PATTERN, specials).unwrap();
    let path = dir.join("tokenizer.bin");
    tok.save(&path).unwrap();
    (tok, path)
}

fn run(tok: &PathBuf, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tok_eval"))
        .arg("--tokenizer")
        .arg(tok)
        .arg("render")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// (ids, mask) of pieces: `Ok(special name)` or `Err(text)` with its mask.
fn expected(tok: &Tokenizer, pieces: &[(Result<&str, &str>, u8)]) -> (Vec<u64>, Vec<u64>) {
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for (p, m) in pieces {
        let t = match p {
            Ok(sp) => vec![tok.special_id(sp).unwrap()],
            Err(text) => tok.encode_ordinary(text),
        };
        mask.extend(std::iter::repeat_n(*m as u64, t.len()));
        ids.extend(t.into_iter().map(u64::from));
    }
    (ids, mask)
}

fn ids_mask(v: &Value) -> (Vec<u64>, Vec<u64>) {
    let list = |k: &str| -> Vec<u64> { v[k].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect() };
    (list("ids"), list("mask"))
}

const TOOL_CONVERSATION: &str = r#"{"messages": [
  {"role": "system", "content": "Be brief."},
  {"role": "user", "content": "What is 6*7?"},
  {"role": "assistant", "content": [
    {"type": "text", "text": "Let me compute. "},
    {"type": "python", "text": "6*7"},
    {"type": "python_output", "text": "42"},
    {"type": "text", "text": " It is 42."}
  ]},
  {"role": "user", "content": "Thanks"},
  {"role": "assistant", "content": "You're welcome."}
]}"#;

#[test]
fn render_shows_ids_and_the_sft_mask() {
    let dir = tempfile::tempdir().unwrap();
    let (tok, path) = fixture_tokenizer(dir.path());
    let (ok, out, err) = run(&path, &[], TOOL_CONVERSATION);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let want = expected(
        &tok,
        &[
            (Ok("<|bos|>"), 0),
            (Ok("<|user_start|>"), 0),
            (Err("Be brief.\n\nWhat is 6*7?"), 0),
            (Ok("<|user_end|>"), 0),
            (Ok("<|assistant_start|>"), 0),
            (Err("Let me compute. "), 1),
            (Ok("<|python_start|>"), 1),
            (Err("6*7"), 1),
            (Ok("<|python_end|>"), 1),
            (Ok("<|output_start|>"), 0),
            (Err("42"), 0),
            (Ok("<|output_end|>"), 0),
            (Err(" It is 42."), 1),
            (Ok("<|assistant_end|>"), 1),
            (Ok("<|user_start|>"), 0),
            (Err("Thanks"), 0),
            (Ok("<|user_end|>"), 0),
            (Ok("<|assistant_start|>"), 0),
            (Err("You're welcome."), 1),
            (Ok("<|assistant_end|>"), 1),
        ],
    );
    assert_eq!(ids_mask(&v), want);
    let tokens: Vec<&str> = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens[0], "<|bos|>");
    assert_eq!(tokens.last(), Some(&"<|assistant_end|>"));
    assert_eq!(tokens.len(), want.0.len());

    // A list of conversations (a bare message list among them) gives a list; truncation applies to each.
    let list = r#"[[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                   {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}]"#;
    let (ok, out, err) = run(&path, &["--max-tokens", "3"], list);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    let full = expected(&tok, &[(Ok("<|bos|>"), 0), (Ok("<|user_start|>"), 0), (Err("hi"), 0)]);
    assert_eq!(ids_mask(&v[0]), (full.0[..3].to_vec(), full.1[..3].to_vec()));

    // For completion: the last assistant message dropped, <|assistant_start|> appended.
    let hi = r#"[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]"#;
    let (ok, out, _) = run(&path, &["--completion"], hi);
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    let want = expected(
        &tok,
        &[
            (Ok("<|bos|>"), 0),
            (Ok("<|user_start|>"), 0),
            (Err("hi"), 0),
            (Ok("<|user_end|>"), 0),
            (Ok("<|assistant_start|>"), 0),
        ],
    );
    assert_eq!(ids_mask(&v), want);
}

#[test]
fn render_errors_name_the_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let (_, path) = fixture_tokenizer(dir.path());
    let (ok, _, err) = run(
        &path,
        &[],
        r#"[{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            {"messages": [{"role": "assistant", "content": "b"}]}]"#,
    );
    assert!(!ok);
    assert!(
        err.contains("conversation 1") && err.contains("should be from User"),
        "{err}"
    );
    let (ok, _, err) = run(&path, &[], r#"{"messages": [{"role": "robot", "content": "x"}]}"#);
    assert!(!ok);
    assert!(err.contains("conversation 0"), "{err}");
    let (ok, _, err) = run(&path, &[], "not json");
    assert!(!ok);
    assert!(err.contains("not JSON"), "{err}");
}
