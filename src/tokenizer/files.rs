//! Tokenizer files: our versioned format, tiktoken's rank files, and the token-bytes table.
//!
//! Our format (`tokenizer.bin`, all integers little-endian):
//!
//! ```text
//! magic    8 bytes  "NCTOKEN\0"
//! version  u32      1
//! pattern  u32 length + UTF-8 bytes      the split pattern (one of those in `pattern`)
//! tokens   u32 count, then per token: u32 length + bytes      mergeable tokens in rank (= id) order
//! specials u32 count, then per special: u32 length + UTF-8    ids follow the mergeable tokens
//! check    u64      FNV-1a 64 of every byte above
//! ```
//!
//! tiktoken rank files (`tokenizer.tiktoken`) have one line per mergeable token, `base64(bytes) rank`.
//! They carry neither the pattern nor the special tokens; to rebuild our encoder in tiktoken use
//!
//! ```text
//! tiktoken.Encoding(name, pat_str=SPLIT_PATTERN, mergeable_ranks=load_tiktoken_bpe(path),
//!                   special_tokens={name: n_ranks + i for i, name in enumerate(SPECIAL_TOKENS)})
//! ```
//!
//! with `SPLIT_PATTERN` from `pattern` and `SPECIAL_TOKENS` (9, in order) from this module's parent.
//!
//! The token-bytes table (`token_bytes.bin`) is `"NCTBYTES"`, u32 version 1, u32 count, then one u32 per
//! id: the token's raw byte length, 0 for special tokens (used by bits-per-byte evaluation).

use std::io::Write;
use std::path::Path;

use super::{Tokenizer, TokenizerError};

const MAGIC: &[u8; 8] = b"NCTOKEN\0";
const VERSION: u32 = 1;
const BYTES_MAGIC: &[u8; 8] = b"NCTBYTES";

fn io_err(path: &Path, source: std::io::Error) -> TokenizerError {
    TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// FNV-1a, 64-bit: a fixed, documented checksum (not tied to any hasher implementation).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Write `bytes` to `path` atomically: a temporary file next to it, flushed, then renamed over it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TokenizerError> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        }
    }
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp_name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path, e));
    }
    Ok(())
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Serialize a tokenizer in our format.
pub fn to_bytes(tok: &Tokenizer) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    put_bytes(&mut out, tok.pattern().as_bytes());
    out.extend_from_slice(&(tok.n_mergeable() as u32).to_le_bytes());
    for t in tok.mergeable_tokens() {
        put_bytes(&mut out, t);
    }
    out.extend_from_slice(&(tok.specials().len() as u32).to_le_bytes());
    for s in tok.specials() {
        put_bytes(&mut out, s.as_bytes());
    }
    let check = fnv1a(&out);
    out.extend_from_slice(&check.to_le_bytes());
    out
}

pub fn save(tok: &Tokenizer, path: &Path) -> Result<(), TokenizerError> {
    write_atomic(path, &to_bytes(tok))
}

/// A bounds-checked reader whose errors say what was being read and where.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.data.len() - self.pos < n {
            return Err(format!(
                "truncated: needed {n} bytes for {what} at offset {}, only {} left",
                self.pos,
                self.data.len() - self.pos
            ));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn bytes(&mut self, what: &str) -> Result<&'a [u8], String> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }
}

/// The fields of our format: pattern, mergeable tokens, special tokens.
type Fields = (String, Vec<Vec<u8>>, Vec<String>);

/// Parse our format; `path` only labels errors.
pub fn from_bytes(data: &[u8], path: &Path) -> Result<Tokenizer, TokenizerError> {
    let fmt_err = |msg: String| TokenizerError::Format {
        path: path.to_path_buf(),
        msg,
    };
    if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
        return Err(fmt_err("missing the NCTOKEN magic (wrong file type?)".into()));
    }
    if data.len() < MAGIC.len() + 4 + 8 {
        return Err(fmt_err(format!("truncated: only {} bytes", data.len())));
    }
    let (body, check) = data.split_at(data.len() - 8);
    let mut r = Reader {
        data: body,
        pos: MAGIC.len(),
    };
    let version = r.u32("the version").map_err(&fmt_err)?;
    if version != VERSION {
        return Err(fmt_err(format!(
            "version {version}, this build reads version {VERSION}"
        )));
    }
    let stored = u64::from_le_bytes(check.try_into().map_err(|_| fmt_err("bad checksum".into()))?);
    if fnv1a(body) != stored {
        return Err(fmt_err("checksum mismatch: the file is corrupt or truncated".into()));
    }
    let parse = |r: &mut Reader| -> Result<Fields, String> {
        let pattern =
            String::from_utf8(r.bytes("the pattern")?.to_vec()).map_err(|_| "the pattern is not UTF-8".to_string())?;
        let n = r.u32("the token count")? as usize;
        // Each token needs at least 5 bytes; reject absurd counts before allocating.
        if n > body.len() / 5 {
            return Err(format!("token count {n} does not fit in a {} byte file", data.len()));
        }
        let mut tokens = Vec::with_capacity(n);
        for i in 0..n {
            tokens.push(r.bytes(&format!("token {i}"))?.to_vec());
        }
        let ns = r.u32("the special-token count")? as usize;
        if ns > body.len() / 4 {
            return Err(format!("special-token count {ns} does not fit the file"));
        }
        let mut specials = Vec::with_capacity(ns);
        for i in 0..ns {
            let s = String::from_utf8(r.bytes(&format!("special token {i}"))?.to_vec())
                .map_err(|_| format!("special token {i} is not UTF-8"))?;
            specials.push(s);
        }
        if r.pos != body.len() {
            return Err(format!(
                "{} unexpected bytes after the special tokens",
                body.len() - r.pos
            ));
        }
        Ok((pattern, tokens, specials))
    };
    let (pattern, tokens, specials) = parse(&mut r).map_err(fmt_err)?;
    Tokenizer::from_parts(tokens, &pattern, specials).map_err(|e| fmt_err(e.to_string()))
}

pub fn load(path: &Path) -> Result<Tokenizer, TokenizerError> {
    let data = std::fs::read(path).map_err(|e| io_err(path, e))?;
    from_bytes(&data, path)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (what tiktoken's rank files use).
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            if k <= c.len() {
                out.push(B64[(n >> (18 - 6 * k)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn base64_decode(s: &str) -> Result<Vec<u8>, String> {
    let s = s.as_bytes();
    if s.len() % 4 != 0 {
        return Err(format!("base64 length {} is not a multiple of 4", s.len()));
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let n_chunks = s.len() / 4;
    for (ci, c) in s.chunks(4).enumerate() {
        // Padding may only end the last group, one or two '='.
        let pad = if ci + 1 == n_chunks {
            c.iter().rev().take_while(|&&x| x == b'=').count()
        } else {
            0
        };
        if pad > 2 {
            return Err("too much base64 padding".into());
        }
        let mut n = 0u32;
        for &ch in &c[..4 - pad] {
            let v = match ch {
                b'A'..=b'Z' => ch - b'A',
                b'a'..=b'z' => ch - b'a' + 26,
                b'0'..=b'9' => ch - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                _ => return Err(format!("invalid base64 character {:?}", ch as char)),
            };
            n = n << 6 | v as u32;
        }
        n <<= 6 * pad as u32;
        let b = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&b[..3 - pad]);
    }
    Ok(out)
}

/// Export the mergeable ranks as a tiktoken rank file.
pub fn export_tiktoken(tok: &Tokenizer, path: &Path) -> Result<(), TokenizerError> {
    let mut s = String::new();
    for (rank, t) in tok.mergeable_tokens().iter().enumerate() {
        s.push_str(&base64_encode(t));
        s.push(' ');
        s.push_str(&rank.to_string());
        s.push('\n');
    }
    write_atomic(path, s.as_bytes())
}

/// Import a tiktoken rank file; ranks must be exactly 0..n. `pattern` is the split pattern it was made
/// for and `specials` the special tokens to append.
pub fn import_tiktoken(path: &Path, pattern: &str, specials: Vec<String>) -> Result<Tokenizer, TokenizerError> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    let fmt_err = |msg: String| TokenizerError::Format {
        path: path.to_path_buf(),
        msg,
    };
    let mut tokens: Vec<Option<Vec<u8>>> = Vec::new();
    for (ln, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split(' ');
        let (Some(b64), Some(rank), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(fmt_err(format!("line {}: expected `base64 rank`", ln + 1)));
        };
        let bytes = base64_decode(b64).map_err(|e| fmt_err(format!("line {}: {e}", ln + 1)))?;
        let rank: usize = rank
            .parse()
            .map_err(|_| fmt_err(format!("line {}: rank {rank:?} is not a number", ln + 1)))?;
        if rank > text.len() {
            return Err(fmt_err(format!("line {}: rank {rank} is larger than the file", ln + 1)));
        }
        if tokens.len() <= rank {
            tokens.resize(rank + 1, None);
        }
        if tokens[rank].replace(bytes).is_some() {
            return Err(fmt_err(format!("line {}: rank {rank} appears twice", ln + 1)));
        }
    }
    let tokens = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.ok_or_else(|| fmt_err(format!("rank {i} is missing (ranks must be 0..n)"))))
        .collect::<Result<Vec<_>, _>>()?;
    Tokenizer::from_parts(tokens, pattern, specials).map_err(|e| fmt_err(e.to_string()))
}

/// Write the token-bytes table.
pub fn save_token_bytes(tok: &Tokenizer, path: &Path) -> Result<(), TokenizerError> {
    let tb = tok.token_bytes();
    let mut out = Vec::with_capacity(16 + 4 * tb.len());
    out.extend_from_slice(BYTES_MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(tb.len() as u32).to_le_bytes());
    for v in tb {
        out.extend_from_slice(&v.to_le_bytes());
    }
    write_atomic(path, &out)
}

/// Read a token-bytes table written by [`save_token_bytes`].
pub fn load_token_bytes(path: &Path) -> Result<Vec<u32>, TokenizerError> {
    let data = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let fmt_err = |msg: String| TokenizerError::Format {
        path: path.to_path_buf(),
        msg,
    };
    if data.len() < 16 || &data[..8] != BYTES_MAGIC {
        return Err(fmt_err("missing the NCTBYTES magic (wrong file type?)".into()));
    }
    let word = |i: usize| u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
    if word(8) != VERSION {
        return Err(fmt_err(format!(
            "version {}, this build reads version {VERSION}",
            word(8)
        )));
    }
    let n = word(12) as usize;
    if data.len() != 16 + 4 * n {
        return Err(fmt_err(format!(
            "header says {n} entries ({} bytes) but the file has {} bytes",
            16 + 4 * n,
            data.len()
        )));
    }
    Ok((0..n).map(|i| word(16 + 4 * i)).collect())
}
