//! A small, fast, non-cryptographic hasher for the tokenizer's hot maps (pair ids, token bytes, chunks).
//!
//! std's SipHash is DoS-resistant but several times slower on short keys; our keys are token ids and
//! short byte strings, and the hash maps live inside one process. Each word is folded in with a
//! multiply, and `finish` mixes the high and low halves of a 128-bit product, so low bits (which pick the
//! bucket) depend on every input bit. Keys like `(a << 32) | b` would otherwise collide on `b`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

const K: u64 = 0x9E37_79B9_7F4A_7C15;

#[derive(Default, Clone, Copy)]
pub struct FastHasher {
    h: u64,
}

impl FastHasher {
    #[inline(always)]
    fn add(&mut self, x: u64) {
        self.h = (self.h.rotate_left(23) ^ x).wrapping_mul(K);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        let p = (self.h as u128).wrapping_mul(0xD6E8_FEB8_6659_FD93u128);
        (p as u64) ^ ((p >> 64) as u64)
    }
}

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// Pack a pair of token ids into one map key.
#[inline(always)]
pub fn pair_key(a: u32, b: u32) -> u64 {
    ((a as u64) << 32) | b as u64
}
