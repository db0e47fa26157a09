//! The kernel emulator's profiler (cargo feature `emu-profile`, `cuda/emu/emu_profile.cpp`): for each launch
//! on the Emu device and each source line that touches memory, the warp-level requests a GPU would see —
//! 32-byte sectors per global request (actual and ideal), shared-memory wavefronts (bank conflicts), active
//! lanes — and the counts of warp-level instructions (mma, ldmatrix, cp.async, shuffles, barriers). Plus the
//! registers and shared memory of each kernel from `ptx/resources.txt` and the occupancy they allow on sm_90.
//!
//! Without the feature, [`available`] is false and a profile records nothing.

use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_char, c_long, CStr};

extern "C" {
    fn emu_profile_available() -> i32;
    fn emu_profile_start(max_blocks: c_long);
    fn emu_profile_stop() -> *const c_char;
}

/// Whether the emulator was built with its profiler (`--features emu-profile`).
pub fn available() -> bool {
    // SAFETY: a plain query without arguments.
    unsafe { emu_profile_available() != 0 }
}

/// One call site's counters over a launch, as the emulator reports them.
#[derive(Debug, Clone, Deserialize)]
pub struct SiteCounters {
    /// "ld.global", "st.global", "ld.shared", "st.shared", "ldmatrix", "cp.async.ld.global",
    /// "cp.async.st.shared".
    pub op: String,
    /// Code offset of the access in `module` (plain loads and stores); resolved into `file`/`line`.
    #[serde(default)]
    pub pc: Option<u64>,
    #[serde(default)]
    pub module: Option<String>,
    /// Source file and line (PTX helpers report them directly; plain accesses after [`symbolise`]).
    #[serde(default)]
    pub file: Option<String>,
    #[serde(default)]
    pub line: Option<u32>,
    pub requests: u64,
    pub lanes: u64,
    pub bytes: u64,
    pub min_size: u32,
    pub max_size: u32,
    pub sectors: u64,
    pub ideal_sectors: u64,
    pub wavefronts: u64,
    pub ideal_wavefronts: u64,
}

impl SiteCounters {
    pub fn is_global(&self) -> bool {
        self.op.ends_with("global")
    }
    /// `file:line` (the file's name only), or the code offset when it could not be resolved.
    pub fn location(&self) -> String {
        match (&self.file, self.line) {
            (Some(f), Some(l)) => format!("{}:{l}", f.rsplit('/').next().unwrap_or(f)),
            _ => format!("pc {:#x}", self.pc.unwrap_or(0)),
        }
    }
}

/// The counters of one launch.
#[derive(Debug, Clone, Deserialize)]
pub struct LaunchCounters {
    pub kernel: String,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    /// Dynamic shared memory of the launch, bytes.
    pub smem: u32,
    /// Blocks actually run (a sample of large grids, see [`Profile::start`]).
    pub blocks_run: u64,
    pub instructions: BTreeMap<String, u64>,
    pub sites: Vec<SiteCounters>,
}

/// Ratios over a set of sites.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    pub global_requests: u64,
    pub sectors: u64,
    pub ideal_sectors: u64,
    pub shared_requests: u64,
    pub wavefronts: u64,
    pub ideal_wavefronts: u64,
    pub requests: u64,
    pub lanes: u64,
}

impl Totals {
    pub fn of<'a>(sites: impl IntoIterator<Item = &'a SiteCounters>) -> Totals {
        let mut t = Totals::default();
        for s in sites {
            t.add_site(s);
        }
        t
    }
    fn add_site(&mut self, s: &SiteCounters) {
        if s.is_global() {
            self.global_requests += s.requests;
            self.sectors += s.sectors;
            self.ideal_sectors += s.ideal_sectors;
        } else {
            self.shared_requests += s.requests;
            self.wavefronts += s.wavefronts;
            self.ideal_wavefronts += s.ideal_wavefronts;
        }
        self.requests += s.requests;
        self.lanes += s.lanes;
    }
    /// Actual 32-byte sectors per global request (0 without global requests).
    pub fn sectors_per_request(&self) -> f64 {
        ratio(self.sectors, self.global_requests)
    }
    /// The fewest sectors that could carry the same bytes, per global request.
    pub fn ideal_sectors_per_request(&self) -> f64 {
        ratio(self.ideal_sectors, self.global_requests)
    }
    /// Shared-memory wavefronts per conflict-free wavefront: 1 = no bank conflicts, 32 = fully serialised
    /// (1 without shared-memory requests).
    pub fn bank_conflict_degree(&self) -> f64 {
        if self.ideal_wavefronts == 0 {
            1.0
        } else {
            self.wavefronts as f64 / self.ideal_wavefronts as f64
        }
    }
    /// Mean active lanes per memory request (32 = no divergence).
    pub fn active_lanes(&self) -> f64 {
        ratio(self.lanes, self.requests)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

impl LaunchCounters {
    pub fn totals(&self) -> Totals {
        Totals::of(&self.sites)
    }
}

/// Records every launch of the calling thread on the Emu device until [`Profile::stop`].
pub struct Profile(());

impl Profile {
    /// Starts recording. `max_blocks` > 0 runs only an even sample of that many blocks of a larger grid
    /// (the first and the last included): per-request ratios are unchanged when blocks do alike work, and
    /// the kernel's outputs are then incomplete. Errors when the emulator was built without the profiler.
    pub fn start(max_blocks: usize) -> Result<Profile, String> {
        if !available() {
            return Err("the kernel emulator was built without its profiler: build with --features emu-profile".into());
        }
        // SAFETY: starts thread-local recording; no pointers are passed.
        unsafe { emu_profile_start(max_blocks as c_long) };
        Ok(Profile(()))
    }

    /// Stops recording and returns the launches, their plain accesses resolved to source lines.
    pub fn stop(self) -> Result<Vec<LaunchCounters>, String> {
        // SAFETY: the emulator returns a NUL-terminated string valid until the next call on this thread;
        // it is copied at once.
        let text = unsafe { CStr::from_ptr(emu_profile_stop()) }
            .to_string_lossy()
            .into_owned();
        let mut launches: Vec<LaunchCounters> =
            serde_json::from_str(&text).map_err(|e| format!("reading the emulator's profile: {e}"))?;
        symbolise(&mut launches);
        Ok(launches)
    }
}

/// Resolves the code offsets of plain accesses into `file:line` with binutils' `addr2line` (the
/// emulator is built with line tables in the profiling build). Where an access was inlined from a
/// helper (`kernel_common.cuh`, the emulator headers), the line of the first caller in a kernel
/// file (`.cu`) is kept. Offsets it cannot resolve stay as they are.
pub fn symbolise(launches: &mut [LaunchCounters]) {
    let mut by_module: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for l in launches.iter() {
        for s in &l.sites {
            if let (Some(pc), Some(m)) = (s.pc, &s.module) {
                by_module.entry(m.clone()).or_default().push(pc);
            }
        }
    }
    let mut resolved: HashMap<(String, u64), (String, u32)> = HashMap::new();
    for (module, mut pcs) in by_module {
        pcs.sort_unstable();
        pcs.dedup();
        for (pc, loc) in pcs.iter().zip(addr2line(&module, &pcs)) {
            if let Some(loc) = loc {
                resolved.insert((module.clone(), *pc), loc);
            }
        }
    }
    for l in launches.iter_mut() {
        for s in &mut l.sites {
            if let (Some(pc), Some(m)) = (s.pc, &s.module) {
                if let Some((f, line)) = resolved.get(&(m.clone(), pc)) {
                    s.file = Some(f.clone());
                    s.line = Some(*line);
                }
            }
        }
    }
}

/// One location per return address: the call instruction ends just before it.
fn addr2line(module: &str, pcs: &[u64]) -> Vec<Option<(String, u32)>> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let none = vec![None; pcs.len()];
    let Ok(mut child) = Command::new("addr2line")
        .args(["-a", "-i", "-e", module])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        return none;
    };
    let input: String = pcs.iter().map(|pc| format!("{:#x}\n", pc.saturating_sub(1))).collect();
    if let Some(mut stdin) = child.stdin.take() {
        // Written from a thread: addr2line answers while it reads, and a full pipe would block both.
        std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
    }
    let Ok(out) = child.wait_with_output() else {
        return none;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    // Each address line ("0x...") is followed by its inlining chain, innermost first.
    let mut chains: Vec<Vec<String>> = Vec::new();
    for line in text.lines() {
        if line.starts_with("0x") {
            chains.push(Vec::new());
        } else if let Some(c) = chains.last_mut() {
            c.push(line.to_string());
        }
    }
    if chains.len() != pcs.len() {
        return none;
    }
    chains.iter().map(|c| pick_location(c)).collect()
}

/// The innermost frame in a kernel file, else the innermost frame.
fn pick_location(chain: &[String]) -> Option<(String, u32)> {
    let parse = |s: &String| -> Option<(String, u32)> {
        let s = s.split(" (discriminator").next().unwrap_or(s);
        let (file, line) = s.rsplit_once(':')?;
        let line: u32 = line.trim().parse().ok()?;
        (line > 0 && file != "??").then(|| (file.to_string(), line))
    };
    let frames: Vec<(String, u32)> = chain.iter().filter_map(parse).collect();
    frames
        .iter()
        .find(|(f, _)| f.ends_with(".cu"))
        .or_else(|| frames.first())
        .cloned()
}

/// Registers and static shared memory of one kernel for one architecture, from the ptxas report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    pub regs: u32,
    pub static_smem: u32,
}

/// The "Used N registers, ..., M bytes smem" line of each entry function compiled for `arch` in a ptxas
/// report (`ptx/resources.txt`).
pub fn parse_resources(report: &str, arch: &str) -> BTreeMap<String, Resources> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    let suffix = format!("for '{arch}'");
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            current = line
                .ends_with(&suffix)
                .then(|| rest.split('\'').next().unwrap_or("").to_string());
            continue;
        }
        let Some(name) = current.as_ref() else { continue };
        if !(line.contains("Used ") && line.contains(" registers")) {
            continue;
        }
        let mut r = Resources {
            regs: 0,
            static_smem: 0,
        };
        for part in line.split(", ") {
            let words: Vec<&str> = part.split_whitespace().collect();
            if let Some(i) = words.iter().position(|w| *w == "registers") {
                r.regs = words.get(i.wrapping_sub(1)).and_then(|n| n.parse().ok()).unwrap_or(0);
            }
            if words.len() >= 3 && words[words.len() - 1] == "smem" && words[words.len() - 2] == "bytes" {
                r.static_smem = words[words.len() - 3].parse().unwrap_or(0);
            }
        }
        out.insert(name.clone(), r);
        current = None;
    }
    out
}

/// Limits of an sm_90 (H100/H200) streaming multiprocessor.
pub mod sm90 {
    pub const REGS: u32 = 65536;
    pub const SMEM: u32 = 228 * 1024;
    pub const THREADS: u32 = 2048;
    pub const BLOCKS: u32 = 32;
    pub const WARPS: u32 = THREADS / 32;
    /// Registers are allocated per warp in units of 256.
    pub const REG_UNIT: u32 = 256;
    /// Shared memory is allocated per block in units of 128 bytes, plus 1 KiB the system reserves.
    pub const SMEM_UNIT: u32 = 128;
    pub const SMEM_RESERVED: u32 = 1024;
}

/// Resident blocks per SM on sm_90 for a block of `threads` threads using `regs` registers per thread and
/// `smem` bytes of shared memory (static + dynamic), and what limits them ("threads", "registers",
/// "shared memory" or "blocks"). 0 blocks when the block does not fit at all.
pub fn blocks_per_sm90(threads: u32, regs: u32, smem: u32) -> (u32, &'static str) {
    use sm90::*;
    if threads == 0 {
        return (0, "threads");
    }
    let warps = threads.div_ceil(32);
    let by_threads = THREADS / (warps * 32);
    let by_regs = if regs == 0 {
        BLOCKS
    } else {
        let per_warp = (regs * 32).div_ceil(REG_UNIT) * REG_UNIT;
        (REGS / per_warp) / warps
    };
    let by_smem = SMEM / (smem.div_ceil(SMEM_UNIT) * SMEM_UNIT + SMEM_RESERVED);
    let mut best = (BLOCKS, "blocks");
    for (n, why) in [
        (by_threads, "threads"),
        (by_regs, "registers"),
        (by_smem, "shared memory"),
    ] {
        if n < best.0 {
            best = (n, why);
        }
    }
    best
}

/// Resident blocks per SM ([`blocks_per_sm90`]) and theoretical occupancy (resident warps / 64) on sm_90.
pub fn occupancy_sm90(threads: u32, regs: u32, smem: u32) -> (u32, f64) {
    let (blocks, _) = blocks_per_sm90(threads, regs, smem);
    (blocks, (blocks * threads.div_ceil(32)) as f64 / sm90::WARPS as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occupancy_limits() {
        // 256 threads, 32 regs, no smem: 8 blocks by threads = 64 warps = 100%
        assert_eq!(occupancy_sm90(256, 32, 0), (8, 1.0));
        // 128 regs/thread: 4096 regs per warp -> 16 warps -> 2 blocks of 8 warps
        assert_eq!(occupancy_sm90(256, 128, 0), (2, 0.25));
        // 100 KiB of shared memory: 2 blocks
        assert_eq!(occupancy_sm90(128, 32, 100 * 1024), (2, 0.125));
        // tiny blocks are capped at 32 per SM
        assert_eq!(occupancy_sm90(32, 16, 0), (32, 0.5));
        // and what limits each
        assert_eq!(blocks_per_sm90(256, 32, 0), (8, "threads"));
        // 128 threads at 230 registers (232 allocated): 8 warps' worth of registers, 2 blocks.
        assert_eq!(blocks_per_sm90(128, 230, 0), (2, "registers"));
        assert_eq!(blocks_per_sm90(128, 32, 96 * 1024), (2, "shared memory"));
        assert_eq!(blocks_per_sm90(32, 16, 0), (32, "blocks"));
    }

    #[test]
    fn parses_the_ptxas_report() {
        let r = "ptxas info    : Compiling entry function 'k1' for 'sm_80'\n\
                 ptxas info    : Used 10 registers, used 1 barriers, 128 bytes smem, 360 bytes cmem[0]\n\
                 ptxas info    : Compiling entry function 'k1' for 'sm_90a'\n\
                 ptxas info    : Function properties for k1\n\
                 0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
                 ptxas info    : Used 12 registers, used 1 barriers, 256 bytes smem, 360 bytes cmem[0]\n\
                 ptxas info    : Compiling entry function 'k2' for 'sm_90a'\n\
                 ptxas info    : Used 40 registers, used 0 barriers, 368 bytes cmem[0]\n";
        let m = parse_resources(r, "sm_90a");
        assert_eq!(
            m["k1"],
            Resources {
                regs: 12,
                static_smem: 256
            }
        );
        assert_eq!(
            m["k2"],
            Resources {
                regs: 40,
                static_smem: 0
            }
        );
        assert_eq!(parse_resources(r, "sm_80")["k1"].regs, 10);
    }
}
