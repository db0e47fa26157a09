//! Set-up shared by the tests of the conversation stages: a base directory with a generated corpus, a
//! tokenizer, token shards, the spelling word list and a tiny pretrained model.

use clap::Parser;
use nanochat::data::{self, parquet::write_text_parquet};
use nanochat::rng::Rng;
use nanochat::tokenizer::{Tokenizer, TOKENIZER_FILE};
use nanochat::train::run::{train, TrainArgs};
use std::path::Path;

const WORDS: &[&str] = &[
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "and",
    "dog",
    "ran",
    "to",
    "house",
    "spell",
    "word",
    "how",
    "many",
    "are",
    "in",
    "letter",
    "count",
    "nanochat",
    "model",
    "assistant",
    "user",
    "hello",
];

/// A base directory with a generated corpus, a tokenizer, token shards, the upstream-format word list of the
/// fixtures and a tiny base model (depth 2, width 64, one 64-wide head: the kernels' attention shape).
pub fn prepare(base: &Path) {
    let mut rng = Rng::new(11);
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
    let tok = Tokenizer::train(docs.iter().cloned(), 400, 64, &mut |_, _| {}).unwrap();
    std::fs::create_dir_all(base.join("tokenizer")).unwrap();
    tok.save(&base.join("tokenizer").join(TOKENIZER_FILE)).unwrap();
    data::tokenize::tokenize_dir(&dir, &data::tokens_dir_for(&dir), &tok, false).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tasks/words_alpha.txt");
    std::fs::copy(fixture, base.join("words_alpha.txt")).unwrap();
    let a = [
        "train_gpt",
        "--depth",
        "2",
        "--aspect-ratio",
        "32",
        "--head-dim",
        "64",
        "--max-seq-len",
        "64",
        "--device-batch-size",
        "4",
        "--total-batch-size",
        "256",
        "--num-iterations",
        "20",
        "--eval-every",
        "0",
        "--sample-every",
        "0",
        "--core-metric-every",
        "0",
        "--warmup-steps",
        "2",
        "--model-tag",
        "d2",
    ];
    train(&TrainArgs::try_parse_from(a).unwrap(), base).unwrap();
}

/// Train losses by step from a run directory's metrics.jsonl.
pub fn logged_losses(dir: &Path) -> Vec<(u64, f64)> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

/// The records of one kind (`train`, `eval`) from a run directory's metrics.jsonl.
pub fn records(dir: &Path, kind: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == kind)
        .collect()
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}
