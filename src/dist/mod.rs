//! Data parallelism across processes: which rank this is ([`env`]), how the ranks find each other
//! ([`bootstrap`]), and the collectives they run: a CPU ring over TCP ([`ring`]) for the cpu and emu devices
//! and the tests, NCCL ([`nccl`]) on GPUs.

pub mod bootstrap;
pub mod env;
pub mod launch;
pub mod nccl;
pub mod ring;

pub use bootstrap::{Fingerprint, Timeouts};
pub use env::RankInfo;

use std::fmt;

/// How contributions of the ranks combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    /// The sum divided by the world size (upstream's `ReduceOp.AVG`).
    Avg,
}

/// Why a collective failed.
#[derive(Clone, Debug, PartialEq)]
pub enum CommError {
    /// A rank died, hung past the deadline or gave up (its reason attached).
    PeerFailed { rank: usize, reason: String },
    /// The caller passed buffers that do not fit the operation.
    Usage(String),
    /// The backend itself failed (library error).
    Backend(String),
}

impl fmt::Display for CommError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommError::PeerFailed { rank, reason } => write!(f, "rank {rank} failed: {reason}"),
            CommError::Usage(m) => write!(f, "collective misuse: {m}"),
            CommError::Backend(m) => write!(f, "communication backend: {m}"),
        }
    }
}

impl From<CommError> for String {
    fn from(e: CommError) -> String {
        e.to_string()
    }
}

pub type CommResult<T> = Result<T, CommError>;

/// The collectives of this process, shared by the training loop and the model's optimizer step.
pub type SharedComm = std::sync::Arc<std::sync::Mutex<Box<dyn Collectives>>>;

/// The collectives a data-parallel step needs, over host fp32 buffers. Every rank calls the same operations
/// in the same order with the same lengths. Results are identical on every rank.
pub trait Collectives: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// `buf ← op over ranks of buf`.
    fn all_reduce(&mut self, buf: &mut [f32], op: ReduceOp) -> CommResult<()>;
    /// `input` holds `world_size` equal chunks; rank r receives chunk r reduced over ranks into `output`.
    fn reduce_scatter(&mut self, input: &[f32], output: &mut [f32], op: ReduceOp) -> CommResult<()>;
    /// `output` (`world_size` × `input.len()`) ← every rank's `input`, in rank order.
    fn all_gather(&mut self, input: &[f32], output: &mut [f32]) -> CommResult<()>;
    /// `buf ← root's buf`.
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> CommResult<()>;
    /// Returns once every rank has called it.
    fn barrier(&mut self) -> CommResult<()>;
    /// Tells the other ranks this one gives up (`reason` travels with it), so that they fail at their next
    /// collective naming this rank instead of waiting for a deadline. Best effort; never blocks for long.
    fn abort(&mut self, reason: &str);
}

/// One rank: collectives are identities, so the single-process path runs the same code.
pub struct Solo;

impl Collectives for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce(&mut self, _: &mut [f32], _: ReduceOp) -> CommResult<()> {
        Ok(())
    }
    fn reduce_scatter(&mut self, input: &[f32], output: &mut [f32], _: ReduceOp) -> CommResult<()> {
        check_len("reduce_scatter output", output.len(), input.len())?;
        output.copy_from_slice(input);
        Ok(())
    }
    fn all_gather(&mut self, input: &[f32], output: &mut [f32]) -> CommResult<()> {
        check_len("all_gather output", output.len(), input.len())?;
        output.copy_from_slice(input);
        Ok(())
    }
    fn broadcast(&mut self, _: &mut [f32], root: usize) -> CommResult<()> {
        check_len("broadcast root", root, 0)
    }
    fn barrier(&mut self) -> CommResult<()> {
        Ok(())
    }
    fn abort(&mut self, _: &str) {}
}

pub(crate) fn check_len(what: &str, got: usize, want: usize) -> CommResult<()> {
    if got == want {
        Ok(())
    } else {
        Err(CommError::Usage(format!("{what}: {got}, expected {want}")))
    }
}
