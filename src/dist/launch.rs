//! `--nproc-per-node N`: a program starts its own local ranks, torchrun-style. Each child gets `RANK`,
//! `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR` and `MASTER_PORT`; its output lines are
//! prefixed `[rank r]`; SIGINT and SIGTERM are forwarded to every child; when one child fails the others are
//! stopped (SIGTERM, then SIGKILL after a grace period) and the launcher fails naming it.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the local ranks fit in the job.
#[derive(Clone, Debug)]
pub struct LocalLaunch {
    pub nproc_per_node: usize,
    pub nnodes: usize,
    pub node_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// How long the others get to exit after a failure before they are killed.
    pub grace: Duration,
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "unknown status".into(),
    }
}

fn signal(child: &Child, sig: i32) {
    // Each child leads its own process group, so the signal reaches what it started too (and the relays'
    // pipes close).
    // SAFETY: kill(2) on our own child's process group; at worst it is already gone (ESRCH).
    unsafe {
        libc::kill(-(child.id() as libc::pid_t), sig);
    }
}

/// Copies `from` to our stdout or stderr line by line with the rank prefix.
fn relay(from: impl std::io::Read + Send + 'static, rank: usize, stderr: bool) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(from).split(b'\n') {
            let Ok(line) = line else { break };
            let text = format!("[rank {rank}] {}\n", String::from_utf8_lossy(&line));
            // One write per line, so lines of different ranks never interleave mid-line.
            let _ = if stderr {
                std::io::stderr().lock().write_all(text.as_bytes())
            } else {
                std::io::stdout().lock().write_all(text.as_bytes())
            };
        }
    })
}

/// Runs `program args` as this node's ranks and waits for them. Ok when every rank exits 0.
pub fn run_local(program: &Path, args: &[OsString], l: &LocalLaunch) -> Result<(), String> {
    if l.nproc_per_node == 0 || l.nnodes == 0 || l.node_rank >= l.nnodes {
        return Err(format!(
            "--nproc-per-node {} on node {} of {}: need at least one process and a node rank below the node count",
            l.nproc_per_node, l.node_rank, l.nnodes
        ));
    }
    let world = l.nproc_per_node * l.nnodes;
    let received = Arc::new(AtomicUsize::new(0));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let r = received.clone();
        // SAFETY: the handler only stores to an atomic.
        unsafe { signal_hook::low_level::register(sig, move || r.store(sig as usize, Ordering::SeqCst)) }
            .map_err(|e| format!("cannot install the signal handler: {e}"))?;
    }
    let mut children = Vec::new();
    let mut relays = Vec::new();
    for local in 0..l.nproc_per_node {
        let rank = l.node_rank * l.nproc_per_node + local;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("LOCAL_WORLD_SIZE", l.nproc_per_node.to_string())
            .env("MASTER_ADDR", &l.master_addr)
            .env("MASTER_PORT", l.master_port.to_string())
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // If the launcher itself is killed outright, the kernel stops the ranks (no orphans holding GPUs).
        // SAFETY: prctl is async-signal-safe and touches only the child being started.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                for (_, c) in &mut children {
                    let c: &mut Child = c;
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(format!("cannot start rank {rank} ({}): {e}", program.display()));
            }
        };
        relays.push(relay(child.stdout.take().unwrap(), rank, false));
        relays.push(relay(child.stderr.take().unwrap(), rank, true));
        children.push((rank, child));
    }
    let mut status: Vec<Option<ExitStatus>> = vec![None; children.len()];
    let mut failure: Option<String> = None;
    let mut stopping_since: Option<Instant> = None;
    let mut forwarded = 0;
    loop {
        let sig = received.load(Ordering::SeqCst);
        if sig != 0 && sig != forwarded {
            forwarded = sig;
            for (_, c) in &children {
                signal(c, sig as i32);
            }
            failure.get_or_insert_with(|| format!("interrupted by signal {sig} (forwarded to every rank)"));
            stopping_since.get_or_insert_with(Instant::now);
        }
        for (i, (rank, c)) in children.iter_mut().enumerate() {
            if status[i].is_some() {
                continue;
            }
            if let Ok(Some(s)) = c.try_wait() {
                status[i] = Some(s);
                if !s.success() && failure.is_none() {
                    failure = Some(format!(
                        "rank {rank} failed ({}); the other ranks were stopped",
                        describe(s)
                    ));
                    stopping_since = Some(Instant::now());
                }
            }
        }
        if failure.is_some() {
            if let Some(t0) = stopping_since {
                let escalate = t0.elapsed() > l.grace;
                for (i, (_, c)) in children.iter().enumerate() {
                    if status[i].is_none() {
                        signal(c, if escalate { libc::SIGKILL } else { libc::SIGTERM });
                    }
                }
            }
        }
        if status.iter().all(|s| s.is_some()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for r in relays {
        let _ = r.join();
    }
    match failure {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(n: usize, script: &str) -> Result<(), String> {
        let l = LocalLaunch {
            nproc_per_node: n,
            nnodes: 1,
            node_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: 29999,
            grace: Duration::from_secs(5),
        };
        run_local(Path::new("/bin/sh"), &["-c".into(), script.into()], &l)
    }

    #[test]
    fn every_rank_gets_its_variables_and_success_is_ok() {
        let script = r#"test "$WORLD_SIZE" = 3 && test "$LOCAL_WORLD_SIZE" = 3 && test "$RANK" = "$LOCAL_RANK" && test "$MASTER_PORT" = 29999"#;
        launch(3, script).unwrap();
    }

    #[test]
    fn a_failing_rank_stops_the_others_and_is_named() {
        // Rank 1 fails at once; rank 0 would sleep for a minute and then leave a mark: stopped, it leaves none.
        let dir = tempfile::tempdir().unwrap();
        let mark = dir.path().join("rank0-finished");
        let script = format!(
            r#"if [ "$RANK" = 1 ]; then exit 3; fi; sleep 60; touch {}"#,
            mark.display()
        );
        let err = launch(2, &script).unwrap_err();
        assert!(err.contains("rank 1 failed (exit status 3)"), "{err}");
        assert!(!mark.exists(), "rank 0 ran to its end instead of being stopped");
    }
}
