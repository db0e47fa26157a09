//! Byte-level BPE encoding of one piece, with tiktoken's exact semantics.
//!
//! tiktoken encodes a piece like this: if the whole piece is a token, emit it; otherwise start from single
//! bytes and repeatedly merge the adjacent pair whose concatenation has the lowest rank (leftmost on ties)
//! until no adjacent concatenation is a token. A token's id is its rank.
//!
//! tiktoken looks ranks up by concatenated bytes. We look them up by the pair of ids instead, which is much
//! cheaper, and stay exact by making the pair table complete: for every token and every way to cut its
//! bytes into two tokens, (left id, right id) maps to it. Every part during merging is a token, so "the
//! concatenation of two adjacent parts is a token" holds exactly when their id pair is in the table.
//!
//! Short pieces (almost all of them) use tiktoken's scan for the minimum; long ones (a megabyte of one
//! letter is a single piece) use a heap over a linked list, so they cost O(n log n) rather than O(n^2).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::hash::{pair_key, FastMap};

/// Pieces longer than this (in bytes) are merged with the heap.
const LONG_PIECE: usize = 256;

/// The mergeable tokens: id (= rank) to bytes, and the lookup tables derived from them.
#[derive(Clone, Debug)]
pub struct Vocab {
    tokens: Vec<Vec<u8>>,
    byte_id: [u32; 256],
    by_bytes: FastMap<Vec<u8>, u32>,
    /// Tokens of up to 7 bytes keyed by their packed bytes: most pieces are short, and a u64 key avoids
    /// hashing and comparing byte strings.
    short: FastMap<u64, u32>,
    pairs: FastMap<u64, u32>,
    /// Rank of the two-byte token for every byte pair (u32::MAX if none): the first round of merging
    /// looks only at byte pairs, so it needs no hashing.
    byte_pairs: Vec<u32>,
}

/// Pack a byte string of at most 7 bytes, with its length, into a u64.
#[inline(always)]
fn pack_short(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w[..b.len()].copy_from_slice(b);
    w[7] = b.len() as u8;
    u64::from_le_bytes(w)
}

/// Reusable buffers for encoding, so the hot loop does not allocate.
#[derive(Default)]
pub struct Scratch {
    parts: Vec<u32>,
    ranks: Vec<u32>,
}

impl Vocab {
    /// Build from token bytes in rank order. Every single byte must be a token, tokens must be distinct
    /// and non-empty; the error says which rule a token broke.
    pub fn from_tokens(tokens: Vec<Vec<u8>>) -> Result<Vocab, String> {
        if tokens.len() >= u32::MAX as usize {
            return Err(format!("{} tokens do not fit u32 ids", tokens.len()));
        }
        let mut by_bytes: FastMap<Vec<u8>, u32> = FastMap::default();
        by_bytes.reserve(tokens.len());
        let mut byte_id = [u32::MAX; 256];
        for (id, t) in tokens.iter().enumerate() {
            if t.is_empty() {
                return Err(format!("token {id} is empty"));
            }
            if let Some(prev) = by_bytes.insert(t.clone(), id as u32) {
                return Err(format!("tokens {prev} and {id} have the same bytes {t:?}"));
            }
            if t.len() == 1 {
                byte_id[t[0] as usize] = id as u32;
            }
        }
        if let Some(b) = byte_id.iter().position(|&id| id == u32::MAX) {
            return Err(format!(
                "byte {b:#04x} has no token; a byte-level vocabulary needs all 256"
            ));
        }
        let mut pairs: FastMap<u64, u32> = FastMap::default();
        for (id, t) in tokens.iter().enumerate() {
            for k in 1..t.len() {
                if let (Some(&l), Some(&r)) = (by_bytes.get(&t[..k]), by_bytes.get(&t[k..])) {
                    pairs.insert(pair_key(l, r), id as u32);
                }
            }
        }
        let mut short: FastMap<u64, u32> = FastMap::default();
        let mut byte_pairs = vec![u32::MAX; 1 << 16];
        for (id, t) in tokens.iter().enumerate() {
            if t.len() <= 7 {
                short.insert(pack_short(t), id as u32);
            }
            if t.len() == 2 {
                byte_pairs[(t[0] as usize) << 8 | t[1] as usize] = id as u32;
            }
        }
        Ok(Vocab {
            tokens,
            byte_id,
            by_bytes,
            short,
            pairs,
            byte_pairs,
        })
    }

    /// Number of mergeable tokens (no specials).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Bytes of token `id`, if it exists.
    pub fn token(&self, id: u32) -> Option<&[u8]> {
        self.tokens.get(id as usize).map(|t| t.as_slice())
    }

    pub fn tokens(&self) -> &[Vec<u8>] {
        &self.tokens
    }

    /// The id of a byte string that is exactly one token.
    pub fn id_of(&self, bytes: &[u8]) -> Option<u32> {
        self.by_bytes.get(bytes).copied()
    }

    #[inline(always)]
    fn rank(&self, a: u32, b: u32) -> u32 {
        match self.pairs.get(&pair_key(a, b)) {
            Some(&r) => r,
            None => u32::MAX,
        }
    }

    /// Append the tokens of one piece (the output of the split) to `out`.
    #[inline]
    pub fn encode_piece(&self, piece: &[u8], out: &mut Vec<u32>, scratch: &mut Scratch) {
        match piece.len() {
            0 => {}
            1 => out.push(self.byte_id[piece[0] as usize]),
            n => {
                let whole = if n <= 7 {
                    self.short.get(&pack_short(piece))
                } else {
                    self.by_bytes.get(piece)
                };
                if let Some(&id) = whole {
                    out.push(id);
                } else if n <= LONG_PIECE {
                    self.merge_scan(piece, out, scratch);
                } else {
                    self.merge_heap(piece, out);
                }
            }
        }
    }

    /// tiktoken's loop: find the lowest-ranked pair (leftmost on ties), merge it, update its neighbours.
    fn merge_scan(&self, piece: &[u8], out: &mut Vec<u32>, s: &mut Scratch) {
        let parts = &mut s.parts;
        let ranks = &mut s.ranks;
        parts.clear();
        parts.extend(piece.iter().map(|&b| self.byte_id[b as usize]));
        ranks.clear();
        ranks.extend(
            piece
                .windows(2)
                .map(|w| self.byte_pairs[(w[0] as usize) << 8 | w[1] as usize]),
        );
        loop {
            let mut best = u32::MAX;
            let mut at = 0;
            for (i, &r) in ranks.iter().enumerate() {
                if r < best {
                    best = r;
                    at = i;
                }
            }
            if best == u32::MAX {
                break;
            }
            // The pair's rank is the merged token's id.
            parts[at] = best;
            parts.remove(at + 1);
            ranks.remove(at);
            if at < ranks.len() {
                ranks[at] = self.rank(parts[at], parts[at + 1]);
            }
            if at > 0 {
                ranks[at - 1] = self.rank(parts[at - 1], parts[at]);
            }
        }
        out.extend_from_slice(parts);
    }

    /// The same merge order as `merge_scan`, driven by a min-heap of (rank, position).
    ///
    /// Parts are kept in a linked list indexed by their starting byte, so position order is left-to-right
    /// order and (rank, position) reproduces "lowest rank, leftmost first". A heap entry is stale when the
    /// pair at its position has changed since it was pushed; such a change always lengthens the pair's
    /// bytes and so changes its rank, which makes "current rank == entry rank" an exact validity test.
    fn merge_heap(&self, piece: &[u8], out: &mut Vec<u32>) {
        let n = piece.len();
        const NONE: usize = usize::MAX;
        let mut id: Vec<u32> = piece.iter().map(|&b| self.byte_id[b as usize]).collect();
        let mut next: Vec<usize> = (1..=n).map(|i| if i < n { i } else { NONE }).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| if i > 0 { i - 1 } else { NONE }).collect();
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::with_capacity(n);
        for i in 0..n - 1 {
            let r = self.rank(id[i], id[i + 1]);
            if r != u32::MAX {
                heap.push(Reverse((r, i)));
            }
        }
        while let Some(Reverse((r, i))) = heap.pop() {
            if !alive[i] || next[i] == NONE {
                continue;
            }
            let j = next[i];
            if self.rank(id[i], id[j]) != r {
                continue;
            }
            id[i] = r;
            alive[j] = false;
            next[i] = next[j];
            if next[j] != NONE {
                prev[next[j]] = i;
            }
            if next[i] != NONE {
                let rr = self.rank(id[i], id[next[i]]);
                if rr != u32::MAX {
                    heap.push(Reverse((rr, i)));
                }
            }
            if prev[i] != NONE {
                let p = prev[i];
                let rl = self.rank(id[p], id[i]);
                if rl != u32::MAX {
                    heap.push(Reverse((rl, p)));
                }
            }
        }
        let mut i = 0;
        while i != NONE {
            out.push(id[i]);
            i = next[i];
        }
    }

    /// Test hook: encode a piece with either merge strategy, bypassing the whole-token shortcut.
    #[doc(hidden)]
    pub fn merge_with(&self, piece: &[u8], heap: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if piece.is_empty() {
            return out;
        }
        if heap {
            self.merge_heap(piece, &mut out);
        } else {
            self.merge_scan(piece, &mut out, &mut Scratch::default());
        }
        out
    }
}
