//! `import_checkpoint`: brings a checkpoint trained with upstream nanochat (its `tokenizer/tokenizer.pkl` and
//! `<phase>_checkpoints/<tag>/model_<step>.pt`, `meta_<step>.json`, `optim_<step>_rank<r>.pt`) into this
//! project's files under the base directory, so chat_cli, chat_web, base_eval, chat_eval, chat_sft and
//! `train_gpt --resume` use it. The `.pt` and `.pkl` files are read as data only: nothing in them is executed.

use clap::Parser;
use nanochat::common::base_dir;
use nanochat::upstream::convert;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Import an upstream nanochat checkpoint (.pt + tokenizer.pkl) into this project's files")]
struct Args {
    /// Upstream base directory (the one holding tokenizer/ and base_checkpoints/).
    #[arg(long)]
    from: PathBuf,
    /// Which checkpoints: base, sft or rl.
    #[arg(short = 'i', long, default_value = "base")]
    source: String,
    /// Checkpoint directory name (default: the largest d<N>, as upstream).
    #[arg(short = 'g', long)]
    model_tag: Option<String>,
    /// Checkpoint step (default: the latest model_<step>.pt).
    #[arg(short = 's', long)]
    step: Option<usize>,
    /// Where to write (default: $NANOCHAT_BASE_DIR, else ~/.cache/nanochat).
    #[arg(long)]
    to: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    let to = args.to.clone().unwrap_or_else(base_dir);
    println!(
        "importing {} checkpoint from {} into {}",
        args.source,
        args.from.display(),
        to.display()
    );
    match convert::import(&args.from, &to, &args.source, args.model_tag.as_deref(), args.step) {
        Ok(r) => {
            let mut kinds: Vec<String> = r.dtypes.values().map(|d| format!("{d:?}")).collect();
            kinds.sort();
            kinds.dedup();
            println!(
                "imported {} step {} ({} layers, width {}, vocab {}; stored dtypes {}) into {}",
                r.tag,
                r.step,
                r.config.n_layer,
                r.config.n_embd,
                r.config.vocab_size,
                kinds.join("/"),
                r.dir.display()
            );
            if r.optimizer_ranks > 0 {
                println!(
                    "optimizer state merged from {} rank file(s): train_gpt --resume can continue",
                    r.optimizer_ranks
                );
            } else {
                println!("no optimizer files: chat and evaluation work; resuming training does not");
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
