//! `chat_cli`: talk to the model in the terminal (upstream scripts/chat_cli.py). Streams each reply; `clear`
//! starts over, `quit`/`exit` (or EOF) leaves. When the conversation outgrows the model's context, the oldest
//! turns are dropped.

use std::io::{BufRead, Write};

use clap::Parser;
use nanochat::backend::Backend;
use nanochat::common::base_dir;
use nanochat::engine::{Engine, GenConfig, InferModel, TextStream};

#[derive(Parser)]
#[command(about = "Chat with a nanochat model in the terminal")]
struct Args {
    /// Model source: sft, rl, mid or base (sft falls back to base when no sft checkpoint exists).
    #[arg(short = 'i', long, default_value = "sft")]
    source: String,
    /// Checkpoint directory name (default: the largest d<N>).
    #[arg(short = 'g', long)]
    model_tag: Option<String>,
    /// Checkpoint step (default: the latest).
    #[arg(short = 's', long)]
    step: Option<usize>,
    /// Answer this one prompt and exit (single-shot mode).
    #[arg(short = 'p', long, default_value = "")]
    prompt: String,
    /// Sampling temperature (0 is greedy).
    #[arg(short = 't', long, default_value_t = 0.6)]
    temperature: f64,
    /// Sample among the k most likely tokens (0: all).
    #[arg(short = 'k', long, default_value_t = 50)]
    top_k: usize,
    /// Device to run on (upstream's flag name): the CPU reference, or the kernels on a GPU (cuda) or the emulator.
    #[arg(long, visible_alias = "device", value_enum, default_value_t = Backend::Cpu)]
    device_type: Backend,
    /// Tokens generated per reply at most.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
}

/// One turn's tokens: `<|user_start|> text <|user_end|>` then the reply `<|assistant_start|> ... <|assistant_end|>`.
struct Turn {
    user: Vec<u32>,
    reply: Vec<u32>,
}

struct Chat<'a, M: InferModel> {
    engine: &'a Engine<M>,
    turns: Vec<Turn>,
    cfg: GenConfig,
    sp: [u32; 4], // user_start, user_end, assistant_start, assistant_end
}

impl<M: InferModel> Chat<'_, M> {
    /// `[BOS]` + as many of the latest turns as fit with room for a reply, + the new user message.
    fn prompt(&mut self, user: &[u32]) -> Result<Vec<u32>, String> {
        let ctx = self.engine.model.config().sequence_len;
        let reserve = self.cfg.max_tokens.unwrap_or(256).min(ctx / 2);
        let need = 2 + user.len() + reserve;
        if need > ctx {
            return Err(format!(
                "the message is {} tokens; with {reserve} tokens for the reply it does not fit the context of {ctx}",
                user.len()
            ));
        }
        let mut used: usize = 0;
        let mut keep = 0;
        for t in self.turns.iter().rev() {
            let n = t.user.len() + t.reply.len();
            if need + used + n > ctx {
                break;
            }
            used += n;
            keep += 1;
        }
        let drop = self.turns.len() - keep;
        if drop > 0 {
            eprintln!("(context full: dropping the {drop} oldest turn(s))");
            self.turns.drain(..drop);
        }
        let mut ids = vec![self.engine.tokenizer.bos_id()];
        for t in &self.turns {
            ids.extend_from_slice(&t.user);
            ids.extend_from_slice(&t.reply);
        }
        ids.extend_from_slice(user);
        ids.push(self.sp[2]);
        Ok(ids)
    }

    /// Streams the reply to `text` on stdout and records the turn.
    fn respond(&mut self, text: &str) -> Result<(), String> {
        let tok = &self.engine.tokenizer;
        let mut user = vec![self.sp[0]];
        user.extend(tok.encode_ordinary(text));
        user.push(self.sp[1]);
        let prompt = self.prompt(&user)?;
        let room = self.engine.model.config().sequence_len - prompt.len();
        let cfg = GenConfig {
            max_tokens: Some(self.cfg.max_tokens.unwrap_or(256).min(room)),
            ..self.cfg.clone()
        };
        let (end, bos) = (self.sp[3], tok.bos_id());
        let mut stream = TextStream::new();
        let mut out = std::io::stdout();
        let _ = write!(out, "\nAssistant: ");
        let _ = out.flush();
        self.engine.generate(&prompt, &cfg, &mut |col, _| {
            if col[0] == end || col[0] == bos {
                return false;
            }
            let piece = stream.push(tok, col[0]);
            let _ = write!(out, "{piece}");
            let _ = out.flush();
            true
        })?;
        let _ = writeln!(out, "\n");
        let mut reply = vec![self.sp[2]];
        reply.extend_from_slice(stream.tokens());
        reply.push(end);
        self.turns.push(Turn { user, reply });
        Ok(())
    }
}

fn run(args: &Args) -> Result<(), String> {
    if args.temperature.is_nan() || args.temperature < 0.0 {
        return Err(format!("--temperature must be >= 0, got {}", args.temperature));
    }
    let (tag, step) = (args.model_tag.as_deref(), args.step);
    let (engine, card, notice) = args.device_type.load_engine(0, &base_dir(), &args.source, tag, step)?;
    let desc = format!("{card} on {}", engine.model.device_name());
    chat_with(args, &engine, &desc, notice)
}

fn chat_with<M: InferModel>(args: &Args, engine: &Engine<M>, desc: &str, notice: Option<String>) -> Result<(), String> {
    if let Some(n) = notice {
        eprintln!("note: {n}");
    }
    let sp = |n: &str| {
        engine
            .tokenizer
            .special_id(n)
            .ok_or_else(|| format!("the tokenizer has no special token {n}"))
    };
    let sp = [
        sp("<|user_start|>")?,
        sp("<|user_end|>")?,
        sp("<|assistant_start|>")?,
        sp("<|assistant_end|>")?,
    ];
    let mut chat = Chat {
        engine,
        turns: Vec::new(),
        cfg: GenConfig {
            num_samples: 1,
            max_tokens: Some(args.max_tokens),
            temperature: args.temperature,
            top_k: Some(args.top_k),
            seed: 42,
        },
        sp,
    };
    if !args.prompt.is_empty() {
        return chat.respond(&args.prompt);
    }
    eprintln!("nanochat: {desc}");
    eprintln!("Type 'quit' or 'exit' to leave, 'clear' to start a new conversation.");
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        print!("User: ");
        let _ = std::io::stdout().flush();
        let line = match lines.next() {
            None => break,
            Some(l) => l.map_err(|e| format!("reading stdin: {e}"))?,
        };
        let input = line.trim();
        match input {
            "" => continue,
            "quit" | "exit" => break,
            "clear" => {
                chat.turns.clear();
                println!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        if let Err(e) = chat.respond(input) {
            eprintln!("error: {e}");
        }
    }
    Ok(())
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("chat_cli: {e}");
        std::process::exit(1);
    }
}
