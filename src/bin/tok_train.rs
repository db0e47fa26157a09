//! Train the BPE tokenizer (upstream scripts/tok_train.py).
//!
//! Reads the training parquet shards (every shard but the last, which is validation) row group by row
//! group, truncates each document to `--doc-cap` characters, stops after the document that pushes the
//! character count past `--max-chars`, trains to `--vocab-size` ids (9 of them special), and writes
//! `tokenizer.bin`, `token_bytes.bin` and a tiktoken rank file `tokenizer.tiktoken` to the output directory.
//! `--input-text` trains on plain text files instead (documents = blank-line separated paragraphs).

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use nanochat::data::{self, parquet::TextParquet};
use nanochat::tokenizer::{self, files, Tokenizer};

#[derive(Parser, Debug)]
#[command(about = "Train the byte-level BPE tokenizer on the pretraining data")]
struct Args {
    /// Maximum number of characters to train on (the document that crosses it is still included).
    #[arg(long, default_value_t = 2_000_000_000)]
    max_chars: u64,
    /// Maximum characters per document; longer documents are truncated.
    #[arg(long, default_value_t = 10_000)]
    doc_cap: usize,
    /// Vocabulary size, including the 9 special tokens.
    #[arg(long, default_value_t = 32768)]
    vocab_size: usize,
    /// Train on these plain text files instead of the parquet shards (paragraphs become documents).
    #[arg(long, num_args = 1..)]
    input_text: Vec<PathBuf>,
    /// Directory of parquet shards (default: base_data_climbmix, base_data or base_data_default under the
    /// base directory, the first that exists).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where to write the tokenizer (default: $NANOCHAT_BASE_DIR/tokenizer).
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Documents split and counted per parallel batch.
    #[arg(long, default_value_t = 8192)]
    batch: usize,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("tok_train: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), Box<dyn Error>> {
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global()?;
    }
    let out_dir = args.output_dir.clone().unwrap_or_else(tokenizer::default_dir);
    let t0 = Instant::now();

    // The document stream: capped documents until the character budget is crossed.
    let docs: Box<dyn Iterator<Item = Result<String, Box<dyn Error>>>> = if args.input_text.is_empty() {
        let dir = match &args.data_dir {
            Some(d) => d.clone(),
            None => data::resolve_dataset_dir(&tokenizer::base_dir())?,
        };
        println!("tok_train: reading parquet shards from {}", dir.display());
        Box::new(parquet_train_docs(&dir)?)
    } else {
        Box::new(text_docs(&args.input_text)?.into_iter().map(Ok))
    };
    let n_chars = std::cell::Cell::new(0u64);
    let n_docs = std::cell::Cell::new(0u64);
    let mut read_error: Option<Box<dyn Error>> = None;
    let capped = docs
        .map_while(|d| match d {
            Ok(d) => Some(d),
            Err(e) => {
                read_error = Some(e);
                None
            }
        })
        .map(|d| cap_chars(d, args.doc_cap))
        .take_while(|_| n_chars.get() <= args.max_chars)
        .inspect(|d| {
            n_chars.set(n_chars.get() + d.chars().count() as u64);
            n_docs.set(n_docs.get() + 1);
            if n_docs.get() % 1_000_000 == 0 {
                println!(
                    "read {} documents, {} characters, {:.1}s",
                    n_docs.get(),
                    n_chars.get(),
                    t0.elapsed().as_secs_f64()
                );
            }
        });

    let mut last_pct = 0;
    let mut t_merge: Option<Instant> = None;
    let tok = Tokenizer::train(capped, args.vocab_size, args.batch, &mut |done, total| {
        let t = *t_merge.get_or_insert_with(Instant::now);
        let pct = done * 100 / total.max(1);
        if pct >= last_pct + 10 || done == total {
            last_pct = pct;
            println!("merges {done}/{total} ({pct}%) {:.1}s", t.elapsed().as_secs_f64());
        }
    })?;
    if let Some(e) = read_error {
        return Err(format!("reading the training documents failed: {e}").into());
    }
    let train_s = t0.elapsed().as_secs_f64();
    println!(
        "trained on {} documents, {} characters: vocab {} ({} mergeable + {} special) in {train_s:.2}s",
        n_docs.get(),
        n_chars.get(),
        tok.vocab_size(),
        tok.n_mergeable(),
        tok.specials().len()
    );

    // Sanity check, as upstream: a mixed string must round-trip.
    let sample = "Hello world! How are you? 🙂 1234567 <|bos|> 你好 \t\n\n  end";
    let ids = tok.encode_ordinary(sample);
    if tok.decode(&ids) != sample.as_bytes() {
        return Err("sanity check failed: the sample text does not round-trip".into());
    }

    tok.save(&out_dir.join(tokenizer::TOKENIZER_FILE))?;
    files::save_token_bytes(&tok, &out_dir.join(tokenizer::TOKEN_BYTES_FILE))?;
    files::export_tiktoken(&tok, &out_dir.join(tokenizer::TIKTOKEN_FILE))?;
    // The record the report card reads.
    let record = serde_json::json!({
        "train_time": train_s, "documents": n_docs.get(), "characters": n_chars.get(),
        "vocab_size": tok.vocab_size(), "max_chars": args.max_chars, "doc_cap": args.doc_cap,
    });
    std::fs::write(out_dir.join("tok_train.json"), format!("{record:#}\n"))?;
    println!("saved tokenizer to {}", out_dir.display());
    Ok(())
}

/// Keep the first `cap` characters (Python's `doc[:cap]`).
fn cap_chars(mut d: String, cap: usize) -> String {
    if let Some((i, _)) = d.char_indices().nth(cap) {
        d.truncate(i);
    }
    d
}

/// Documents from text files: blank-line separated paragraphs, in file order, without the paragraph's
/// final line break.
fn text_docs(paths: &[PathBuf]) -> Result<Vec<String>, Box<dyn Error>> {
    let mut docs = Vec::new();
    let mut push = |cur: &mut String| {
        if !cur.is_empty() {
            let mut d = std::mem::take(cur);
            if d.ends_with('\n') {
                d.pop();
                if d.ends_with('\r') {
                    d.pop();
                }
            }
            docs.push(d);
        }
    };
    for p in paths {
        let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let text = String::from_utf8_lossy(&bytes);
        let mut cur = String::new();
        for line in text.split_inclusive('\n') {
            if line.trim().is_empty() {
                push(&mut cur);
            } else {
                cur.push_str(line);
            }
        }
        push(&mut cur);
    }
    Ok(docs)
}

/// Training documents from the parquet shards (all but the last), row group by row group, in order.
fn parquet_train_docs(dir: &Path) -> Result<impl Iterator<Item = Result<String, Box<dyn Error>>>, Box<dyn Error>> {
    let shards = data::split_files(data::list_parquet(dir)?, data::Split::Train, &dir.display().to_string())?;
    Ok(shards.into_iter().flat_map(|path| {
        let groups: Box<dyn Iterator<Item = Result<Vec<String>, Box<dyn Error>>>> = match TextParquet::open(&path) {
            Ok(file) => Box::new((0..file.num_row_groups()).map(move |g| file.read_row_group(g).map_err(|e| e.into()))),
            Err(e) => Box::new(std::iter::once(Err(e.into()))),
        };
        groups.flat_map(|g| match g {
            Ok(docs) => docs.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => vec![Err(e)],
        })
    }))
}
