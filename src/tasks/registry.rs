//! Tasks by name, as chat_eval and the training mixtures ask for them, and which of them have data on disk.

use std::path::Path;
use std::sync::Arc;

use super::arc::Arc as ArcTask;
use super::customjson::IDENTITY_FILE;
use super::gsm8k::Gsm8k;
use super::hub;
use super::humaneval::{self, CodeRunner, HumanEval};
use super::mmlu::Mmlu;
use super::spelling::{self, SpellingBee};
use super::Task;

/// chat_eval's tasks, in its order. The first five make ChatCORE.
pub const EVAL_TASKS: [&str; 6] = ["ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee"];

/// The tasks ChatCORE averages.
pub const CHATCORE_TASKS: [&str; 5] = ["ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval"];

/// Accuracy of random guessing: 0.25 for the four-way multiple choice tasks, 0 for the generative ones.
pub fn baseline(name: &str) -> f64 {
    match name {
        "ARC-Easy" | "ARC-Challenge" | "MMLU" => 0.25,
        _ => 0.0,
    }
}

/// Size of chat_eval's SpellingBee (upstream: `SpellingBee(size=256, split="test")`).
pub const SPELLING_BEE_EVAL_SIZE: usize = 256;

/// The evaluation split of a chat_eval task.
pub fn eval_task(base: &Path, name: &str, runner: Arc<dyn CodeRunner>) -> Result<Arc<dyn Task>, String> {
    Ok(match name {
        "ARC-Easy" | "ARC-Challenge" => Arc::new(ArcTask::load(base, name, "test")?),
        "MMLU" => Arc::new(Mmlu::load(base, "all", "test")?),
        "GSM8K" => Arc::new(Gsm8k::load(base, "main", "test")?),
        "HumanEval" => Arc::new(HumanEval::load(base, runner)?),
        "SpellingBee" => Arc::new(SpellingBee::load(base, SPELLING_BEE_EVAL_SIZE, "test")?),
        other => return Err(format!("unknown task {other:?}: choose from {}", EVAL_TASKS.join(", "))),
    })
}

/// One line per task: whether its data is on disk, and where from.
pub fn availability(base: &Path) -> Vec<String> {
    let split = |repo: &str, subset: &str, split: &str| {
        let dir = hub::dataset_dir(base, repo, subset, split);
        let has = std::fs::read_dir(&dir).ok().is_some_and(|rd| {
            rd.filter_map(|e| e.ok())
                .any(|e| e.path().extension().is_some_and(|x| x == "parquet" || x == "jsonl"))
        });
        format!(
            "{repo} {subset}/{split}: {}",
            if has {
                "present"
            } else {
                "missing (download_data --tasks)"
            }
        )
    };
    let words = match spelling::word_list_path(base) {
        Ok(p) => format!("spelling word list: {}", p.display()),
        Err(e) => format!("spelling word list: missing ({e})"),
    };
    let identity = base.join(IDENTITY_FILE);
    vec![
        split(super::arc::REPO, "ARC-Easy", "test"),
        split(super::arc::REPO, "ARC-Challenge", "test"),
        split(super::mmlu::REPO, "all", "auxiliary_train"),
        split(super::mmlu::REPO, "all", "test"),
        split(super::gsm8k::REPO, "main", "train"),
        split(super::gsm8k::REPO, "main", "test"),
        split(humaneval::REPO, humaneval::SUBSET, humaneval::SPLIT),
        split(super::smoltalk::REPO, super::smoltalk::SUBSET, "train"),
        split(super::smoltalk::REPO, super::smoltalk::SUBSET, "test"),
        words,
        format!(
            "identity conversations: {}",
            if identity.exists() {
                identity.display().to_string()
            } else {
                "missing".into()
            }
        ),
    ]
}
