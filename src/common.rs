//! Things every part of the program shares: where state lives.

use std::path::PathBuf;

/// `$NANOCHAT_BASE_DIR`, else `~/.cache/nanochat` (upstream's layout: tokenizer/, base_checkpoints/, ...).
pub fn base_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NANOCHAT_BASE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("nanochat")
}
