//! The GPT-4-style pre-tokenization split, written by hand.
//!
//! Text is cut into pieces before BPE; merges never cross a piece boundary. nanochat's pattern is
//!
//! ```text
//! '(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+
//! ```
//!
//! (GPT-4's cl100k differs only in `\p{N}{1,3}`). regex-automata cannot express the possessive quantifiers or
//! the `(?!\S)` lookahead, so the scanner below implements the leftmost-first alternation directly: at each
//! position it tries the alternatives in order, exactly as a backtracking engine (fancy-regex, used by
//! tiktoken and rustbpe) would. Character classes use the Unicode tables of regex-syntax, the same tables
//! those engines use: `\p{L}` letters, `\p{N}` numbers, `\s` = White_Space.
//!
//! The scanner works on bytes so that arbitrary (non-UTF-8) input can be tokenized losslessly: a byte that
//! does not start a valid UTF-8 sequence is one "other" character (not a letter, number or space).

use std::sync::OnceLock;

/// The split pattern string as upstream writes it (`\p{N}{1,2}` variant); stored in tokenizer files.
pub const SPLIT_PATTERN: &str =
    r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";

/// GPT-4's cl100k pattern (`\p{N}{1,3}`), accepted when importing tiktoken rank files made for it.
pub const GPT4_SPLIT_PATTERN: &str =
    r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";

/// Which of the supported patterns a splitter implements; they differ only in the longest digit run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Splitter {
    max_digits: usize,
}

impl Splitter {
    /// The splitter for a pattern string, or `None` if it is not one we implement.
    pub fn for_pattern(pattern: &str) -> Option<Splitter> {
        if pattern == SPLIT_PATTERN {
            Some(Splitter { max_digits: 2 })
        } else if pattern == GPT4_SPLIT_PATTERN {
            Some(Splitter { max_digits: 3 })
        } else {
            None
        }
    }

    /// nanochat's pattern.
    pub fn nanochat() -> Splitter {
        Splitter { max_digits: 2 }
    }

    /// The pattern string this splitter implements.
    pub fn pattern(&self) -> &'static str {
        if self.max_digits == 3 {
            GPT4_SPLIT_PATTERN
        } else {
            SPLIT_PATTERN
        }
    }

    /// Iterate the pieces of `text` as byte slices; their concatenation is `text`.
    pub fn split<'a>(&self, text: &'a [u8]) -> Pieces<'a> {
        Pieces {
            text,
            pos: 0,
            max_digits: self.max_digits,
        }
    }

    /// Convenience for tests and tools: the pieces of a string.
    pub fn split_str<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let mut out = Vec::new();
        let mut start = 0;
        for piece in self.split(text.as_bytes()) {
            // Pieces of valid UTF-8 end on character boundaries, so slicing cannot fail.
            let end = start + piece.len();
            out.push(&text[start..end]);
            start = end;
        }
        out
    }
}

/// Iterator over the pieces of a byte string.
pub struct Pieces<'a> {
    text: &'a [u8],
    pos: usize,
    max_digits: usize,
}

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.pos >= self.text.len() {
            return None;
        }
        let start = self.pos;
        let end = match_at(self.text, start, self.max_digits);
        debug_assert!(end > start);
        self.pos = end;
        Some(&self.text[start..end])
    }
}

/// Character classes the pattern distinguishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Letter,
    Number,
    Space,
    Other,
}

/// One decoded character: code point (or `u32::MAX` for an invalid byte), its byte length and class.
#[derive(Clone, Copy)]
struct Ch {
    cp: u32,
    len: usize,
    class: Class,
}

const INVALID: u32 = u32::MAX;

/// End (exclusive) of the piece that starts at `p`; always > p.
fn match_at(t: &[u8], p: usize, max_digits: usize) -> usize {
    let c0 = char_at(t, p);
    let p1 = p + c0.len;

    // '(?i:[sdmt]|ll|ve|re)
    if c0.cp == '\'' as u32 && p1 < t.len() {
        if let Some(end) = contraction(t, p1) {
            return end;
        }
    }
    // [^\r\n\p{L}\p{N}]?+\p{L}+
    if c0.class == Class::Letter {
        return letters(t, p1);
    }
    if c0.class != Class::Number && !is_cr_lf(c0.cp) && p1 < t.len() {
        let c1 = char_at(t, p1);
        if c1.class == Class::Letter {
            return letters(t, p1 + c1.len);
        }
    }
    // \p{N}{1,N}
    if c0.class == Class::Number {
        let mut end = p1;
        for _ in 1..max_digits {
            if end >= t.len() {
                break;
            }
            let c = char_at(t, end);
            if c.class != Class::Number {
                break;
            }
            end += c.len;
        }
        return end;
    }
    //  ?[^\s\p{L}\p{N}]++[\r\n]*
    let q = if c0.cp == ' ' as u32 { p1 } else { p };
    if q < t.len() && char_at(t, q).class == Class::Other {
        let mut end = q;
        while end < t.len() {
            let c = char_at(t, end);
            if c.class != Class::Other {
                break;
            }
            end += c.len;
        }
        while end < t.len() && (t[end] == b'\r' || t[end] == b'\n') {
            end += 1;
        }
        return end;
    }
    // Only whitespace can start a piece from here on (every other class matched above).
    debug_assert_eq!(c0.class, Class::Space);
    // Scan the maximal whitespace run, remembering the end of its last \r or \n and its last character.
    let mut end = p;
    let mut after_last_newline = None;
    let mut last_char_start = p;
    let mut n_chars = 0usize;
    while end < t.len() {
        let c = char_at(t, end);
        if c.class != Class::Space {
            break;
        }
        last_char_start = end;
        end += c.len;
        n_chars += 1;
        if is_cr_lf(c.cp) {
            after_last_newline = Some(end);
        }
    }
    // \s*[\r\n]: greedy run backed off to its last newline.
    if let Some(e) = after_last_newline {
        return e;
    }
    // \s+(?!\S): the whole run at end of text, else the run minus its last character (which then
    // starts the next piece, typically " word").
    if end == t.len() {
        return end;
    }
    if n_chars >= 2 {
        return last_char_start;
    }
    // \s+
    end
}

#[inline]
fn is_cr_lf(cp: u32) -> bool {
    cp == '\r' as u32 || cp == '\n' as u32
}

/// End of the maximal run of letters starting at `p`.
#[inline]
fn letters(t: &[u8], mut p: usize) -> usize {
    while p < t.len() {
        let c = char_at(t, p);
        if c.class != Class::Letter {
            break;
        }
        p += c.len;
    }
    p
}

/// After an apostrophe at `p - 1`: the end of `s|d|m|t|ll|ve|re` matched case-insensitively, if any.
/// Unicode simple case folding adds one code point: U+017F LATIN SMALL LETTER LONG S folds to `s`.
fn contraction(t: &[u8], p: usize) -> Option<usize> {
    let c1 = char_at(t, p);
    let fold = |cp: u32| -> u32 {
        if cp == 0x17F {
            's' as u32
        } else if cp < 128 {
            (cp as u8).to_ascii_lowercase() as u32
        } else {
            cp
        }
    };
    let a = fold(c1.cp);
    if [b's', b'd', b'm', b't'].iter().any(|&x| a == x as u32) {
        return Some(p + c1.len);
    }
    let p2 = p + c1.len;
    if p2 >= t.len() {
        return None;
    }
    let c2 = char_at(t, p2);
    let b = fold(c2.cp);
    let pairs = [(b'l', b'l'), (b'v', b'e'), (b'r', b'e')];
    if pairs.iter().any(|&(x, y)| a == x as u32 && b == y as u32) {
        return Some(p2 + c2.len);
    }
    None
}

/// Decode the character at `p` (which must be < t.len()). Invalid UTF-8 yields a one-byte `Other`.
#[inline(always)]
fn char_at(t: &[u8], p: usize) -> Ch {
    let b0 = t[p];
    if b0 < 0x80 {
        return Ch {
            cp: b0 as u32,
            len: 1,
            class: ASCII_CLASS[b0 as usize],
        };
    }
    let (cp, len) = decode_utf8(&t[p..]);
    if cp == INVALID {
        return Ch {
            cp,
            len: 1,
            class: Class::Other,
        };
    }
    Ch {
        cp,
        len,
        class: classify(cp),
    }
}

/// Strict UTF-8 decoding of one non-ASCII sequence (no overlongs, no surrogates, max U+10FFFF).
#[inline]
fn decode_utf8(s: &[u8]) -> (u32, usize) {
    let b0 = s[0] as u32;
    let (len, min, init) = match b0 {
        0xC2..=0xDF => (2, 0x80, b0 & 0x1F),
        0xE0..=0xEF => (3, 0x800, b0 & 0x0F),
        0xF0..=0xF4 => (4, 0x10000, b0 & 0x07),
        _ => return (INVALID, 1),
    };
    if s.len() < len {
        return (INVALID, 1);
    }
    let mut cp = init;
    for &b in &s[1..len] {
        if b & 0xC0 != 0x80 {
            return (INVALID, 1);
        }
        cp = (cp << 6) | (b as u32 & 0x3F);
    }
    if cp < min || cp > 0x10FFFF || (0xD800..=0xDFFF).contains(&cp) {
        return (INVALID, 1);
    }
    (cp, len)
}

const fn ascii_classes() -> [Class; 128] {
    let mut t = [Class::Other; 128];
    let mut i = 0;
    while i < 128 {
        let c = i as u8;
        t[i] = if c.is_ascii_alphabetic() {
            Class::Letter
        } else if c.is_ascii_digit() {
            Class::Number
        } else if matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0B | 0x0C) {
            Class::Space
        } else {
            Class::Other
        };
        i += 1;
    }
    t
}

static ASCII_CLASS: [Class; 128] = ascii_classes();

/// Sorted, disjoint code point ranges with their class (everything not listed is `Other`).
fn class_table() -> &'static [(u32, u32, Class)] {
    static TABLE: OnceLock<Vec<(u32, u32, Class)>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = Vec::new();
        for (prop, class) in [
            (r"\p{L}", Class::Letter),
            (r"\p{N}", Class::Number),
            (r"\s", Class::Space),
        ] {
            for (lo, hi) in unicode_ranges(prop) {
                table.push((lo, hi, class));
            }
        }
        table.sort_by_key(|&(lo, _, _)| lo);
        table
    })
}

/// The code point ranges of a one-class regex, from regex-syntax's Unicode tables.
fn unicode_ranges(class: &str) -> Vec<(u32, u32)> {
    use regex_syntax::hir::{Class as HirClass, HirKind};
    // These literal patterns are known good; a failure here is a build problem, not user input.
    let hir = regex_syntax::Parser::new()
        .parse(class)
        .expect("Unicode class tables are compiled in");
    match hir.kind() {
        HirKind::Class(HirClass::Unicode(c)) => c.ranges().iter().map(|r| (r.start() as u32, r.end() as u32)).collect(),
        other => panic!("{class} parsed to an unexpected form: {other:?}"),
    }
}

#[inline]
fn classify(cp: u32) -> Class {
    let table = class_table();
    // Last range starting at or before cp.
    let i = table.partition_point(|&(lo, _, _)| lo <= cp);
    if i > 0 {
        let (_, hi, class) = table[i - 1];
        if cp <= hi {
            return class;
        }
    }
    Class::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_table_agrees_with_unicode_tables() {
        for b in 0u32..128 {
            let from_table = ASCII_CLASS[b as usize];
            assert_eq!(from_table, classify(b), "byte {b:#x}");
        }
    }

    #[test]
    fn classes_are_disjoint() {
        let t = class_table();
        for w in t.windows(2) {
            assert!(w[0].1 < w[1].0, "overlap {:?} {:?}", w[0], w[1]);
        }
    }

    #[test]
    fn basic_split() {
        let s = Splitter::nanochat();
        assert_eq!(
            s.split_str("Hello world  it's 12345!!\n\n  x"),
            vec!["Hello", " world", " ", " it", "'s", " ", "12", "34", "5", "!!\n\n", " ", " x"]
        );
    }
}
