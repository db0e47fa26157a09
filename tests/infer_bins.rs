//! The inference benchmarks on the emulator: decode_bench's checks pass and its timing path runs, and
//! infer_bench runs the whole path at toy sizes with one JSON document as its last line; chat_cli, chat_web
//! and base_eval's samples on the emulator (the KV-cached inference model) give the CPU reference's tokens.

use std::process::Command;

use nanochat::backend::Backend;
use nanochat::device::infer::Inference;
use nanochat::engine::{Engine, GenConfig};
use nanochat::train::eval::{sample_prompts, SAMPLE_PROMPTS};

mod common;
use common::serve::{generate_recorded, reply_text, request_settings, same_or_near_tie};

fn run(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{bin} {args:?}:\n{text}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn decode_bench_runs_on_the_emulator() {
    let text = run(env!("CARGO_BIN_EXE_decode_bench"), &["--device", "emu"]);
    for line in [
        "PASS kv_rope_append",
        "PASS decode_attention",
        "PASS decode_smear",
        "decode b2",
        "splits 3",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    assert!(text.contains("all checks passed"), "{text}");
}

#[test]
fn infer_bench_prints_its_sweep_and_one_json_line_on_the_emulator() {
    let args = [
        "--device",
        "emu",
        "--depth",
        "1",
        "--aspect-ratio",
        "64",
        "--head-dim",
        "32",
        "--sequence-len",
        "64",
        "--vocab-size",
        "300",
        "--prompt-tokens",
        "12",
        "--decode-tokens",
        "4",
        "--batch-sizes",
        "1,3",
    ];
    let text = run(env!("CARGO_BIN_EXE_infer_bench"), &args);
    // The printed report: the static card with the batch-1 ceiling, the prefill, the sweep.
    for line in [
        "device: emu",
        "batch-1 decode ceiling - (unknown bandwidth)",
        "prefill 12 tokens:",
        "tok/s, MFU -",
        "batch   TTFT ms   TPOT ms      tok/s     MBU   dMFU   steps",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    for b in ["1", "3"] {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().next() == Some(b) && l.split_whitespace().count() >= 7),
            "no sweep line for batch {b}:\n{text}"
        );
    }
    let last = text.lines().last().unwrap();
    let doc: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"));
    assert_eq!(doc["prefill"]["tokens"], 12);
    assert!(doc["prefill"]["tok_per_sec"].as_f64().unwrap() > 0.0);
    let sweep = doc["sweep"].as_array().unwrap();
    assert_eq!(sweep.len(), 2);
    assert_eq!(sweep[1]["batch_size"], 3);
    assert_eq!(sweep[1]["decode_steps"], 3);
    assert!(sweep[1]["tpot_sec"].as_f64().unwrap() > 0.0);
    // The emulator has no known peaks: no percentages, no ceiling.
    assert!(doc["batch1_decode_ceiling_tok_per_sec"].is_null());
    assert!(sweep[0]["mbu_percent"].is_null());
    // KV bytes per token: keys and values of one layer of 2 heads of 32 in bf16.
    assert_eq!(doc["kv_bytes_per_token"], 2 * 64 * 2);
    let e = Command::new(env!("CARGO_BIN_EXE_infer_bench"))
        .args(["--device", "emu", "--batch-sizes", "1,x"])
        .output()
        .unwrap();
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("--batch-sizes"));
}

/// A base directory with a tokenizer and a base checkpoint `d2` of random weights plus noise (so that the
/// greedy tokens are not decided by bf16 rounding): 2 layers, GQA 2 over 1, windows "SL", context 64.
fn prepare(base: &std::path::Path) {
    use nanochat::checkpoint::{self, LoopState, Meta};
    use nanochat::config::ModelConfig;
    use nanochat::params::ParamTable;
    use nanochat::rng::Rng;
    use nanochat::tokenizer::TOKENIZER_FILE;
    let tok = common::serve::tokenizer();
    std::fs::create_dir_all(base.join("tokenizer")).unwrap();
    tok.save(&base.join("tokenizer").join(TOKENIZER_FILE)).unwrap();
    let cfg = ModelConfig {
        sequence_len: 64,
        vocab_size: tok.vocab_size(),
        n_layer: 2,
        n_head: 2,
        n_kv_head: 1,
        n_embd: 64,
        window_pattern: "SL".into(),
    };
    let table = ParamTable::new(&cfg);
    let mut p = vec![0.0; table.numel];
    table.init(&mut p, 3);
    let mut rng = Rng::new(4);
    p.iter_mut().for_each(|x| *x += 0.1 * rng.normal());
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
    checkpoint::save(&dir, &meta, &table, &p, &Default::default(), 0).unwrap();
}

/// `bin args` in base directory `base`: (stdout, stderr), asserting success.
fn run_in(base: &std::path::Path, bin: &str, args: &[&str]) -> (String, String) {
    let out = Command::new(bin)
        .args(args)
        .env("NANOCHAT_BASE_DIR", base)
        .output()
        .unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(out.status.success(), "{bin} {args:?}:\n{o}\n{e}");
    (o, e)
}

/// The chat engines of the prepared checkpoint on the CPU reference and on the emulator, opened as the
/// programs open them.
fn engines(base: &std::path::Path) -> (Engine<Inference>, Engine<Inference>) {
    let open = |b: Backend| b.load_engine(0, base, "base", None, None).unwrap().0;
    (open(Backend::Cpu), open(Backend::Emu))
}

#[test]
fn chat_cli_on_the_emulator_answers_as_on_the_cpu() {
    // chat_cli prints what the engine generates on its device; on the emulator those are the CPU
    // reference's tokens, or where a bf16 near-tie flips one, the logits of that draw agree.
    let tmp = tempfile::tempdir().unwrap();
    prepare(tmp.path());
    let (cpu, emu) = engines(tmp.path());
    let bin = env!("CARGO_BIN_EXE_chat_cli");
    for (text, t, k, n) in [("hello there", "0", "50", 20), ("the cat", "0.8", "20", 12)] {
        let ns = n.to_string();
        let args = ["-i", "base", "-p", text, "-t", t, "-k", k, "--max-tokens", &ns];
        let tok = &cpu.tokenizer;
        let sp = |s: &str| tok.special_id(s).unwrap();
        let mut prompt = vec![tok.bos_id(), sp("<|user_start|>")];
        prompt.extend(tok.encode_ordinary(text));
        prompt.extend([sp("<|user_end|>"), sp("<|assistant_start|>")]);
        let cfg = GenConfig {
            num_samples: 1,
            max_tokens: Some(n),
            temperature: t.parse().unwrap(),
            top_k: Some(k.parse().unwrap()),
            seed: 42,
        };
        let mut outs = Vec::new();
        let mut runs = Vec::new();
        for (device, engine) in [("cpu", &cpu), ("emu", &emu)] {
            let (out, _) = run_in(tmp.path(), bin, &[&args[..], &["--device", device]].concat());
            let run = generate_recorded(engine, &prompt, &cfg);
            let (reply, _) = reply_text(tok, &run.0);
            assert_eq!(out, format!("\nAssistant: {reply}\n\n"), "{device}: {args:?}");
            outs.push(out);
            runs.push(run);
        }
        assert!(outs[0].len() > "\nAssistant: \n\n".len(), "{outs:?}");
        if same_or_near_tie(&runs[0], &runs[1], &format!("chat_cli {args:?}")) {
            assert_eq!(outs[1], outs[0]);
        }
    }
    let out = Command::new(bin)
        .args(["-i", "base", "-p", "hi", "--device", "cpu-bf16"])
        .env("NANOCHAT_BASE_DIR", tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("inference runs on cpu"));
}

#[test]
fn base_eval_samples_on_the_emulator_match_the_cpu() {
    // base_eval's greedy samples are the KV-cached engine's on the device; the emulator's tokens are the CPU
    // reference's, or where a near-tie flips one, the logits agree.
    let tmp = tempfile::tempdir().unwrap();
    prepare(tmp.path());
    let (cpu, emu) = engines(tmp.path());
    let bin = env!("CARGO_BIN_EXE_base_eval");
    let samples = |device: &str| -> Vec<String> {
        let (out, _) = run_in(tmp.path(), bin, &["--eval", "sample", "--device", device]);
        assert!(out.contains("-- unconditioned samples"), "{out}");
        // Eight unconditioned samples, each closed by "--".
        assert_eq!(out.lines().filter(|l| *l == "--").count(), 8, "{out}");
        let start = out.lines().position(|l| l.starts_with(SAMPLE_PROMPTS[0])).unwrap();
        out.lines().skip(start).take(7).map(String::from).collect()
    };
    let (cpu_lines, emu_lines) = (samples("cpu"), samples("emu"));
    assert_eq!(cpu_lines, sample_prompts(&cpu, 16).unwrap());
    assert_eq!(emu_lines, sample_prompts(&emu, 16).unwrap());
    let greedy = GenConfig {
        num_samples: 1,
        max_tokens: Some(16),
        temperature: 0.0,
        top_k: None,
        seed: 42,
    };
    let mut same = 0;
    for (i, p) in SAMPLE_PROMPTS.iter().enumerate() {
        assert!(cpu_lines[i].len() > p.len(), "{cpu_lines:?}");
        let mut ids = vec![cpu.tokenizer.bos_id()];
        ids.extend(cpu.tokenizer.encode_ordinary(p));
        let (a, b) = (
            generate_recorded(&cpu, &ids, &greedy),
            generate_recorded(&emu, &ids, &greedy),
        );
        if same_or_near_tie(&a, &b, &format!("sample {p:?}")) {
            assert_eq!(emu_lines[i], cpu_lines[i]);
            same += 1;
        }
    }
    assert!(same >= 3, "only {same} of 7 samples match the CPU reference");
}

#[test]
fn chat_web_on_the_emulator_batches_and_answers_as_on_the_cpu() {
    // chat_web --device emu with continuous batching: four concurrent requests (greedy and seeded) each get
    // the reply the emulator's engine gives it alone; those are the CPU reference's tokens, or where a
    // near-tie flips one, the logits agree.
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let tmp = tempfile::tempdir().unwrap();
    prepare(tmp.path());
    let (cpu, emu) = engines(tmp.path());
    let request = |i: usize| {
        let t = if i % 2 == 0 { 0.0 } else { 0.9 };
        let content = ["hello", "the cat sat", "number 3", "there"][i];
        serde_json::json!({"messages": [{"role": "user", "content": content}], "max_tokens": 6 + 2 * i,
            "temperature": t, "top_k": 20, "seed": i, "stream": false})
    };
    let replies = |device: &str| -> Vec<String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chat_web"))
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "-i",
                "base",
                "--batch-rows",
                "4",
                "--device",
                device,
            ])
            .env("NANOCHAT_BASE_DIR", tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let addr: std::net::SocketAddr = first.strip_prefix("listening on http://").unwrap().parse().unwrap();
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let body = request(i).to_string();
                std::thread::spawn(move || {
                    let (st, _, b) = common::serve::http(addr, "POST", "/v1/chat/completions", body.as_bytes());
                    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
                    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
                    v["choices"][0]["message"]["content"].as_str().unwrap().to_string()
                })
            })
            .collect();
        let out: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let pid = child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        assert!(child.wait().unwrap().success());
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(err.contains("continuous batching: 4 rows"), "{err}");
        out
    };
    let (cpu_out, emu_out) = (replies("cpu"), replies("emu"));
    assert!(cpu_out.iter().any(|r| !r.is_empty()), "{cpu_out:?}");
    for i in 0..4 {
        let body = request(i);
        let mut runs = Vec::new();
        for (engine, out) in [(&cpu, &cpu_out), (&emu, &emu_out)] {
            let (prompt, cfg) = request_settings(&engine.tokenizer, 64, "/v1/chat/completions", &body);
            let run = generate_recorded(engine, &prompt, &cfg);
            assert_eq!(
                out[i],
                reply_text(&engine.tokenizer, &run.0).0,
                "request {i}: batched vs alone"
            );
            runs.push(run);
        }
        if same_or_near_tie(&runs[0], &runs[1], &format!("request {i}")) {
            assert_eq!(emu_out[i], cpu_out[i]);
        }
    }
}
