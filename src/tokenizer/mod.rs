//! GPT-4-style byte-level BPE tokenizer: training (rustbpe semantics), encoding (tiktoken semantics),
//! special tokens, chat rendering and the files it lives in.
//!
//! Ids `0..n` are the mergeable tokens in rank order (for a trained tokenizer: the 256 bytes, then one id
//! per merge), followed by the 9 special tokens. Text is first split with the GPT-4-style pattern
//! ([`pattern`]), then each piece is merged by rank ([`bpe`]). Special-token strings inside ordinary text
//! are plain text; special ids only come from [`Tokenizer::special_id`].

pub mod bpe;
pub mod chat;
pub mod files;
mod hash;
pub mod pattern;
pub mod train;

use std::fmt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use bpe::{Scratch, Vocab};
use pattern::Splitter;

pub use chat::{Content, Conversation, Message, Part, PartKind, Role};

/// The special tokens, in id order after the mergeable tokens.
pub const SPECIAL_TOKENS: [&str; 9] = [
    "<|bos|>",
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",
    "<|python_end|>",
    "<|output_start|>",
    "<|output_end|>",
];

/// The document delimiter, prepended to every document.
pub const BOS: &str = "<|bos|>";

/// File names inside the tokenizer directory.
pub const TOKENIZER_FILE: &str = "tokenizer.bin";
pub const TOKEN_BYTES_FILE: &str = "token_bytes.bin";
pub const TIKTOKEN_FILE: &str = "tokenizer.tiktoken";

/// Loads the tokenizer of the base directory (`<base>/tokenizer/tokenizer.bin`), with a message naming the
/// command that makes it.
pub fn load_tokenizer(base: &Path) -> Result<Tokenizer, String> {
    let path = base.join("tokenizer").join(TOKENIZER_FILE);
    if !path.exists() && base.join("tokenizer").join("tokenizer.pkl").exists() {
        return Err(format!(
            "{} has upstream nanochat's tokenizer.pkl but no {TOKENIZER_FILE}: run `import_checkpoint --from {}`",
            base.join("tokenizer").display(),
            base.display()
        ));
    }
    if !path.exists() {
        return Err(format!(
            "no tokenizer at {}: run `tok_train` first (see the README)",
            path.display()
        ));
    }
    Tokenizer::load(&path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Everything that can go wrong building, loading or using a tokenizer.
#[derive(Debug)]
pub enum TokenizerError {
    /// Reading or writing a file failed.
    Io { path: PathBuf, source: std::io::Error },
    /// A file is not a valid tokenizer file (corrupt, truncated, wrong version...).
    Format { path: PathBuf, msg: String },
    /// Arguments or contents that make no tokenizer (bad vocab size, duplicate tokens...).
    Invalid(String),
    /// A conversation that cannot be rendered (roles out of order, unknown part type...).
    Chat(String),
}

impl fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenizerError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            TokenizerError::Format { path, msg } => {
                write!(f, "{}: not a valid tokenizer file: {msg}", path.display())
            }
            TokenizerError::Invalid(msg) => write!(f, "invalid tokenizer: {msg}"),
            TokenizerError::Chat(msg) => write!(f, "cannot render conversation: {msg}"),
        }
    }
}

impl std::error::Error for TokenizerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TokenizerError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// `$NANOCHAT_BASE_DIR`, else `~/.cache/nanochat`.
pub use crate::common::base_dir;

/// The default tokenizer directory, `<base dir>/tokenizer`.
pub fn default_dir() -> PathBuf {
    base_dir().join("tokenizer")
}

/// A byte-level BPE tokenizer with special tokens.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    vocab: Vocab,
    splitter: Splitter,
    specials: Vec<String>,
}

impl Tokenizer {
    /// Build from mergeable token bytes in rank order, a split pattern and special-token names.
    pub fn from_parts(tokens: Vec<Vec<u8>>, pattern: &str, specials: Vec<String>) -> Result<Tokenizer, TokenizerError> {
        let splitter = Splitter::for_pattern(pattern).ok_or_else(|| {
            TokenizerError::Invalid(format!(
                "unsupported split pattern {pattern:?}; supported: {:?} and {:?}",
                pattern::SPLIT_PATTERN,
                pattern::GPT4_SPLIT_PATTERN
            ))
        })?;
        let vocab = Vocab::from_tokens(tokens).map_err(TokenizerError::Invalid)?;
        for (i, s) in specials.iter().enumerate() {
            if specials[..i].contains(s) {
                return Err(TokenizerError::Invalid(format!("special token {s:?} appears twice")));
            }
        }
        Ok(Tokenizer {
            vocab,
            splitter,
            specials,
        })
    }

    /// A tokenizer from rustbpe-style merges (merge i makes id 256 + i) with nanochat's pattern and specials.
    pub fn from_merges(merges: &[(u32, u32)]) -> Result<Tokenizer, TokenizerError> {
        let tokens = train::tokens_from_merges(merges).map_err(TokenizerError::Invalid)?;
        Tokenizer::from_parts(
            tokens,
            pattern::SPLIT_PATTERN,
            SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect(),
        )
    }

    /// Train on a stream of documents to `vocab_size` ids in all (including the 9 special tokens).
    /// Documents are consumed in batches of `batch` and split/counted on all cores; `progress` is called
    /// after every merge with (merges done, merges wanted).
    pub fn train<I>(
        docs: I,
        vocab_size: usize,
        batch: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tokenizer, TokenizerError>
    where
        I: IntoIterator<Item = String>,
    {
        let min = 256 + SPECIAL_TOKENS.len();
        if vocab_size < min {
            return Err(TokenizerError::Invalid(format!(
                "vocab size {vocab_size} is below {min} (256 bytes + {} special tokens)",
                SPECIAL_TOKENS.len()
            )));
        }
        let mut counts = train::ChunkCounts::new(Splitter::nanochat());
        let mut buf: Vec<String> = Vec::with_capacity(batch.max(1));
        for doc in docs {
            buf.push(doc);
            if buf.len() >= batch.max(1) {
                counts.add_batch(&buf);
                buf.clear();
            }
        }
        counts.add_batch(&buf);
        let merges = counts.train(vocab_size - min, progress);
        Tokenizer::from_merges(&merges)
    }

    /// Load our versioned tokenizer file.
    pub fn load(path: &Path) -> Result<Tokenizer, TokenizerError> {
        files::load(path)
    }

    /// Save to our versioned tokenizer file (written to a temporary file, then renamed).
    pub fn save(&self, path: &Path) -> Result<(), TokenizerError> {
        files::save(self, path)
    }

    /// Encode text; special-token strings in it are ordinary text.
    pub fn encode_ordinary(&self, text: &str) -> Vec<u32> {
        self.encode_ordinary_bytes(text.as_bytes())
    }

    /// Encode arbitrary bytes (invalid UTF-8 included) losslessly.
    pub fn encode_ordinary_bytes(&self, text: &[u8]) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let mut scratch = Scratch::default();
        for piece in self.splitter.split(text) {
            self.vocab.encode_piece(piece, &mut out, &mut scratch);
        }
        out
    }

    /// Encode many texts on all cores; the result is in input order.
    pub fn encode_ordinary_batch(&self, texts: &[&str]) -> Vec<Vec<u32>> {
        texts.par_iter().map(|t| self.encode_ordinary(t)).collect()
    }

    /// Encode with an optional token before and after (upstream's `encode(text, prepend, append)`).
    pub fn encode_with(&self, text: &str, prepend: Option<u32>, append: Option<u32>) -> Vec<u32> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        ids.extend(prepend);
        let mut scratch = Scratch::default();
        for piece in self.splitter.split(text.as_bytes()) {
            self.vocab.encode_piece(piece, &mut ids, &mut scratch);
        }
        ids.extend(append);
        ids
    }

    /// The bytes of one token (a special token's bytes are its name), or `None` for an unknown id.
    pub fn token(&self, id: u32) -> Option<&[u8]> {
        let n = self.vocab.len();
        match (id as usize).checked_sub(n) {
            None => self.vocab.token(id),
            Some(k) => self.specials.get(k).map(|s| s.as_bytes()),
        }
    }

    /// Decode to bytes; an unknown id decodes to U+FFFD (see [`Tokenizer::try_decode`] to reject it).
    pub fn decode(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            out.extend_from_slice(self.token(id).unwrap_or("\u{FFFD}".as_bytes()));
        }
        out
    }

    /// Decode to bytes, failing on an id outside the vocabulary.
    pub fn try_decode(&self, ids: &[u32]) -> Result<Vec<u8>, TokenizerError> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for (i, &id) in ids.iter().enumerate() {
            let t = self.token(id).ok_or_else(|| {
                TokenizerError::Invalid(format!(
                    "id {id} at position {i} is outside the vocabulary of {}",
                    self.vocab_size()
                ))
            })?;
            out.extend_from_slice(t);
        }
        Ok(out)
    }

    /// Decode to a string, replacing invalid UTF-8 with U+FFFD.
    pub fn decode_lossy(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode(ids)).into_owned()
    }

    pub fn bos_id(&self) -> u32 {
        // Every constructor path used by nanochat includes <|bos|>; fall back to the first special.
        self.special_id(BOS).unwrap_or(self.vocab.len() as u32)
    }

    /// Id of a special token by name (`"<|assistant_end|>"`...).
    pub fn special_id(&self, name: &str) -> Option<u32> {
        self.specials
            .iter()
            .position(|s| s == name)
            .map(|i| (self.vocab.len() + i) as u32)
    }

    /// Special-token names in id order.
    pub fn specials(&self) -> &[String] {
        &self.specials
    }

    /// Total number of ids, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len() + self.specials.len()
    }

    /// Number of mergeable (non-special) tokens.
    pub fn n_mergeable(&self) -> usize {
        self.vocab.len()
    }

    /// Raw byte length of every id, 0 for special tokens (the bits-per-byte denominator).
    pub fn token_bytes(&self) -> Vec<u32> {
        let mut out: Vec<u32> = self.vocab.tokens().iter().map(|t| t.len() as u32).collect();
        out.resize(self.vocab_size(), 0);
        out
    }

    /// The split pattern string.
    pub fn pattern(&self) -> &'static str {
        self.splitter.pattern()
    }

    pub fn splitter(&self) -> Splitter {
        self.splitter
    }

    /// Mergeable token bytes in rank order.
    pub fn mergeable_tokens(&self) -> &[Vec<u8>] {
        self.vocab.tokens()
    }

    #[doc(hidden)]
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }
}
