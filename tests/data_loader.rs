//! Best-fit packing (spec §4.3), rank sharding (§4.2) and exact resume of the pretraining loader.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use nanochat::data::loader::{DataLoader, DocRef, DocStream, LoaderConfig, LoaderState, StreamPos};
use nanochat::data::shards::{write_shard, TokenShard};
use nanochat::rng::Rng;
use proptest::prelude::*;

const VOCAB: usize = 1000;
const BOS: u32 = 999;

/// Document `i` of shard `s` with `len` tokens: BOS then ids that encode (s, i, position).
fn make_doc(s: usize, i: usize, len: usize) -> Vec<u32> {
    let mut d = vec![BOS];
    d.extend((1..len).map(|j| ((s * 131 + i * 17 + j) % 900) as u32));
    d
}

/// Writes shards with the given document lengths and opens them.
fn shards_with(dir: &Path, lengths: &[Vec<usize>]) -> (Arc<[TokenShard]>, Vec<Vec<Vec<u32>>>) {
    let mut docs = Vec::new();
    let mut opened = Vec::new();
    for (s, lens) in lengths.iter().enumerate() {
        let d: Vec<Vec<u32>> = lens.iter().enumerate().map(|(i, &l)| make_doc(s, i, l)).collect();
        let path = dir.join(format!("shard_{s:05}.tok"));
        write_shard(&path, &d, VOCAB, BOS).expect("write shard");
        opened.push(TokenShard::open(&path).expect("open shard"));
        docs.push(d);
    }
    (opened.into(), docs)
}

fn config(b: usize, t: usize, buffer: usize, refill: usize, block: usize) -> LoaderConfig {
    LoaderConfig {
        batch_size: b,
        seq_len: t,
        rank: 0,
        world_size: 1,
        buffer_docs: buffer,
        refill_docs: refill,
        block_docs: block,
    }
}

/// Rows of a batch as (T+1)-token vectors, rebuilt from inputs and targets.
fn rows(inputs: &[u32], targets: &[u32], t: usize) -> Vec<Vec<u32>> {
    inputs
        .chunks(t)
        .zip(targets.chunks(t))
        .map(|(i, tg)| {
            assert_eq!(&i[1..], &tg[..t - 1], "targets are inputs shifted by one");
            let mut r = i.to_vec();
            r.push(tg[t - 1]);
            r
        })
        .collect()
}

fn concat(docs: &[Vec<Vec<u32>>], parts: &[(usize, usize)]) -> Vec<u32> {
    // (doc index in shard 0, tokens taken)
    parts.iter().flat_map(|&(d, n)| docs[0][d][..n].to_vec()).collect()
}

#[test]
fn hand_worked_best_fit() {
    // One shard, lengths d0..d7 = 3 5 2 6 4 9 1 7; capacity T+1 = 8; buffer 3, refills of 2, blocks of 4.
    // Worked by hand from §4.3 (buffer topped up to >= 3 before each placement):
    //  row1: buf [d0 d1 d2 d3] -> d3(6), then [d0 d1 d2] -> d2(2)            = d3 d2
    //  row2: buf [d0 d1 d4 d5] -> d1(5), then [d0 d4 d5] -> d0(3)            = d1 d0
    //  row3: buf [d4 d5 d6 d7] -> d7(7), then [d4 d5 d6] -> d6(1)            = d7 d6
    //  row4: buf [d4 d5 d0' d1'] (epoch 2) -> d1'(5), then d0'(3)            = d1 d0
    //  row5: buf [d4 d5 d2' d3'] -> d3'(6), then d2'(2)                      = d3 d2
    //  row6: buf [d4 d5 d4' d5'] -> d4(4) (earliest of equals), then d4'(4)  = d4 d4
    let dir = tempfile::tempdir().expect("tempdir");
    let (shards, docs) = shards_with(dir.path(), &[vec![3, 5, 2, 6, 4, 9, 1, 7]]);
    let mut loader = DataLoader::new(shards, config(2, 7, 3, 2, 4)).expect("loader");
    let expected = [
        vec![(3, 6), (2, 2)],
        vec![(1, 5), (0, 3)],
        vec![(7, 7), (6, 1)],
        vec![(1, 5), (0, 3)],
        vec![(3, 6), (2, 2)],
        vec![(4, 4), (4, 4)],
    ];
    let mut got = Vec::new();
    for _ in 0..3 {
        let batch = loader.next_batch();
        got.extend(rows(&batch.inputs, &batch.targets, 7));
    }
    for (row, parts) in got.iter().zip(&expected) {
        assert_eq!(row, &concat(&docs, parts));
    }
    assert_eq!(loader.stats().tokens_cropped, 0);
    assert_eq!(loader.state().pos.epoch, 2);
}

#[test]
fn hand_worked_crop() {
    // Lengths 9 10 9 | 2 11 3; capacity 8; buffer 3, refills of 3, blocks of 3.
    //  row1: buf [d0 d1 d2], nothing fits -> crop the shortest, earliest of ties: d0[..8]
    //  row2: buf [d1 d2 d3 d4 d5] -> d5(3), then d3(2); 3 left, buf [d1 d2 d4], nothing fits -> d2[..3]
    let dir = tempfile::tempdir().expect("tempdir");
    let (shards, docs) = shards_with(dir.path(), &[vec![9, 10, 9, 2, 11, 3]]);
    let mut loader = DataLoader::new(shards, config(2, 7, 3, 3, 3)).expect("loader");
    let batch = loader.next_batch();
    let got = rows(&batch.inputs, &batch.targets, 7);
    assert_eq!(got[0], concat(&docs, &[(0, 8)]));
    assert_eq!(got[1], concat(&docs, &[(5, 3), (3, 2), (2, 3)]));
    let stats = loader.stats();
    assert_eq!((stats.tokens_used, stats.tokens_cropped, stats.docs), (16, 1 + 6, 4));
    assert!((stats.crop_fraction() - 7.0 / 23.0).abs() < 1e-12);
}

/// §4.2 written plainly: the refills rank `rank` of `world` sees, epoch after epoch.
fn reference_refills(lengths: &[Vec<usize>], cfg: &LoaderConfig) -> impl Iterator<Item = Vec<(usize, usize)>> {
    let lengths = lengths.to_vec();
    let cfg = *cfg;
    (0..).flat_map(move |_epoch| {
        let mut out = Vec::new();
        for (s, lens) in lengths.iter().enumerate() {
            let blocks = lens.len().div_ceil(cfg.block_docs);
            let mut b = cfg.rank;
            while b < blocks {
                let start = b * cfg.block_docs;
                let end = (start + cfg.block_docs).min(lens.len());
                let mut i = start;
                while i < end {
                    let j = (i + cfg.refill_docs).min(end);
                    out.push((i..j).map(|d| (s, d)).collect());
                    i = j;
                }
                b += cfg.world_size;
            }
        }
        out
    })
}

/// §4.3 written plainly: rows of T+1 tokens, plus (used, cropped) token counts.
fn reference_rows(
    docs: &[Vec<Vec<u32>>],
    lengths: &[Vec<usize>],
    cfg: &LoaderConfig,
    nrows: usize,
) -> (Vec<Vec<u32>>, u64, u64) {
    let mut refills = reference_refills(lengths, cfg);
    let mut buffer: Vec<Vec<u32>> = Vec::new();
    let (mut used, mut cropped) = (0u64, 0u64);
    let mut out = Vec::new();
    for _ in 0..nrows {
        let mut row: Vec<u32> = Vec::new();
        while row.len() < cfg.seq_len + 1 {
            while buffer.len() < cfg.buffer_docs {
                for (s, d) in refills.next().expect("infinite stream") {
                    buffer.push(docs[s][d].clone());
                }
            }
            let remaining = cfg.seq_len + 1 - row.len();
            let mut best_idx = None;
            let mut best_len = 0;
            for (i, doc) in buffer.iter().enumerate() {
                if doc.len() <= remaining && doc.len() > best_len {
                    best_idx = Some(i);
                    best_len = doc.len();
                }
            }
            if let Some(i) = best_idx {
                let doc = buffer.remove(i);
                used += doc.len() as u64;
                row.extend(doc);
            } else {
                let shortest = (0..buffer.len()).min_by_key(|&i| buffer[i].len()).expect("non-empty");
                let doc = buffer.remove(shortest);
                used += remaining as u64;
                cropped += (doc.len() - remaining) as u64;
                row.extend(&doc[..remaining]);
            }
        }
        out.push(row);
    }
    (out, used, cropped)
}

fn random_lengths(rng: &mut Rng, shards: usize, max_docs: usize, max_len: usize) -> Vec<Vec<usize>> {
    (0..shards)
        .map(|_| {
            let n = 1 + rng.below(max_docs as u64) as usize;
            (0..n).map(|_| 1 + rng.below(max_len as u64) as usize).collect()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The loader equals the plain reference on random shards, geometries and ranks; rows start with BOS.
    #[test]
    fn best_fit_matches_reference(seed in 0u64..1_000_000, nshards in 1usize..4, world in 1usize..4,
                                  b in 1usize..4, t in 1usize..40, buffer in 1usize..24,
                                  refill in 1usize..7, block in 1usize..12) {
        let mut rng = Rng::new(seed);
        let mut lengths = random_lengths(&mut rng, nshards, 40, 3 * t + 3);
        // Every rank must own at least one block.
        let need = lengths[0].len().max(world * block);
        lengths[0].resize(need, 5);
        let rank = rng.below(world as u64) as usize;
        let cfg = LoaderConfig { rank, world_size: world, ..config(b, t, buffer, refill, block) };
        let dir = tempfile::tempdir().expect("tempdir");
        let (shards, docs) = shards_with(dir.path(), &lengths);
        let mut loader = DataLoader::new(shards, cfg).expect("loader");
        let nbatches = 6;
        let mut got = Vec::new();
        for _ in 0..nbatches {
            let batch = loader.next_batch();
            got.extend(rows(&batch.inputs, &batch.targets, t));
        }
        let (expected, used, cropped) = reference_rows(&docs, &lengths, &cfg, nbatches * b);
        prop_assert_eq!(&got, &expected);
        prop_assert!(got.iter().all(|r| r[0] == BOS && r.len() == t + 1));
        prop_assert_eq!((loader.stats().tokens_used, loader.stats().tokens_cropped), (used, cropped));
    }
}

#[test]
fn resume_continues_with_the_very_next_batch() {
    let mut rng = Rng::new(7);
    let lengths = random_lengths(&mut rng, 3, 50, 200);
    let dir = tempfile::tempdir().expect("tempdir");
    let (shards, _) = shards_with(dir.path(), &lengths);
    for world in [1, 2] {
        for rank in 0..world {
            let cfg = LoaderConfig {
                rank,
                world_size: world,
                ..config(3, 64, 100, 8, 16)
            };
            let mut full = DataLoader::new(shards.clone(), cfg).expect("loader");
            let reference: Vec<_> = (0..60).map(|_| full.next_batch()).collect();
            // Stop points include the first batch and points past an epoch boundary.
            for k in [0, 1, 7, 25, 59] {
                let mut first = DataLoader::new(shards.clone(), cfg).expect("loader");
                for batch in &reference[..k] {
                    assert_eq!(&first.next_batch(), batch);
                }
                // Through JSON, as a checkpoint would store it.
                let json = serde_json::to_string(&first.state()).expect("serialise");
                drop(first);
                let state: LoaderState = serde_json::from_str(&json).expect("deserialise");
                let mut resumed = DataLoader::resume(shards.clone(), cfg, &state).expect("resume");
                for (i, batch) in reference[k..].iter().enumerate() {
                    assert_eq!(
                        &resumed.next_batch(),
                        batch,
                        "world {world} rank {rank}: stop at {k}, batch {}",
                        k + i
                    );
                }
            }
            assert!(full.state().pos.epoch >= 2, "the run should cross an epoch boundary");
        }
    }
}

#[test]
fn resume_rejects_foreign_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (shards, _) = shards_with(dir.path(), &[vec![4; 50]]);
    let cfg = config(1, 8, 4, 2, 4);
    let loader = DataLoader::new(shards.clone(), cfg).expect("loader");
    let mut state = loader.state();
    state.world_size = 2;
    assert!(DataLoader::resume(shards.clone(), cfg, &state).is_err());
    let mut state = loader.state();
    state.buffer.push(DocRef { shard: 0, doc: 50 });
    let err = DataLoader::resume(shards.clone(), cfg, &state)
        .err()
        .expect("out-of-range document");
    assert!(err.to_string().contains("document 50"), "{err}");
    let mut state = loader.state();
    state.buffer.push(DocRef { shard: 3, doc: 0 });
    assert!(DataLoader::resume(shards, cfg, &state).is_err());
}

#[test]
fn ranks_see_disjoint_documents_that_cover_the_stream() {
    // Shards of sizes that leave partial blocks and a shard smaller than one block per rank.
    let lengths = vec![vec![3; 1000], vec![3; 70], vec![3; 333], vec![3; 2]];
    let dir = tempfile::tempdir().expect("tempdir");
    let (shards, _) = shards_with(dir.path(), &lengths);
    let total: usize = lengths.iter().map(Vec::len).sum();
    for world in [1, 2, 3, 5, 8] {
        let mut seen: HashSet<DocRef> = HashSet::new();
        for rank in 0..world {
            let cfg = LoaderConfig {
                rank,
                world_size: world,
                ..config(1, 8, 8, 16, 64)
            };
            let start = StreamPos {
                epoch: 1,
                shard: 0,
                doc: 0,
            };
            let mut stream = DocStream::new(shards.clone(), cfg, start).expect("stream");
            while stream.pos().epoch == 1 {
                for r in stream.next_refill() {
                    assert_eq!((r.doc as usize / 64) % world, rank, "block dealt to the wrong rank");
                    assert!(seen.insert(r), "document {r:?} seen twice (world {world})");
                }
            }
        }
        assert_eq!(seen.len(), total, "world {world}: ranks together cover the stream");
    }
}

#[test]
fn rank_without_documents_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (shards, _) = shards_with(dir.path(), &[vec![3; 10]]);
    let cfg = LoaderConfig {
        rank: 1,
        world_size: 2,
        ..config(1, 8, 8, 16, 64)
    };
    let err = DataLoader::new(shards, cfg).err().expect("rank 1 owns no block");
    assert!(err.to_string().contains("rank 1 of 2 gets no documents"), "{err}");
}
