//! Chat tasks (spec §8.5 and the midtraining report §3–5): datasets rendered as conversations, with the answer
//! check chat_eval scores them by and the views SFT and midtraining mix them through.
//!
//! A [`Task`] owns its rows and says how row `i` reads as a conversation ([`Task::get_example`]) and whether an
//! answer to it is right ([`Task::evaluate`]). [`TaskSlice`] is upstream's `Task(start, stop, step)` view;
//! [`TaskMixture`] and [`TaskSequence`] combine views. All of them are [`Examples`]: a length and an indexed
//! example, which is all a data loader or an evaluation needs.

pub mod arc;
pub mod chat_eval;
pub mod customjson;
pub mod download;
pub mod gsm8k;
pub mod hub;
pub mod humaneval;
pub mod keyword;
pub mod mmlu;
pub mod nprandom;
pub mod pyrandom;
pub mod registry;
pub mod smoltalk;
pub mod spelling;

use std::sync::Arc;

use crate::tokenizer::{Content, Conversation, Role};

/// How chat_eval scores a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvalType {
    /// One of a few answer letters, read from the logits at the last prompt position.
    Categorical,
    /// A sampled completion, checked by [`Task::evaluate`].
    Generative,
}

/// One example: the conversation plus what evaluating an answer to it needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub conversation: Conversation,
    /// Categorical tasks: the answer letters the prediction is restricted to (empty otherwise).
    pub letters: Vec<String>,
    /// HumanEval: the test code and the function `check` is called on.
    pub test: Option<CodeTest>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CodeTest {
    pub test: String,
    pub entry_point: String,
}

impl Example {
    pub fn new(conversation: Conversation) -> Example {
        Example {
            conversation,
            letters: Vec::new(),
            test: None,
        }
    }

    /// The reference answer: the last message's content as plain text (parts joined).
    pub fn reference(&self) -> String {
        match self.conversation.messages.last().map(|m| &m.content) {
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(p)) => p.iter().map(|p| p.text.as_str()).collect(),
            None => String::new(),
        }
    }

    /// The first user message's text (after a possible system message).
    pub fn first_user(&self) -> &str {
        self.conversation
            .messages
            .iter()
            .find(|m| m.role == Role::User)
            .and_then(|m| match &m.content {
                Content::Text(t) => Some(t.as_str()),
                Content::Parts(_) => None,
            })
            .unwrap_or("")
    }
}

/// A dataset of conversations.
pub trait Task: Send + Sync {
    /// The name chat_eval and the logs use (`ARC-Easy`, `GSM8K`, ...).
    fn name(&self) -> String;
    fn eval_type(&self) -> EvalType;
    /// Rows in the underlying data (before any slicing).
    fn num_examples(&self) -> usize;
    /// Row `index` of the underlying data as a conversation.
    fn get_example(&self, index: usize) -> Result<Example, String>;
    /// Whether `answer` (the assistant's text) answers `example` correctly. `Err` when the task cannot judge
    /// (it has no evaluation, or what it needs is missing, e.g. HumanEval without python3).
    fn evaluate(&self, example: &Example, answer: &str) -> Result<bool, String> {
        let _ = (example, answer);
        Err(format!("{} has no evaluation (training only)", self.name()))
    }
    /// The RL reward of an answer: 1.0 when correct, else 0.0.
    fn reward(&self, example: &Example, answer: &str) -> Result<f64, String> {
        Ok(if self.evaluate(example, answer)? { 1.0 } else { 0.0 })
    }
}

/// Anything with a length and indexed examples: a slice, a mixture, a sequence.
pub trait Examples: Send + Sync {
    fn len(&self) -> usize;
    fn get(&self, index: usize) -> Result<Example, String>;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Upstream's `Task(start=0, stop=None, step=1)`: a strided view of a task's rows. Its length is
/// `ceil((stop − start) / step)` with `stop` defaulting to the task's row count; index `i` is row
/// `start + i·step`.
#[derive(Clone)]
pub struct TaskSlice {
    pub task: Arc<dyn Task>,
    pub start: usize,
    pub stop: Option<usize>,
    pub step: usize,
}

impl TaskSlice {
    /// The whole task.
    pub fn all(task: Arc<dyn Task>) -> TaskSlice {
        TaskSlice {
            task,
            start: 0,
            stop: None,
            step: 1,
        }
    }

    /// `start..stop` by `step`; the same checks as upstream (`stop >= start`, `step >= 1`).
    pub fn new(task: Arc<dyn Task>, start: usize, stop: Option<usize>, step: usize) -> Result<TaskSlice, String> {
        if step == 0 {
            return Err(format!("{}: the slice step must be at least 1", task.name()));
        }
        if let Some(s) = stop.filter(|&s| s < start) {
            return Err(format!(
                "{}: the slice stop {s} is before its start {start}",
                task.name()
            ));
        }
        Ok(TaskSlice {
            task,
            start,
            stop,
            step,
        })
    }

    pub fn name(&self) -> String {
        self.task.name()
    }

    pub fn eval_type(&self) -> EvalType {
        self.task.eval_type()
    }

    pub fn evaluate(&self, example: &Example, answer: &str) -> Result<bool, String> {
        self.task.evaluate(example, answer)
    }
}

impl Examples for TaskSlice {
    fn len(&self) -> usize {
        let stop = self.stop.unwrap_or_else(|| self.task.num_examples());
        (stop.saturating_sub(self.start)).div_ceil(self.step)
    }

    fn get(&self, index: usize) -> Result<Example, String> {
        if index >= self.len() {
            return Err(format!(
                "{}: index {index} is past the end ({} examples)",
                self.name(),
                self.len()
            ));
        }
        let row = self.start + index * self.step;
        if row >= self.task.num_examples() {
            return Err(format!(
                "{}: row {row} does not exist (the data has {} rows)",
                self.name(),
                self.task.num_examples()
            ));
        }
        self.task.get_example(row)
    }
}

/// Upstream's `TaskMixture`: every (task, local index) pair in task order, shuffled once with Python's
/// `random.Random(42)`. Listing a task twice oversamples it.
pub struct TaskMixture {
    tasks: Vec<Box<dyn Examples>>,
    index_map: Vec<(u32, u32)>,
}

impl TaskMixture {
    pub fn new(tasks: Vec<Box<dyn Examples>>) -> TaskMixture {
        let mut index_map: Vec<(u32, u32)> = Vec::new();
        for (t, task) in tasks.iter().enumerate() {
            index_map.extend((0..task.len()).map(|i| (t as u32, i as u32)));
        }
        pyrandom::PyRandom::new(42).shuffle(&mut index_map);
        TaskMixture { tasks, index_map }
    }

    /// (task position, local index) of mixture index `i`.
    pub fn source(&self, index: usize) -> Option<(usize, usize)> {
        self.index_map.get(index).map(|&(t, i)| (t as usize, i as usize))
    }
}

impl Examples for TaskMixture {
    fn len(&self) -> usize {
        self.index_map.len()
    }

    fn get(&self, index: usize) -> Result<Example, String> {
        let (t, i) = self
            .source(index)
            .ok_or_else(|| format!("mixture index {index} is past the end ({} conversations)", self.len()))?;
        self.tasks[t].get(i)
    }
}

/// Upstream's `TaskSequence`: the tasks one after another.
pub struct TaskSequence {
    tasks: Vec<Box<dyn Examples>>,
}

impl TaskSequence {
    pub fn new(tasks: Vec<Box<dyn Examples>>) -> TaskSequence {
        TaskSequence { tasks }
    }
}

impl Examples for TaskSequence {
    fn len(&self) -> usize {
        self.tasks.iter().map(|t| t.len()).sum()
    }

    fn get(&self, index: usize) -> Result<Example, String> {
        let mut i = index;
        for t in &self.tasks {
            if i < t.len() {
                return t.get(i);
            }
            i -= t.len();
        }
        Err(format!(
            "sequence index {index} is past the end ({} conversations)",
            self.len()
        ))
    }
}

/// Upstream's `render_mc`: the letter follows its choice with no space after `=`, so the prompt's letter token is
/// the bare token the answer is scored by.
pub fn render_mc(question: &str, letters: &[String], choices: &[String]) -> String {
    let mut q = format!("Multiple Choice question: {question}\n");
    for (letter, choice) in letters.iter().zip(choices) {
        q.push_str(&format!("- {choice}={letter}\n"));
    }
    q.push_str("\nRespond only with the letter of the correct answer.");
    q
}

/// A user/assistant conversation of two plain strings.
pub fn qa(user: &str, assistant: &str) -> Conversation {
    use crate::tokenizer::Message;
    Conversation {
        messages: vec![Message::new(Role::User, user), Message::new(Role::Assistant, assistant)],
    }
}

/// Python's `str.strip()` whitespace (`str.isspace`): Unicode whitespace plus the four ASCII separators
/// U+001C..U+001F.
pub fn py_is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_is_space)
}

/// The categorical answer check shared by ARC and MMLU: exact match with the reference letter.
pub fn evaluate_letter(example: &Example, answer: &str) -> bool {
    answer == example.reference()
}
