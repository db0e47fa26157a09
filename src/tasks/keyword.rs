//! Keyword: a synthetic generative task with an easily learnt reward, for checking the reinforcement-learning
//! stage on small models without a download. Every example asks the assistant to say a keyword (after a few
//! filler words drawn from a seeded generator, different per split); an answer is correct, and earns reward 1,
//! when one of its words is the keyword (words are the maximal runs of letters and digits, compared
//! case-insensitively).

use super::{EvalType, Example, Task};
use crate::rng::Rng;
use crate::tokenizer::{Conversation, Message, Role};

/// Filler words of the prompts.
const FILLER: &[&str] = &[
    "please", "now", "today", "again", "quickly", "gently", "once", "kindly", "here", "then",
];

pub struct Keyword {
    keyword: String,
    examples: usize,
    seed: u64,
}

impl Keyword {
    /// `examples` prompts for `keyword`; the split (`train` or `test`) chooses the filler words.
    pub fn new(keyword: &str, split: &str, examples: usize) -> Result<Keyword, String> {
        let mut words = words(keyword);
        if words.len() != 1 || words[0] != keyword.to_lowercase() {
            return Err(format!(
                "the keyword must be one word of letters and digits, got {keyword:?}"
            ));
        }
        let seed = match split {
            "train" => 1,
            "test" => 2,
            other => return Err(format!("Keyword has splits train|test, got {other:?}")),
        };
        Ok(Keyword {
            keyword: words.remove(0),
            examples,
            seed,
        })
    }

    pub fn keyword(&self) -> &str {
        &self.keyword
    }
}

/// The lowercase runs of letters and digits of `text`.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

impl Task for Keyword {
    fn name(&self) -> String {
        "Keyword".into()
    }
    fn eval_type(&self) -> EvalType {
        EvalType::Generative
    }
    fn num_examples(&self) -> usize {
        self.examples
    }
    fn get_example(&self, index: usize) -> Result<Example, String> {
        if index >= self.examples {
            return Err(format!(
                "Keyword: index {index} is past the end ({} examples)",
                self.examples
            ));
        }
        let mut rng = Rng::new(self.seed.wrapping_mul(1_000_003).wrapping_add(index as u64));
        let n = 1 + rng.below(3) as usize;
        let filler: Vec<&str> = (0..n)
            .map(|_| FILLER[rng.below(FILLER.len() as u64) as usize])
            .collect();
        let user = format!("{} say {}.", filler.join(" "), self.keyword);
        Ok(Example::new(Conversation {
            messages: vec![
                Message::new(Role::User, &user),
                Message::new(Role::Assistant, &self.keyword),
            ],
        }))
    }
    fn evaluate(&self, _example: &Example, answer: &str) -> Result<bool, String> {
        Ok(words(answer).contains(&self.keyword))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reward_is_one_exactly_when_a_word_is_the_keyword() {
        let k = Keyword::new("cat", "train", 10).unwrap();
        let ex = k.get_example(3).unwrap();
        assert!(ex.first_user().ends_with("say cat."), "{}", ex.first_user());
        for (answer, want) in [
            ("the cat sat", 1.0),
            ("CAT!", 1.0),
            ("dog,cat", 1.0),
            ("category", 0.0),
            ("concat", 0.0),
            ("", 0.0),
            ("the dog", 0.0),
        ] {
            assert_eq!(k.reward(&ex, answer).unwrap(), want, "{answer:?}");
        }
        // Splits differ, examples are reproducible, bad input is refused.
        let test = Keyword::new("cat", "test", 10).unwrap();
        let prompts = |t: &Keyword| {
            (0..10)
                .map(|i| t.get_example(i).unwrap().first_user().to_string())
                .collect()
        };
        let (a, b): (Vec<String>, Vec<String>) = (prompts(&k), prompts(&test));
        assert_ne!(a, b);
        assert_eq!(a, prompts(&k));
        assert!(k.get_example(10).is_err());
        assert!(Keyword::new("two words", "train", 1).is_err());
        assert!(Keyword::new("cat", "validation", 1).is_err());
    }
}
