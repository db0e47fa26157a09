//! NCCL collectives on GPUs (cudarc's dynamically loaded `libnccl`), kept thin: one communicator per process
//! on the GPU `LOCAL_RANK` picks, on its own non-blocking stream so communication can overlap the kernels'
//! stream. The unique id travels through the TCP bootstrap. Waiting polls the communicator's asynchronous
//! error and aborts it past the deadline, so a dead peer surfaces as an error instead of a hang.
//!
//! The bootstrap's TCP ring stays open beside the communicator as a control channel, so that failures name
//! the rank at fault as on the CPU backend: a rank that gives up sends an abort frame over it (the others,
//! polling it while they wait, abort their communicators at once and name it); past the deadline every
//! waiting rank aborts its communicator and meets the others in a barrier over the TCP ring, which only the
//! hung rank misses, so the ring's heartbeat rule names it.
//!
//! The device-pointer operations are what a kernel device calls; the [`Collectives`] implementation stages
//! host buffers through one device buffer (for the benchmark and for host-side callers). This machine has no
//! GPU and no libnccl: this file is only compiled and its missing-library error tested here.

use super::{Collectives, CommError, CommResult, ReduceOp};
use cudarc::driver::{result as drv, sys as dsys};
use cudarc::nccl::{result as nres, sys as nsys};
use std::ffi::c_void;
use std::time::{Duration, Instant};

/// Whether libnccl can be loaded (never panics).
pub fn nccl_present() -> bool {
    // SAFETY: only tries to dlopen the library under its usual names.
    unsafe { nsys::is_culib_present() }
}

fn missing() -> String {
    "NCCL: libnccl.so.2 is not installed or not on the library path (install NCCL, e.g. the nvidia-nccl-cu13 \
     wheel or Debian's libnccl2, and add its lib directory to LD_LIBRARY_PATH); the CPU backend needs no \
     library: --device cpu or emu"
        .to_string()
}

/// A fresh NCCL unique id (rank 0 makes it; the bootstrap hands it to the others).
pub fn unique_id() -> Result<Vec<u8>, String> {
    if !nccl_present() {
        return Err(missing());
    }
    let id = nres::get_uniqueid().map_err(|e| format!("ncclGetUniqueId: {e:?}"))?;
    Ok(id.internal.iter().map(|&c| c as u8).collect())
}

/// One NCCL communicator and its stream.
pub struct Nccl {
    comm: nsys::ncclComm_t,
    stream: dsys::CUstream,
    ctx: dsys::CUcontext,
    rank: usize,
    world: usize,
    timeout: Duration,
    /// The TCP ring of the bootstrap, kept for abort frames and for naming a hung rank.
    control: Option<super::ring::Ring>,
    /// Staging buffer of the host-buffer collectives: (device pointer, bytes).
    staging: Option<(u64, usize)>,
}

// SAFETY: the handles are used by one thread at a time (the owner), with the context made current.
unsafe impl Send for Nccl {}

fn dev_err(what: &str, e: drv::DriverError) -> CommError {
    CommError::Backend(format!("cuda: {what}: {e:?}"))
}

fn nccl_err(what: &str, e: nres::NcclError) -> CommError {
    CommError::Backend(format!("NCCL {what}: {e:?}"))
}

fn nccl_op(op: ReduceOp) -> nsys::ncclRedOp_t {
    match op {
        ReduceOp::Sum => nsys::ncclRedOp_t::ncclSum,
        ReduceOp::Avg => nsys::ncclRedOp_t::ncclAvg,
    }
}

const F32: nsys::ncclDataType_t = nsys::ncclDataType_t::ncclFloat32;

impl Nccl {
    /// Joins the communicator `id` as `rank` of `world` on GPU `ordinal`.
    pub fn init(ordinal: usize, rank: usize, world: usize, id: &[u8], timeout: Duration) -> Result<Nccl, String> {
        if !nccl_present() {
            return Err(missing());
        }
        if id.len() != 128 {
            return Err(format!("NCCL unique id has {} bytes, expected 128", id.len()));
        }
        drv::init().map_err(|e| format!("cuInit (is there a GPU?): {e:?}"))?;
        let dev = drv::device::get(ordinal as i32).map_err(|e| format!("GPU {ordinal} (LOCAL_RANK): {e:?}"))?;
        // SAFETY: dev is valid; the primary context lives as long as the process.
        let ctx = unsafe { drv::primary_ctx::retain(dev) }.map_err(|e| format!("cuDevicePrimaryCtxRetain: {e:?}"))?;
        unsafe { drv::ctx::set_current(ctx) }.map_err(|e| format!("cuCtxSetCurrent: {e:?}"))?;
        let stream =
            drv::stream::create(drv::stream::StreamKind::NonBlocking).map_err(|e| format!("cuStreamCreate: {e:?}"))?;
        let mut internal = [0 as std::ffi::c_char; 128];
        for (d, &s) in internal.iter_mut().zip(id) {
            *d = s as std::ffi::c_char;
        }
        let mut comm = std::mem::MaybeUninit::uninit();
        // SAFETY: comm is written by NCCL; the id is a valid unique id from rank 0.
        unsafe {
            nres::comm_init_rank(
                comm.as_mut_ptr(),
                world as i32,
                nsys::ncclUniqueId { internal },
                rank as i32,
            )
        }
        .map_err(|e| format!("ncclCommInitRank (rank {rank} of {world}): {e:?}"))?;
        Ok(Nccl {
            // SAFETY: initialised by the successful call above.
            comm: unsafe { comm.assume_init() },
            stream,
            ctx,
            rank,
            world,
            timeout,
            control: None,
            staging: None,
        })
    }

    /// Keeps `ring` (this job's TCP ring) as the control channel (see the module notes).
    pub fn with_control(mut self, ring: super::ring::Ring) -> Nccl {
        self.control = Some(ring);
        self
    }

    /// The communication stream (the caller orders it after the kernels that produce the data).
    pub fn stream(&self) -> dsys::CUstream {
        self.stream
    }

    /// Waits for the stream, checking NCCL's asynchronous error; past the deadline the communicator is
    /// aborted and the error says a peer hung or died.
    pub fn wait(&mut self) -> CommResult<()> {
        let start = Instant::now();
        let mut polled = Instant::now();
        loop {
            // SAFETY: the stream is ours and alive.
            let q = unsafe { dsys::cuStreamQuery(self.stream) };
            if q == dsys::CUresult::CUDA_SUCCESS {
                return Ok(());
            }
            if q != dsys::CUresult::CUDA_ERROR_NOT_READY {
                return Err(CommError::Backend(format!("cuda: stream failed: {q:?}")));
            }
            let mut async_err = nsys::ncclResult_t::ncclSuccess;
            // SAFETY: comm is alive; writes one value.
            unsafe { nsys::ncclCommGetAsyncError(self.comm, &mut async_err) };
            if async_err != nsys::ncclResult_t::ncclSuccess && async_err != nsys::ncclResult_t::ncclInProgress {
                // SAFETY: comm is alive; after an abort every pending and later operation fails.
                unsafe {
                    let _ = nres::comm_abort(self.comm);
                }
                // A neighbour that exited or gave up says so on the control ring.
                std::thread::sleep(Duration::from_millis(200));
                if let Some(err) = self.control.as_mut().and_then(|c| c.poll_abort()) {
                    return Err(err);
                }
                return Err(CommError::Backend(format!(
                    "NCCL asynchronous error {async_err:?} (a peer died or the network failed)"
                )));
            }
            if polled.elapsed() > Duration::from_millis(50) {
                polled = Instant::now();
                if let Some(err) = self.control.as_mut().and_then(|c| c.poll_abort()) {
                    // SAFETY: comm is alive; after an abort every pending and later operation fails.
                    unsafe {
                        let _ = nres::comm_abort(self.comm);
                    }
                    return Err(err);
                }
            }
            if start.elapsed() > self.timeout {
                // SAFETY: as above.
                unsafe {
                    let _ = nres::comm_abort(self.comm);
                }
                // Every rank that waits here meets the others over TCP; the one that hangs does not come.
                if let Some(c) = self.control.as_mut() {
                    c.barrier()?;
                }
                return Err(CommError::Backend(format!(
                    "NCCL collective unfinished after {} s on every rank: network or NCCL failure; communicator \
                     aborted",
                    self.timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// `count` fp32 values at device pointer `buf`, reduced in place (asynchronous on [`Nccl::stream`]).
    ///
    /// # Safety
    /// `buf` must hold `count` fp32 values on this communicator's GPU.
    pub unsafe fn all_reduce_device(&self, buf: u64, count: usize, op: ReduceOp) -> CommResult<()> {
        nres::all_reduce(
            buf as *const c_void,
            buf as *mut c_void,
            count,
            F32,
            nccl_op(op),
            self.comm,
            self.stream as _,
        )
        .map(|_| ())
        .map_err(|e| nccl_err("all_reduce", e))
    }

    /// Reduce-scatter: `input` (`world × count`) to `output` (`count`).
    ///
    /// # Safety
    /// Both pointers must hold those many fp32 values on this GPU.
    pub unsafe fn reduce_scatter_device(&self, input: u64, output: u64, count: usize, op: ReduceOp) -> CommResult<()> {
        nres::reduce_scatter(
            input as *const c_void,
            output as *mut c_void,
            count,
            F32,
            nccl_op(op),
            self.comm,
            self.stream as _,
        )
        .map(|_| ())
        .map_err(|e| nccl_err("reduce_scatter", e))
    }

    /// All-gather: `input` (`count`) to `output` (`world × count`).
    ///
    /// # Safety
    /// Both pointers must hold those many fp32 values on this GPU.
    pub unsafe fn all_gather_device(&self, input: u64, output: u64, count: usize) -> CommResult<()> {
        nres::all_gather(
            input as *const c_void,
            output as *mut c_void,
            count,
            F32,
            self.comm,
            self.stream as _,
        )
        .map(|_| ())
        .map_err(|e| nccl_err("all_gather", e))
    }

    /// # Safety
    /// `buf` must hold `count` fp32 values on this GPU.
    pub unsafe fn broadcast_device(&self, buf: u64, count: usize, root: usize) -> CommResult<()> {
        nres::broadcast(
            buf as *const c_void,
            buf as *mut c_void,
            count,
            F32,
            root as i32,
            self.comm,
            self.stream as _,
        )
        .map(|_| ())
        .map_err(|e| nccl_err("broadcast", e))
    }

    /// A device buffer of at least `bytes` (reused between calls; also what the host-buffer collectives stage
    /// through).
    pub fn device_buffer(&mut self, bytes: usize) -> CommResult<u64> {
        // SAFETY: context is ours.
        unsafe { drv::ctx::set_current(self.ctx) }.map_err(|e| dev_err("cuCtxSetCurrent", e))?;
        match self.staging {
            Some((p, n)) if n >= bytes => return Ok(p),
            Some((p, _)) => unsafe {
                let _ = drv::free_sync(p);
            },
            None => {}
        }
        // SAFETY: plain allocation.
        let p = unsafe { drv::malloc_sync(bytes.max(4)) }.map_err(|e| dev_err("cuMemAlloc (staging)", e))?;
        self.staging = Some((p, bytes.max(4)));
        Ok(p)
    }

    fn upload(&self, dst: u64, src: &[f32]) -> CommResult<()> {
        // SAFETY: dst holds at least src's bytes (staging was sized for it).
        unsafe { drv::memcpy_htod_sync(dst, src) }.map_err(|e| dev_err("upload", e))
    }

    fn download(&self, dst: &mut [f32], src: u64) -> CommResult<()> {
        // SAFETY: src holds at least dst's bytes.
        unsafe { drv::memcpy_dtoh_sync(dst, src) }.map_err(|e| dev_err("download", e))
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        // SAFETY: handles are ours; failures at teardown are not actionable.
        unsafe {
            if let Some((p, _)) = self.staging {
                let _ = drv::free_sync(p);
            }
            let _ = nres::comm_destroy(self.comm);
        }
    }
}

impl Collectives for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce(&mut self, buf: &mut [f32], op: ReduceOp) -> CommResult<()> {
        let p = self.device_buffer(buf.len() * 4)?;
        self.upload(p, buf)?;
        // SAFETY: p holds buf.len() values.
        unsafe { self.all_reduce_device(p, buf.len(), op)? };
        self.wait()?;
        self.download(buf, p)
    }

    fn reduce_scatter(&mut self, input: &[f32], output: &mut [f32], op: ReduceOp) -> CommResult<()> {
        super::check_len("reduce_scatter input", input.len(), output.len() * self.world)?;
        let p = self.device_buffer((input.len() + output.len()) * 4)?;
        let out = p + input.len() as u64 * 4;
        self.upload(p, input)?;
        // SAFETY: the staging buffer holds input then output.
        unsafe { self.reduce_scatter_device(p, out, output.len(), op)? };
        self.wait()?;
        self.download(output, out)
    }

    fn all_gather(&mut self, input: &[f32], output: &mut [f32]) -> CommResult<()> {
        super::check_len("all_gather output", output.len(), input.len() * self.world)?;
        let p = self.device_buffer((input.len() + output.len()) * 4)?;
        let out = p + input.len() as u64 * 4;
        self.upload(p, input)?;
        // SAFETY: the staging buffer holds input then output.
        unsafe { self.all_gather_device(p, out, input.len())? };
        self.wait()?;
        self.download(output, out)
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> CommResult<()> {
        let p = self.device_buffer(buf.len() * 4)?;
        self.upload(p, buf)?;
        // SAFETY: p holds buf.len() values.
        unsafe { self.broadcast_device(p, buf.len(), root)? };
        self.wait()?;
        self.download(buf, p)
    }

    fn barrier(&mut self) -> CommResult<()> {
        let mut token = [0f32; 1];
        self.all_reduce(&mut token, ReduceOp::Sum)
    }

    fn abort(&mut self, reason: &str) {
        // The others hear why over the control ring first, then the communicator goes.
        if let Some(c) = self.control.as_mut() {
            c.abort(reason);
        }
        // SAFETY: comm is alive; after an abort every pending and later operation fails.
        unsafe {
            let _ = nres::comm_abort(self.comm);
        }
    }
}

/// Joins the job over the TCP bootstrap (rank 0 makes the unique id) and opens the NCCL communicator on GPU
/// `LOCAL_RANK`.
pub fn connect(
    info: &super::RankInfo,
    fingerprint: &super::Fingerprint,
    timeouts: &super::Timeouts,
) -> Result<Nccl, String> {
    let id = if info.rank.value == 0 {
        unique_id()?
    } else if !nccl_present() {
        return Err(missing());
    } else {
        Vec::new()
    };
    let joined = super::bootstrap::join(info, fingerprint, id, timeouts)?;
    let nccl = Nccl::init(
        info.local_rank.value,
        info.rank.value,
        info.world_size.value,
        &joined.payload,
        timeouts.op,
    )?;
    Ok(match (joined.left, joined.right) {
        (Some(left), Some(right)) => nccl.with_control(super::ring::Ring::new(
            info.rank.value,
            info.world_size.value,
            left,
            right,
            timeouts.op,
        )),
        _ => nccl,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn missing_library_is_an_error_not_a_panic() {
        if super::nccl_present() {
            return;
        }
        let err = super::unique_id().unwrap_err();
        assert!(err.contains("libnccl"), "{err}");
        let err = super::Nccl::init(0, 0, 1, &[0; 128], std::time::Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(err.contains("libnccl"), "{err}");
    }
}
