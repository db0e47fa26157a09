//! Evaluate the tokenizer (upstream scripts/tok_eval.py), plus the small tools the reference check and
//! the benchmark under bench/tokenizer drive.
//!
//! `tok_eval` (or `tok_eval report`) prints bytes per token on fixed sample texts (and on the first
//! training and validation documents when a dataset is present) and fails if any text does not round-trip.

use std::error::Error;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Parser, Subcommand};
use nanochat::data::{self, parquet::TextParquet};
use nanochat::tokenizer::{self, files, pattern, Tokenizer, SPECIAL_TOKENS};

#[derive(Parser, Debug)]
#[command(about = "Tokenizer evaluation and tools")]
struct Args {
    /// Tokenizer file (default: $NANOCHAT_BASE_DIR/tokenizer/tokenizer.bin).
    #[arg(long, global = true)]
    tokenizer: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Bytes per token on sample texts, with a lossless round-trip check (the default).
    Report {
        /// Also compare with a tiktoken rank file made for GPT-4's pattern (e.g. cl100k_base.tiktoken).
        #[arg(long)]
        gpt4: Option<PathBuf>,
        /// Extra text files to evaluate (each file is one sample).
        #[arg(long, num_args = 1..)]
        text: Vec<PathBuf>,
    },
    /// Split texts with the pattern: reads a JSON list of strings on stdin, writes a JSON list of piece
    /// lists on stdout (needs no tokenizer).
    Split,
    /// Encode texts: reads a JSON list of strings on stdin, writes a JSON list of id lists on stdout.
    Encode,
    /// Render conversations with the chat template: reads one conversation or a JSON list of them on stdin
    /// (upstream's format: `{"messages": [{"role": "user", "content": "..."}, ...]}` or the bare message list;
    /// assistant content may be a list of `{"type": "text"|"python"|"python_output", "text": ...}` parts) and
    /// writes `{"ids": [...], "mask": [...], "tokens": [...]}` per conversation (mask 1 = supervised in SFT).
    Render {
        /// Truncate each rendering to this many tokens (upstream: 2048).
        #[arg(long, default_value_t = tokenizer::chat::DEFAULT_MAX_TOKENS)]
        max_tokens: usize,
        /// Render for completion instead: drop the last (assistant) message and end with
        /// `<|assistant_start|>` (the prompt chat_eval and the engine sample from; the mask is all 0).
        #[arg(long)]
        completion: bool,
    },
    /// Encoding throughput in MB/s on a text file: the whole file on one thread, then its paragraphs as a
    /// batch on `--threads` threads.
    Bench {
        /// UTF-8 text file to encode.
        #[arg(long)]
        text: PathBuf,
        /// Threads for the batch measurement (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Repetitions; the best time is reported.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
    },
    /// Write the mergeable ranks as a tiktoken rank file.
    ExportTiktoken {
        /// Output path.
        #[arg(long)]
        out: PathBuf,
    },
    /// Convert a tiktoken rank file into our tokenizer file (nanochat's 9 special tokens are appended).
    ImportTiktoken {
        /// tiktoken rank file (`base64 rank` per line).
        #[arg(long)]
        ranks: PathBuf,
        /// Use GPT-4's `\p{N}{1,3}` pattern instead of nanochat's `\p{N}{1,2}`.
        #[arg(long)]
        gpt4_pattern: bool,
        /// Output tokenizer file.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("tok_eval: {e}");
        std::process::exit(1);
    }
}

fn load(path: &Option<PathBuf>) -> Result<Tokenizer, Box<dyn Error>> {
    let p = path
        .clone()
        .unwrap_or_else(|| tokenizer::default_dir().join(tokenizer::TOKENIZER_FILE));
    Ok(Tokenizer::load(&p)?)
}

fn read_json_strings() -> Result<Vec<String>, Box<dyn Error>> {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s)?;
    Ok(serde_json::from_str(&s).map_err(|e| format!("stdin: expected a JSON list of strings: {e}"))?)
}

fn run(args: Args) -> Result<(), Box<dyn Error>> {
    match args.cmd.unwrap_or(Cmd::Report {
        gpt4: None,
        text: Vec::new(),
    }) {
        Cmd::Report { gpt4, text } => report(&load(&args.tokenizer)?, gpt4.as_deref(), &text),
        Cmd::Split => {
            let s = pattern::Splitter::nanochat();
            let texts = read_json_strings()?;
            let out: Vec<Vec<&str>> = texts.iter().map(|t| s.split_str(t)).collect();
            println!("{}", serde_json::to_string(&out)?);
            Ok(())
        }
        Cmd::Encode => {
            let tok = load(&args.tokenizer)?;
            let texts = read_json_strings()?;
            let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
            println!("{}", serde_json::to_string(&tok.encode_ordinary_batch(&refs))?);
            Ok(())
        }
        Cmd::Render { max_tokens, completion } => {
            let tok = load(&args.tokenizer)?;
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            println!("{}", render(&tok, &s, max_tokens, completion)?);
            Ok(())
        }
        Cmd::Bench { text, threads, repeat } => bench(&load(&args.tokenizer)?, &text, threads, repeat),
        Cmd::ExportTiktoken { out } => {
            files::export_tiktoken(&load(&args.tokenizer)?, &out)?;
            Ok(())
        }
        Cmd::ImportTiktoken {
            ranks,
            gpt4_pattern,
            out,
        } => {
            let pat = if gpt4_pattern {
                pattern::GPT4_SPLIT_PATTERN
            } else {
                pattern::SPLIT_PATTERN
            };
            let specials = SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect();
            files::import_tiktoken(&ranks, pat, specials)?.save(&out)?;
            Ok(())
        }
    }
}

/// `tok_eval render`: one conversation in, one object out; a list in, a list out.
fn render(tok: &Tokenizer, input: &str, max_tokens: usize, completion: bool) -> Result<String, Box<dyn Error>> {
    use nanochat::tokenizer::{Conversation, Message};
    use serde_json::{json, Value};
    let v: Value = serde_json::from_str(input).map_err(|e| format!("stdin: not JSON: {e}"))?;
    // A conversation is {"messages": [...]} or a list of messages (objects with a role).
    let is_conversation = |v: &Value| {
        v.get("messages").is_some()
            || v.as_array()
                .is_some_and(|a| a.first().is_some_and(|m| m.get("role").is_some()))
    };
    let (convs, single): (Vec<&Value>, bool) = if is_conversation(&v) {
        (vec![&v], true)
    } else if let Some(list) = v.as_array() {
        (list.iter().collect(), false)
    } else {
        return Err("stdin: expected a conversation or a list of conversations".into());
    };
    let mut out = Vec::new();
    for (i, c) in convs.into_iter().enumerate() {
        let msgs = c.get("messages").unwrap_or(c);
        let messages: Vec<Message> = serde_json::from_value(msgs.clone())
            .map_err(|e| format!("conversation {i}: not a list of {{\"role\", \"content\"}} messages: {e}"))?;
        let conv = Conversation { messages };
        let (ids, mask) = if completion {
            let ids = tok
                .render_for_completion(&conv)
                .map_err(|e| format!("conversation {i}: {e}"))?;
            let n = ids.len();
            (ids, vec![0u8; n])
        } else {
            tok.render_conversation(&conv, max_tokens)
                .map_err(|e| format!("conversation {i}: {e}"))?
        };
        let tokens: Vec<String> = ids.iter().map(|&id| tok.decode_lossy(&[id])).collect();
        out.push(json!({"ids": ids, "mask": mask, "tokens": tokens}));
    }
    Ok(if single {
        out.remove(0).to_string()
    } else {
        Value::Array(out).to_string()
    })
}

fn bench(tok: &Tokenizer, path: &Path, threads: Option<usize>, repeat: usize) -> Result<(), Box<dyn Error>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mb = text.len() as f64 / 1e6;
    let mut best = f64::INFINITY;
    let mut n_tokens = 0;
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        n_tokens = tok.encode_ordinary(&text).len();
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!("single_thread_mb_s {:.2} tokens {n_tokens} mb {mb:.2}", mb / best);
    // The pre-tokenization split alone, for reference.
    let mut best = f64::INFINITY;
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        std::hint::black_box(tok.splitter().split(text.as_bytes()).count());
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!("split_only_mb_s {:.2}", mb / best);
    let docs: Vec<&str> = text.split("\n\n").collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.unwrap_or(0))
        .build()?;
    let mut best = f64::INFINITY;
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        let out = pool.install(|| tok.encode_ordinary_batch(&docs));
        best = best.min(t.elapsed().as_secs_f64());
        std::hint::black_box(out);
    }
    println!(
        "batch_mb_s {:.2} threads {} docs {}",
        mb / best,
        pool.current_num_threads(),
        docs.len()
    );
    Ok(())
}

/// Fixed sample texts (the same kinds as upstream's: news, Korean, code, math, science).
const SAMPLES: &[(&str, &str)] = &[
    ("news", "(Washington, D.C., July 9, 2025)- Yesterday, Mexico's National Service of Agro-Alimentary Health, Safety, and Quality (SENASICA) reported a new case of New World Screwworm (NWS) in Ixhuatlan de Madero, Veracruz in Mexico, which is approximately 160 miles northward of the current sterile fly dispersal grid, on the eastern side of the country and 370 miles south of the U.S./Mexico border. This new northward detection comes approximately two months after northern detections were reported in Oaxaca and Veracruz, less than 700 miles away from the U.S. border, which triggered the closure of our ports to Mexican cattle, bison, and horses on May 11, 2025."),
    ("korean", "정직한 사실 위에, 공정한 시선을 더하다\nHerald Korea Times\n\n헤럴드코리아타임즈는 정치, 경제, 사회, 문화 등 한국 사회 전반의 주요 이슈를 심도 있게 다루는 종합 온라인 신문사입니다.\n\n우리는 단순히 뉴스를 전달하는 것이 아니라, 사실(Fact)에 기반한 양측의 시각을 균형 있게 조명하며, 독자 여러분이 스스로 판단할 수 있는 '정보의 균형'을 제공합니다."),
    ("code", "class BasicTokenizer(Tokenizer):\n\n    def __init__(self):\n        super().__init__()\n\n    def train(self, text, vocab_size, verbose=False):\n        assert vocab_size >= 256\n        num_merges = vocab_size - 256\n\n        # input text preprocessing\n        text_bytes = text.encode(\"utf-8\") # raw bytes\n        ids = list(text_bytes) # list of integers in range 0..255\n\n        # iteratively merge the most common pairs to create new tokens\n        merges = {} # (int, int) -> int\n        vocab = {idx: bytes([idx]) for idx in range(256)} # int -> bytes\n        for i in range(num_merges):\n            stats = get_stats(ids)\n            pair = max(stats, key=stats.get)\n            idx = 256 + i\n            ids = merge(ids, pair, idx)\n"),
    ("math", "\\documentclass[12pt]{article}\n\\usepackage{amsmath,amsthm,amssymb}\n\\begin{document}\n\\begin{theorem}[Nicomachus]\nFor every integer $n \\ge 1$,\n\\[ \\sum_{k=1}^{n} k^{3} \\;=\\; \\Bigl(\\tfrac{n(n+1)}{2}\\Bigr)^{2}. \\]\n\\end{theorem}\n\\begin{proof}[Proof by induction]\nThe case $n=1$ is $1 = 1$. Assume it holds for $n$; then\n$\\sum_{k=1}^{n+1} k^3 = \\bigl(\\tfrac{n(n+1)}{2}\\bigr)^2 + (n+1)^3 = \\bigl(\\tfrac{(n+1)(n+2)}{2}\\bigr)^2$.\n\\end{proof}\n\\end{document}\n"),
    ("science", "Photosynthesis is a photochemical energy transduction process in which light-harvesting pigment-protein complexes within the thylakoid membranes of oxygenic phototrophs absorb photons and initiate charge separation at the reaction center, driving the linear electron transport chain from water to NADP\u{207A} via photosystem II, the cytochrome b\u{2086}f complex, and photosystem I, concomitantly generating a trans-thylakoid proton motive force utilized by chloroplastic ATP synthase."),
];

/// Upstream's two data samples, when a dataset is present: the first 128 documents of the first row group
/// of the first training shard and of the validation shard, joined by newlines.
fn dataset_samples() -> Vec<(String, String)> {
    let sample = |split: data::Split| -> Result<String, Box<dyn Error>> {
        let dir = data::resolve_dataset_dir(&tokenizer::base_dir())?;
        let shards = data::split_files(data::list_parquet(&dir)?, split, &dir.display().to_string())?;
        let first = shards.first().ok_or("no shard")?;
        let docs = TextParquet::open(first)?.read_row_group(0)?;
        Ok(docs.iter().take(128).map(|d| d.as_str()).collect::<Vec<_>>().join("\n"))
    };
    let mut out = Vec::new();
    for (name, split) in [("data-train", data::Split::Train), ("data-val", data::Split::Val)] {
        match sample(split) {
            Ok(text) => out.push((name.to_string(), text)),
            Err(e) => println!("({name} skipped: {e})"),
        }
    }
    out
}

fn report(tok: &Tokenizer, gpt4: Option<&Path>, extra: &[PathBuf]) -> Result<(), Box<dyn Error>> {
    let mut texts: Vec<(String, String)> = SAMPLES.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect();
    texts.extend(dataset_samples());
    for p in extra {
        let t = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        texts.push((p.display().to_string(), t));
    }
    let other = match gpt4 {
        Some(p) => {
            let specials = vec!["<|endoftext|>".to_string()];
            Some(files::import_tiktoken(p, pattern::GPT4_SPLIT_PATTERN, specials)?)
        }
        None => None,
    };
    println!("vocab size: {}", tok.vocab_size());
    println!(
        "{:<40} {:>9} {:>9} {:>9} {:>9}",
        "text", "bytes", "tokens", "ratio", "gpt4"
    );
    for (name, text) in &texts {
        let ids = tok.encode_ordinary(text);
        if tok.decode(&ids) != text.as_bytes() {
            return Err(format!("{name}: decode(encode(text)) differs from the text").into());
        }
        let ratio = text.len() as f64 / ids.len().max(1) as f64;
        let g = other
            .as_ref()
            .map(|o| format!("{:.2}", text.len() as f64 / o.encode_ordinary(text).len().max(1) as f64))
            .unwrap_or_else(|| "-".into());
        println!("{name:<40} {:>9} {:>9} {ratio:>9.2} {g:>9}", text.len(), ids.len());
    }
    println!("all texts round-trip losslessly");
    Ok(())
}
