//! Token shards: the tokenized form of one parquet shard, memory-mapped at training time.
//!
//! File layout (little-endian), chosen so the mapped file is used in place with no parsing or copying:
//! ```text
//! offset  size               field
//! 0       8                  magic b"NCTOKENS"
//! 8       4                  version (1)
//! 12      4                  token width in bytes: 2 (u16) when vocab_size <= 65536, else 4 (u32)
//! 16      4                  vocab_size (every token id is below it)
//! 20      4                  bos_id
//! 24      8                  num_docs
//! 32      8                  num_tokens
//! 40      8 * (num_docs+1)   document start offsets in tokens; offsets[0] = 0, offsets[num_docs] = num_tokens
//! ...     width * num_tokens token ids; every document starts with BOS
//! ```
//! The 40-byte header keeps the offsets 8-byte aligned, and the tokens start at a multiple of 8, so both
//! arrays are read as typed slices straight from the page-aligned mapping.
//!
//! A directory of token shards carries `manifest.json` ([`Manifest`]) that names the tokenizer the shards
//! were made with, so shards from another tokenizer are rejected instead of silently training on garbage.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{DocEncoder, Result};

pub const MAGIC: &[u8; 8] = b"NCTOKENS";
pub const VERSION: u32 = 1;
pub const HEADER_BYTES: usize = 40;
/// File extension of token shards.
pub const EXTENSION: &str = "tok";

/// Bytes per token id for a vocabulary of `vocab_size` ids.
pub fn token_width(vocab_size: usize) -> u32 {
    if vocab_size <= 1 << 16 {
        2
    } else {
        4
    }
}

/// Writes a token shard from documents that already start with BOS. Goes through a temporary file and a
/// rename, so an interrupted run never leaves a shard that looks complete.
pub fn write_shard(path: &Path, docs: &[Vec<u32>], vocab_size: usize, bos_id: u32) -> Result<()> {
    let ctx = |e: &dyn std::fmt::Display| data_err!("cannot write token shard {}: {e}", path.display());
    let width = token_width(vocab_size);
    let num_tokens: usize = docs.iter().map(Vec::len).sum();
    let tmp = path.with_extension("tok.tmp");
    let file = File::create(&tmp).map_err(|e| ctx(&e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut header = Vec::with_capacity(HEADER_BYTES);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&width.to_le_bytes());
    header.extend_from_slice(&(vocab_size as u32).to_le_bytes());
    header.extend_from_slice(&bos_id.to_le_bytes());
    header.extend_from_slice(&(docs.len() as u64).to_le_bytes());
    header.extend_from_slice(&(num_tokens as u64).to_le_bytes());
    out.write_all(&header).map_err(|e| ctx(&e))?;
    let mut offset = 0u64;
    out.write_all(&offset.to_le_bytes()).map_err(|e| ctx(&e))?;
    for doc in docs {
        offset += doc.len() as u64;
        out.write_all(&offset.to_le_bytes()).map_err(|e| ctx(&e))?;
    }
    for doc in docs {
        for &t in doc {
            if t as usize >= vocab_size {
                return Err(ctx(&format!("token id {t} outside the vocabulary of {vocab_size}")));
            }
            let bytes = t.to_le_bytes();
            out.write_all(&bytes[..width as usize]).map_err(|e| ctx(&e))?;
        }
    }
    out.flush().map_err(|e| ctx(&e))?;
    drop(out);
    std::fs::rename(&tmp, path).map_err(|e| ctx(&e))?;
    Ok(())
}

/// A validated, memory-mapped token shard.
pub struct TokenShard {
    path: PathBuf,
    map: Mmap,
    width: u32,
    vocab_size: usize,
    bos_id: u32,
    num_docs: usize,
    num_tokens: usize,
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

impl TokenShard {
    /// Maps `path` and checks everything a reader relies on: magic, version, token width, that the file
    /// size matches the counts, monotone offsets, every document non-empty and starting with BOS, and every
    /// token id below `vocab_size`. Costs one parallel pass over the tokens; afterwards reads cannot fail.
    pub fn open(path: &Path) -> Result<TokenShard> {
        let name = path.display();
        let file = File::open(path).map_err(|e| data_err!("cannot open token shard {name}: {e}"))?;
        // SAFETY: the mapping is read-only and shards are written once (temporary file + rename), never
        // modified in place; a shard truncated by another process while mapped is outside this contract.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| data_err!("cannot map token shard {name}: {e}"))?;
        let b = &map[..];
        if b.len() < HEADER_BYTES {
            return Err(data_err!(
                "token shard {name} is truncated: {} bytes, header needs {HEADER_BYTES}",
                b.len()
            ));
        }
        if &b[0..8] != MAGIC {
            return Err(data_err!(
                "{name} is not a token shard (bad magic {:?}, expected {:?})",
                &b[0..8],
                MAGIC
            ));
        }
        let version = read_u32(b, 8);
        if version != VERSION {
            return Err(data_err!(
                "token shard {name} has version {version}; this build reads version {VERSION}"
            ));
        }
        let width = read_u32(b, 12);
        let vocab_size = read_u32(b, 16) as usize;
        let bos_id = read_u32(b, 20);
        if width != token_width(vocab_size) {
            return Err(data_err!(
                "token shard {name}: token width {width} does not match vocab_size {vocab_size} (expected {})",
                token_width(vocab_size)
            ));
        }
        if bos_id as usize >= vocab_size {
            return Err(data_err!(
                "token shard {name}: bos_id {bos_id} outside the vocabulary of {vocab_size}"
            ));
        }
        let num_docs = read_u64(b, 24);
        let num_tokens = read_u64(b, 32);
        let expected = (num_docs.checked_add(1).and_then(|n| n.checked_mul(8)))
            .and_then(|o| num_tokens.checked_mul(width as u64).and_then(|t| t.checked_add(o)))
            .and_then(|x| x.checked_add(HEADER_BYTES as u64));
        if expected != Some(b.len() as u64) {
            return Err(data_err!(
                "token shard {name} is truncated or damaged: {} bytes, but its header ({num_docs} documents, \
                 {num_tokens} tokens of {width} bytes) needs {}",
                b.len(),
                expected.map_or("more than 2^64".to_string(), |x| x.to_string())
            ));
        }
        let shard = TokenShard {
            path: path.to_path_buf(),
            map,
            width,
            vocab_size,
            bos_id,
            num_docs: num_docs as usize,
            num_tokens: num_tokens as usize,
        };
        shard.validate()?;
        Ok(shard)
    }

    fn validate(&self) -> Result<()> {
        let name = self.path.display();
        let offsets = self.offsets();
        if offsets[0] != 0 || offsets[self.num_docs] != self.num_tokens as u64 {
            return Err(data_err!(
                "token shard {name}: document offsets do not span the {} tokens",
                self.num_tokens
            ));
        }
        for (d, w) in offsets.windows(2).enumerate() {
            if w[1] <= w[0] || w[1] > self.num_tokens as u64 {
                return Err(data_err!(
                    "token shard {name}: document {d} has bad offsets {}..{}",
                    w[0],
                    w[1]
                ));
            }
        }
        for (d, &start) in offsets[..self.num_docs].iter().enumerate() {
            if self.token(start as usize) != self.bos_id {
                return Err(data_err!(
                    "token shard {name}: document {d} does not start with BOS {}",
                    self.bos_id
                ));
            }
        }
        // The vocabulary check is the only full pass: parallel chunks, each first scanned with a branch-free
        // maximum (vectorised), and searched for the culprit only when it fails.
        let vocab = self.vocab_size as u32;
        let width = self.width as usize;
        let tokens = &self.map[self.tokens_start()..];
        let chunk_tokens = 1 << 20;
        let bad = tokens
            .par_chunks(chunk_tokens * width)
            .enumerate()
            .find_map_first(|(c, bytes)| {
                let max = if width == 2 {
                    bytes
                        .chunks_exact(2)
                        .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32)
                        .max()
                } else {
                    bytes
                        .chunks_exact(4)
                        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .max()
                };
                if max.unwrap_or(0) < vocab {
                    return None;
                }
                let lo = c * chunk_tokens;
                (lo..lo + bytes.len() / width)
                    .find(|&i| self.token(i) >= vocab)
                    .map(|i| (i, self.token(i)))
            });
        if let Some((i, t)) = bad {
            return Err(data_err!(
                "token shard {name}: token {i} has id {t}, outside the vocabulary of {}",
                self.vocab_size
            ));
        }
        Ok(())
    }

    fn offsets(&self) -> &[u64] {
        let bytes = &self.map[HEADER_BYTES..HEADER_BYTES + 8 * (self.num_docs + 1)];
        bytemuck::cast_slice(bytes)
    }

    fn tokens_start(&self) -> usize {
        HEADER_BYTES + 8 * (self.num_docs + 1)
    }

    fn token(&self, i: usize) -> u32 {
        let at = self.tokens_start() + i * self.width as usize;
        let b = &self.map[at..at + self.width as usize];
        if self.width == 2 {
            u16::from_le_bytes([b[0], b[1]]) as u32
        } else {
            read_u32(b, 0)
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn num_docs(&self) -> usize {
        self.num_docs
    }
    pub fn num_tokens(&self) -> usize {
        self.num_tokens
    }
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// Length in tokens (BOS included) of document `d`.
    pub fn doc_len(&self, d: usize) -> usize {
        let o = self.offsets();
        (o[d + 1] - o[d]) as usize
    }

    /// Appends the first `n` tokens of document `d` to `out` (`n` at most the document's length).
    pub fn extend_doc(&self, d: usize, n: usize, out: &mut Vec<u32>) {
        let start = self.offsets()[d] as usize;
        let n = n.min(self.doc_len(d));
        let bytes = &self.map[self.tokens_start() + start * self.width as usize..][..n * self.width as usize];
        if self.width == 2 {
            out.extend(bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32));
        } else {
            out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
        }
    }

    /// Document `d` as a vector of token ids.
    pub fn doc(&self, d: usize) -> Vec<u32> {
        let mut v = Vec::with_capacity(self.doc_len(d));
        self.extend_doc(d, usize::MAX, &mut v);
        v
    }
}

/// What identifies a tokenizer for the purpose of reusing token shards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizerId {
    pub vocab_size: usize,
    pub bos_id: u32,
    /// FNV-1a hash (hex) of the vocabulary size, BOS id, and the encoding of a fixed probe text.
    pub fingerprint: String,
}

/// A few lines touching what tokenizers disagree on: case, digits, punctuation, whitespace runs, code and
/// non-ASCII text. Two tokenizers that encode all of it identically are interchangeable for our purposes.
const PROBE: &[&str] = &[
    "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX! the quick brown fox?",
    "In 1969, 12345678 people watched; pi is 3.14159265, and 2+2=4 (mostly).",
    "    def main():\n        return {'key': [1, 2, 3]}\n\n\n\tindented\ttabs  and   spaces ",
    "Naïve café façade — “quotes” ‘single’ … 東京 日本語 한국어 Привет мир 🙂👍",
    "It's, I'm, we'll, they've, you'd, she'S DON'T can't; https://example.com/a?b=c&d=e#f",
    "And God said, Let there be light: and there was light. Brevity is the soul of wit.",
];

impl TokenizerId {
    /// The identity of `encoder`, computed from its behaviour so it needs no file path or version string.
    pub fn of(encoder: &dyn DocEncoder) -> TokenizerId {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |x: u64| {
            for byte in x.to_le_bytes() {
                h ^= byte as u64;
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        feed(encoder.vocab_size() as u64);
        feed(encoder.bos_id() as u64);
        for doc in encoder.encode_batch(PROBE) {
            feed(doc.len() as u64);
            doc.iter().for_each(|&t| feed(t as u64));
        }
        TokenizerId {
            vocab_size: encoder.vocab_size(),
            bos_id: encoder.bos_id(),
            fingerprint: format!("{h:016x}"),
        }
    }
}

/// One token shard in a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// The parquet file it was made from (file name only).
    pub source: String,
    /// The token shard (file name only, in the manifest's directory).
    pub file: String,
    pub num_docs: usize,
    pub num_tokens: usize,
    /// UTF-8 bytes of text that went in, for the bytes-per-token figure.
    pub text_bytes: usize,
}

/// `manifest.json` of a token-shard directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub tokenizer: TokenizerId,
    /// Shards in the order of their parquet sources; the last one is the validation split.
    pub shards: Vec<ShardEntry>,
}

pub const MANIFEST: &str = "manifest.json";

impl Manifest {
    pub fn new(tokenizer: TokenizerId) -> Manifest {
        Manifest {
            format_version: VERSION,
            tokenizer,
            shards: Vec::new(),
        }
    }

    /// Reads `dir/manifest.json`; `Ok(None)` when there is none.
    pub fn load(dir: &Path) -> Result<Option<Manifest>> {
        let path = dir.join(MANIFEST);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| data_err!("cannot read {}: {e}", path.display()))?;
        let m = serde_json::from_str(&text).map_err(|e| data_err!("damaged manifest {}: {e}", path.display()))?;
        Ok(Some(m))
    }

    /// Writes `dir/manifest.json` atomically (temporary file, rename).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(MANIFEST);
        let tmp = dir.join("manifest.json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|e| data_err!("cannot encode manifest: {e}"))?;
        std::fs::write(&tmp, text).map_err(|e| data_err!("cannot write {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &path).map_err(|e| data_err!("cannot write {}: {e}", path.display()))
    }

    /// Fails unless the shards were made with `tokenizer`.
    pub fn check_tokenizer(&self, dir: &Path, tokenizer: &TokenizerId) -> Result<()> {
        if &self.tokenizer != tokenizer {
            return Err(data_err!(
                "token shards in {} were made with another tokenizer (vocab {}, bos {}, fingerprint {}) than the \
                 current one (vocab {}, bos {}, fingerprint {}); re-run `tokenize_data --overwrite`",
                dir.display(),
                self.tokenizer.vocab_size,
                self.tokenizer.bos_id,
                self.tokenizer.fingerprint,
                tokenizer.vocab_size,
                tokenizer.bos_id,
                tokenizer.fingerprint
            ));
        }
        Ok(())
    }
}

/// Opens every shard listed in the manifest of `dir` after checking that they were made with `tokenizer`.
/// Shards are returned in manifest order (the last is validation).
pub fn open_token_dir(dir: &Path, tokenizer: &TokenizerId) -> Result<Vec<TokenShard>> {
    let manifest = Manifest::load(dir)?.ok_or_else(|| {
        data_err!(
            "no token shards in {} (no {MANIFEST}): run `tokenize_data` first",
            dir.display()
        )
    })?;
    manifest.check_tokenizer(dir, tokenizer)?;
    manifest
        .shards
        .iter()
        .map(|entry| {
            let shard = TokenShard::open(&dir.join(&entry.file))?;
            if shard.vocab_size() != tokenizer.vocab_size || shard.bos_id() != tokenizer.bos_id {
                return Err(data_err!(
                    "token shard {} has vocab {} / bos {}, its manifest says vocab {} / bos {}",
                    shard.path().display(),
                    shard.vocab_size(),
                    shard.bos_id(),
                    tokenizer.vocab_size,
                    tokenizer.bos_id
                ));
            }
            Ok(shard)
        })
        .collect()
}
