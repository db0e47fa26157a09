//! `export_checkpoint`: writes a checkpoint of this project as upstream nanochat's files
//! (`tokenizer/tokenizer.pkl`, `tokenizer/token_bytes.pt`, `<phase>_checkpoints/<tag>/model_<step>.pt` and
//! `meta_<step>.json`), so upstream's scripts can evaluate or chat with it (`torch.load(weights_only=True)`
//! accepts the model file).

use clap::Parser;
use nanochat::common::base_dir;
use nanochat::upstream::convert;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Export a checkpoint as upstream nanochat's .pt / tokenizer.pkl files")]
struct Args {
    /// Upstream base directory to write (tokenizer/ and <phase>_checkpoints/ go inside).
    #[arg(long)]
    to: PathBuf,
    /// Which checkpoints: base, sft or rl.
    #[arg(short = 'i', long, default_value = "base")]
    source: String,
    /// Checkpoint directory name (default: the largest d<N>).
    #[arg(short = 'g', long)]
    model_tag: Option<String>,
    /// Checkpoint step (default: the latest).
    #[arg(short = 's', long)]
    step: Option<usize>,
    /// Base directory to read (default: $NANOCHAT_BASE_DIR, else ~/.cache/nanochat).
    #[arg(long)]
    from: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    let from = args.from.clone().unwrap_or_else(base_dir);
    match convert::export(&from, &args.to, &args.source, args.model_tag.as_deref(), args.step) {
        Ok((dir, step)) => println!(
            "exported step {step} to {} (and the tokenizer to {})",
            dir.display(),
            args.to.join("tokenizer").display()
        ),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
