//! The report card (upstream nanochat/report.py): `report` reads what the stages recorded and writes
//! `<base>/report/report.md`, with the loss curves as SVG pictures next to it.
//!
//! The records: `tokenizer/tokenizer.bin` and `tokenizer/tok_train.json` (tok_train), `base_checkpoints/<tag>/`
//! `run.json` and `metrics.jsonl` (train_gpt), `base_eval/base_model_<step>.csv` and `.json` (base_eval),
//! `{mid,chatsft,chatrl}_checkpoints/<tag>/metrics.jsonl` and `meta_<step>.json` (mid_train, chat_sft,
//! chat_rl), `chat_eval/<source>_<tag>_<step>.json` (chat_eval), and `report/started.json` (`report reset`,
//! the start of the run's wall clock). A stage without records is listed as not run.

use super::metrics::svg_of;
use crate::checkpoint::{self, write_atomic};
use crate::core_eval;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// How to render.
#[derive(Clone, Debug)]
pub struct ReportOptions {
    /// Checkpoint tag (default: the largest `d<N>` of each stage).
    pub model_tag: Option<String>,
    /// Price of one GPU for one hour, in dollars.
    pub gpu_hour_cost: f64,
    /// GPUs the run held (default: the world size pretraining recorded).
    pub gpus: Option<usize>,
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
        .unwrap_or_default()
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A number for a table: floats with 4 decimals, large integers with thousands separators.
fn num(v: &Value) -> String {
    match v {
        Value::Number(n) if n.is_u64() || n.is_i64() => {
            let x = n.as_i64().unwrap_or(0);
            if x.abs() >= 10_000 {
                thousands(x)
            } else {
                x.to_string()
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            if x.fract() == 0.0 && x.abs() < 1e15 {
                num(&json!(x as i64))
            } else if x != 0.0 && (x.abs() >= 1e7 || x.abs() < 1e-3) {
                format!("{x:.4e}")
            } else {
                format!("{x:.4}")
            }
        }
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn thousands(x: i64) -> String {
    let s = x.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn hm(seconds: f64) -> String {
    let m = (seconds / 60.0).round() as u64;
    format!("{}h{}m", m / 60, m % 60)
}

/// The stage's checkpoint directory: the requested tag, else the largest.
fn stage_dir(base: &Path, phase: &str, tag: Option<&str>) -> Option<PathBuf> {
    let phase_dir = base.join(format!("{phase}_checkpoints"));
    let tag = match tag {
        Some(t) if phase_dir.join(t).is_dir() => t.to_string(),
        Some(_) => return None,
        None => checkpoint::find_largest_model(&phase_dir)?,
    };
    Some(phase_dir.join(tag))
}

/// The newest file in `dir` whose name starts with `prefix` and ends with `suffix`.
fn newest(dir: &Path, prefix: &str, suffix: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap_or_default().to_string_lossy();
            n.starts_with(prefix) && n.ends_with(suffix)
        })
        .max_by_key(|p| (mtime(p), p.clone()))
}

fn git(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The environment section; `device` is pretraining's (world size, device name) when recorded.
fn environment(out: &mut String, gpus: usize, options: &ReportOptions, device: Option<(u64, &str)>) {
    out.push_str("## Environment\n\n### Git Information\n");
    let branch = git(&["rev-parse", "--abbrev-ref", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).map_or("", |s| {
        if s.is_empty() {
            " (clean)"
        } else {
            " (dirty)"
        }
    });
    let message = git(&["log", "-1", "--format=%s"]).unwrap_or_default();
    let _ = writeln!(out, "- Branch: {branch}\n- Commit: {commit}{dirty}");
    let _ = writeln!(out, "- Message: {}", message.chars().take(80).collect::<String>());
    out.push_str("\n### Hardware\n");
    let _ = writeln!(out, "- Platform: {} {}", std::env::consts::OS, std::env::consts::ARCH);
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(out, "- CPUs: {cpus} logical");
    let mem = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        let l = t.lines().find(|l| l.starts_with("MemTotal:"))?;
        l.split_whitespace().nth(1)?.parse::<f64>().ok()
    });
    if let Some(kb) = mem {
        let _ = writeln!(out, "- Memory: {:.1} GB", kb / 1024.0 / 1024.0);
    }
    match device {
        Some((world, d)) => {
            let _ = writeln!(out, "- Pretraining device: {world}x {d}");
        }
        None => out.push_str("- Pretraining device: not recorded\n"),
    }
    let _ = writeln!(
        out,
        "- Hourly rate: ${:.2}/GPU-hour x {gpus} = ${:.2}/hour",
        options.gpu_hour_cost,
        options.gpu_hour_cost * gpus as f64
    );
    let _ = writeln!(
        out,
        "\n### Software\n- nanochat {} (Rust, hand-written CUDA kernels)\n",
        env!("CARGO_PKG_VERSION")
    );
}

/// One stage's training summary from its run record (`metrics.jsonl`): steps, time, validation bpb.
fn stage_summary(dir: &Path) -> Vec<(String, Value)> {
    let recs = read_jsonl(&dir.join("metrics.jsonl"));
    let train: Vec<&Value> = recs.iter().filter(|r| r["kind"] == "train").collect();
    let evals: Vec<f64> = recs
        .iter()
        .filter(|r| r["kind"] == "eval")
        .filter_map(|r| r["val_bpb"].as_f64())
        .collect();
    let mut rows = vec![("Steps".to_string(), json!(train.len()))];
    if let Some(last) = train.last() {
        rows.push(("Final train loss (EMA)".into(), last["smooth_loss"].clone()));
        rows.push((
            "Training time (s)".into(),
            json!(train.iter().filter_map(|r| r["dt"].as_f64()).sum::<f64>()),
        ));
    }
    if let Some(&v) = evals.last() {
        rows.push(("Final validation bpb".into(), json!(v)));
        rows.push((
            "Min validation bpb".into(),
            json!(evals.iter().copied().fold(f64::INFINITY, f64::min)),
        ));
    }
    rows
}

fn bullets(out: &mut String, rows: &[(String, Value)]) {
    for (k, v) in rows {
        let _ = writeln!(out, "- {k}: {}", num(v));
    }
    out.push('\n');
}

/// Copies a stage's curve into the report directory (drawn from its metrics) and links it.
fn curve(out: &mut String, dir: &Path, report_dir: &Path, name: &str) -> Result<Option<PathBuf>, String> {
    let recs = read_jsonl(&dir.join("metrics.jsonl"));
    if recs.is_empty() {
        return Ok(None);
    }
    let path = report_dir.join(name);
    write_atomic(&path, svg_of(&recs).as_bytes())?;
    let _ = writeln!(out, "![{name}]({name})\n");
    Ok(Some(path))
}

/// (task, accuracy) of the tasks a chat evaluation scored.
type Scores = Vec<(String, f64)>;

/// What a chat evaluation scored, its ChatCORE, and the record's path.
fn chat_eval_record(base: &Path, source: &str) -> Option<(Scores, Option<f64>, PathBuf)> {
    let path = newest(&base.join("chat_eval"), &format!("{source}_"), ".json")?;
    let v = read_json(&path)?;
    let tasks = v["results"]
        .as_array()?
        .iter()
        .filter(|r| r["skipped"].is_null())
        .filter_map(|r| Some((r["task"].as_str()?.to_string(), r["accuracy"].as_f64()?)))
        .collect();
    Some((tasks, v["chatcore"].as_f64(), path))
}

/// Renders the report of the run in `base`; returns the path of `report.md`.
pub fn generate(base: &Path, options: &ReportOptions) -> Result<PathBuf, String> {
    let report_dir = base.join("report");
    std::fs::create_dir_all(&report_dir).map_err(|e| format!("cannot create {}: {e}", report_dir.display()))?;
    let tag = options.model_tag.as_deref();
    // Every record read, for the wall clock.
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut body = String::new();

    // Tokenizer.
    body.push_str("## Tokenizer training\n\n");
    let tok_path = base.join("tokenizer").join(crate::tokenizer::TOKENIZER_FILE);
    match crate::tokenizer::Tokenizer::load(&tok_path) {
        Ok(tok) => {
            seen.push(tok_path.clone());
            let mut rows = vec![
                ("Vocabulary size".to_string(), json!(tok.vocab_size())),
                ("Special tokens".into(), json!(tok.specials().len())),
            ];
            let bytes: Vec<f64> = tok.token_bytes()[..tok.n_mergeable()]
                .iter()
                .map(|&b| b as f64)
                .collect();
            if !bytes.is_empty() {
                let mean = bytes.iter().sum::<f64>() / bytes.len() as f64;
                let var = bytes.iter().map(|b| (b - mean).powi(2)).sum::<f64>() / bytes.len() as f64;
                rows.push((
                    "Token bytes min".into(),
                    json!(bytes.iter().copied().fold(f64::INFINITY, f64::min) as u64),
                ));
                rows.push((
                    "Token bytes max".into(),
                    json!(bytes.iter().copied().fold(0.0, f64::max) as u64),
                ));
                rows.push(("Token bytes mean".into(), json!(mean)));
                rows.push(("Token bytes std".into(), json!(var.sqrt())));
            }
            let rec_path = base.join("tokenizer").join("tok_train.json");
            if let Some(r) = read_json(&rec_path) {
                seen.push(rec_path);
                rows.push(("Training characters".into(), r["characters"].clone()));
                rows.push(("Training documents".into(), r["documents"].clone()));
                rows.push(("Training time (s)".into(), r["train_time"].clone()));
            }
            bullets(&mut body, &rows);
        }
        Err(_) => body.push_str("Not run (no tokenizer).\n\n"),
    }

    // Pretraining.
    body.push_str("## Base model training\n\n");
    let base_dir = stage_dir(base, "base", tag);
    let run = base_dir.as_ref().and_then(|d| read_json(&d.join("run.json")));
    match (&base_dir, &run) {
        (Some(dir), Some(r)) => {
            seen.push(dir.join("run.json"));
            let recs = read_jsonl(&dir.join("metrics.jsonl"));
            let core_estimate = recs
                .iter()
                .rev()
                .find(|r| r["kind"] == "core")
                .map(|r| r["core_metric"].clone());
            let _ = writeln!(
                body,
                "Model: {}\n",
                dir.file_name().unwrap_or_default().to_string_lossy()
            );
            let mut rows: Vec<(String, Value)> = [
                ("Depth", "depth"),
                ("Parameters", "num_params"),
                ("Scaling parameters", "num_scaling_params"),
                ("FLOPs per token", "flops_per_token"),
                ("Iterations", "steps_done"),
                ("Training tokens", "tokens"),
                ("Tokens : params", "tokens_per_param"),
                ("World size", "world_size"),
                ("Device batch size", "device_batch_size"),
                ("Sequence length", "max_seq_len"),
                ("Total batch size", "total_batch_size"),
                ("Warmup steps", "warmup_steps"),
                ("Warmdown ratio", "warmdown_ratio"),
                ("Final lr fraction", "final_lr_frac"),
                ("Min validation bpb", "min_val_bpb"),
                ("Final validation bpb", "final_val_bpb"),
                ("MFU %", "mfu_percent"),
                ("Total training FLOPs", "total_flops"),
                ("Training time (s)", "total_training_time"),
            ]
            .iter()
            .map(|(k, f)| (k.to_string(), r[*f].clone()))
            .collect();
            rows.push((
                "CORE estimate (during training)".into(),
                core_estimate.unwrap_or(Value::Null),
            ));
            bullets(&mut body, &rows);
            curve(&mut body, dir, &report_dir, "base_loss.svg")?;
        }
        _ => body.push_str("Not run (no run record of train_gpt).\n\n"),
    }

    // Base evaluation.
    body.push_str("## Base model evaluation\n\n");
    let mut core_value = None;
    let eval_dir = base.join("base_eval");
    if let Some(json_path) = newest(&eval_dir, "base_model_", ".json") {
        if let Some(r) = read_json(&json_path) {
            seen.push(json_path);
            let rows = vec![
                (
                    "Model".to_string(),
                    json!(format!("{} step {}", num(&r["model_tag"]), num(&r["step"]))),
                ),
                ("Train bpb".into(), r["train_bpb"].clone()),
                ("Validation bpb".into(), r["val_bpb"].clone()),
            ];
            bullets(&mut body, &rows);
            if let Some(samples) = r["samples"].as_array() {
                body.push_str("Samples:\n\n```\n");
                for s in samples {
                    let _ = writeln!(body, "{}", s.as_str().unwrap_or(""));
                }
                body.push_str("```\n\n");
            }
        }
    }
    match newest(&eval_dir, "base_model_", ".csv")
        .and_then(|p| Some((core_eval::parse_csv(&std::fs::read_to_string(&p).ok()?).ok()?, p)))
    {
        Some((c, p)) => {
            seen.push(p);
            body.push_str("| Task | Accuracy | Centered |\n|---|---|---|\n");
            for t in &c.tasks {
                let _ = writeln!(body, "| {} | {:.4} | {:.4} |", t.label, t.accuracy, t.centered);
            }
            let _ = writeln!(body, "\nCORE metric: {:.4}\n", c.core);
            core_value = Some(c.core);
        }
        None => body.push_str("CORE: not evaluated (run `base_eval --eval core`).\n\n"),
    }

    // Conversation stages and their evaluations.
    let mut chat_columns: Vec<(&str, Scores, Option<f64>)> = Vec::new();
    for (title, phase, source, svg) in [
        ("Midtraining", "mid", "mid", "mid_loss.svg"),
        ("Chat SFT", "chatsft", "sft", "sft_loss.svg"),
        ("Chat RL", "chatrl", "rl", "rl_loss.svg"),
    ] {
        let _ = writeln!(body, "## {title}\n");
        match stage_dir(base, phase, tag).filter(|d| d.join("metrics.jsonl").is_file()) {
            Some(dir) => {
                seen.push(dir.join("metrics.jsonl"));
                bullets(&mut body, &stage_summary(&dir));
                curve(&mut body, &dir, &report_dir, svg)?;
            }
            None => body.push_str("Not run.\n\n"),
        }
        if let Some((tasks, chatcore, path)) = chat_eval_record(base, source) {
            seen.push(path);
            let _ = writeln!(body, "### Chat evaluation ({source})\n\n| Task | Accuracy |\n|---|---|");
            for (t, a) in &tasks {
                let _ = writeln!(body, "| {t} | {a:.4} |");
            }
            match chatcore {
                Some(c) => {
                    let _ = writeln!(body, "\nChatCORE metric: {c:.4}\n");
                }
                None => body.push_str("\nChatCORE: not all of its tasks were scored\n\n"),
            }
            chat_columns.push((source, tasks, chatcore));
        }
    }

    // Summary table: CORE first, ChatCORE last, the chat tasks alphabetically between.
    let mut summary = String::from("## Summary\n\n");
    let cols = ["BASE", "MID", "SFT", "RL"];
    let _ = writeln!(
        summary,
        "| {:<15} | {} |",
        "Metric",
        cols.map(|c| format!("{c:<8}")).join(" | ")
    );
    let _ = writeln!(summary, "|{}|", ["---"; 5].join("|"));
    let cell = |v: Option<f64>| v.map_or(format!("{:<8}", "-"), |x| format!("{x:<8.4}"));
    let _ = writeln!(
        summary,
        "| {:<15} | {} | {} | {} | {} |",
        "CORE",
        cell(core_value),
        cell(None),
        cell(None),
        cell(None)
    );
    let mut names: Vec<String> = chat_columns
        .iter()
        .flat_map(|c| c.1.iter().map(|t| t.0.clone()))
        .collect();
    names.sort();
    names.dedup();
    let col_of = |src: &str| chat_columns.iter().find(|c| c.0 == src);
    for name in names.iter().map(Some).chain([None]) {
        let value = |src: &str| {
            col_of(src).and_then(|c| match name {
                Some(n) => c.1.iter().find(|t| &t.0 == n).map(|t| t.1),
                None => c.2,
            })
        };
        let _ = writeln!(
            summary,
            "| {:<15} | {} | {} | {} | {} |",
            name.map_or("ChatCORE", |n| n.as_str()),
            cell(None),
            cell(value("mid")),
            cell(value("sft")),
            cell(value("rl"))
        );
    }

    // Wall clock: from `report reset` (else the earliest record) to the latest record; the cost at the rate.
    let times: Vec<f64> = seen.iter().filter_map(|p| mtime(p)).map(secs).collect();
    let started = read_json(&report_dir.join("started.json")).and_then(|v| v["unix_time"].as_f64());
    let gpus = options
        .gpus
        .or_else(|| run.as_ref().and_then(|r| r["world_size"].as_u64()).map(|w| w as usize))
        .unwrap_or(1);
    let device = run
        .as_ref()
        .and_then(|r| Some((r["world_size"].as_u64()?, r["device"].as_str()?.to_string())));
    let wall = match (
        started.or_else(|| times.iter().copied().reduce(f64::min)),
        times.iter().copied().reduce(f64::max),
    ) {
        (Some(a), Some(b)) if b >= a => Some(b - a),
        _ => None,
    };
    match wall {
        Some(w) => {
            let cost = w / 3600.0 * gpus as f64 * options.gpu_hour_cost;
            let _ = writeln!(
                summary,
                "\nTotal wall clock time: {} ({w:.0} s)\n\nTotal cost: ${cost:.2} ({gpus} GPU(s) x {:.2} h x ${:.2}/GPU-hour)",
                hm(w),
                w / 3600.0,
                options.gpu_hour_cost
            );
        }
        None => summary.push_str("\nTotal wall clock time: unknown\n"),
    }

    let mut out = String::from("# nanochat training report\n\n");
    let now = secs(SystemTime::now());
    let _ = writeln!(out, "Generated: {} (unix time {now:.0})\n", utc(now));
    if let Some(s) = started {
        let _ = writeln!(out, "Run started: {}\n", utc(s));
    }
    environment(&mut out, gpus, options, device.as_ref().map(|(w, d)| (*w, d.as_str())));
    out += &body;
    out += &summary;
    let path = report_dir.join("report.md");
    write_atomic(&path, out.as_bytes())?;
    Ok(path)
}

/// `YYYY-MM-DD HH:MM:SS UTC` of a unix time.
fn utc(t: f64) -> String {
    let s = t as i64;
    let (days, rem) = (s.div_euclid(86_400), s.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Starts a run's wall clock: `report/started.json` now, and no old `report.md`.
pub fn reset(base: &Path) -> Result<(), String> {
    let dir = base.join("report");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let _ = std::fs::remove_file(dir.join("report.md"));
    let now = secs(SystemTime::now());
    write_atomic(
        &dir.join("started.json"),
        format!("{:#}\n", json!({"unix_time": now, "utc": utc(now)})).as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_numbers() {
        assert_eq!(utc(0.0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000.0), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc(951_825_600.0), "2000-02-29 12:00:00 UTC");
        assert_eq!(num(&json!(1234567)), "1,234,567");
        assert_eq!(num(&json!(9999)), "9999");
        assert_eq!(num(&json!(0.123456)), "0.1235");
        assert_eq!(num(&json!(3.2e12)), "3,200,000,000,000");
        assert_eq!(hm(3720.0), "1h2m");
    }
}
