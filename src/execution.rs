//! Running model-written Python (HumanEval, later RL on code) in a sandbox.
//!
//! Upstream's `execute_code` runs the program in a subprocess with a guard prelude and says plainly that it
//! is not a sandbox. Ours is one, within these limits:
//!
//! - a separate `python3 -I` process in its own process group, stdin closed, environment `PATH` only;
//! - `RLIMIT_CPU`, `RLIMIT_AS`, `RLIMIT_FSIZE`, `RLIMIT_NPROC` and no core files;
//! - a wall-clock timeout that kills the whole process group;
//! - run as root, the program gets a uid of its own (files outside its directory are not its to write,
//!   other processes are not its to signal or read), and every process left with that uid is killed at the end,
//!   also ones that left the process group;
//! - where the kernel allows unprivileged user namespaces: a new network namespace (only a loopback that is
//!   down: no network at all, not even 127.0.0.1), and a new mount namespace in which the whole file system is
//!   read-only, the working directory is a fresh size-limited tmpfs and `/proc` is hidden.
//!
//! Where user namespaces are refused (some containers, hardened kernels) the program still runs with the limits
//! above, and [`Isolation`] says `network: not isolated`: it could then reach the network and write wherever
//! its uid may (world-writable directories such as `/tmp`).
//!
//! Upstream's guard prelude (disable `os.kill`, `os.system`, `subprocess.Popen`, ... ) runs first, as there;
//! it is a speed bump, not the boundary (`posix.fork` and `ctypes` get around it), which is why the limits
//! above are enforced by the kernel.
//!
//! Unsafe: the child-side setup between fork and exec uses raw `libc` calls (only async-signal-safe system
//! calls on memory prepared before the fork), which is the one thing `std::process` cannot do.

use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Resource limits of one execution.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Wall-clock limit; on expiry the whole process group is killed and `timeout` is reported.
    pub timeout: Duration,
    /// Address-space limit (RLIMIT_AS) in bytes.
    pub memory_bytes: u64,
    /// CPU-time limit (RLIMIT_CPU) in seconds, per process.
    pub cpu_seconds: u64,
    /// Largest file the program may write (RLIMIT_FSIZE; also the size of its tmpfs when isolated).
    pub file_bytes: u64,
    /// Processes the program may have at once (RLIMIT_NPROC, counted for its uid).
    pub processes: u64,
    /// Bytes of stdout and of stderr kept (the rest is read and dropped).
    pub output_bytes: usize,
    /// The Python interpreter; `None` looks for `python3` in the usual places and on `PATH`.
    pub python: Option<PathBuf>,
    /// Use network and mount namespaces where the kernel allows them (off: only the limits and the uid).
    pub namespaces: bool,
}

impl Default for Limits {
    /// Upstream's 5 s and 256 MB, plus the limits upstream does not set.
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(5),
            memory_bytes: 256 << 20,
            cpu_seconds: 6,
            file_bytes: 64 << 20,
            processes: 16,
            output_bytes: 1 << 20,
            python: None,
            namespaces: true,
        }
    }
}

/// What contained the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Isolation {
    /// A new network namespace: no network.
    pub network: bool,
    /// A new mount namespace: read-only file system, private tmpfs working directory, `/proc` hidden.
    pub filesystem: bool,
    /// The program ran under a uid of its own (only possible when we are root).
    pub own_uid: bool,
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let yes_no = |b| if b { "isolated" } else { "not isolated" };
        write!(
            f,
            "network: {}, filesystem: {}, uid: {}",
            yes_no(self.network),
            if self.filesystem {
                "read-only"
            } else {
                "uid permissions only"
            },
            if self.own_uid { "own" } else { "shared with the caller" }
        )
    }
}

/// The outcome of one execution (upstream's `ExecutionResult`, plus what contained it).
#[derive(Clone, Debug)]
pub struct ExecResult {
    /// The program exited with status 0 within the limits.
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
    /// Why it failed: the last line of stderr, the signal, the timeout, or "no python3".
    pub error: Option<String>,
    /// Killed by the wall-clock timeout.
    pub timeout: bool,
    /// `MemoryError` in stderr (the address-space limit was hit).
    pub memory_exceeded: bool,
    /// No Python interpreter was found: nothing ran (HumanEval reports "skipped: no python3").
    pub no_python: bool,
    pub isolation: Isolation,
    /// The process group the program ran in (its leader's pid; 0 when nothing ran).
    pub pgid: i32,
}

impl ExecResult {
    fn not_run(error: String, no_python: bool) -> ExecResult {
        ExecResult {
            success: false,
            stdout: String::new(),
            stderr: String::new(),
            error: Some(error),
            timeout: false,
            memory_exceeded: false,
            no_python,
            isolation: Isolation {
                network: false,
                filesystem: false,
                own_uid: false,
            },
            pgid: 0,
        }
    }
}

/// Upstream's `reliability_guard` (nanochat/execution.py), plus `setsid`/`setpgid` so that a program cannot
/// leave its process group by the front door. The program text is `sys.argv[1]`, exec'd with fresh globals.
const GUARD_PRELUDE: &str = r#"
import builtins, faulthandler, os, shutil, subprocess, sys
faulthandler.disable()
os.environ["OMP_NUM_THREADS"] = "1"
builtins.exit = None
builtins.quit = None
for _name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork",
              "forkpty", "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown",
              "chmod", "chown", "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir", "setsid",
              "setpgid"):
    setattr(os, _name, None)
shutil.rmtree = None
shutil.move = None
shutil.chown = None
subprocess.Popen = None
builtins.help = None
for _mod in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
    sys.modules[_mod] = None
_program = sys.argv[1]
del sys.argv[1]
exec(compile(_program, "<program>", "exec"), {"__name__": "__main__", "__builtins__": builtins})
"#;

/// The kernel limits one argument to 128 KiB; the program travels as one.
const MAX_PROGRAM_BYTES: usize = 120 << 10;

/// Run `program` with `python3` under `limits`. Never panics and never leaves a process behind (see the
/// module comment for what "contained" means where user namespaces are refused).
pub fn execute(program: &str, limits: &Limits) -> ExecResult {
    let python = match &limits.python {
        Some(p) if is_executable(p) => p.clone(),
        Some(p) => return ExecResult::not_run(format!("no python3: {} is not executable", p.display()), true),
        None => match find_python() {
            Some(p) => p,
            None => {
                return ExecResult::not_run(
                    "no python3 found (looked in /usr/bin, /usr/local/bin, PATH)".into(),
                    true,
                )
            }
        },
    };
    if program.len() > MAX_PROGRAM_BYTES || program.contains('\0') {
        return ExecResult::not_run(
            format!("program of {} bytes is too long or contains NUL", program.len()),
            false,
        );
    }
    let dir = match WorkDir::create() {
        Ok(d) => d,
        Err(e) => return ExecResult::not_run(format!("cannot create the sandbox directory: {e}"), false),
    };
    // Namespaces first; where they are refused, the same run without them (said once, remembered).
    let isolated = if limits.namespaces && NAMESPACES.load(Ordering::Relaxed) != REFUSED {
        Some(run(&python, program, limits, &dir, true))
    } else {
        None
    };
    let result = match isolated {
        Some(Ok(r)) => {
            NAMESPACES.store(WORKS, Ordering::Relaxed);
            r
        }
        isolated => match run(&python, program, limits, &dir, false) {
            Ok(r) => {
                if let Some(Err(e)) = isolated {
                    if NAMESPACES.swap(REFUSED, Ordering::Relaxed) != REFUSED {
                        eprintln!("execution: user namespaces refused ({e}); programs run with network: not isolated");
                    }
                }
                r
            }
            Err(e) => return ExecResult::not_run(format!("cannot start {}: {e}", python.display()), false),
        },
    };
    drop(dir);
    result
}

const UNKNOWN: u8 = 0;
const WORKS: u8 = 1;
const REFUSED: u8 = 2;
static NAMESPACES: AtomicU8 = AtomicU8::new(UNKNOWN);

/// The first `python3` that is a real executable (a pyenv-style shell shim needs the environment we drop).
pub fn find_python() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = ["/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"]
        .iter()
        .map(PathBuf::from)
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("python3")));
    }
    candidates
        .into_iter()
        .find(|p| is_executable(p) && std::fs::read(p).map(|b| !b.starts_with(b"#!")).unwrap_or(false))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A fresh directory for one execution, removed on drop.
struct WorkDir(PathBuf);

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl WorkDir {
    fn create() -> std::io::Result<WorkDir> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("nanochat-exec-{}-{n}", std::process::id()));
        std::fs::create_dir(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
        Ok(WorkDir(path))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Uids handed to programs when we run as root: a high range no account uses, one uid per execution, so that
/// "every process with this uid" is exactly the program's processes.
fn sandbox_uid() -> u32 {
    0x5eed_0000 + (std::process::id() & 0xfff) * 0x100 + COUNTER.fetch_add(1, Ordering::Relaxed) % 0x100
}

fn run(python: &Path, program: &str, limits: &Limits, dir: &WorkDir, namespaces: bool) -> std::io::Result<ExecResult> {
    // SAFETY: geteuid/getegid have no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let (uid, gid) = if root {
        let id = sandbox_uid();
        (id, id)
    } else {
        // SAFETY: no preconditions.
        unsafe { (libc::geteuid(), libc::getegid()) }
    };
    if root {
        std::os::unix::fs::chown(&dir.0, Some(uid), Some(gid))?;
    }
    // Without a user namespace RLIMIT_NPROC counts all processes of the uid: leave room for those it has.
    let nproc = if namespaces {
        limits.processes
    } else {
        limits.processes + count_processes(uid)
    };
    let setup = ChildSetup {
        namespaces,
        uid_map: CString::new(format!("1000 {uid} 1")).expect("no NUL"),
        gid_map: CString::new(format!("1000 {gid} 1")).expect("no NUL"),
        dir: CString::new(dir.0.as_os_str().as_bytes()).map_err(std::io::Error::other)?,
        tmpfs_opts: CString::new(format!("size={},mode=0700", limits.file_bytes.max(1 << 20))).expect("no NUL"),
        limits: [
            (libc::RLIMIT_CORE, 0),
            (libc::RLIMIT_CPU, limits.cpu_seconds.max(1)),
            (libc::RLIMIT_FSIZE, limits.file_bytes),
            (libc::RLIMIT_NPROC, nproc),
            (libc::RLIMIT_AS, limits.memory_bytes),
        ],
    };
    let mut cmd = Command::new(python);
    cmd.arg("-I").arg("-c").arg(GUARD_PRELUDE).arg(program);
    cmd.env_clear().env("PATH", "/usr/bin:/bin");
    cmd.current_dir(&dir.0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.process_group(0);
    if root {
        cmd.uid(uid).gid(gid);
    }
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe system calls
    // on memory (`setup`) allocated before the fork; it neither allocates nor takes locks.
    unsafe {
        cmd.pre_exec(move || setup.apply());
    }
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    let pgid = child.id() as i32;
    let out = spawn_reader(child.stdout.take(), limits.output_bytes);
    let err = spawn_reader(child.stderr.take(), limits.output_bytes);

    let mut timeout = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if start.elapsed() >= limits.timeout => {
                timeout = true;
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => break None,
        }
    };
    // Whatever happened, nothing of the program survives: its group, then (as root) every process of its uid.
    // SAFETY: kill on a process group we created; a stale group id only yields ESRCH.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    if root {
        kill_uid(uid);
    }
    let status = match status {
        Some(s) => Some(s),
        None => child.wait().ok(),
    };
    // Readers end when the last holder of the pipes is gone; an escaped holder is bounded by this wait.
    let stdout = out.recv_timeout(Duration::from_secs(2)).unwrap_or_default();
    let stderr = err.recv_timeout(Duration::from_secs(2)).unwrap_or_default();

    let memory_exceeded = stderr.contains("MemoryError");
    let success = !timeout && status.map(|s| s.success()).unwrap_or(false);
    let error = if success {
        None
    } else if timeout {
        Some(format!("timed out after {:.1} s", limits.timeout.as_secs_f64()))
    } else if let Some(line) = stderr.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(line.to_string())
    } else {
        Some(match status.and_then(|s| s.signal()) {
            Some(libc::SIGXCPU) => "CPU time limit exceeded".to_string(),
            Some(sig) => format!("killed by signal {sig}"),
            None => format!("exit status {}", status.and_then(|s| s.code()).unwrap_or(-1)),
        })
    };
    Ok(ExecResult {
        success,
        stdout,
        stderr,
        error,
        timeout,
        memory_exceeded,
        no_python: false,
        isolation: Isolation {
            network: namespaces,
            filesystem: namespaces,
            own_uid: root,
        },
        pgid,
    })
}

/// Read a pipe to its end, keeping the first `cap` bytes.
fn spawn_reader<R: Read + Send + 'static>(pipe: Option<R>, cap: usize) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        if let Some(mut pipe) = pipe {
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
        let _ = tx.send(String::from_utf8_lossy(&kept).into_owned());
    });
    rx
}

/// Processes whose real uid is `uid` (from /proc; 0 when /proc is unreadable).
fn count_processes(uid: u32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter(|e| e.metadata().map(|m| m.uid() == uid).unwrap_or(false))
        .count() as u64
}

/// Kill every process running as `uid`, from a child that takes that uid: `kill(-1)` signals exactly the
/// processes a caller may signal, which for a process without capabilities are those of its own uid.
fn kill_uid(uid: u32) {
    // SAFETY: between fork and _exit the child only makes async-signal-safe system calls.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            if libc::setgroups(0, std::ptr::null()) == 0 && libc::setgid(uid) == 0 && libc::setuid(uid) == 0 {
                libc::kill(-1, libc::SIGKILL);
            }
            libc::_exit(0);
        }
        if pid > 0 {
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
        }
    }
}

/// What the child does between fork and exec, prepared before the fork.
struct ChildSetup {
    namespaces: bool,
    uid_map: CString,
    gid_map: CString,
    dir: CString,
    tmpfs_opts: CString,
    limits: [(libc::__rlimit_resource_t, u64); 5],
}

impl ChildSetup {
    /// Runs in the child (after std has set the process group, the uid and the working directory).
    fn apply(&self) -> std::io::Result<()> {
        // SAFETY: plain system calls on valid, NUL-terminated buffers owned by `self`.
        unsafe {
            for &(resource, value) in &self.limits[..3] {
                set_limit(resource, value)?;
            }
            if self.namespaces {
                self.enter_namespaces()?;
            }
            // NPROC after unshare: the new namespace then counts its own processes against it.
            set_limit(self.limits[3].0, self.limits[3].1)?;
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
            // The address-space limit last: nothing above may fail for want of memory.
            set_limit(self.limits[4].0, self.limits[4].1)
        }
    }

    unsafe fn enter_namespaces(&self) -> std::io::Result<()> {
        // A uid change made the process non-dumpable, which makes /proc/self/uid_map root's to write.
        check(libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0))?;
        check(libc::unshare(
            libc::CLONE_NEWUSER | libc::CLONE_NEWNET | libc::CLONE_NEWNS,
        ))?;
        write_file(c"/proc/self/setgroups", c"deny")?;
        // Mapped to 1000, not 0: after exec the program holds no capability even inside its namespace.
        write_file(c"/proc/self/uid_map", &self.uid_map)?;
        write_file(c"/proc/self/gid_map", &self.gid_map)?;
        let null = std::ptr::null::<libc::c_char>();
        check(libc::mount(
            null,
            c"/".as_ptr(),
            null,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        // Everything read-only, recursively (Linux 5.12); else at least the root file system.
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        let size = std::mem::size_of::<MountAttr>();
        if libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c"/".as_ptr(),
            AT_RECURSIVE,
            &attr,
            size,
        ) != 0
        {
            let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY;
            check(libc::mount(null, c"/".as_ptr(), null, flags, std::ptr::null()))?;
        }
        let tmpfs = c"tmpfs".as_ptr();
        let opts = self.tmpfs_opts.as_ptr() as *const libc::c_void;
        check(libc::mount(
            tmpfs,
            self.dir.as_ptr(),
            tmpfs,
            libc::MS_NOSUID | libc::MS_NODEV,
            opts,
        ))?;
        check(libc::chdir(self.dir.as_ptr()))?;
        // Hide /proc: the parent's environment and command line are there.
        let hidden = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        check(libc::mount(
            tmpfs,
            c"/proc".as_ptr(),
            tmpfs,
            hidden,
            c"size=4k".as_ptr() as *const libc::c_void,
        ))?;
        Ok(())
    }
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}
const MOUNT_ATTR_RDONLY: u64 = 1;
const AT_RECURSIVE: libc::c_int = 0x8000;

unsafe fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    check(libc::setrlimit(resource, &lim))
}

unsafe fn write_file(path: &std::ffi::CStr, text: &std::ffi::CStr) -> std::io::Result<()> {
    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
    check(fd)?;
    let n = libc::write(fd, text.as_ptr() as *const libc::c_void, text.to_bytes().len());
    libc::close(fd);
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}
