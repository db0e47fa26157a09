//! mid_train and chat_sft end to end on a tiny base model, offline (identity conversations + spelling tasks):
//! validation loss falls in both, chat_sft picks mid over base and says so, `--resume` after SIGKILL
//! reproduces the uninterrupted trajectory, and both stages run on the kernel emulator.

mod common;

use clap::Parser;
use common::stages::{copy_dir, logged_losses, prepare};
use nanochat::checkpoint;
use nanochat::rng::Rng;
use nanochat::train::mid::{mid_train, MidArgs};
use nanochat::train::sft::{chat_sft, SftArgs};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

fn mid_args(extra: &[&str]) -> MidArgs {
    let mut a = vec![
        "mid_train",
        "--max-seq-len",
        "64",
        "--device-batch-size",
        "4",
        "--total-batch-size",
        "256",
        "--num-iterations",
        "24",
        "--eval-every",
        "8",
        "--eval-tokens",
        "1024",
    ];
    a.extend(extra);
    MidArgs::try_parse_from(a).unwrap()
}

fn sft_args(extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        "chat_sft",
        "--num-iterations",
        "24",
        "--eval-every",
        "8",
        "--eval-tokens",
        "1024",
        "--chatcore-every",
        "-1",
    ];
    a.extend(extra);
    a.iter().map(|s| s.to_string()).collect()
}

#[test]
fn mid_train_then_chat_sft_lower_validation_loss_and_resume_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("a");
    prepare(&base);

    // Before mid_train exists, chat_sft would start from base; -i mid says there is none.
    let e = chat_sft(&SftArgs::try_parse_from(sft_args(&["-i", "mid"])).unwrap(), &base)
        .err()
        .unwrap();
    assert!(e.contains("mid_checkpoints") && e.contains("mid_train"), "{e}");

    let mid = mid_train(&mid_args(&[]), &base).unwrap();
    assert_eq!(mid.losses.len(), 24);
    let (first, last) = (mid.val_bpb[0].1, mid.val_bpb.last().unwrap().1);
    assert_eq!(mid.val_bpb.iter().map(|v| v.0).collect::<Vec<_>>(), [0, 8, 16, 24]);
    assert!(
        last < first - 0.05,
        "mid_train validation bpb should fall: {:?}",
        mid.val_bpb
    );
    let mid_dir = base.join("mid_checkpoints").join("d2");
    assert_eq!(checkpoint::complete_steps(&mid_dir), vec![24]);
    // Midtraining trains on every token but the padding: every row has targets.
    assert_eq!(mid.stats.all_masked_rows, 0);

    // chat_sft on a copy of the directory (for the kill/resume comparison below) inherits the geometry and
    // lrs from the mid checkpoint and starts from it.
    let copy = tmp.path().join("b");
    copy_dir(&base, &copy);
    let sft = chat_sft(&SftArgs::try_parse_from(sft_args(&[])).unwrap(), &base).unwrap();
    assert_eq!(sft.losses.len(), 24);
    let (first, last) = (sft.val_bpb[0].1, sft.val_bpb.last().unwrap().1);
    assert!(
        last < first - 0.05,
        "chat_sft validation bpb should fall: {:?}",
        sft.val_bpb
    );
    let sft_dir = base.join("chatsft_checkpoints").join("d2");
    let meta = checkpoint::load(&sft_dir, None, 0, None).unwrap().meta;
    assert_eq!(
        (
            meta.step,
            meta.max_seq_len,
            meta.device_batch_size,
            meta.total_batch_size
        ),
        (24, 64, 4, 256)
    );
    assert_eq!(meta.user_config["source"], "mid");
    assert_eq!(
        meta.user_config["embedding_lr"], 0.2,
        "inherited from mid_train's flags"
    );

    // Kill the binary after a random step, resume, and compare the trajectory with the straight run.
    let mut rng = Rng::new(std::process::id() as u64);
    let kill_after = 4 + rng.below(12);
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat_sft"))
        .args(&sft_args(&["--save-every", "3"])[1..])
        .env("NANOCHAT_BASE_DIR", &copy)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        if line.unwrap().starts_with(&format!("step {kill_after:05} (")) {
            break;
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(rng.below(30)));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let killed_dir = copy.join("chatsft_checkpoints").join("d2");
    for step in checkpoint::complete_steps(&killed_dir) {
        checkpoint::load(&killed_dir, Some(step), 0, None).unwrap();
    }
    let resumed = chat_sft(
        &SftArgs::try_parse_from(sft_args(&["--save-every", "3", "--resume"])).unwrap(),
        &copy,
    )
    .unwrap();
    assert!(
        resumed.losses.len() < 24,
        "the resumed run should not start from scratch"
    );
    assert_eq!(
        logged_losses(&killed_dir),
        logged_losses(&sft_dir),
        "killed after step {kill_after}"
    );
}

#[test]
fn chat_sft_from_base_and_both_stages_on_the_emulator() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    prepare(base);
    // The fixture task data (a few rows of each hub dataset): the mixtures use it, and ChatCORE has its tasks.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tasks/task_data");
    copy_dir(&fixtures, &base.join("task_data"));
    // No mid checkpoint: chat_sft starts from base (and inherits base_train's flags: embedding lr 0.3).
    let short = ["--num-iterations", "3", "--eval-every", "-1", "--eval-tokens", "256"];
    let mut a = sft_args(&short);
    let core_flags = [
        "--chatcore-every",
        "2",
        "--chatcore-max-cat",
        "3",
        "--chatcore-max-sample",
        "1",
    ];
    a.extend(["--model-tag", "d2"].iter().chain(&core_flags).map(|s| s.to_string()));
    let cpu = chat_sft(&SftArgs::try_parse_from(&a).unwrap(), base).unwrap();
    let dir = base.join("chatsft_checkpoints/d2");
    let meta = checkpoint::load(&dir, None, 0, None).unwrap().meta;
    assert_eq!(meta.user_config["source"], "base");
    assert_eq!(meta.user_config["embedding_lr"], 0.3);
    // ChatCORE at step 2 and at the end (step 3), every task scored on its slice (or skipped with a reason).
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let core: Vec<&serde_json::Value> = records.iter().filter(|v| v["kind"] == "chatcore").collect();
    let steps: Vec<u64> = core.iter().map(|v| v["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [2, 3]);
    for record in &core {
        let tasks = record["tasks"].as_array().unwrap();
        let names: Vec<&str> = tasks.iter().map(|t| t["task"].as_str().unwrap()).collect();
        assert_eq!(names, ["ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval"]);
        for t in tasks {
            if t["skipped"].is_null() {
                let generative = ["GSM8K", "HumanEval"].contains(&t["task"].as_str().unwrap());
                assert_eq!(t["total"], if generative { 1 } else { 3 }, "{t}");
            } else {
                assert!(t["skipped"].as_str().unwrap().starts_with("skipped"), "{t}");
            }
        }
    }

    // The same three steps on the kernel emulator, to another tag: losses agree with the CPU reference.
    let mut m = vec![
        "--device",
        "emu",
        "--num-iterations",
        "2",
        "--eval-every",
        "-1",
        "--eval-tokens",
        "256",
    ];
    m.extend(["--model-tag", "d2"]);
    let mid = mid_train(&mid_args(&m), base).unwrap();
    assert_eq!(mid.losses.len(), 2);
    assert!(mid.losses.iter().all(|l| l.1.is_finite()));
    let mut e = sft_args(&short);
    e.extend(["--device", "emu", "-i", "base", "--model-tag", "d2"].map(String::from));
    std::fs::remove_dir_all(base.join("chatsft_checkpoints")).unwrap();
    let emu = chat_sft(&SftArgs::try_parse_from(&e).unwrap(), base).unwrap();
    assert_eq!(emu.losses.len(), 3);
    for ((s, a), (_, b)) in cpu.losses.iter().zip(&emu.losses) {
        assert!((a - b).abs() < 3e-2, "step {s}: cpu loss {a}, emu loss {b}");
    }
}
