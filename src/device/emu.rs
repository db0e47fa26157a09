//! The Emu device: host memory with guard pages and the kernels of `cuda/` compiled for the CPU against
//! the kernel emulator (`cuda/emu/`, built by `build.rs`). A launch runs to completion on the calling
//! thread; its diagnostics (divergent barriers, deadlocks, out-of-bounds accesses, argument mismatches,
//! ...) come back as [`DeviceError`]s naming the kernel, block, thread and source line.

use super::{err, Arg, Buffer, DevPtr, Device, DeviceError, Dim3, Gemm, Result, Schedule};
use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::{Arc, Mutex};

extern "C" {
    fn emu_kernel_count() -> c_int;
    fn emu_kernel_name(i: c_int) -> *const c_char;
    fn emu_malloc(bytes: usize) -> *mut c_void;
    fn emu_free(p: *mut c_void) -> c_int;
    #[allow(clippy::too_many_arguments)]
    fn emu_launch(
        name: *const c_char,
        grid: *const u32,
        block: *const u32,
        smem: u32,
        params: *mut *mut c_void,
        sizes: *const usize,
        nparams: c_int,
        schedule: c_int,
        seed: u64,
        err: *mut c_char,
        errlen: usize,
    ) -> c_int;
}

/// Live allocations (address -> size), so that copies and GEMMs are checked against their buffers.
type Allocs = Arc<Mutex<BTreeMap<u64, usize>>>;

/// A point where the CUDA device would make the host wait for its stream: an upload (which waits for the
/// copy), a download (which waits for all queued work) or an explicit synchronisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncPoint {
    /// "upload", "download" or "synchronize".
    pub kind: &'static str,
    /// Launches and GEMMs queued on the device before it.
    pub after_ops: usize,
}

#[derive(Default)]
struct SyncState {
    ops: usize,
    points: Vec<SyncPoint>,
}

/// The synchronisation points of an [`EmuDevice`], shared with whoever holds a handle (the device itself may
/// be owned by a model): how tests count the waits a GPU would have in a step.
#[derive(Clone, Default)]
pub struct SyncLog(Arc<Mutex<SyncState>>);

impl SyncLog {
    fn with<T>(&self, f: impl FnOnce(&mut SyncState) -> T) -> T {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }
    fn op(&self) {
        self.with(|s| s.ops += 1)
    }
    fn sync(&self, kind: &'static str) {
        self.with(|s| {
            let after_ops = s.ops;
            s.points.push(SyncPoint { kind, after_ops })
        })
    }
    /// Launches and GEMMs so far.
    pub fn ops(&self) -> usize {
        self.with(|s| s.ops)
    }
    /// Every synchronisation point so far, in order.
    pub fn points(&self) -> Vec<SyncPoint> {
        self.with(|s| s.points.clone())
    }
    /// Forgets the points recorded so far (the op count goes on).
    pub fn clear(&self) {
        self.with(|s| s.points.clear())
    }
}

/// The live allocations of an [`EmuDevice`], shared with whoever holds a handle (the device itself may be
/// owned by a model): how tests count the device memory a model holds.
#[derive(Clone)]
pub struct AllocMeter(Allocs);

impl AllocMeter {
    /// The sizes of the live buffers, in bytes (in address order).
    pub fn sizes(&self) -> Vec<usize> {
        self.0.lock().map(|a| a.values().copied().collect()).unwrap_or_default()
    }
    /// Bytes allocated and not freed.
    pub fn live_bytes(&self) -> usize {
        self.sizes().iter().sum()
    }
}

pub struct EmuDevice {
    schedule: Schedule,
    allocs: Allocs,
    syncs: SyncLog,
}

impl EmuDevice {
    pub fn new(schedule: Schedule) -> EmuDevice {
        EmuDevice {
            schedule,
            allocs: Arc::new(Mutex::new(BTreeMap::new())),
            syncs: SyncLog::default(),
        }
    }

    /// A handle on this device's live allocations.
    pub fn alloc_meter(&self) -> AllocMeter {
        AllocMeter(self.allocs.clone())
    }

    /// A handle on this device's synchronisation points.
    pub fn sync_log(&self) -> SyncLog {
        self.syncs.clone()
    }

    pub fn schedule(&self) -> Schedule {
        self.schedule
    }

    /// The names of all kernels compiled into the emulator.
    pub fn kernel_names() -> Vec<String> {
        // SAFETY: the registry is filled by static constructors before main and never changes after;
        // names are NUL-terminated literals.
        let n = unsafe { emu_kernel_count() };
        (0..n)
            .filter_map(|i| {
                let p = unsafe { emu_kernel_name(i) };
                (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
            })
            .collect()
    }

    /// Checks that `[ptr, ptr + bytes)` lies inside one live allocation.
    pub(crate) fn check_range(&self, ptr: DevPtr, bytes: usize, what: &str) -> Result<()> {
        let allocs = self
            .allocs
            .lock()
            .map_err(|_| DeviceError("emu: allocation table poisoned".into()))?;
        match allocs.range(..=ptr.0).next_back() {
            Some((&base, &size)) if ptr.0 + bytes as u64 <= base + size as u64 => Ok(()),
            Some((&base, &size)) if ptr.0 < base + size as u64 => err(format!(
                "emu: {what}: {bytes} bytes at {:#x} run past the end of the {size}-byte buffer at {base:#x}",
                ptr.0
            )),
            _ => err(format!(
                "emu: {what}: address {:#x} is not inside any live device buffer",
                ptr.0
            )),
        }
    }
}

impl Device for EmuDevice {
    fn name(&self) -> String {
        format!("emu ({:?} schedule)", self.schedule)
    }

    fn alloc(&self, bytes: usize) -> Result<Buffer> {
        // SAFETY: emu_malloc maps fresh memory or returns null.
        let p = unsafe { emu_malloc(bytes) };
        if p.is_null() {
            return err(format!("emu: out of memory allocating {bytes} bytes"));
        }
        let addr = p as u64;
        self.allocs
            .lock()
            .map_err(|_| DeviceError("emu: allocation table poisoned".into()))?
            .insert(addr, bytes);
        let allocs = self.allocs.clone();
        let free = Arc::new(move |ptr: DevPtr| {
            if let Ok(mut a) = allocs.lock() {
                a.remove(&ptr.0);
            }
            // SAFETY: ptr came from emu_malloc and Buffer frees it exactly once.
            unsafe { emu_free(ptr.0 as *mut c_void) };
        });
        Ok(Buffer::new(DevPtr(addr), bytes, free))
    }

    fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.check_range(dst, src.len(), "upload")?;
        self.syncs.sync("upload");
        // SAFETY: the destination range lies inside a live allocation (checked above).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.0 as *mut u8, src.len()) };
        Ok(())
    }

    fn download(&self, src: DevPtr, dst: &mut [u8]) -> Result<()> {
        self.check_range(src, dst.len(), "download")?;
        self.syncs.sync("download");
        // SAFETY: the source range lies inside a live allocation (checked above).
        unsafe { std::ptr::copy_nonoverlapping(src.0 as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn zero(&self, dst: DevPtr, bytes: usize) -> Result<()> {
        self.check_range(dst, bytes, "zero")?;
        // SAFETY: the range lies inside a live allocation (checked above).
        unsafe { std::ptr::write_bytes(dst.0 as *mut u8, 0, bytes) };
        Ok(())
    }

    fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()> {
        self.check_range(src, bytes, "copy source")?;
        self.check_range(dst, bytes, "copy destination")?;
        if src.0 < dst.0 + bytes as u64 && dst.0 < src.0 + bytes as u64 {
            return err(format!(
                "emu: copy of {bytes} bytes from {:#x} to {:#x}: the ranges overlap",
                src.0, dst.0
            ));
        }
        // SAFETY: both ranges lie inside live allocations and do not overlap (checked above).
        unsafe { std::ptr::copy_nonoverlapping(src.0 as *const u8, dst.0 as *mut u8, bytes) };
        Ok(())
    }

    fn launch(&self, name: &str, grid: Dim3, block: Dim3, smem_bytes: u32, args: &[Arg]) -> Result<()> {
        let cname = CString::new(name).map_err(|_| DeviceError(format!("kernel name {name:?} contains NUL")))?;
        self.syncs.op();
        let mut values: Vec<[u8; 8]> = Vec::with_capacity(args.len());
        let mut sizes: Vec<usize> = Vec::with_capacity(args.len());
        for a in args {
            let (b, n) = a.bytes();
            values.push(b);
            sizes.push(n);
        }
        let mut params: Vec<*mut c_void> = values.iter_mut().map(|v| v.as_mut_ptr() as *mut c_void).collect();
        let (schedule, seed) = match self.schedule {
            Schedule::Forward => (0, 0),
            Schedule::Reverse => (1, 0),
            Schedule::Random(s) => (2, s),
        };
        let g = [grid.x, grid.y, grid.z];
        let b = [block.x, block.y, block.z];
        let mut msg = vec![0u8; 4096];
        // SAFETY: every pointer is valid for the call: params points at `values` (8 bytes each, the
        // emulator reads only the declared size after checking it against `sizes`), and `msg` is
        // writable for its length. Kernels may access device memory through pointer arguments; the
        // emulator traps faults on its guard pages and reports them as errors.
        let rc = unsafe {
            emu_launch(
                cname.as_ptr(),
                g.as_ptr(),
                b.as_ptr(),
                smem_bytes,
                params.as_mut_ptr(),
                sizes.as_ptr(),
                args.len() as c_int,
                schedule,
                seed,
                msg.as_mut_ptr() as *mut c_char,
                msg.len(),
            )
        };
        if rc != 0 {
            let end = msg.iter().position(|&c| c == 0).unwrap_or(msg.len());
            return err(format!("emu: {}", String::from_utf8_lossy(&msg[..end])));
        }
        Ok(())
    }

    fn gemm(&self, g: &Gemm) -> Result<()> {
        g.validate()?;
        self.syncs.op();
        let (a, b, c) = g.extents();
        self.check_range(g.a, a, "gemm operand A")?;
        self.check_range(g.b, b, "gemm operand B")?;
        self.check_range(g.c, c, "gemm output C")?;
        // SAFETY: the three operand ranges lie inside live allocations (checked above); the emulator
        // runs launches and GEMMs on the calling thread, so nothing else writes them meanwhile.
        let (sa, sb, sc) = unsafe {
            (
                std::slice::from_raw_parts(g.a.0 as *const u8, a),
                std::slice::from_raw_parts(g.b.0 as *const u8, b),
                std::slice::from_raw_parts_mut(g.c.0 as *mut u8, c),
            )
        };
        g.run_on_host(sa, sb, sc);
        Ok(())
    }

    fn guard_pages(&self) -> bool {
        true
    }

    fn synchronize(&self) -> Result<()> {
        self.syncs.sync("synchronize");
        Ok(())
    }
}
