//! Special tokens and chat rendering, the equivalents of upstream's tests/test_tokenizer.py: a tiny
//! tokenizer (256 bytes + 35 merges + 9 specials) trained in the test.

use std::sync::OnceLock;

use nanochat::tokenizer::{Content, Conversation, Message, Part, PartKind, Role, Tokenizer, SPECIAL_TOKENS};

const TRAIN_TEXT: &str = "The quick brown fox jumps over the lazy dog. The dog sleeps. \
    Hello world! Hello there, how are you today? I am fine, thank you. \
    Python code: def hello(): return 'hello world'. print(hello()). 1 + 1 = 2. 2 + 2 = 4.";

fn tok() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let docs = vec![TRAIN_TEXT.to_string(); 20];
        Tokenizer::train(docs, 256 + 9 + 35, 8, &mut |_, _| {}).unwrap()
    })
}

fn sp(name: &str) -> u32 {
    tok().special_id(name).unwrap()
}

fn conv(msgs: &[(Role, &str)]) -> Conversation {
    Conversation {
        messages: msgs.iter().map(|&(r, t)| Message::new(r, t)).collect(),
    }
}

#[test]
fn vocab_size_includes_specials() {
    assert_eq!(tok().vocab_size(), 300);
    assert_eq!(tok().token_bytes().len(), 300);
}

#[test]
fn round_trips() {
    for s in [
        "hello world",
        "",
        "héllo wörld",
        "你好世界",
        "🎉🚀 emoji",
        "  spaces\n\n\ttabs",
        "<|bos|> text",
    ] {
        assert_eq!(tok().decode_lossy(&tok().encode_ordinary(s)), s);
    }
}

#[test]
fn special_tokens_unique_and_bos() {
    let ids: Vec<u32> = SPECIAL_TOKENS.iter().map(|s| sp(s)).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 9);
    // Specials follow the mergeable tokens, in order.
    assert_eq!(ids, (291..300).collect::<Vec<u32>>());
    assert_eq!(tok().bos_id(), sp("<|bos|>"));
    assert_eq!(tok().special_id("<|nope|>"), None);
    // Special tokens decode to their names and count zero bytes for bits per byte.
    assert_eq!(tok().decode(&[sp("<|assistant_end|>")]), b"<|assistant_end|>");
    assert!(tok().token_bytes()[291..].iter().all(|&b| b == 0));
    assert!(tok().token_bytes()[..256].iter().all(|&b| b == 1));
}

#[test]
fn special_strings_in_text_are_plain_text() {
    for name in SPECIAL_TOKENS {
        let ids = tok().encode_ordinary(name);
        assert!(ids.len() > 1, "{name} collapsed to {ids:?}");
        assert!(ids.iter().all(|&i| i < 291), "{name} produced a special id");
    }
}

#[test]
fn prepend_and_append() {
    let bos = tok().bos_id();
    let end = sp("<|assistant_end|>");
    let plain = tok().encode_ordinary("hello");
    let ids = tok().encode_with("hello", Some(bos), Some(end));
    assert_eq!(ids[0], bos);
    assert_eq!(*ids.last().unwrap(), end);
    assert_eq!(&ids[1..ids.len() - 1], plain.as_slice());
    assert_eq!(tok().encode_with("hello", None, None), plain);
}

#[test]
fn batch_encode_equals_single() {
    let texts = ["hello world", "the dog", "", "你好"];
    let batch = tok().encode_ordinary_batch(&texts);
    for (t, ids) in texts.iter().zip(batch) {
        assert_eq!(ids, tok().encode_ordinary(t));
    }
}

#[test]
fn render_conversation_masks() {
    let c = conv(&[
        (Role::User, "Hello"),
        (Role::Assistant, "Hi there"),
        (Role::User, "Bye"),
        (Role::Assistant, "Bye!"),
    ]);
    let (ids, mask) = tok().render_conversation(&c, 2048).unwrap();
    assert_eq!(ids.len(), mask.len());
    assert_eq!((ids[0], mask[0]), (tok().bos_id(), 0));
    let enc = |s: &str| tok().encode_ordinary(s);
    let mut expect: Vec<(u32, u8)> = vec![(tok().bos_id(), 0), (sp("<|user_start|>"), 0)];
    expect.extend(enc("Hello").into_iter().map(|i| (i, 0)));
    expect.extend([(sp("<|user_end|>"), 0), (sp("<|assistant_start|>"), 0)]);
    expect.extend(enc("Hi there").into_iter().map(|i| (i, 1)));
    expect.extend([(sp("<|assistant_end|>"), 1), (sp("<|user_start|>"), 0)]);
    expect.extend(enc("Bye").into_iter().map(|i| (i, 0)));
    expect.extend([(sp("<|user_end|>"), 0), (sp("<|assistant_start|>"), 0)]);
    expect.extend(enc("Bye!").into_iter().map(|i| (i, 1)));
    expect.push((sp("<|assistant_end|>"), 1));
    assert_eq!(ids.into_iter().zip(mask).collect::<Vec<_>>(), expect);
}

#[test]
fn system_message_merges_into_first_user_message() {
    let with_system = conv(&[
        (Role::System, "Be brief."),
        (Role::User, "Hello"),
        (Role::Assistant, "Hi"),
    ]);
    let merged = conv(&[(Role::User, "Be brief.\n\nHello"), (Role::Assistant, "Hi")]);
    assert_eq!(
        tok().render_conversation(&with_system, 2048).unwrap(),
        tok().render_conversation(&merged, 2048).unwrap()
    );
    // The caller's conversation is not modified.
    assert_eq!(with_system.messages.len(), 3);
}

#[test]
fn python_part_supervised_output_not() {
    let c = Conversation {
        messages: vec![
            Message::new(Role::User, "What is 2+2?"),
            Message {
                role: Role::Assistant,
                content: Content::Parts(vec![
                    Part {
                        kind: PartKind::Text,
                        text: "Let me compute.".into(),
                    },
                    Part {
                        kind: PartKind::Python,
                        text: "2+2".into(),
                    },
                    Part {
                        kind: PartKind::PythonOutput,
                        text: "4".into(),
                    },
                    Part {
                        kind: PartKind::Text,
                        text: "It is 4.".into(),
                    },
                ]),
            },
        ],
    };
    let (ids, mask) = tok().render_conversation(&c, 2048).unwrap();
    let pos = |name: &str| ids.iter().position(|&i| i == sp(name)).unwrap();
    let (ps, pe, os, oe) = (
        pos("<|python_start|>"),
        pos("<|python_end|>"),
        pos("<|output_start|>"),
        pos("<|output_end|>"),
    );
    assert!(ps < pe && pe < os && os < oe);
    assert!(mask[ps..=pe].iter().all(|&m| m == 1), "python span supervised");
    assert!(
        mask[os..=oe].iter().all(|&m| m == 0),
        "python output span not supervised"
    );
    assert_eq!(&ids[os + 1..oe], tok().encode_ordinary("4").as_slice());
    let a_start = pos("<|assistant_start|>");
    assert_eq!(mask[a_start], 0);
    assert!(mask[a_start + 1..ps].iter().all(|&m| m == 1), "text part supervised");
    assert!(
        mask[oe + 1..].iter().all(|&m| m == 1),
        "final text and assistant_end supervised"
    );
    assert_eq!(*ids.last().unwrap(), sp("<|assistant_end|>"));
}

#[test]
fn conversation_json_shape() {
    let json = r#"{"messages": [{"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [{"type": "python", "text": "1+1"}, {"type": "python_output", "text": "2"}]}]}"#;
    let c: Conversation = serde_json::from_str(json).unwrap();
    assert!(matches!(&c.messages[1].content, Content::Parts(p) if p[1].kind == PartKind::PythonOutput));
    assert!(tok().render_conversation(&c, 2048).is_ok());
    assert!(serde_json::from_str::<Conversation>(
        r#"{"messages": [{"role": "user", "content": [{"type": "video", "text": ""}]}]}"#
    )
    .is_err());
}

#[test]
fn truncation_to_max_tokens() {
    let long = "hello world ".repeat(100);
    let c = conv(&[(Role::User, &long), (Role::Assistant, &long)]);
    let (full, _) = tok().render_conversation(&c, 100_000).unwrap();
    assert!(full.len() > 50);
    let (ids, mask) = tok().render_conversation(&c, 50).unwrap();
    assert_eq!((ids.len(), mask.len()), (50, 50));
    assert_eq!(ids, full[..50]);
}

#[test]
fn render_for_completion_ends_with_assistant_start() {
    let c = conv(&[(Role::User, "Hello"), (Role::Assistant, "The answer")]);
    let ids = tok().render_for_completion(&c).unwrap();
    assert_eq!(*ids.last().unwrap(), sp("<|assistant_start|>"));
    let (prompt, _) = tok()
        .render_conversation(&conv(&[(Role::User, "Hello")]), 2048)
        .unwrap();
    assert_eq!(&ids[..ids.len() - 1], prompt.as_slice());
    let answer = tok().encode_ordinary("The answer");
    assert!(!ids.windows(answer.len()).any(|w| w == answer.as_slice()));
}

#[test]
fn malformed_conversations_are_errors() {
    let bad = [
        conv(&[]),
        conv(&[(Role::Assistant, "Hi")]),
        conv(&[(Role::User, "a"), (Role::User, "b")]),
        conv(&[(Role::System, "only a system message")]),
        conv(&[(Role::System, "s"), (Role::Assistant, "a")]),
        conv(&[(Role::User, "a"), (Role::Assistant, "b"), (Role::System, "c")]),
    ];
    for c in &bad {
        let e = tok().render_conversation(c, 2048).unwrap_err();
        assert!(e.to_string().starts_with("cannot render conversation"), "{e}");
    }
    assert!(tok().render_for_completion(&conv(&[(Role::User, "a")])).is_err());
}
