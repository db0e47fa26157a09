//! The code-execution sandbox: each hostile program is contained, reported as a failure, and leaves nothing
//! running. Waits are bounded by the sandbox's own timeouts (safety nets, not timing assertions).

use nanochat::execution::{execute, find_python, ExecResult, Limits};
use std::time::{Duration, Instant};

fn limits(timeout_s: u64) -> Limits {
    Limits {
        timeout: Duration::from_secs(timeout_s),
        cpu_seconds: timeout_s + 1,
        ..Limits::default()
    }
}

/// Run `program`, or `None` (test skipped) on a machine without python3.
fn run(program: &str, timeout_s: u64) -> Option<ExecResult> {
    run_with(program, limits(timeout_s))
}

fn run_with(program: &str, limits: Limits) -> Option<ExecResult> {
    if find_python().is_none() {
        eprintln!("skipped: no python3");
        return None;
    }
    let r = execute(program, &limits);
    eprintln!(
        "isolation: {}\nerror: {:?}\nstderr tail: {}",
        r.isolation,
        r.error,
        tail(&r.stderr)
    );
    assert!(!r.no_python);
    Some(r)
}

fn tail(s: &str) -> &str {
    &s[s.len().saturating_sub(300)..]
}

/// Live (non-zombie) processes in process group `pgid`, waiting up to 5 s for SIGKILLed ones to go.
fn live_in_group(pgid: i32) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut n = 0;
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid pgrp ...: comm may contain spaces, so split after the last ')'.
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                continue;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string() {
                n += 1;
            }
        }
        if n == 0 || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn runs_a_program_and_reports_its_output() {
    let Some(r) = run("print('hello', 6 * 7)", 10) else {
        return;
    };
    assert!(r.success, "{r:?}");
    assert_eq!(r.stdout, "hello 42\n");
    assert_eq!(r.error, None);
    // A failing assertion is a failure with the exception as the error line.
    let Some(r) = run("def f(x):\n    return x + 1\nassert f(1) == 3, 'wrong'", 10) else {
        return;
    };
    assert!(!r.success && !r.timeout && !r.memory_exceeded);
    assert_eq!(r.error.as_deref(), Some("AssertionError: wrong"));
}

#[test]
fn an_infinite_loop_times_out_and_is_killed() {
    let Some(r) = run("while True:\n    pass", 2) else {
        return;
    };
    assert!(!r.success && r.timeout, "{r:?}");
    assert_eq!(live_in_group(r.pgid), 0);
}

#[test]
fn a_fork_bomb_is_bounded_and_killed() {
    // posix.fork gets around the guard's os.fork = None: the process limit is what stops it.
    let program = "import posix, time\nn = 0\nwhile True:\n    try:\n        posix.fork()\n        n += 1\n    except OSError:\n        time.sleep(0.01)\n";
    let Some(r) = run(program, 3) else { return };
    assert!(!r.success, "{r:?}");
    assert_eq!(live_in_group(r.pgid), 0);
    // The evaluation goes on.
    let Some(r) = run("print('after')", 10) else {
        return;
    };
    assert!(r.success && r.stdout == "after\n", "{r:?}");
}

#[test]
fn a_10_gb_allocation_is_refused() {
    let Some(r) = run("x = bytearray(10 * 1024**3)\nprint(len(x))", 10) else {
        return;
    };
    assert!(!r.success && r.memory_exceeded && !r.timeout, "{r:?}");
    assert!(r.stdout.is_empty());
}

#[test]
fn writing_2_gb_to_a_file_is_stopped() {
    let program = "with open('big.bin', 'wb') as f:\n    for _ in range(2048):\n        f.write(b'\\0' * (1 << 20))\nprint('wrote 2 GB')";
    let Some(r) = run(program, 20) else { return };
    assert!(!r.success && !r.timeout, "{r:?}");
    assert!(r.stdout.is_empty());
    let err = r.error.unwrap_or_default();
    assert!(err.contains("File too large") || err.contains("No space left"), "{err}");
}

#[test]
fn writing_outside_the_working_directory_fails() {
    // A directory of ours (mode 0700) and a world-writable one: neither may receive a file.
    let ours = tempfile::tempdir().unwrap();
    let open = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    for (dir, world_writable) in [(ours.path(), false), (open.path(), true)] {
        let target = dir.join("escaped.txt");
        let program = format!(
            "open({:?}, 'w').write('out')\nprint('escaped')",
            target.to_str().unwrap()
        );
        let Some(r) = run(&program, 10) else { return };
        if world_writable && !r.isolation.filesystem {
            eprintln!(
                "note: no mount namespace here, a world-writable directory is writable ({})",
                r.isolation
            );
            continue;
        }
        assert!(!r.success, "{r:?}");
        assert!(!target.exists(), "{} was written", target.display());
        let err = r.error.unwrap_or_default();
        assert!(
            err.contains("Permission denied") || err.contains("Read-only file system"),
            "{err}"
        );
    }
}

#[test]
fn no_socket_reaches_127_0_0_1() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let program = format!("import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'hi')\nprint('connected')");
    let Some(r) = run(&program, 10) else { return };
    listener.set_nonblocking(true).unwrap();
    let accepted = listener.accept().is_ok();
    if !r.isolation.network {
        eprintln!("note: network: not isolated on this machine ({})", r.isolation);
        return;
    }
    assert!(!r.success && !accepted, "{r:?}");
    assert!(r.stdout.is_empty());
}

#[test]
fn the_parent_environment_is_not_readable() {
    const SECRET: &str = "s3cret-7f2c9d";
    std::env::set_var("NANOCHAT_SANDBOX_SECRET", SECRET);
    // The program succeeds only if it finds the secret: in its environment or in its parent's.
    let program = format!(
        "import os\nfound = os.environ.get('NANOCHAT_SANDBOX_SECRET', '')\nif {SECRET:?} not in found:\n    found = open('/proc/%d/environ' % os.getppid(), 'rb').read().decode('latin-1')\nassert {SECRET:?} in found, 'no secret'\nprint('found it')"
    );
    let Some(r) = run(&program, 10) else { return };
    assert!(!r.success, "{r:?}");
    assert!(!r.stdout.contains(SECRET) && !r.stderr.contains(SECRET));
    // Only PATH is passed; the guard sets OMP_NUM_THREADS and Python's locale coercion LC_CTYPE.
    let Some(r) = run("import os\nprint(sorted(os.environ))", 10) else {
        return;
    };
    let names = r.stdout.trim();
    assert!(
        names == "['OMP_NUM_THREADS', 'PATH']" || names == "['LC_CTYPE', 'OMP_NUM_THREADS', 'PATH']",
        "{names}"
    );
}

/// Where namespaces are refused (forced off here) the limits, the process group and, as root, the program's
/// own uid still hold.
#[test]
fn without_namespaces_the_limits_still_hold() {
    let plain = |timeout_s| Limits {
        namespaces: false,
        ..limits(timeout_s)
    };
    let Some(r) = run_with("while True:\n    pass", plain(2)) else {
        return;
    };
    assert!(
        r.timeout && !r.success && !r.isolation.network && !r.isolation.filesystem,
        "{r:?}"
    );
    assert_eq!(live_in_group(r.pgid), 0);
    let bomb = "import posix, time\nwhile True:\n    try:\n        posix.fork()\n    except OSError:\n        time.sleep(0.01)\n";
    let Some(r) = run_with(bomb, plain(3)) else {
        return;
    };
    assert!(!r.success);
    assert_eq!(live_in_group(r.pgid), 0);
    let Some(r) = run_with("x = bytearray(10 * 1024**3)", plain(10)) else {
        return;
    };
    assert!(!r.success && r.memory_exceeded, "{r:?}");
    let big = "with open('big.bin', 'wb') as f:\n    for _ in range(2048):\n        f.write(b'\\0' * (1 << 20))";
    let Some(r) = run_with(big, plain(20)) else {
        return;
    };
    assert!(!r.success && r.error.unwrap_or_default().contains("File too large"));
    if r.isolation.own_uid {
        let ours = tempfile::tempdir().unwrap();
        let target = ours.path().join("escaped.txt");
        let program = format!("open({:?}, 'w').write('out')", target.to_str().unwrap());
        let Some(r) = run_with(&program, plain(10)) else {
            return;
        };
        assert!(!r.success && !target.exists(), "{r:?}");
        let Some(r) = run_with(
            "import os\nopen('/proc/%d/environ' % os.getppid(), 'rb').read()",
            plain(10),
        ) else {
            return;
        };
        assert!(!r.success && r.error.unwrap_or_default().contains("Permission denied"));
    }
}

#[test]
fn a_missing_python_is_its_own_result() {
    let lim = Limits {
        python: Some("/nonexistent/bin/python3".into()),
        ..Limits::default()
    };
    let r = execute("print(1)", &lim);
    assert!(r.no_python && !r.success && !r.timeout);
    assert!(r.error.unwrap().starts_with("no python3"));
}
