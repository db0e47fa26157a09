//! The chat tasks: rendering and masks of fixture rows against token sequences written out from the spec
//! (§5 render_conversation, §8.5 tasks, the midtraining report's spelling tasks), answer checks on hand-made
//! answers, slicing, mixtures, and the two random generators against outputs of CPython and numpy.
//!
//! The fixture rows (tests/fixtures/tasks, written by make_fixtures.py in the hub's schemas) are shuffled with
//! numpy's default_rng(42).permutation(n): for n = 2, 3, 4 that is [1, 0], [2, 1, 0], [3, 2, 1, 0].

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nanochat::tasks::humaneval::{self, CodeRunner, HumanEval, NoRunner, Sandbox};
use nanochat::tasks::nprandom::{self, Pcg64};
use nanochat::tasks::pyrandom::PyRandom;
use nanochat::tasks::spelling::{self, SimpleSpelling, SpellingBee};
use nanochat::tasks::{
    arc::Arc as ArcTask, customjson::CustomJson, gsm8k, mmlu::Mmlu, smoltalk::SmolTalk, EvalType, Example, Examples,
    Task, TaskMixture, TaskSequence, TaskSlice,
};
use nanochat::tokenizer::{files, pattern, Content, PartKind, Tokenizer, SPECIAL_TOKENS};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tasks")
}

fn tok() -> &'static Tokenizer {
    static TOK: std::sync::OnceLock<Tokenizer> = std::sync::OnceLock::new();
    TOK.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/rustbpe_ranks.tiktoken");
        let specials = SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect();
        files::import_tiktoken(&path, pattern::SPLIT_PATTERN, specials).unwrap()
    })
}

/// A piece of an expected rendering: a special token by name, or text encoded on its own.
enum S<'a> {
    Sp(&'a str),
    T(&'a str),
}
use S::{Sp, T};

/// The (ids, mask) a list of (piece, mask) pieces stands for.
fn expected(pieces: &[(S, u8)]) -> (Vec<u32>, Vec<u8>) {
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for (p, m) in pieces {
        let t = match p {
            Sp(name) => vec![tok().special_id(name).unwrap()],
            T(text) => tok().encode_ordinary(text),
        };
        mask.extend(std::iter::repeat_n(*m, t.len()));
        ids.extend(t);
    }
    (ids, mask)
}

fn render(ex: &Example) -> (Vec<u32>, Vec<u8>) {
    tok().render_conversation(&ex.conversation, 2048).unwrap()
}

/// bos, one user turn, one plain assistant answer.
fn qa_pieces<'a>(user: &'a str, answer: &'a str) -> Vec<(S<'a>, u8)> {
    vec![
        (Sp("<|bos|>"), 0),
        (Sp("<|user_start|>"), 0),
        (T(user), 0),
        (Sp("<|user_end|>"), 0),
        (Sp("<|assistant_start|>"), 0),
        (T(answer), 1),
        (Sp("<|assistant_end|>"), 1),
    ]
}

// ---------------------------------------------------------------- random generators

#[test]
fn python_random_matches_cpython() {
    // python3: r = random.Random(42); [r.random() for _ in range(3)]
    let mut r = PyRandom::new(42);
    let want = [0.6394267984578837, 0.025010755222666936, 0.27502931836911926];
    for w in want {
        assert_eq!(r.random(), w);
    }
    // random.Random(42).shuffle(list(range(20)))
    let mut x: Vec<usize> = (0..20).collect();
    PyRandom::new(42).shuffle(&mut x);
    assert_eq!(
        x,
        [19, 5, 14, 4, 9, 13, 15, 18, 6, 12, 17, 10, 1, 11, 2, 16, 7, 8, 0, 3]
    );
    // A 1000-element shuffle: first ten and sum(i * x[i]).
    let mut x: Vec<usize> = (0..1000).collect();
    PyRandom::new(42).shuffle(&mut x);
    assert_eq!(&x[..10], &[776, 507, 895, 922, 33, 483, 85, 750, 354, 523]);
    assert_eq!(x.iter().enumerate().map(|(i, v)| i * v).sum::<usize>(), 250181598);
    // Random(10000007): getrandbits(32), then randrange(370105); seeds 2**40 + 5 (two key words) and 0.
    let mut r = PyRandom::new(10_000_007);
    assert_eq!(r.getrandbits(32), 2870197135);
    assert_eq!(r.randbelow(370105), 282096);
    assert_eq!(PyRandom::new((1 << 40) + 5).getrandbits(32), 2166296868);
    assert_eq!(PyRandom::new(0).getrandbits(32), 3626764237);
}

#[test]
fn numpy_permutation_matches_numpy() {
    // numpy 2.4: default_rng(42).bit_generator.state
    let g = Pcg64::new(42);
    assert_eq!(
        g.state(),
        (
            274674114334540486603088602300644985544,
            332724090758049132448979897138935081983
        )
    );
    // g.integers(0, 2**64, dtype=np.uint64) twice: the raw 64-bit outputs.
    let mut g = Pcg64::new(42);
    assert_eq!(g.next_u64(), 14276969152011380360);
    assert_eq!(g.next_u64(), 8095878257575067585);
    assert_eq!(nprandom::permutation(42, 10), [5, 6, 0, 7, 3, 2, 4, 9, 1, 8]);
    assert_eq!(nprandom::permutation(42, 5), [4, 2, 3, 1, 0]);
    let p = nprandom::permutation(42, 1000);
    assert_eq!(&p[..10], &[978, 933, 859, 916, 127, 608, 856, 260, 147, 810]);
    assert_eq!(p.iter().enumerate().map(|(i, v)| i * v).sum::<usize>(), 248321539);
    let p = nprandom::permutation(7, 100_000);
    assert_eq!(
        &p[..10],
        &[45070, 71435, 99538, 45453, 95412, 41945, 31028, 51479, 73092, 36568]
    );
    let checksum = p.iter().enumerate().fold(0u64, |acc, (i, &v)| {
        (acc + (i as u64 * v as u64) % 1_000_000_007) % 1_000_000_007
    });
    assert_eq!(checksum, 382705343);
}

// ---------------------------------------------------------------- multiple choice

const ARC_SPIDER: &str = "Multiple Choice question: How many legs does a spider have?\n\
    - six=1\n- eight=2\n- ten=3\n\nRespond only with the letter of the correct answer.";

#[test]
fn arc_renders_choices_with_their_labels() {
    let arc = ArcTask::load(&fixtures(), "ARC-Easy", "test").unwrap();
    assert_eq!(arc.num_examples(), 4);
    assert_eq!(arc.eval_type(), EvalType::Categorical);
    assert_eq!(arc.name(), "ARC-Easy");
    // Example 2 is file row 1 (permutation [3, 2, 1, 0]): digit labels.
    let ex = arc.get_example(2).unwrap();
    assert_eq!(ex.letters, ["1", "2", "3"]);
    assert_eq!(render(&ex), expected(&qa_pieces(ARC_SPIDER, "2")));
    // Example 0 is row 3.
    let ex0 = arc.get_example(0).unwrap();
    assert_eq!(
        ex0.first_user(),
        "Multiple Choice question: Which is a mammal?\n- shark=A\n- trout=B\n- whale=C\n- eel=D\n\n\
         Respond only with the letter of the correct answer."
    );
    assert_eq!(ex0.reference(), "C");
    // The answer check is an exact letter match.
    assert!(arc.evaluate(&ex, "2").unwrap());
    assert!(!arc.evaluate(&ex, "1").unwrap());
    assert!(!arc.evaluate(&ex, "B").unwrap());
    assert!(!arc.evaluate(&ex, " 2").unwrap());
    // The prompt's letter is the same single token the answer is scored by.
    let spider = tok().encode_ordinary(ARC_SPIDER);
    let two = tok().encode_ordinary("2");
    assert_eq!(two.len(), 1);
    assert!(spider.windows(1).any(|w| w == two.as_slice()));
    // Bad names are refused with a message.
    assert!(ArcTask::load(&fixtures(), "ARC-Hard", "test")
        .err()
        .unwrap()
        .contains("ARC-Easy or ARC-Challenge"));
    let missing = ArcTask::load(&fixtures(), "ARC-Challenge", "train").err().unwrap();
    assert!(missing.contains("download_data --tasks"), "{missing}");
}

#[test]
fn mmlu_renders_a_to_d() {
    let m = Mmlu::load(&fixtures(), "all", "test").unwrap();
    assert_eq!(m.num_examples(), 4);
    let ex = m.get_example(0).unwrap(); // row 3
    let user = "Multiple Choice question: The opposite of hot is\n- warm=A\n- red=B\n- loud=C\n- cold=D\n\n\
                Respond only with the letter of the correct answer.";
    assert_eq!(render(&ex), expected(&qa_pieces(user, "D")));
    assert_eq!(ex.letters, ["A", "B", "C", "D"]);
    assert!(m.evaluate(&ex, "D").unwrap());
    assert!(!m.evaluate(&ex, "A").unwrap());
    // auxiliary_train (3 rows, permutation [2, 1, 0]).
    let aux = Mmlu::load(&fixtures(), "all", "auxiliary_train").unwrap();
    let ex = aux.get_example(0).unwrap();
    assert_eq!(ex.reference(), "A");
    assert!(ex
        .first_user()
        .starts_with("Multiple Choice question: Pick the color.\n- red=A\n"));
    // The auxiliary_train subset's rows wrap the fields in a "train" group.
    let wrapped = serde_json::json!({"train": {"question": "Q?", "subject": "s",
        "choices": ["w", "x", "y", "z"], "answer": 1}});
    assert_eq!(nanochat::tasks::mmlu::example(&wrapped).unwrap().reference(), "B");
    assert!(Mmlu::load(&fixtures(), "all", "train").is_err());
}

// ---------------------------------------------------------------- GSM8K

#[test]
fn gsm8k_turns_calculator_annotations_into_tool_calls() {
    let g = gsm8k::Gsm8k::load(&fixtures(), "main", "test").unwrap();
    assert_eq!(g.eval_type(), EvalType::Generative);
    // Example 0 = row 2, whose answer starts with an annotation (an empty text part first, as re.split gives).
    let ex = g.get_example(0).unwrap();
    let q = "A box has 1,000 marbles and Tom takes 1 of them. How many are left?";
    assert_eq!(
        render(&ex),
        expected(&[
            (Sp("<|bos|>"), 0),
            (Sp("<|user_start|>"), 0),
            (T(q), 0),
            (Sp("<|user_end|>"), 0),
            (Sp("<|assistant_start|>"), 0),
            (Sp("<|python_start|>"), 1),
            (T("1000-1"), 1),
            (Sp("<|python_end|>"), 1),
            (Sp("<|output_start|>"), 0),
            (T("999"), 0),
            (Sp("<|output_end|>"), 0),
            (T("999 are left.\n#### 999"), 1),
            (Sp("<|assistant_end|>"), 1),
        ])
    );
    let Content::Parts(parts) = &ex.conversation.messages[1].content else {
        panic!("GSM8K answers are parts")
    };
    assert_eq!(parts[0].kind, PartKind::Text);
    assert_eq!(parts[0].text, "");
    // Example 1 = row 1: two annotations, the expression is what precedes the last "=".
    let parts = gsm8k::answer_parts(
        "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10",
    );
    let got: Vec<(PartKind, &str)> = parts.iter().map(|p| (p.kind, p.text.as_str())).collect();
    use PartKind::{Python as P, PythonOutput as O, Text as X};
    assert_eq!(
        got,
        [
            (X, "Weng earns 12/60 = $"),
            (P, "12/60"),
            (O, "0.2"),
            (X, "0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = $"),
            (P, "0.2*50"),
            (O, "10"),
            (X, "10.\n#### 10"),
        ]
    );
    // No "=" inside: the whole annotation is the expression and the output is empty; "<<>>" is not one.
    let got: Vec<(PartKind, String)> = gsm8k::answer_parts("a <<>> b <<x+1>> c")
        .into_iter()
        .map(|p| (p.kind, p.text))
        .collect();
    assert_eq!(
        got,
        [
            (X, "a <<>> b ".to_string()),
            (P, "x+1".to_string()),
            (O, String::new()),
            (X, " c".to_string())
        ]
    );
    assert_eq!(
        g.get_example(1).unwrap(),
        gsm8k::example(&serde_json::json!({
            "question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
            "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10"
        }))
        .unwrap()
    );
}

#[test]
fn gsm8k_answer_extraction_and_evaluation() {
    assert_eq!(gsm8k::extract_answer("so #### 1,234.5 done").as_deref(), Some("1234.5"));
    assert_eq!(gsm8k::extract_answer("#### -5").as_deref(), Some("-5"));
    assert_eq!(gsm8k::extract_answer("#### - 5"), None);
    assert_eq!(gsm8k::extract_answer("#### abc then #### 7").as_deref(), Some("7"));
    assert_eq!(gsm8k::extract_answer("####7"), None);
    let g = gsm8k::Gsm8k::load(&fixtures(), "main", "test").unwrap();
    let natalia = g.get_example(2).unwrap(); // row 0, answer 72
    assert!(g.evaluate(&natalia, "She sold 72 in all.\n#### 72").unwrap());
    assert!(g.evaluate(&natalia, "#### 7,2").unwrap());
    assert!(!g.evaluate(&natalia, "#### 72.0").unwrap());
    assert!(!g.evaluate(&natalia, "#### -72").unwrap());
    assert!(!g.evaluate(&natalia, "72").unwrap());
    assert_eq!(g.reward(&natalia, "#### 72").unwrap(), 1.0);
    assert_eq!(g.reward(&natalia, "#### 71").unwrap(), 0.0);
}

// ---------------------------------------------------------------- HumanEval

/// Records the programs it is given; passes those that contain `needle`.
struct Recorder {
    needle: &'static str,
    seen: Mutex<Vec<String>>,
}

impl CodeRunner for Recorder {
    fn run(&self, program: &str, timeout: Duration) -> Result<bool, String> {
        assert_eq!(timeout, Duration::from_secs(5));
        self.seen.lock().unwrap().push(program.to_string());
        Ok(program.contains(self.needle))
    }
}

const ADD_ALL_PROMPT: &str = "from typing import List\n\n\ndef add_all(xs: List[int]) -> int:\n    \"\"\" Sum of xs.\n    >>> add_all([1, 2])\n    3\n    \"\"\"\n";
const ADD_ALL_TEST: &str =
    "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0\n";

#[test]
fn humaneval_renders_and_assembles_programs() {
    let rec = Arc::new(Recorder {
        needle: "return sum(xs)",
        seen: Mutex::new(Vec::new()),
    });
    let he = HumanEval::load(&fixtures(), rec.clone()).unwrap();
    assert_eq!(he.num_examples(), 2);
    // Example 1 = row 0 (permutation [1, 0]).
    let ex = he.get_example(1).unwrap();
    let solution = format!("{ADD_ALL_PROMPT}\n    return sum(xs)\n");
    assert_eq!(render(&ex), expected(&qa_pieces(ADD_ALL_PROMPT, &solution)));
    assert_eq!(humaneval::extract_imports(ADD_ALL_PROMPT), "from typing import List");
    assert_eq!(
        humaneval::extract_imports("# c\n\nimport os\n  from a import b\ndef f():\n    import sys\n"),
        "import os\nfrom a import b"
    );

    let answer = "Here it is:\n```python\ndef add_all(xs):\n    return sum(xs)\n```\nDone.";
    assert!(he.evaluate(&ex, answer).unwrap());
    let program = rec.seen.lock().unwrap()[0].clone();
    assert_eq!(
        program,
        format!("from typing import List\n\ndef add_all(xs):\n    return sum(xs)\n\n{ADD_ALL_TEST}\ncheck(add_all)")
    );
    assert!(!he.evaluate(&ex, "def add_all(xs):\n    return 0").unwrap());
    // Without a sandbox the task cannot judge: an error, not a failure.
    let none = HumanEval::load(&fixtures(), Arc::new(NoRunner)).unwrap();
    assert!(none.evaluate(&ex, answer).unwrap_err().contains("skipped"));
}

#[test]
fn humaneval_code_extraction_follows_the_regex() {
    // Expected values from Python's re.findall(r'```(?:python)?\s*\n(.*?)\n```', c, re.DOTALL).
    let cases = [
        (
            "Here:\n```python\ndef f():\n    return 1\n```\nDone",
            "def f():\n    return 1",
        ),
        ("````\nx\n```", "x"),
        ("```\n\n```", ""),
        ("```python  \n  code\n```", "code"),
        ("```py\nx\n```", "```py\nx\n```"),
        ("  plain code  \n", "plain code"),
        ("a ```\none\n``` b ```\ntwo\n```", "one"),
        ("```python\n\n\n  x = 1\n\n```", "x = 1"),
    ];
    for (c, want) in cases {
        assert_eq!(humaneval::extract_program(c), want, "{c:?}");
    }
}

// ---------------------------------------------------------------- conversations

#[test]
fn smoltalk_merges_the_system_message() {
    let s = SmolTalk::load(&fixtures(), "test").unwrap();
    assert_eq!(s.num_examples(), 3);
    let ex = s.get_example(1).unwrap(); // row 1
    assert_eq!(
        render(&ex),
        expected(&[
            (Sp("<|bos|>"), 0),
            (Sp("<|user_start|>"), 0),
            (T("You are terse.\n\nName a fruit."), 0),
            (Sp("<|user_end|>"), 0),
            (Sp("<|assistant_start|>"), 0),
            (T("Apple."), 1),
            (Sp("<|assistant_end|>"), 1),
            (Sp("<|user_start|>"), 0),
            (T("Another?"), 0),
            (Sp("<|user_end|>"), 0),
            (Sp("<|assistant_start|>"), 0),
            (T("Pear."), 1),
            (Sp("<|assistant_end|>"), 1),
        ])
    );
    let ex = s.get_example(0).unwrap(); // row 2
    assert_eq!(render(&ex), expected(&qa_pieces("What is 1+1?", "2")));
    assert!(s.evaluate(&ex, "2").is_err());
}

#[test]
fn customjson_validates_every_line() {
    let p = PathBuf::from("c.jsonl");
    let good = "[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"hello\"}]\n\n\
                [{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"assistant\",\"content\":\"b\"},\
                 {\"role\":\"user\",\"content\":\"c\"},{\"role\":\"assistant\",\"content\":\"d\"}]\n";
    let c = CustomJson::parse(good, &p).unwrap();
    assert_eq!(c.num_examples(), 2);
    assert_eq!(render(&c.get_example(0).unwrap()), expected(&qa_pieces("hi", "hello")));
    for (bad, why) in [
        ("[{\"role\":\"user\",\"content\":\"hi\"}]", "at least 2"),
        ("[{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"x\"}]", "role"),
        ("[{\"role\":\"assistant\",\"content\":\"x\"},{\"role\":\"user\",\"content\":\"hi\"}]", "should be from User"),
        ("[{\"role\":\"user\",\"content\":[1]},{\"role\":\"assistant\",\"content\":\"x\"}]", "string"),
        ("{\"messages\": []}", "list"),
        ("not json", "line 1"),
    ] {
        let e = CustomJson::parse(bad, &p).err().unwrap();
        assert!(e.contains(why) && e.contains("c.jsonl"), "{bad}: {e}");
    }
    // The shipped identity conversations are valid and speak of the model.
    let id = CustomJson::parse(
        nanochat::tasks::customjson::IDENTITY_CONVERSATIONS,
        &PathBuf::from("identity"),
    )
    .unwrap();
    assert!(id.num_examples() >= 40);
    assert!(id.get_example(0).unwrap().reference().contains("nanochat"));
    // A missing file is a warning and no rows.
    let none = CustomJson::load(&fixtures().join("no_such.jsonl")).unwrap();
    assert_eq!(none.num_examples(), 0);
}

// ---------------------------------------------------------------- spelling

fn fixture_words() -> Vec<String> {
    spelling::read_words(&fixtures().join("words_alpha.txt")).unwrap()
}

#[test]
fn simple_spelling_matches_python() {
    let words = fixture_words();
    assert_eq!(words.len(), 10);
    // Python: words shuffled with Random(42), then Random(i).choice(words) / Random(10_000_000 + i).
    let train = SimpleSpelling::new(words.clone(), 5, spelling::Split::Train);
    let test = SimpleSpelling::new(words, 5, spelling::Split::Test);
    assert_eq!(train.num_examples(), 5);
    let picks: Vec<String> = (0..5).map(|i| train.get_example(i).unwrap().reference()).collect();
    assert_eq!(
        picks,
        [
            "a:a",
            "cherry:c,h,e,r,r,y",
            "queue:q,u,e,u,e",
            "rhythm:r,h,y,t,h,m",
            "rhythm:r,h,y,t,h,m"
        ]
    );
    let ex = test.get_example(0).unwrap();
    assert_eq!(
        render(&ex),
        expected(&qa_pieces("Spell the word: zebra", "zebra:z,e,b,r,a"))
    );
    assert!(train.evaluate(&ex, "x").is_err());
}

#[test]
fn spelling_bee_matches_python() {
    let bee = SpellingBee::new(fixture_words(), 8, spelling::Split::Train);
    // Python (the report's algorithm over CPython's random): user messages of train examples 0..8.
    let users = [
        "count the number of \"r\" in 'zebra'?",
        "how many times is 'c' in 'cherry'",
        "Find the count of \"p\" in 'apple'?",
        "In \"strawberry\", count the 'r'",
        "¿cuántas e hay en strawberry??",
        "\"a\"に\"a\"が何回出てくる",
        "aにaは何個ありますか",
        "mississippi라는 단어에 \"m\"가 몇 개?",
    ];
    for (i, u) in users.iter().enumerate() {
        assert_eq!(bee.get_example(i).unwrap().first_user(), *u, "example {i}");
    }
    let ex = bee.get_example(4).unwrap();
    let manual =
        "We are asked to find the number 'e' in the word 'strawberry'. Let me try a manual approach first.\n\n\
        First spell the word out:\nstrawberry:s,t,r,a,w,b,e,r,r,y\n\nThen count the occurrences of 'e':\n\
        1:s\n2:t\n3:r\n4:a\n5:w\n6:b\n7:e hit! count=1\n8:r\n9:r\n10:y\n\nThis gives us 1.";
    assert_eq!(
        render(&ex),
        expected(&[
            (Sp("<|bos|>"), 0),
            (Sp("<|user_start|>"), 0),
            (T(users[4]), 0),
            (Sp("<|user_end|>"), 0),
            (Sp("<|assistant_start|>"), 0),
            (T(manual), 1),
            (T("\n\nLet me double check this using Python:\n\n"), 1),
            (Sp("<|python_start|>"), 1),
            (T("'strawberry'.count('e')"), 1),
            (Sp("<|python_end|>"), 1),
            (Sp("<|output_start|>"), 0),
            (T("1"), 0),
            (Sp("<|output_end|>"), 0),
            (T("\n\nPython gives us 1.\n\nMy final answer is:\n\n#### 1"), 1),
            (Sp("<|assistant_end|>"), 1),
        ])
    );
    assert!(bee.evaluate(&ex, "... so #### 1").unwrap());
    assert!(!bee.evaluate(&ex, "#### 2").unwrap());
    assert!(!bee.evaluate(&ex, "one").unwrap());
    // Test split: seeds 10_000_000 + i.
    let test = SpellingBee::new(fixture_words(), 3, spelling::Split::Test);
    assert_eq!(
        test.get_example(0).unwrap().first_user(),
        "How many 's' are in the word mississippi?"
    );
    assert_eq!(
        test.get_example(2).unwrap().first_user(),
        "Show me how many 'r' are in 'cherry'"
    );
    // The engine's calculator accepts the tool call the task teaches.
    assert_eq!(
        nanochat::engine::calc::use_calculator("'strawberry'.count('r')").as_deref(),
        Some("3")
    );
}

#[test]
fn debian_word_lists_keep_lowercase_words_only() {
    let dir = std::env::temp_dir().join(format!("nanochat-words-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("american-english");
    std::fs::write(&p, "A\nAachen\napple\napple's\nbanana\ncafé\n\nzebra\n").unwrap();
    assert_eq!(spelling::read_words(&p).unwrap(), ["apple", "banana", "zebra"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------- views

#[test]
fn slices_follow_start_stop_step() {
    let m: Arc<dyn Task> = Arc::new(Mmlu::load(&fixtures(), "all", "test").unwrap());
    let s = TaskSlice::new(m.clone(), 1, None, 2).unwrap();
    assert_eq!(s.len(), 2); // ceil((4 - 1) / 2)
    assert_eq!(s.get(0).unwrap(), m.get_example(1).unwrap());
    assert_eq!(s.get(1).unwrap(), m.get_example(3).unwrap());
    assert!(s.get(2).is_err());
    let s = TaskSlice::new(m.clone(), 0, Some(3), 1).unwrap();
    assert_eq!(s.len(), 3);
    // The length follows stop even past the data, as upstream; reading past the data is an error.
    let s = TaskSlice::new(m.clone(), 1, Some(10), 3).unwrap();
    assert_eq!(s.len(), 3);
    assert!(s.get(2).unwrap_err().contains("row 7 does not exist"));
    assert!(TaskSlice::new(m.clone(), 3, Some(2), 1).is_err());
    assert!(TaskSlice::new(m, 0, None, 0).is_err());
}

#[test]
fn mixture_shuffles_like_python_and_sequence_concatenates() {
    let base = fixtures();
    let arc: Arc<dyn Task> = Arc::new(ArcTask::load(&base, "ARC-Challenge", "test").unwrap());
    let mmlu: Arc<dyn Task> = Arc::new(Mmlu::load(&base, "all", "test").unwrap());
    let gsm: Arc<dyn Task> = Arc::new(gsm8k::Gsm8k::load(&base, "main", "test").unwrap());
    let parts = || -> Vec<Box<dyn Examples>> {
        vec![
            Box::new(TaskSlice::all(arc.clone())),
            Box::new(TaskSlice::new(mmlu.clone(), 0, Some(2), 1).unwrap()),
            Box::new(TaskSlice::all(gsm.clone())),
        ]
    };
    let mix = TaskMixture::new(parts());
    assert_eq!(mix.len(), 8);
    // Python: m = [(t, i) for t, n in enumerate([3, 2, 3]) for i in range(n)]; random.Random(42).shuffle(m)
    let want = [(1, 0), (1, 1), (2, 1), (2, 2), (0, 2), (2, 0), (0, 0), (0, 1)];
    let tasks = [&arc, &mmlu, &gsm];
    for (i, &(t, j)) in want.iter().enumerate() {
        assert_eq!(mix.source(i), Some((t, j)));
        assert_eq!(mix.get(i).unwrap(), tasks[t].get_example(j).unwrap());
    }
    assert!(mix.get(8).is_err());
    // Oversampling: a task listed twice appears twice as often.
    let twice = TaskMixture::new(vec![
        Box::new(TaskSlice::all(arc.clone())),
        Box::new(TaskSlice::all(arc.clone())),
    ]);
    assert_eq!(twice.len(), 6);

    let seq = TaskSequence::new(parts());
    assert_eq!(seq.len(), 8);
    assert_eq!(seq.get(2).unwrap(), arc.get_example(2).unwrap());
    assert_eq!(seq.get(3).unwrap(), mmlu.get_example(0).unwrap());
    assert_eq!(seq.get(7).unwrap(), gsm.get_example(2).unwrap());
    assert!(seq.get(8).is_err());
}

#[test]
fn humaneval_through_the_sandbox() {
    let he = HumanEval::load(&fixtures(), Arc::new(Sandbox)).unwrap();
    for i in 0..he.num_examples() {
        let ex = he.get_example(i).unwrap();
        // The reference completion (prompt + canonical solution) passes; a wrong body fails.
        let good = he.evaluate(&ex, &ex.reference());
        let bad = he.evaluate(&ex, &format!("{}\n    return None\n", ex.first_user()));
        if humaneval::python_available() {
            assert_eq!(good, Ok(true), "example {i}");
            assert_eq!(bad, Ok(false), "example {i}");
        } else {
            assert_eq!(good.unwrap_err(), "skipped: no python3");
        }
    }
}
