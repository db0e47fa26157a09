//! The report card of a quickstart-like tiny run (every stage's program on a generated corpus, on the CPU):
//! the sections are there and their numbers are the ones the stages recorded.

use nanochat::core_eval;
use nanochat::data::{self, parquet::write_text_parquet};
use nanochat::rng::Rng;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

const WORDS: &[&str] = &[
    "the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "house", "spell", "word", "big", "small", "red",
    "tree", "over", "under", "bird", "sky", "river", "stone", "light", "day", "letters", "how", "many",
];

fn run(base: &Path, program: &str, args: &[&str]) -> String {
    let exe = Path::new(env!("CARGO_BIN_EXE_report")).with_file_name(program);
    let out = Command::new(&exe)
        .args(args)
        .env("NANOCHAT_BASE_DIR", base)
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{program} {args:?}:\n{text}");
    text
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn thousands(x: u64) -> String {
    let s = x.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn write_bundle(dir: &Path) {
    let put = |rel: &str, text: String| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    put(
        "core.yaml",
        "icl_tasks:\n- label: tiny_mc\n  dataset_uri: mc.jsonl\n  num_fewshot: [1]\n  icl_task_type: multiple_choice\n\
         - label: tiny_lm\n  dataset_uri: lm.jsonl\n  num_fewshot: [0]\n  icl_task_type: language_modeling\n"
            .into(),
    );
    put(
        "eval_meta_data.csv",
        "Eval Task,Random baseline\ntiny_mc,50\ntiny_lm,0\n".into(),
    );
    let mc: Vec<String> = [
        ("the cat sat on the", "mat", "sky"),
        ("the dog ran to the", "house", "red"),
        ("a big", "tree", "on"),
    ]
    .iter()
    .map(|(q, a, b)| serde_json::json!({"query": q, "choices": [a, b], "gold": 0}).to_string())
    .collect();
    put("eval_data/mc.jsonl", mc.join("\n"));
    let lm: Vec<String> = [("the cat sat on the", "mat"), ("the bird saw the", "sky")]
        .iter()
        .map(|(c, k)| serde_json::json!({"context": c, "continuation": k}).to_string())
        .collect();
    put("eval_data/lm.jsonl", lm.join("\n"));
}

#[test]
fn report_renders_the_records_of_a_tiny_run() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    // The corpus, the task data that works offline, the CORE bundle.
    let mut rng = Rng::new(5);
    let docs: Vec<String> = (0..600)
        .map(|_| {
            let n = 5 + rng.below(40) as usize;
            let w: Vec<&str> = (0..n).map(|_| WORDS[rng.below(WORDS.len() as u64) as usize]).collect();
            format!("{}.", w.join(" "))
        })
        .collect();
    let dir = base.join(data::DEFAULT_DIR);
    std::fs::create_dir_all(&dir).unwrap();
    for (i, chunk) in docs.chunks(300).enumerate() {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        write_text_parquet(&dir.join(format!("shard_{i:05}.parquet")), &refs, 100).unwrap();
    }
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tasks/words_alpha.txt");
    std::fs::copy(fixture, base.join("words_alpha.txt")).unwrap();
    nanochat::tasks::download::write_identity(base).unwrap();
    write_bundle(&base.join("eval_bundle"));

    run(base, "report", &["reset"]);
    run(base, "tok_train", &["--vocab-size", "400"]);
    run(base, "tokenize_data", &[]);
    let model = ["--model-tag", "d2"];
    let geometry = [
        "--max-seq-len",
        "64",
        "--device-batch-size",
        "4",
        "--total-batch-size",
        "256",
    ];
    let mut a = vec![
        "--depth",
        "2",
        "--aspect-ratio",
        "32",
        "--head-dim",
        "64",
        "--num-iterations",
        "14",
    ];
    a.extend([
        "--warmup-steps",
        "2",
        "--eval-every",
        "7",
        "--eval-tokens",
        "512",
        "--sample-every",
        "0",
    ]);
    a.extend(["--core-metric-every", "14", "--core-metric-max-per-task", "2"]);
    run(base, "train_gpt", &[&a[..], &geometry, &model].concat());
    run(
        base,
        "base_eval",
        &[&model[..], &["--device-batch-size", "2", "--split-tokens", "256"]].concat(),
    );
    let short = ["--num-iterations", "6", "--eval-every", "3", "--eval-tokens", "512"];
    run(base, "mid_train", &[&model[..], &geometry, &short].concat());
    run(
        base,
        "chat_sft",
        &[&model[..], &short, &["--chatcore-every", "-1"]].concat(),
    );
    run(
        base,
        "chat_eval",
        &["-i", "sft", "-g", "d2", "-a", "SpellingBee", "-x", "3", "-m", "8"],
    );
    let said = run(base, "report", &["--gpus", "8", "--gpu-hour-cost", "2.5"]);
    assert!(said.contains("report/report.md"), "{said}");
    let report_dir = base.join("report");
    let md = std::fs::read_to_string(report_dir.join("report.md")).unwrap();

    for section in [
        "# nanochat training report",
        "Run started: ",
        "## Environment",
        "### Git Information",
        "### Hardware",
        "- Hourly rate: $2.50/GPU-hour x 8 = $20.00/hour",
        "- Pretraining device: 1x cpu",
        "## Tokenizer training",
        "## Base model training",
        "## Base model evaluation",
        "## Midtraining",
        "## Chat SFT",
        "### Chat evaluation (sft)",
        "## Chat RL\n\nNot run.",
        "## Summary",
    ] {
        assert!(md.contains(section), "no {section:?} in\n{md}");
    }
    // The pictures next to it.
    for svg in ["base_loss.svg", "mid_loss.svg", "sft_loss.svg"] {
        assert!(md.contains(&format!("![{svg}]({svg})")), "{md}");
        assert!(std::fs::read_to_string(report_dir.join(svg))
            .unwrap()
            .contains("<polyline"));
    }

    // Tokenizer: the vocabulary and tok_train's record.
    let tok = json(&base.join("tokenizer/tok_train.json"));
    let vocab = tok["vocab_size"].as_u64().unwrap();
    assert!(
        vocab > 300 && md.contains(&format!("- Vocabulary size: {vocab}\n")),
        "{md}"
    );
    let chars = tok["characters"].as_u64().unwrap();
    assert!(
        md.contains(&format!("- Training characters: {}\n", thousands(chars))),
        "{md}"
    );

    // Pretraining: train_gpt's run record.
    let r = json(&base.join("base_checkpoints/d2/run.json"));
    assert_eq!(r["steps_done"], 14);
    let params = r["num_params"].as_u64().unwrap();
    assert!(md.contains(&format!("- Parameters: {}\n", thousands(params))), "{md}");
    let bpb = r["final_val_bpb"].as_f64().unwrap();
    assert!(md.contains(&format!("- Final validation bpb: {bpb:.4}\n")), "{md}");
    let tokens = r["tokens"].as_f64().unwrap() as u64;
    assert_eq!(tokens, 14 * 256);
    assert!(md.contains(&format!("- Training tokens: {tokens}\n")), "{md}");
    // The CORE estimate train_gpt logged at its last step.
    let metrics = std::fs::read_to_string(base.join("base_checkpoints/d2/metrics.jsonl")).unwrap();
    let core_rec: Value = metrics
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["kind"] == "core")
        .expect("a CORE record");
    let est = core_rec["core_metric"].as_f64().unwrap();
    assert!(
        md.contains(&format!("- CORE estimate (during training): {est:.4}\n")),
        "{md}"
    );

    // Base evaluation: base_eval's CSV and record.
    let csv = core_eval::parse_csv(&std::fs::read_to_string(core_eval::csv_path(base, 14)).unwrap()).unwrap();
    for t in &csv.tasks {
        assert!(
            md.contains(&format!("| {} | {:.4} | {:.4} |", t.label, t.accuracy, t.centered)),
            "{md}"
        );
    }
    assert!(md.contains(&format!("CORE metric: {:.4}", csv.core)), "{md}");
    assert!(md.contains(&format!("| {:<15} | {:<8.4} |", "CORE", csv.core)), "{md}");
    let ev = json(&base.join("base_eval/base_model_000014.json"));
    assert!(
        md.contains(&format!("- Validation bpb: {:.4}\n", ev["val_bpb"].as_f64().unwrap())),
        "{md}"
    );
    assert!(md.contains("The capital of France is"), "{md}");

    // The chat stages: their run records.
    let mid = std::fs::read_to_string(base.join("mid_checkpoints/d2/metrics.jsonl")).unwrap();
    let mid_steps = mid.lines().filter(|l| l.contains("\"kind\":\"train\"")).count();
    assert!(mid_steps > 0);
    let mid_section = &md[md.find("## Midtraining").unwrap()..md.find("## Chat SFT").unwrap()];
    assert!(
        mid_section.contains(&format!("- Steps: {mid_steps}\n")),
        "{mid_section}"
    );
    let evals = std::fs::read_dir(base.join("chat_eval"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let ce = json(&evals);
    let bee = ce["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["task"] == "SpellingBee")
        .unwrap();
    let acc = bee["accuracy"].as_f64().unwrap();
    assert!(md.contains(&format!("| SpellingBee | {acc:.4} |")), "{md}");
    assert!(
        md.contains(&format!(
            "| {:<15} | {:<8} | {:<8} | {acc:<8.4} |",
            "SpellingBee", "-", "-"
        )),
        "{md}"
    );

    // Wall time and cost: 8 GPUs at $2.50.
    let line = md.lines().find(|l| l.starts_with("Total wall clock time: ")).unwrap();
    let secs: f64 = line
        .split('(')
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(secs >= 0.0);
    let cost_line = md.lines().find(|l| l.starts_with("Total cost: $")).unwrap();
    let cost: f64 = cost_line["Total cost: $".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let want = secs / 3600.0 * 8.0 * 2.5;
    assert!(
        (cost - want).abs() <= 0.01 + 0.5 / 3600.0 * 20.0,
        "{cost_line} vs {want}"
    );
    assert!(
        cost_line.contains("8 GPU(s)") && cost_line.contains("$2.50/GPU-hour"),
        "{cost_line}"
    );
}
