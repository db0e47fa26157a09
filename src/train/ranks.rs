//! The training loop's view of data parallelism: this process's ranks and their collectives, the launch
//! fingerprint, reductions of the loop's scalars, and the per-rank checkpoint files.
//!
//! A process is one rank of `world` (from the launcher's variables), and plays `data_ranks` data ranks: 1
//! normally, or W with `--data-ranks W` on one process, which reads every micro-batch a W-rank run reads (rank
//! d's rows for its share of the gradient accumulation), so one process reproduces a W-rank run.
//!
//! Checkpoint protocol: every rank writes its optimizer shard (and the loader states of the data ranks it
//! plays, rank 0's going into the metadata as upstream); a barrier; then rank 0 writes the model and, last,
//! the metadata. A checkpoint exists only once its metadata does, so it is complete only when every rank's
//! files are.

use crate::checkpoint::write_atomic;
use crate::data::loader::LoaderState;
use crate::dist::{env::RankInfo, nccl, ring, Collectives, Fingerprint, ReduceOp, SharedComm, Solo, Timeouts};
use crate::safetensors::{self, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// This process in the job.
pub struct Ranks {
    pub info: RankInfo,
    pub rank: usize,
    pub world: usize,
    pub comm: SharedComm,
}

impl Ranks {
    /// Joins the job (`cuda`: NCCL; otherwise the CPU ring). One rank needs no network.
    pub fn join(info: RankInfo, fingerprint: &Fingerprint, cuda: bool, timeouts: &Timeouts) -> Result<Ranks, String> {
        let (rank, world) = (info.rank.value, info.world_size.value);
        let comm: Box<dyn Collectives> = if world == 1 {
            Box::new(Solo)
        } else if cuda {
            Box::new(nccl::connect(&info, fingerprint, timeouts)?)
        } else {
            ring::connect(&info, fingerprint, timeouts)?
        };
        Ok(Ranks {
            info,
            rank,
            world,
            comm: Arc::new(Mutex::new(comm)),
        })
    }

    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    fn with<T>(
        &self,
        what: &str,
        f: impl FnOnce(&mut dyn Collectives) -> crate::dist::CommResult<T>,
    ) -> Result<T, String> {
        let mut c = self.comm.lock().map_err(|_| "collectives poisoned".to_string())?;
        f(c.as_mut()).map_err(|e| format!("rank {}: {what}: {e}", self.rank))
    }

    /// Sums of f64 values over the ranks, each carried as two fp32 halves (high part and remainder) so that
    /// the sum keeps about 48 bits.
    pub fn sum(&self, what: &str, values: &[f64]) -> Result<Vec<f64>, String> {
        if self.world == 1 {
            return Ok(values.to_vec());
        }
        let mut buf: Vec<f32> = Vec::new();
        for &v in values {
            let hi = v as f32;
            buf.push(hi);
            buf.push((v - hi as f64) as f32);
        }
        self.with(what, |c| c.all_reduce(&mut buf, ReduceOp::Sum))?;
        Ok(buf.chunks(2).map(|p| p[0] as f64 + p[1] as f64).collect())
    }

    pub fn barrier(&self, what: &str) -> Result<(), String> {
        self.with(what, |c| c.barrier())
    }

    /// Tells the other ranks this one stops (with why), so that they fail at once naming it.
    pub fn abort(&self, reason: &str) {
        if let Ok(mut c) = self.comm.lock() {
            c.abort(reason);
        }
    }
}

/// What every rank of a run must agree on: every command-line argument, the tokenizer, the world size, the
/// resume step and the program version.
pub fn fingerprint(
    user_config: &serde_json::Value,
    tokenizer: &str,
    world: usize,
    resume_step: Option<usize>,
) -> Fingerprint {
    let mut fp = Fingerprint::new()
        .with("tokenizer", tokenizer)
        .with("world size", world)
        .with("resume step", resume_step.map_or("none".to_string(), |s| s.to_string()))
        .with("version", env!("CARGO_PKG_VERSION"));
    if let Some(obj) = user_config.as_object() {
        for (k, v) in obj {
            fp = fp.with(&format!("--{}", k.replace('_', "-")), v);
        }
    }
    fp
}

fn loader_file(dir: &Path, step: usize, rank: usize) -> PathBuf {
    dir.join(format!("loader_{step:06}_rank{rank}.json"))
}

/// The optimizer shard file of `rank` (the name upstream uses, with our extension).
pub fn optim_file(dir: &Path, step: usize, rank: usize) -> PathBuf {
    dir.join(format!("optim_{step:06}_rank{rank}.safetensors"))
}

/// Writes what a rank other than 0 contributes to checkpoint `step`: its optimizer shard (none when the
/// state is replicated and `optim` is None) and the loader states of data ranks other than 0.
pub fn save_shard(
    dir: &Path,
    step: usize,
    rank: usize,
    optim: Option<&BTreeMap<String, Tensor>>,
    loaders: &[(usize, LoaderState)],
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    if let Some(optim) = optim {
        safetensors::write(&optim_file(dir, step, rank), optim, &BTreeMap::new()).map_err(|e| e.to_string())?;
    }
    for (d, state) in loaders {
        if *d == 0 {
            continue;
        }
        let text = serde_json::to_vec(state).map_err(|e| e.to_string())?;
        write_atomic(&loader_file(dir, step, *d), &text)?;
    }
    Ok(())
}

/// Ranks whose optimizer shard checkpoint `step` holds (0, 1, ...).
pub fn saved_world(dir: &Path, step: usize) -> usize {
    (0..).take_while(|&r| optim_file(dir, step, r).exists()).count()
}

/// Refuses a resume by another world size, naming both.
pub fn check_resume_world(dir: &Path, step: usize, world: usize) -> Result<(), String> {
    let saved = saved_world(dir, step);
    if saved != world {
        return Err(format!(
            "checkpoint step {step} in {} holds the optimizer shards of {saved} rank(s), this run has {world}: \
             resume with {saved} rank(s) (the optimizer state is sharded; resharding is not supported)",
            dir.display()
        ));
    }
    Ok(())
}

/// The loader state of data rank `d` at checkpoint `step` (rank 0's is the metadata's).
pub fn load_loader_state(
    dir: &Path,
    step: usize,
    d: usize,
    meta_state: &serde_json::Value,
) -> Result<LoaderState, String> {
    let value = if d == 0 {
        meta_state.clone()
    } else {
        let path = loader_file(dir, step, d);
        let bytes = std::fs::read(&path)
            .map_err(|e| format!("{}: {e} (checkpoint of a run with fewer data ranks?)", path.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?
    };
    serde_json::from_value(value).map_err(|e| format!("checkpoint step {step}: bad loader state of data rank {d}: {e}"))
}
