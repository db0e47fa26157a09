//! `mid_train`: midtrain a base checkpoint on a conversation mixture (upstream mid_train). See `--help`.

use clap::Parser;
use nanochat::train::mid::{main_with, MidArgs};

fn main() {
    let args = MidArgs::parse();
    if let Err(e) = main_with(&args) {
        eprintln!("mid_train: {e}");
        std::process::exit(1);
    }
}
