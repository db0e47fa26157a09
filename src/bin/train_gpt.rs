//! `train_gpt --depth N`: pretrain a GPT sized by one dial (upstream base_train). See `--help`.

use clap::Parser;
use nanochat::train::run::{main_with, TrainArgs};

fn main() {
    let args = TrainArgs::parse();
    if let Err(e) = main_with(&args) {
        eprintln!("train_gpt: {e}");
        std::process::exit(1);
    }
}
