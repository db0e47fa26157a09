//! SimpleSpelling and SpellingBee (midtraining report §3): synthetic tasks that teach spelling a word out and
//! counting a letter in it (with the calculator checking the count). Example `i` draws from a fresh CPython
//! `random.Random(i)` (train) or `Random(10_000_000 + i)` (test), so the examples are upstream's exactly when
//! the word list is.
//!
//! Words: upstream's `words_alpha.txt` (dwyl/english-words, ~370K lowercase words) when it is in the base
//! directory; otherwise Debian's `wamerican` list, keeping only its all-lowercase a–z words (no proper nouns,
//! no possessives).

use std::path::{Path, PathBuf};

use super::pyrandom::PyRandom;
use super::{qa, EvalType, Example, Task};
use crate::tokenizer::{Content, Conversation, Message, Part, PartKind, Role};

pub const WORD_LIST_URL: &str =
    "https://raw.githubusercontent.com/dwyl/english-words/refs/heads/master/words_alpha.txt";
pub const WORD_LIST_FILE: &str = "words_alpha.txt";
pub const DEBIAN_WORDS: &str = "/usr/share/dict/american-english";
pub const TEST_SEED_OFFSET: u64 = 10_000_000;
pub const LETTERS: &str = "abcdefghijklmnopqrstuvwxyz";

/// The user-message templates, in upstream's order.
pub const TEMPLATES: [&str; 51] = [
    "How many {letter} are in the word {word}",
    "How many {letter} are in {word}",
    "Count the number of {letter} in {word}",
    "How many times does {letter} appear in {word}",
    "What's the count of {letter} in {word}",
    "In the word {word}, how many {letter} are there",
    "How many letter {letter} are in the word {word}",
    "Count how many {letter} appear in {word}",
    "Tell me the number of {letter} in {word}",
    "How many occurrences of {letter} are in {word}",
    "Find the count of {letter} in {word}",
    "Can you count the {letter} letters in {word}",
    "What is the frequency of {letter} in {word}",
    "How many {letter}s are in {word}",
    "How many {letter}'s are in {word}",
    "Count all the {letter} in {word}",
    "How many times is {letter} in {word}",
    "Number of {letter} in {word}",
    "Total count of {letter} in {word}",
    "How many {letter} does {word} have",
    "How many {letter} does {word} contain",
    "What's the number of {letter} in {word}",
    "{word} has how many {letter}",
    "In {word}, count the {letter}",
    "How many {letter} appear in {word}",
    "Count the {letter} in {word}",
    "Give me the count of {letter} in {word}",
    "How many instances of {letter} in {word}",
    "Show me how many {letter} are in {word}",
    "Calculate the number of {letter} in {word}",
    "¿Cuántas {letter} hay en {word}?",
    "¿Cuántas veces aparece {letter} en {word}?",
    "Cuenta las {letter} en {word}",
    "¿Cuántas letras {letter} tiene {word}?",
    "{word}中有多少个{letter}",
    "{word}里有几个{letter}",
    "数一下{word}中的{letter}",
    "{word}这个词里有多少{letter}",
    "{word}에 {letter}가 몇 개 있나요",
    "{word}에서 {letter}의 개수는",
    "{word}에 {letter}가 몇 번 나오나요",
    "{word}라는 단어에 {letter}가 몇 개",
    "Combien de {letter} dans {word}",
    "Combien de fois {letter} apparaît dans {word}",
    "Compte les {letter} dans {word}",
    "Wie viele {letter} sind in {word}",
    "Wie oft kommt {letter} in {word} vor",
    "Zähle die {letter} in {word}",
    "{word}に{letter}は何個ありますか",
    "{word}の中に{letter}がいくつ",
    "{word}に{letter}が何回出てくる",
];

/// Where the words come from: `<base>/words_alpha.txt`, else the Debian list.
pub fn word_list_path(base: &Path) -> Result<PathBuf, String> {
    let upstream = base.join(WORD_LIST_FILE);
    if upstream.exists() {
        return Ok(upstream);
    }
    let debian = PathBuf::from(DEBIAN_WORDS);
    if debian.exists() {
        return Ok(debian);
    }
    Err(format!(
        "no word list: neither {} (download_data --tasks fetches it) nor {DEBIAN_WORDS} \
         (apt-get install wamerican) exists",
        upstream.display()
    ))
}

/// The words of a list file. Upstream's file is used line by line (each stripped, as upstream); any other list
/// keeps only its all-lowercase a–z words.
pub fn read_words(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let upstream = path.file_name().is_some_and(|n| n == WORD_LIST_FILE);
    let words: Vec<String> = if upstream {
        text.lines().map(|l| super::py_strip(l).to_string()).collect()
    } else {
        text.lines()
            .map(str::trim)
            .filter(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
            .map(str::to_string)
            .collect()
    };
    if words.is_empty() {
        return Err(format!("{}: no words", path.display()));
    }
    Ok(words)
}

fn seed_of(split: Split, index: usize) -> u64 {
    match split {
        Split::Train => index as u64,
        Split::Test => TEST_SEED_OFFSET + index as u64,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    pub fn parse(s: &str) -> Result<Split, String> {
        match s {
            "train" => Ok(Split::Train),
            "test" => Ok(Split::Test),
            other => Err(format!("spelling splits are train and test, got {other:?}")),
        }
    }
}

/// `w,o,r,d`.
fn spelled(word: &str) -> String {
    word.chars().map(String::from).collect::<Vec<_>>().join(",")
}

/// "Spell the word: apple" -> "apple:a,p,p,l,e". Training only.
pub struct SimpleSpelling {
    size: usize,
    split: Split,
    words: Vec<String>,
}

impl SimpleSpelling {
    /// `words` in file order; they are shuffled once with `Random(42)` as upstream does.
    pub fn new(mut words: Vec<String>, size: usize, split: Split) -> SimpleSpelling {
        PyRandom::new(42).shuffle(&mut words);
        SimpleSpelling { size, split, words }
    }

    pub fn load(base: &Path, size: usize, split: &str) -> Result<SimpleSpelling, String> {
        let words = read_words(&word_list_path(base)?)?;
        Ok(SimpleSpelling::new(words, size, Split::parse(split)?))
    }
}

impl Task for SimpleSpelling {
    fn name(&self) -> String {
        "SimpleSpelling".into()
    }
    fn eval_type(&self) -> EvalType {
        EvalType::Generative
    }
    fn num_examples(&self) -> usize {
        self.size
    }
    fn get_example(&self, index: usize) -> Result<Example, String> {
        let mut rng = PyRandom::new(seed_of(self.split, index));
        let word = &self.words[rng.choice_index(self.words.len())];
        Ok(Example::new(qa(
            &format!("Spell the word: {word}"),
            &format!("{word}:{}", spelled(word)),
        )))
    }
}

/// "How many r are in strawberry?": spelled out and counted by hand, checked with the calculator, answered
/// after `#### `. Generative, scored like GSM8K.
pub struct SpellingBee {
    size: usize,
    split: Split,
    words: Vec<String>,
}

impl SpellingBee {
    /// `words` in file order (SpellingBee does not shuffle them).
    pub fn new(words: Vec<String>, size: usize, split: Split) -> SpellingBee {
        SpellingBee { size, split, words }
    }

    pub fn load(base: &Path, size: usize, split: &str) -> Result<SpellingBee, String> {
        let words = read_words(&word_list_path(base)?)?;
        Ok(SpellingBee::new(words, size, Split::parse(split)?))
    }
}

impl Task for SpellingBee {
    fn name(&self) -> String {
        "SpellingBee".into()
    }
    fn eval_type(&self) -> EvalType {
        EvalType::Generative
    }
    fn num_examples(&self) -> usize {
        self.size
    }
    fn get_example(&self, index: usize) -> Result<Example, String> {
        let mut rng = PyRandom::new(seed_of(self.split, index));
        let word = self.words[rng.choice_index(self.words.len())].clone();
        let chars: Vec<char> = word.chars().collect();
        let letter: char = if rng.random() < 0.9 {
            if chars.is_empty() {
                return Err(format!(
                    "SpellingBee: the word list has an empty word (example {index})"
                ));
            }
            chars[rng.choice_index(chars.len())]
        } else {
            LETTERS.as_bytes()[rng.choice_index(LETTERS.len())] as char
        };
        let count = chars.iter().filter(|&&c| c == letter).count();
        let mut template = TEMPLATES[rng.choice_index(TEMPLATES.len())].to_string();
        if rng.random() < 0.3 {
            template = template.to_lowercase();
        }
        let quotes = ["", "'", "\""];
        let lq = quotes[rng.choice_index(3)];
        let wq = quotes[rng.choice_index(3)];
        let mut user = template
            .replace("{letter}", &format!("{lq}{letter}{lq}"))
            .replace("{word}", &format!("{wq}{word}{wq}"));
        if rng.random() < 0.5 {
            user.push('?');
        }

        let mut manual = format!(
            "We are asked to find the number '{letter}' in the word '{word}'. Let me try a manual approach first.\n\n\
             First spell the word out:\n{word}:{}\n\nThen count the occurrences of '{letter}':\n",
            spelled(&word)
        );
        let mut running = 0;
        for (i, &c) in chars.iter().enumerate() {
            if c == letter {
                running += 1;
                manual.push_str(&format!("{}:{c} hit! count={running}\n", i + 1));
            } else {
                manual.push_str(&format!("{}:{c}\n", i + 1));
            }
        }
        manual.push_str(&format!("\nThis gives us {running}."));
        let part = |kind, text: String| Part { kind, text };
        let parts = vec![
            part(PartKind::Text, manual),
            part(PartKind::Text, "\n\nLet me double check this using Python:\n\n".into()),
            part(PartKind::Python, format!("'{word}'.count('{letter}')")),
            part(PartKind::PythonOutput, count.to_string()),
            part(
                PartKind::Text,
                format!("\n\nPython gives us {count}.\n\nMy final answer is:\n\n#### {count}"),
            ),
        ];
        Ok(Example::new(Conversation {
            messages: vec![
                Message::new(Role::User, &user),
                Message {
                    role: Role::Assistant,
                    content: Content::Parts(parts),
                },
            ],
        }))
    }
    fn evaluate(&self, example: &Example, answer: &str) -> Result<bool, String> {
        Ok(super::gsm8k::evaluate_parts(example, answer))
    }
}
