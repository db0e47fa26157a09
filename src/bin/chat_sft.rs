//! `chat_sft`: supervised fine-tuning of the mid (or base) checkpoint into a chat model (upstream chat_sft).
//! See `--help`.

use clap::Parser;
use nanochat::train::sft::{main_with, SftArgs};

fn main() {
    let args = SftArgs::parse();
    if let Err(e) = main_with(&args) {
        eprintln!("chat_sft: {e}");
        std::process::exit(1);
    }
}
