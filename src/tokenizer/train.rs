//! BPE training with rustbpe's semantics, built for billions of characters.
//!
//! 1. Split every document with the pattern and count unique chunks (in parallel, into hash shards).
//! 2. Start every chunk as its bytes (ids 0..255 = bytes) and count adjacent pairs, weighted by chunk count.
//! 3. Repeatedly merge the most frequent pair, ties going to the smallest pair `(a, b)`; the new token gets
//!    id `256 + merge index`. Only the chunks that contain the pair are touched, and pair counts are updated
//!    incrementally from the local changes around each merge site.
//!
//! The priority queue holds possibly stale counts. A pair's count only ever falls after it is first
//! queued (a merge creates pairs only with the brand-new id), so a popped entry whose count is stale is
//! re-queued with the fresh count, and an entry whose count is current is the true maximum. That is
//! rustbpe's lazy scheme, and it makes the merge sequence exactly "max count, then smallest pair".

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rayon::prelude::*;

use super::hash::{pair_key, FastHasher, FastMap};
use super::pattern::Splitter;
use std::hash::{BuildHasher, BuildHasherDefault};

/// Number of hash shards for chunk counts; lets the merge of per-thread counts run in parallel.
const SHARDS: usize = 64;

/// Distinct pieces of a batch with their counts, dealt out by shard (index = shard).
type Dealt<'a> = Vec<Vec<(&'a [u8], u64)>>;

/// Counts of unique pre-tokenization chunks over a stream of documents.
pub struct ChunkCounts {
    splitter: Splitter,
    shards: Vec<FastMap<Box<[u8]>, u64>>,
}

fn shard_of(chunk: &[u8]) -> usize {
    let h = BuildHasherDefault::<FastHasher>::default().hash_one(chunk);
    // High bits: the map itself uses the low ones for buckets.
    (h >> 58) as usize % SHARDS
}

impl ChunkCounts {
    pub fn new(splitter: Splitter) -> ChunkCounts {
        ChunkCounts {
            splitter,
            shards: (0..SHARDS).map(|_| FastMap::default()).collect(),
        }
    }

    /// Split and count a batch of documents on all cores.
    pub fn add_batch<S: AsRef<str> + Sync>(&mut self, docs: &[S]) {
        let splitter = self.splitter;
        // Each worker counts a slice of the batch into one map keyed by borrowed pieces (one hash per
        // piece), then deals its distinct pieces out to the shards...
        let per_worker: Vec<Dealt> = docs
            .par_chunks(docs.len().div_ceil(rayon::current_num_threads() * 4).max(1))
            .map(|part| {
                let mut local: FastMap<&[u8], u64> = FastMap::default();
                for doc in part {
                    for piece in splitter.split(doc.as_ref().as_bytes()) {
                        *local.entry(piece).or_insert(0) += 1;
                    }
                }
                let mut dealt: Dealt = (0..SHARDS).map(|_| Vec::new()).collect();
                for (k, v) in local {
                    dealt[shard_of(k)].push((k, v));
                }
                dealt
            })
            .collect();
        // Regrouped by shard: columns[s] holds every worker's part for shard s.
        let mut columns: Vec<Dealt> = (0..SHARDS).map(|_| Vec::new()).collect();
        for worker in per_worker {
            for (s, part) in worker.into_iter().enumerate() {
                columns[s].push(part);
            }
        }
        // ...and every shard folds in its pieces from every worker, shards in parallel. Only pieces never
        // seen before are copied out of the batch.
        self.shards
            .par_iter_mut()
            .zip(columns.into_par_iter())
            .for_each(|(global, parts)| {
                for (k, v) in parts.into_iter().flatten() {
                    match global.get_mut(k) {
                        Some(c) => *c += v,
                        None => {
                            global.insert(Box::from(k), v);
                        }
                    }
                }
            });
    }

    /// Number of distinct chunks seen.
    pub fn unique(&self) -> usize {
        self.shards.iter().map(|m| m.len()).sum()
    }

    /// Total number of chunks seen.
    pub fn total(&self) -> u64 {
        self.shards.iter().flat_map(|m| m.values()).sum()
    }

    /// Learn up to `n_merges` merges; returns the merged pairs in order (merge i creates id 256 + i).
    /// Fewer merges come back when no pair is left to merge.
    pub fn train(self, n_merges: usize, progress: &mut dyn FnMut(usize, usize)) -> Vec<(u32, u32)> {
        let mut words = Words::from_counts(self.shards);
        words.train(n_merges, progress)
    }
}

/// Pair counts, and per pair the ascending list of words that contain it.
type PairTables = (FastMap<u64, i64>, FastMap<u64, Vec<u32>>);

/// All chunks with at least two bytes, as id sequences in one arena, with their counts.
struct Words {
    ids: Vec<u32>,
    start: Vec<usize>,
    len: Vec<u32>,
    count: Vec<i64>,
}

impl Words {
    fn from_counts(shards: Vec<FastMap<Box<[u8]>, u64>>) -> Words {
        let mut w = Words {
            ids: Vec::new(),
            start: Vec::new(),
            len: Vec::new(),
            count: Vec::new(),
        };
        for shard in shards {
            for (chunk, c) in shard {
                // A one-byte chunk has no pair and can never change.
                if chunk.len() < 2 {
                    continue;
                }
                w.start.push(w.ids.len());
                w.len.push(chunk.len() as u32);
                w.count.push(c as i64);
                w.ids.extend(chunk.iter().map(|&b| b as u32));
            }
        }
        w
    }

    fn word(&self, i: usize) -> &[u32] {
        &self.ids[self.start[i]..self.start[i] + self.len[i] as usize]
    }

    fn train(&mut self, n_merges: usize, progress: &mut dyn FnMut(usize, usize)) -> Vec<(u32, u32)> {
        let (mut pair_count, mut where_) = self.initial_pairs();
        let mut heap: BinaryHeap<(i64, Reverse<u64>)> = pair_count
            .iter()
            .filter(|&(_, &c)| c > 0)
            .map(|(&p, &c)| (c, Reverse(p)))
            .collect();
        let mut merges = Vec::with_capacity(n_merges);
        let mut new_where: FastMap<u64, Vec<u32>> = FastMap::default();
        while merges.len() < n_merges {
            let Some((c, Reverse(pair))) = heap.pop() else {
                break;
            };
            let current = pair_count.get(&pair).copied().unwrap_or(0);
            if current <= 0 {
                continue;
            }
            if c != current {
                heap.push((current, Reverse(pair)));
                continue;
            }
            let (a, b) = ((pair >> 32) as u32, pair as u32);
            let new_id = 256 + merges.len() as u32;
            merges.push((a, b));
            let positions = where_.remove(&pair).unwrap_or_default();
            for &w in &positions {
                self.merge_in_word(w as usize, a, b, new_id, &mut pair_count, &mut new_where);
            }
            for (p, pos) in new_where.drain() {
                let c = pair_count.get(&p).copied().unwrap_or(0);
                if c > 0 {
                    heap.push((c, Reverse(p)));
                    where_.insert(p, pos);
                }
            }
            progress(merges.len(), n_merges);
        }
        merges
    }

    /// Pair counts and, per pair, the ascending list of words containing it.
    fn initial_pairs(&self) -> PairTables {
        let n = self.len.len();
        let chunk = n.div_ceil(rayon::current_num_threads() * 4).max(1);
        let parts: Vec<PairTables> = (0..n)
            .into_par_iter()
            .chunks(chunk)
            .map(|idx| {
                let mut pc: FastMap<u64, i64> = FastMap::default();
                let mut wh: FastMap<u64, Vec<u32>> = FastMap::default();
                for i in idx {
                    let c = self.count[i];
                    for pw in self.word(i).windows(2) {
                        let p = pair_key(pw[0], pw[1]);
                        *pc.entry(p).or_insert(0) += c;
                        let list = wh.entry(p).or_default();
                        if list.last() != Some(&(i as u32)) {
                            list.push(i as u32);
                        }
                    }
                }
                (pc, wh)
            })
            .collect();
        // Parts come back in word order, so appending keeps every list ascending.
        let mut pair_count: FastMap<u64, i64> = FastMap::default();
        let mut where_: FastMap<u64, Vec<u32>> = FastMap::default();
        for (pc, wh) in parts {
            for (p, c) in pc {
                *pair_count.entry(p).or_insert(0) += c;
            }
            for (p, list) in wh {
                where_.entry(p).or_default().extend(list);
            }
        }
        (pair_count, where_)
    }

    /// Merge every non-overlapping `(a, b)`, left to right, in word `w`, in place; apply the pair-count
    /// changes (weighted by the word's count) and record the words where new pairs appear.
    fn merge_in_word(
        &mut self,
        w: usize,
        a: u32,
        b: u32,
        new_id: u32,
        pair_count: &mut FastMap<u64, i64>,
        new_where: &mut FastMap<u64, Vec<u32>>,
    ) {
        let c = self.count[w];
        let s = self.start[w];
        let n = self.len[w] as usize;
        let ids = &mut self.ids[s..s + n];
        let mut add = |p: u64, d: i64| *pair_count.entry(p).or_insert(0) += d;
        let mut out = 0usize;
        let mut i = 0usize;
        let mut changed = false;
        while i < n {
            if i + 1 < n && ids[i] == a && ids[i + 1] == b {
                changed = true;
                if out > 0 {
                    let x = ids[out - 1];
                    add(pair_key(x, a), -c);
                    add(pair_key(x, new_id), c);
                    note(new_where, pair_key(x, new_id), w);
                }
                add(pair_key(a, b), -c);
                if i + 2 < n {
                    let y = ids[i + 2];
                    add(pair_key(b, y), -c);
                    add(pair_key(new_id, y), c);
                    note(new_where, pair_key(new_id, y), w);
                }
                ids[out] = new_id;
                i += 2;
            } else {
                ids[out] = ids[i];
                i += 1;
            }
            out += 1;
        }
        if changed {
            self.len[w] = out as u32;
        }
    }
}

fn note(new_where: &mut FastMap<u64, Vec<u32>>, p: u64, w: usize) {
    let list = new_where.entry(p).or_default();
    if list.last() != Some(&(w as u32)) {
        list.push(w as u32);
    }
}

/// Token bytes for ids 0..256+merges: single bytes, then each merge's concatenation.
pub fn tokens_from_merges(merges: &[(u32, u32)]) -> Result<Vec<Vec<u8>>, String> {
    let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    for (i, &(a, b)) in merges.iter().enumerate() {
        let id = tokens.len();
        let (Some(l), Some(r)) = (tokens.get(a as usize), tokens.get(b as usize)) else {
            return Err(format!(
                "merge {i} ({a}, {b}) refers to a token at or after its own id {id}"
            ));
        };
        let mut t = l.clone();
        t.extend_from_slice(r);
        tokens.push(t);
    }
    Ok(tokens)
}
