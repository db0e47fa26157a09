//! The recording device: every kernel launch, GEMM, copy, memset and host transfer of whatever runs on it,
//! in order, with its geometry and arguments, either without executing anything ([`RecordDevice::dry`]:
//! allocations are address ranges with no memory behind them, downloads leave the host buffer as it is) or
//! around a device that executes them ([`RecordDevice::wrapping`]). [`record_step`] records one training
//! step of the kernel model (forward and backward of every micro-batch, the optimizer, and the local part
//! of the data-parallel collectives through [`RecordComm`]) from the model's own code, at full size and in
//! seconds: what the roofline projection ([`super::projection`]) prices.

use super::model::{KernelModel, LOSS_LOG_LEN};
use super::{err, Arg, Buffer, DevPtr, Device, Dim3, Gemm, Result};
use crate::config::ModelConfig;
use crate::dist::{check_len, Collectives, CommResult, ReduceOp, SharedComm};
use crate::model::ModelDevice;
use crate::optim::{SetupArgs, StepSettings};
use crate::params::ParamTable;
use crate::rng::Rng;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One recorded device operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Launch {
        name: String,
        grid: Dim3,
        block: Dim3,
        smem: u32,
        args: Vec<Arg>,
    },
    Gemm(Gemm),
    /// A device-to-device copy of `bytes`.
    Copy {
        bytes: usize,
    },
    /// A memset of `bytes`.
    Zero {
        bytes: usize,
    },
    /// Host to device.
    Upload {
        bytes: usize,
    },
    /// Device to host.
    Download {
        bytes: usize,
    },
    /// A collective over `world` ranks of a buffer of `floats` fp32 values (the whole buffer: a
    /// reduce-scatter's input, an all-gather's output).
    Collective {
        kind: &'static str,
        floats: usize,
        world: usize,
    },
}

impl Op {
    /// Whether the op is a kernel launch or a GEMM (what the emulator counts as queued work).
    pub fn is_kernel(&self) -> bool {
        matches!(self, Op::Launch { .. } | Op::Gemm(_))
    }
}

/// An op and the phase of the step it belongs to ("forward", "backward", "optimizer", ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub phase: String,
    pub op: Op,
}

#[derive(Default)]
struct LogState {
    phase: String,
    ops: Vec<Recorded>,
    /// Launches and GEMMs ever recorded, cleared or not.
    kernels: usize,
}

/// The ops recorded so far, shared by the device, the collectives and whoever drives them.
#[derive(Clone, Default)]
pub struct RecordLog(Arc<Mutex<LogState>>);

impl RecordLog {
    fn with<T>(&self, f: impl FnOnce(&mut LogState) -> T) -> T {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }
    fn push(&self, op: Op) {
        self.with(|s| {
            let phase = s.phase.clone();
            s.kernels += op.is_kernel() as usize;
            s.ops.push(Recorded { phase, op })
        })
    }
    /// Labels the ops recorded from now on.
    pub fn set_phase(&self, phase: &str) {
        self.with(|s| s.phase = phase.to_string())
    }
    /// Everything recorded so far, in order.
    pub fn ops(&self) -> Vec<Recorded> {
        self.with(|s| s.ops.clone())
    }
    /// Launches and GEMMs recorded since the log began, including those [`RecordLog::clear`] forgot.
    pub fn kernels_ever(&self) -> usize {
        self.with(|s| s.kernels)
    }
    /// Forgets what was recorded so far.
    pub fn clear(&self) {
        self.with(|s| s.ops.clear())
    }
}

/// A device that records every operation, and executes it on `inner` if there is one.
pub struct RecordDevice {
    inner: Option<Box<dyn Device>>,
    log: RecordLog,
    /// The next free address of the dry device (256-byte aligned, one unmapped page between buffers).
    next: AtomicU64,
}

/// Where the dry device's address ranges start: far from null and from host pointers.
const DRY_BASE: u64 = 1 << 44;

impl RecordDevice {
    /// Records without executing: allocations cost no memory, uploads and downloads move nothing.
    pub fn dry() -> RecordDevice {
        RecordDevice {
            inner: None,
            log: RecordLog::default(),
            next: AtomicU64::new(DRY_BASE),
        }
    }

    /// Records what `inner` executes.
    pub fn wrapping(inner: Box<dyn Device>) -> RecordDevice {
        RecordDevice {
            inner: Some(inner),
            log: RecordLog::default(),
            next: AtomicU64::new(DRY_BASE),
        }
    }

    /// A handle on the recorded ops (the device itself may be owned by a model).
    pub fn log(&self) -> RecordLog {
        self.log.clone()
    }
}

impl Device for RecordDevice {
    fn name(&self) -> String {
        match &self.inner {
            None => "record (no execution)".to_string(),
            Some(d) => format!("record: {}", d.name()),
        }
    }

    fn alloc(&self, bytes: usize) -> Result<Buffer> {
        if let Some(d) = &self.inner {
            return d.alloc(bytes);
        }
        let span = (bytes as u64).div_ceil(256) * 256 + 4096;
        let at = self.next.fetch_add(span, Ordering::Relaxed);
        if at.checked_add(span).is_none() {
            return err(format!("record: out of address space allocating {bytes} bytes"));
        }
        Ok(Buffer::new(DevPtr(at), bytes, Arc::new(|_| {})))
    }

    fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.log.push(Op::Upload { bytes: src.len() });
        self.inner.as_ref().map_or(Ok(()), |d| d.upload(dst, src))
    }

    fn download(&self, src: DevPtr, dst: &mut [u8]) -> Result<()> {
        self.log.push(Op::Download { bytes: dst.len() });
        self.inner.as_ref().map_or(Ok(()), |d| d.download(src, dst))
    }

    fn zero(&self, dst: DevPtr, bytes: usize) -> Result<()> {
        self.log.push(Op::Zero { bytes });
        self.inner.as_ref().map_or(Ok(()), |d| d.zero(dst, bytes))
    }

    fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()> {
        self.log.push(Op::Copy { bytes });
        self.inner.as_ref().map_or(Ok(()), |d| d.copy(dst, src, bytes))
    }

    fn launch(&self, name: &str, grid: Dim3, block: Dim3, smem_bytes: u32, args: &[Arg]) -> Result<()> {
        if grid.x == 0 || grid.y == 0 || grid.z == 0 || block.x == 0 || block.y == 0 || block.z == 0 {
            return err(format!("record: {name}: empty launch grid {grid:?} block {block:?}"));
        }
        self.log.push(Op::Launch {
            name: name.to_string(),
            grid,
            block,
            smem: smem_bytes,
            args: args.to_vec(),
        });
        self.inner
            .as_ref()
            .map_or(Ok(()), |d| d.launch(name, grid, block, smem_bytes, args))
    }

    fn gemm(&self, g: &Gemm) -> Result<()> {
        g.validate()?;
        self.log.push(Op::Gemm(g.clone()));
        self.inner.as_ref().map_or(Ok(()), |d| d.gemm(g))
    }

    fn synchronize(&self) -> Result<()> {
        self.inner.as_ref().map_or(Ok(()), |d| d.synchronize())
    }

    fn memory_info(&self) -> Option<(usize, usize)> {
        self.inner.as_ref().and_then(|d| d.memory_info())
    }

    fn guard_pages(&self) -> bool {
        self.inner.as_ref().is_some_and(|d| d.guard_pages())
    }
}

/// Collectives of rank `rank` of `world` that record each call and move nothing (outputs keep their
/// contents): the local view of a data-parallel step.
pub struct RecordComm {
    rank: usize,
    world: usize,
    log: RecordLog,
}

impl RecordComm {
    pub fn new(rank: usize, world: usize, log: RecordLog) -> RecordComm {
        RecordComm { rank, world, log }
    }
    fn record(&self, kind: &'static str, floats: usize) {
        self.log.push(Op::Collective {
            kind,
            floats,
            world: self.world,
        })
    }
}

impl Collectives for RecordComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn all_reduce(&mut self, buf: &mut [f32], _: ReduceOp) -> CommResult<()> {
        self.record("all_reduce", buf.len());
        Ok(())
    }
    fn reduce_scatter(&mut self, input: &[f32], output: &mut [f32], _: ReduceOp) -> CommResult<()> {
        check_len("reduce_scatter output", output.len() * self.world, input.len())?;
        self.record("reduce_scatter", input.len());
        Ok(())
    }
    fn all_gather(&mut self, input: &[f32], output: &mut [f32]) -> CommResult<()> {
        check_len("all_gather output", output.len(), input.len() * self.world)?;
        self.record("all_gather", output.len());
        Ok(())
    }
    fn broadcast(&mut self, buf: &mut [f32], _: usize) -> CommResult<()> {
        self.record("broadcast", buf.len());
        Ok(())
    }
    fn barrier(&mut self) -> CommResult<()> {
        Ok(())
    }
    fn abort(&mut self, _: &str) {}
}

/// The batch settings of one training step on one GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepPlan {
    /// Rows per micro-batch (`--device-batch-size`).
    pub device_batch: usize,
    /// Sequence length.
    pub seq: usize,
    /// Micro-batches per step on each GPU.
    pub grad_accum: usize,
    /// GPUs (data-parallel ranks, optimizer sharded as ZeRO-2 when more than 1).
    pub world: usize,
}

impl StepPlan {
    /// Tokens each GPU processes per step.
    pub fn tokens_per_gpu(&self) -> usize {
        self.device_batch * self.seq * self.grad_accum
    }
}

/// Records one training step of the model `cfg` on `dev` (rank 0 of `plan.world`): `grad_accum` micro-
/// batches of forward ("forward") and backward ("backward"), the loss read-back, then the optimizer
/// ("optimizer", with the collectives of a sharded step). The parameters are zeros and the batch is random
/// tokens: the ops depend on the shapes only (and the embedding backward's grid on the distinct tokens,
/// as many as a real batch has). Setup work (the parameter upload, the first arena) is not recorded.
pub fn record_step(
    dev: RecordDevice,
    cfg: &ModelConfig,
    plan: &StepPlan,
) -> std::result::Result<Vec<Recorded>, String> {
    if plan.device_batch == 0 || plan.seq == 0 || plan.grad_accum == 0 || plan.world == 0 {
        return Err(format!("record_step: empty plan {plan:?}"));
    }
    if plan.grad_accum > LOSS_LOG_LEN {
        return Err(format!("record_step: at most {LOSS_LOG_LEN} micro-batches per step"));
    }
    let log = dev.log();
    let table = ParamTable::new(cfg);
    // calloc'd and never written on a dry device: no memory behind it.
    let params = vec![0f32; table.numel];
    let args = SetupArgs::default();
    let mut model = KernelModel::new(Box::new(dev), cfg, &params, &args)?;
    drop(params);
    if plan.world > 1 {
        let comm: SharedComm = Arc::new(Mutex::new(Box::new(RecordComm::new(0, plan.world, log.clone()))));
        model = model.data_parallel(&args, comm, 0, plan.world)?;
    }
    let (b, t) = (plan.device_batch, plan.seq);
    let mut rng = Rng::new(11);
    let (ids, targets) = rng.token_batch(cfg.vocab_size, b * t);
    model.ensure_arena(b, t)?;
    log.clear();
    let scale = 1.0 / plan.grad_accum as f32;
    let dloss = scale / targets.len() as f32;
    for micro in 0..plan.grad_accum {
        // As `forward_backward_queued` does, with the phases marked between the two halves.
        log.set_phase("forward");
        let slot = model.loss_log.at::<f32>(micro);
        model.forward(&ids, Some(&targets), b, t, dloss, Some(slot))?;
        log.set_phase("backward");
        model
            .backward(&ids, b, t)
            .map_err(|e| format!("{}: backward: {e}", model.device_name()))?;
        model.queued.push(targets.len());
    }
    log.set_phase("loss read-back");
    model.take_losses()?;
    log.set_phase("optimizer");
    model.step(&StepSettings::BENCH)?;
    Ok(log.ops())
}
