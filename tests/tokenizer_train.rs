//! Training against a naive BPE trainer written from the definition (rustbpe's semantics): count every
//! adjacent pair over the unique chunks weighted by their counts, merge the most frequent pair (ties: the
//! smallest pair), repeat. Random small corpora make ties frequent, so the tie rule is exercised hard.

use std::collections::BTreeMap;

use nanochat::tokenizer::{pattern::Splitter, Tokenizer};
use proptest::prelude::*;

fn naive_merges(docs: &[String], n_merges: usize) -> Vec<(u32, u32)> {
    let mut chunks: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    let s = Splitter::nanochat();
    for d in docs {
        for p in s.split(d.as_bytes()) {
            *chunks.entry(p.to_vec()).or_insert(0) += 1;
        }
    }
    let mut words: Vec<(Vec<u32>, i64)> = chunks
        .into_iter()
        .map(|(k, c)| (k.iter().map(|&b| b as u32).collect(), c))
        .collect();
    let mut merges = Vec::new();
    while merges.len() < n_merges {
        let mut counts: BTreeMap<(u32, u32), i64> = BTreeMap::new();
        for (w, c) in &words {
            for p in w.windows(2) {
                *counts.entry((p[0], p[1])).or_insert(0) += c;
            }
        }
        // Max count; BTreeMap iterates pairs ascending, so the first maximum is the smallest pair.
        let Some((&pair, _)) = counts.iter().rev().max_by_key(|&(_, &c)| c) else {
            break;
        };
        let id = 256 + merges.len() as u32;
        merges.push(pair);
        for (w, _) in &mut words {
            let mut out = Vec::with_capacity(w.len());
            let mut i = 0;
            while i < w.len() {
                if i + 1 < w.len() && (w[i], w[i + 1]) == pair {
                    out.push(id);
                    i += 2;
                } else {
                    out.push(w[i]);
                    i += 1;
                }
            }
            *w = out;
        }
    }
    merges
}

fn merges_of(tok: &Tokenizer) -> Vec<Vec<u8>> {
    tok.mergeable_tokens()[256..].to_vec()
}

fn tokens_of(merges: &[(u32, u32)]) -> Vec<Vec<u8>> {
    let t = Tokenizer::from_merges(merges).unwrap();
    merges_of(&t)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn training_equals_naive_bpe(
        docs in prop::collection::vec("[ab c'\n1é]{0,40}", 0..30),
        n in 0usize..60,
    ) {
        let ours = Tokenizer::train(docs.clone(), 256 + 9 + n, 7, &mut |_, _| {}).unwrap();
        prop_assert_eq!(merges_of(&ours), tokens_of(&naive_merges(&docs, n)));
    }
}

#[test]
fn overlapping_runs_count_like_rustbpe() {
    // "aaaa" and "aaa" hold 3 + 2 overlapping (a, a) pairs. Merging left to right leaves "AA" and "Aa"
    // (A = aa): (A, A) and (A, a) both count 1, and the tie goes to the smaller pair (256, 97) = "aaa".
    let docs = vec!["aaaa".to_string(), "aaa".to_string()];
    let ours = Tokenizer::train(docs.clone(), 256 + 9 + 3, 1, &mut |_, _| {}).unwrap();
    assert_eq!(merges_of(&ours), tokens_of(&naive_merges(&docs, 3)));
    assert_eq!(
        merges_of(&ours),
        vec![b"aa".to_vec(), b"aaa".to_vec(), b"aaaa".to_vec()]
    );
}
