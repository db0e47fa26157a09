//! `chat_rl`: reinforcement learning of the chat model on GSM8K (upstream chat_rl). See `--help`.

use clap::Parser;
use nanochat::train::rl::{main_with, RlArgs};

fn main() {
    let args = RlArgs::parse();
    if let Err(e) = main_with(&args) {
        eprintln!("chat_rl: {e}");
        std::process::exit(1);
    }
}
