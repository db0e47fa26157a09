//! The conversation mixtures of mid_train and chat_sft, built from the tasks whose data is present.
//!
//! Upstream's mixtures need the hub datasets (SmolTalk, MMLU, GSM8K) that `download_data --tasks` fetches.
//! Offline only the identity conversations (shipped with the project) and the spelling tasks (Debian's word
//! list) exist; a task whose data is missing is left out with a notice, and the run says what it trains on.
//! With none of the validation tasks present, the held-out split of the spelling tasks validates instead.

use crate::data::sft::ConversationSource;
use crate::tasks::customjson::{CustomJson, IDENTITY_CONVERSATIONS, IDENTITY_FILE};
use crate::tasks::gsm8k::Gsm8k;
use crate::tasks::mmlu::Mmlu;
use crate::tasks::smoltalk::SmolTalk;
use crate::tasks::spelling::{SimpleSpelling, SpellingBee};
use crate::tasks::{Examples, Task, TaskMixture, TaskSlice};
use crate::tokenizer::Tokenizer;
use std::path::Path;
use std::sync::Arc;

/// One entry of a mixture: a task (with an optional row limit) listed `copies` times.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskSpec {
    SmolTalk {
        split: &'static str,
    },
    Mmlu {
        subset: &'static str,
        split: &'static str,
    },
    Gsm8k {
        split: &'static str,
    },
    /// The identity conversations: `<base>/identity_conversations.jsonl`, else the copy the project ships.
    Identity,
    SimpleSpelling {
        size: usize,
        split: &'static str,
    },
    SpellingBee {
        size: usize,
        split: &'static str,
    },
}

impl std::fmt::Display for TaskSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskSpec::SmolTalk { split } => write!(f, "SmolTalk {split}"),
            TaskSpec::Mmlu { subset, split } => write!(f, "MMLU {subset} {split}"),
            TaskSpec::Gsm8k { split } => write!(f, "GSM8K {split}"),
            TaskSpec::Identity => write!(f, "identity conversations"),
            TaskSpec::SimpleSpelling { size, split } => write!(f, "SimpleSpelling {size} {split}"),
            TaskSpec::SpellingBee { size, split } => write!(f, "SpellingBee {size} {split}"),
        }
    }
}

impl TaskSpec {
    fn load(&self, base: &Path) -> Result<Arc<dyn Task>, String> {
        Ok(match *self {
            TaskSpec::SmolTalk { split } => Arc::new(SmolTalk::load(base, split)?),
            TaskSpec::Mmlu { subset, split } => Arc::new(Mmlu::load(base, subset, split)?),
            TaskSpec::Gsm8k { split } => Arc::new(Gsm8k::load(base, "main", split)?),
            TaskSpec::Identity => {
                let path = base.join(IDENTITY_FILE);
                if path.exists() {
                    Arc::new(CustomJson::load(&path)?)
                } else {
                    Arc::new(CustomJson::parse(IDENTITY_CONVERSATIONS, Path::new(IDENTITY_FILE))?)
                }
            }
            TaskSpec::SimpleSpelling { size, split } => Arc::new(SimpleSpelling::load(base, size, split)?),
            TaskSpec::SpellingBee { size, split } => Arc::new(SpellingBee::load(base, size, split)?),
        })
    }
}

/// A mixture entry: the task, how many times it is listed, and a row limit (upstream's `stop=`).
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub task: TaskSpec,
    pub copies: usize,
    pub stop: Option<usize>,
}

fn entry(task: TaskSpec, copies: usize) -> Entry {
    Entry {
        task,
        copies,
        stop: None,
    }
}

/// mid_train's training mixture (midtraining report §2).
pub fn mid_train() -> Vec<Entry> {
    vec![
        entry(TaskSpec::SmolTalk { split: "train" }, 1),
        entry(
            TaskSpec::Mmlu {
                subset: "all",
                split: "auxiliary_train",
            },
            1,
        ),
        entry(TaskSpec::Gsm8k { split: "train" }, 1),
        entry(TaskSpec::Identity, 2),
        entry(
            TaskSpec::SimpleSpelling {
                size: 200_000,
                split: "train",
            },
            1,
        ),
        entry(
            TaskSpec::SpellingBee {
                size: 80_000,
                split: "train",
            },
            1,
        ),
    ]
}

/// chat_sft's training mixture: upstream's current one (SmolTalk, identity ×2, MMLU auxiliary_train ×
/// `mmlu_epochs`, GSM8K × `gsm8k_epochs`, the spelling tasks).
pub fn sft_train(mmlu_epochs: usize, gsm8k_epochs: usize) -> Vec<Entry> {
    vec![
        entry(TaskSpec::SmolTalk { split: "train" }, 1),
        entry(TaskSpec::Identity, 2),
        entry(
            TaskSpec::Mmlu {
                subset: "all",
                split: "auxiliary_train",
            },
            mmlu_epochs,
        ),
        entry(TaskSpec::Gsm8k { split: "train" }, gsm8k_epochs),
        entry(
            TaskSpec::SimpleSpelling {
                size: 200_000,
                split: "train",
            },
            1,
        ),
        entry(
            TaskSpec::SpellingBee {
                size: 80_000,
                split: "train",
            },
            1,
        ),
    ]
}

/// The validation mixture of both stages: SmolTalk test, MMLU test[:5200], GSM8K test[:420].
pub fn validation() -> Vec<Entry> {
    vec![
        entry(TaskSpec::SmolTalk { split: "test" }, 1),
        Entry {
            task: TaskSpec::Mmlu {
                subset: "all",
                split: "test",
            },
            copies: 1,
            stop: Some(5200),
        },
        Entry {
            task: TaskSpec::Gsm8k { split: "test" },
            copies: 1,
            stop: Some(420),
        },
    ]
}

/// The offline stand-in for [`validation`]: the spelling tasks' held-out split.
pub fn offline_validation() -> Vec<Entry> {
    vec![
        entry(
            TaskSpec::SimpleSpelling {
                size: 1000,
                split: "test",
            },
            1,
        ),
        entry(
            TaskSpec::SpellingBee {
                size: 1000,
                split: "test",
            },
            1,
        ),
    ]
}

/// Builds the mixture of the entries whose data is present; says what it used and what it left out.
pub fn build(base: &Path, entries: &[Entry], what: &str) -> Result<TaskMixture, String> {
    let mut parts: Vec<Box<dyn Examples>> = Vec::new();
    let mut used = Vec::new();
    for e in entries {
        match e.task.load(base) {
            Ok(task) => {
                // A row limit beyond the data (a small mirror) keeps all rows.
                let stop = e.stop.map(|s| s.min(task.num_examples()));
                let slice = TaskSlice::new(task.clone(), 0, stop, 1)?;
                let rows = slice.len();
                if rows == 0 {
                    println!("{what}: {} has no rows, left out", task.name());
                    continue;
                }
                used.push(format!(
                    "{} {rows}{}",
                    task.name(),
                    if e.copies > 1 {
                        format!(" x{}", e.copies)
                    } else {
                        String::new()
                    }
                ));
                for _ in 0..e.copies {
                    parts.push(Box::new(slice.clone()));
                }
            }
            Err(err) => println!("{what}: {} left out: {err}", e.task),
        }
    }
    if parts.is_empty() {
        return Err(format!(
            "{what}: none of the tasks has data under {}: run `download_data --tasks` (or install the word list: \
             apt-get install wamerican)",
            base.display()
        ));
    }
    let mixture = TaskMixture::new(parts);
    println!("{what}: {} conversations ({})", mixture.len(), used.join(", "));
    Ok(mixture)
}

/// The validation mixture, or its offline stand-in when none of its tasks has data.
pub fn build_validation(base: &Path) -> Result<TaskMixture, String> {
    match build(base, &validation(), "validation") {
        Ok(m) => Ok(m),
        Err(_) => {
            println!("validation: no hub validation data; using the spelling tasks' test split instead");
            build(base, &offline_validation(), "validation")
        }
    }
}

/// A mixture rendered with the chat template: what the conversation loader reads.
pub struct Rendered<E> {
    pub examples: E,
    pub tokenizer: Arc<Tokenizer>,
}

impl<E: Examples> ConversationSource for Rendered<E> {
    fn len(&self) -> usize {
        self.examples.len()
    }

    fn render(&self, i: usize, max_tokens: usize) -> Result<(Vec<u32>, Vec<u8>), String> {
        let example = self.examples.get(i)?;
        self.tokenizer
            .render_conversation(&example.conversation, max_tokens)
            .map_err(|e| format!("conversation {i} of the mixture: {e}"))
    }
}
