//! Checkpoints under `$NANOCHAT_BASE_DIR/<phase>_checkpoints/<tag>/`, one set of files per step:
//! `model_{step:06}.safetensors` (every parameter under its upstream name), `optim_{step:06}_rank{r}.safetensors`
//! (optimizer state) and `meta_{step:06}.json` (configs, step, loader position, loop state).
//!
//! Every file is written to a temporary name, fsynced and renamed; the metadata goes last, so a checkpoint
//! exists only once all its files are complete. A crash mid-save leaves the previous checkpoints intact and at
//! most some `.tmp` files, which are ignored.

use crate::config::ModelConfig;
use crate::params::ParamTable;
use crate::safetensors::{self, ExportDtype, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// State of the training loop that a resume restores.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    pub min_val_bpb: Option<f64>,
    pub smooth_train_loss: f64,
    pub total_training_time: f64,
    /// The step at which `smooth_train_loss` started from 0 (what its debiasing counts from): 0 for a run
    /// begun here, the imported step for an upstream checkpoint that recorded no smoothed loss.
    #[serde(default)]
    pub smooth_since: usize,
}

/// `meta_{step}.json`. Field names follow upstream's metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub step: usize,
    pub val_bpb: Option<f64>,
    pub model_config: ModelConfig,
    /// Every command-line argument of the run.
    pub user_config: serde_json::Value,
    pub device_batch_size: usize,
    pub max_seq_len: usize,
    pub total_batch_size: usize,
    /// Exact position of the data loader.
    pub dataloader_state_dict: serde_json::Value,
    pub loop_state: LoopState,
}

fn model_file(dir: &Path, step: usize) -> PathBuf {
    dir.join(format!("model_{step:06}.safetensors"))
}
fn optim_file(dir: &Path, step: usize, rank: usize) -> PathBuf {
    dir.join(format!("optim_{step:06}_rank{rank}.safetensors"))
}
fn meta_file(dir: &Path, step: usize) -> PathBuf {
    dir.join(format!("meta_{step:06}.json"))
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename, fsync of the directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = safetensors::tmp_path(path);
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(path)
    })();
    res.map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

/// Saves one checkpoint. `optim` is this rank's optimizer state.
pub fn save(
    dir: &Path,
    meta: &Meta,
    table: &ParamTable,
    params: &[f32],
    optim: &BTreeMap<String, Tensor>,
    rank: usize,
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let step = meta.step;
    if rank == 0 {
        let path = model_file(dir, step);
        safetensors::export_params(table, params, &path, ExportDtype::F32).map_err(|e| e.to_string())?;
    }
    let path = optim_file(dir, step, rank);
    safetensors::write(&path, optim, &BTreeMap::new()).map_err(|e| e.to_string())?;
    sync_dir(&path).map_err(|e| format!("cannot sync {}: {e}", dir.display()))?;
    if rank == 0 {
        let text = serde_json::to_vec_pretty(meta).map_err(|e| e.to_string())?;
        write_atomic(&meta_file(dir, step), &text)?;
    }
    Ok(())
}

/// Steps that have a complete checkpoint (their metadata file exists), ascending.
pub fn complete_steps(dir: &Path) -> Vec<usize> {
    let mut steps: Vec<usize> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_prefix("meta_")?.strip_suffix(".json")?.parse().ok()
        })
        .collect();
    steps.sort_unstable();
    steps
}

pub fn last_step(dir: &Path) -> Option<usize> {
    complete_steps(dir).last().copied()
}

/// Whether `dir` holds upstream's `model_<step>.pt` files.
fn has_upstream_pt(dir: &Path) -> bool {
    std::fs::read_dir(dir).into_iter().flatten().flatten().any(|e| {
        let n = e.file_name().to_string_lossy().to_string();
        n.starts_with("model_") && n.ends_with(".pt")
    })
}

/// A loaded checkpoint.
pub struct Loaded {
    pub meta: Meta,
    pub params: Vec<f32>,
    pub optim: Option<BTreeMap<String, Tensor>>,
}

/// Loads step `step` (the latest when None). The model configuration must equal `expect` when given; the
/// error says what differs.
pub fn load(dir: &Path, step: Option<usize>, rank: usize, expect: Option<&ModelConfig>) -> Result<Loaded, String> {
    let upstream_hint = has_upstream_pt(dir);
    if upstream_hint && !model_file(dir, step.or_else(|| last_step(dir)).unwrap_or(0)).exists() {
        return Err(format!(
            "{} holds upstream nanochat .pt checkpoints, which this project reads only after conversion: run \
             `import_checkpoint --from <that base dir>` (it writes this project's files under $NANOCHAT_BASE_DIR)",
            dir.display()
        ));
    }
    let step = match step.or_else(|| last_step(dir)) {
        Some(s) => s,
        None => {
            return Err(format!(
                "no checkpoint in {} (run train_gpt first, or check --model-tag)",
                dir.display()
            ))
        }
    };
    let mpath = meta_file(dir, step);
    let text = std::fs::read(&mpath).map_err(|e| {
        let have = complete_steps(dir);
        format!("{}: {e} (complete checkpoints here: {have:?})", mpath.display())
    })?;
    let meta: Meta = serde_json::from_slice(&text).map_err(|e| format!("{}: bad metadata: {e}", mpath.display()))?;
    if let Some(cfg) = expect {
        if &meta.model_config != cfg {
            return Err(format!(
                "checkpoint {} was made for model {:?}, this run builds {:?}: use a matching --depth/--model-tag or a new tag",
                mpath.display(),
                meta.model_config,
                cfg
            ));
        }
    }
    let table = ParamTable::new(&meta.model_config);
    let path = model_file(dir, step);
    let file = safetensors::read(&path).map_err(|e| e.to_string())?;
    let params = safetensors::import_params(&table, &file, &path).map_err(|e| e.to_string())?;
    let opath = optim_file(dir, step, rank);
    let optim = if opath.exists() {
        Some(safetensors::read(&opath).map_err(|e| e.to_string())?.tensors)
    } else {
        None
    };
    Ok(Loaded { meta, params, optim })
}

/// `<base>/<phase>_checkpoints/<tag>`.
pub fn checkpoint_dir(base: &Path, phase: &str, tag: &str) -> PathBuf {
    base.join(format!("{phase}_checkpoints")).join(tag)
}

/// Upstream's `find_largest_model`: the tag `d<N>` with the largest N, else the most recently modified.
pub fn find_largest_model(phase_dir: &Path) -> Option<String> {
    let entries: Vec<(String, std::time::SystemTime)> = std::fs::read_dir(phase_dir)
        .ok()?
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| {
            let t = e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
            (e.file_name().to_string_lossy().to_string(), t)
        })
        .collect();
    let depth = |s: &str| -> Option<usize> {
        let digits: String = s
            .strip_prefix('d')?
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.parse().ok()
    };
    if let Some((name, _)) = entries
        .iter()
        .filter_map(|(n, _)| depth(n).map(|d| (n, d)))
        .max_by_key(|(_, d)| *d)
    {
        return Some(name.clone());
    }
    entries.into_iter().max_by_key(|(_, t)| *t).map(|(n, _)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ModelConfig {
        ModelConfig {
            sequence_len: 32,
            vocab_size: 50,
            n_layer: 2,
            n_head: 2,
            n_kv_head: 1,
            n_embd: 32,
            window_pattern: "L".into(),
        }
    }

    fn meta(step: usize) -> Meta {
        Meta {
            step,
            val_bpb: Some(1.5),
            model_config: cfg(),
            user_config: serde_json::json!({"depth": 2}),
            device_batch_size: 4,
            max_seq_len: 32,
            total_batch_size: 128,
            dataloader_state_dict: serde_json::json!({"doc": 7}),
            loop_state: LoopState {
                min_val_bpb: Some(1.5),
                smooth_train_loss: 3.0,
                smooth_since: 0,
                total_training_time: 2.0,
            },
        }
    }

    #[test]
    fn save_load_latest_and_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d2");
        let table = ParamTable::new(&cfg());
        let mut p = vec![0.0; table.numel];
        table.init(&mut p, 3);
        let mut opt = BTreeMap::new();
        opt.insert("step".to_string(), Tensor::from_i32(vec![1], &[5]));
        save(&dir, &meta(10), &table, &p, &opt, 0).unwrap();
        save(&dir, &meta(20), &table, &p, &opt, 0).unwrap();
        // A half-written later checkpoint (no metadata) is ignored.
        std::fs::write(dir.join("model_000030.safetensors"), b"partial").unwrap();
        std::fs::write(dir.join("meta_000040.json.tmp"), b"{").unwrap();
        assert_eq!(complete_steps(&dir), vec![10, 20]);
        let l = load(&dir, None, 0, Some(&cfg())).unwrap();
        assert_eq!(l.meta, meta(20));
        assert_eq!(l.params, p);
        assert_eq!(l.optim.unwrap()["step"].to_i64(), vec![5]);

        let mut other = cfg();
        other.n_layer = 3;
        let e = load(&dir, None, 0, Some(&other)).err().unwrap();
        assert!(e.contains("was made for model"), "{e}");
        let e = load(&dir, Some(15), 0, None).err().unwrap();
        assert!(e.contains("[10, 20]"), "{e}");
        let e = load(&tmp.path().join("nothing"), None, 0, None).err().unwrap();
        assert!(e.contains("no checkpoint"), "{e}");
    }

    #[test]
    fn upstream_pt_files_point_to_import_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("model_000005.pt"), b"PK").unwrap();
        std::fs::write(tmp.path().join("meta_000005.json"), b"{}").unwrap();
        let e = load(tmp.path(), None, 0, None).err().unwrap();
        assert!(e.contains("import_checkpoint"), "{e}");
    }

    #[test]
    fn largest_model_by_depth() {
        let tmp = tempfile::tempdir().unwrap();
        for d in ["d4", "d12", "custom"] {
            std::fs::create_dir(tmp.path().join(d)).unwrap();
        }
        assert_eq!(find_largest_model(tmp.path()).as_deref(), Some("d12"));
    }
}
