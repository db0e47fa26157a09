//! `import_checkpoint` and `export_checkpoint`: one upstream checkpoint (tokenizer, model, metadata, optimizer
//! shards) to this project's files and back.

use super::pickle::Value;
use super::torch_zip::TorchFile;
use crate::checkpoint::{self, LoopState, Meta};
use crate::config::ModelConfig;
use crate::params::ParamTable;
use crate::safetensors::{Dtype, Tensor};
use crate::tokenizer::{self, Tokenizer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `base|sft|rl` → the phase directory, as upstream's `load_model(source)`.
pub fn phase_dir(source: &str) -> Result<&'static str, String> {
    match source {
        "base" => Ok("base_checkpoints"),
        "sft" => Ok("chatsft_checkpoints"),
        "rl" => Ok("chatrl_checkpoints"),
        other => Err(format!("unknown source {other:?}: choose base, sft or rl")),
    }
}

/// Upstream's `find_last_step`: the largest step with a `model_<step>.pt`.
pub fn last_pt_step(dir: &Path) -> Option<usize> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.strip_prefix("model_")?.strip_suffix(".pt")?.parse().ok()
        })
        .max()
}

/// What one import did.
#[derive(Debug)]
pub struct Imported {
    pub dir: PathBuf,
    pub tag: String,
    pub step: usize,
    pub config: ModelConfig,
    /// Stored dtype of each upstream tensor.
    pub dtypes: BTreeMap<String, Dtype>,
    pub optimizer_ranks: usize,
}

/// Converts the tokenizer of upstream base dir `from` into `<to>/tokenizer/`.
pub fn import_tokenizer(from: &Path, to: &Path) -> Result<Tokenizer, String> {
    let pkl = from.join("tokenizer").join("tokenizer.pkl");
    let tok = super::read_tokenizer_pkl(&pkl)?;
    let dir = to.join("tokenizer");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    tok.save(&dir.join(tokenizer::TOKENIZER_FILE))
        .map_err(|e| e.to_string())?;
    tokenizer::files::save_token_bytes(&tok, &dir.join(tokenizer::TOKEN_BYTES_FILE)).map_err(|e| e.to_string())?;
    Ok(tok)
}

fn json_usize(v: &serde_json::Value, key: &str) -> Option<usize> {
    v.get(key)?.as_u64().map(|x| x as usize)
}

/// Our metadata from upstream's (base, SFT or RL: fields a phase lacks get neutral values).
fn meta_from_upstream(v: &serde_json::Value, step: usize, path: &Path) -> Result<Meta, String> {
    let mut cfg = v
        .get("model_config")
        .cloned()
        .ok_or_else(|| format!("{}: no model_config", path.display()))?;
    // Old checkpoints have no window_pattern: upstream patches it to "L".
    if let Some(o) = cfg.as_object_mut() {
        o.entry("window_pattern").or_insert("L".into());
    }
    let model_config: ModelConfig =
        serde_json::from_value(cfg).map_err(|e| format!("{}: bad model_config: {e}", path.display()))?;
    let ls = v.get("loop_state").cloned().unwrap_or_default();
    let f = |k: &str| ls.get(k).and_then(serde_json::Value::as_f64);
    let max_seq_len = json_usize(v, "max_seq_len").unwrap_or(model_config.sequence_len);
    let device_batch_size = json_usize(v, "device_batch_size").unwrap_or(1);
    // Upstream's loader position ({pq_idx, rg_idx, epoch}) counts parquet row groups; ours counts documents of
    // tokenized shards. The closest equivalent is the start of the same shard in the same epoch.
    let up = v.get("dataloader_state_dict");
    let epoch = up.and_then(|d| d.get("epoch")).and_then(|e| e.as_u64()).unwrap_or(1);
    let shard = up.and_then(|d| json_usize(d, "pq_idx")).unwrap_or(0);
    let loader = serde_json::json!({
        "rank": 0, "world_size": 1,
        "pos": {"epoch": epoch.max(1), "shard": shard, "doc": 0},
        "buffer": [],
    });
    Ok(Meta {
        step,
        val_bpb: v.get("val_bpb").and_then(serde_json::Value::as_f64),
        user_config: v.get("user_config").cloned().unwrap_or_default(),
        device_batch_size,
        max_seq_len,
        total_batch_size: json_usize(v, "total_batch_size").unwrap_or(device_batch_size * max_seq_len),
        dataloader_state_dict: loader,
        loop_state: LoopState {
            min_val_bpb: f("min_val_bpb"),
            smooth_train_loss: f("smooth_train_loss").unwrap_or(0.0),
            total_training_time: f("total_training_time").unwrap_or(0.0),
            smooth_since: if f("smooth_train_loss").is_some() { 0 } else { step },
        },
        model_config,
    })
}

/// Imports checkpoint `step` (the latest when None) of `source`/`tag` (the largest model when None) from
/// upstream base dir `from` into base dir `to`, tokenizer included.
pub fn import(
    from: &Path,
    to: &Path,
    source: &str,
    tag: Option<&str>,
    step: Option<usize>,
) -> Result<Imported, String> {
    let phase = phase_dir(source)?;
    let src_phase = from.join(phase);
    let tag = match tag {
        Some(t) => t.to_string(),
        None => checkpoint::find_largest_model(&src_phase)
            .ok_or_else(|| format!("no checkpoints in {}", src_phase.display()))?,
    };
    let src = src_phase.join(&tag);
    let step = step
        .or_else(|| last_pt_step(&src))
        .ok_or_else(|| format!("no model_<step>.pt in {}", src.display()))?;
    let tok = import_tokenizer(from, to)?;
    let meta_path = src.join(format!("meta_{step:06}.json"));
    let text = std::fs::read(&meta_path).map_err(|e| format!("cannot read {}: {e}", meta_path.display()))?;
    let upstream_meta: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| format!("{}: bad JSON: {e}", meta_path.display()))?;
    let meta = meta_from_upstream(&upstream_meta, step, &meta_path)?;
    let cfg = meta.model_config.clone();
    cfg.validate().map_err(|e| format!("{}: {e}", meta_path.display()))?;
    if tok.vocab_size() != cfg.vocab_size {
        return Err(format!(
            "the tokenizer has {} tokens but {} says vocab_size {}",
            tok.vocab_size(),
            meta_path.display(),
            cfg.vocab_size
        ));
    }
    let (params, dtypes) = super::read_model_pt(&src.join(format!("model_{step:06}.pt")), &cfg)?;
    let table = ParamTable::new(&cfg);
    let optim = import_optimizer(&src, step, &table)?;
    let ranks = optim.as_ref().map_or(0, |(_, r)| *r);
    let dir = to.join(phase).join(&tag);
    let state = optim.map(|(s, _)| s).unwrap_or_default();
    checkpoint::save(&dir, &meta, &table, &params, &state, 0)?;
    if ranks == 0 {
        // `save` wrote an empty optimizer file; a resume should say there is no state rather than fail oddly.
        let _ = std::fs::remove_file(dir.join(format!("optim_{step:06}_rank0.safetensors")));
    }
    Ok(Imported {
        dir,
        tag,
        step,
        config: cfg,
        dtypes,
        optimizer_ranks: ranks,
    })
}

/// Upstream's parameter indices: the order of `setup_optimizer`'s groups (lm_head, wte, value embeds, resid,
/// x0, smear/backout scalars, then one Muon group per distinct `transformer.h` shape, ascending), returned as
/// groups of upstream names.
pub fn upstream_groups(table: &ParamTable) -> Vec<Vec<String>> {
    let names = |f: &dyn Fn(&str) -> bool| -> Vec<String> {
        table
            .params
            .iter()
            .filter(|p| f(&p.name))
            .map(|p| p.name.clone())
            .collect()
    };
    let mut groups = vec![
        vec!["lm_head.weight".to_string()],
        vec!["transformer.wte.weight".to_string()],
        names(&|n| n.starts_with("value_embeds.")),
        vec!["resid_lambdas".to_string()],
        vec!["x0_lambdas".to_string()],
        vec![
            "smear_gate.weight".to_string(),
            "smear_lambda".to_string(),
            "backout_lambda".to_string(),
        ],
    ];
    let h: Vec<_> = table
        .params
        .iter()
        .filter(|p| p.name.starts_with("transformer.h."))
        .collect();
    let mut shapes: Vec<Vec<usize>> = h.iter().map(|p| p.shape.clone()).collect();
    shapes.sort();
    shapes.dedup();
    for s in shapes {
        groups.push(h.iter().filter(|p| p.shape == s).map(|p| p.name.clone()).collect());
    }
    groups
}

/// Optimizer state tensors by our names, and how many rank files they came from.
type MergedState = (BTreeMap<String, Tensor>, usize);

/// Reads every `optim_<step>_rank<r>.pt` (ZeRO-2 shards: large AdamW tensors split by rows, Muon groups split by
/// parameter chunks) into our single optimizer state. None when the checkpoint has no optimizer files.
fn import_optimizer(dir: &Path, step: usize, table: &ParamTable) -> Result<Option<MergedState>, String> {
    let path = |r: usize| dir.join(format!("optim_{step:06}_rank{r}.pt"));
    let world = (0..).take_while(|&r| path(r).exists()).count();
    if world == 0 {
        return Ok(None);
    }
    let groups = upstream_groups(table);
    let shape = |n: &str| table.by_name(n).expect("name from the table").shape.clone();
    // Full-size fp32 buffers per state name, filled rank by rank.
    let mut out: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let mut steps = None;
    for r in 0..world {
        let p = path(r);
        let mut f = TorchFile::open(&p)?;
        let root = f.root.clone();
        let pe = |m: String| format!("{}: {m}", p.display());
        let pg = root
            .get("param_groups")
            .and_then(|g| match g {
                Value::List(l) => Some(l.clone()),
                _ => None,
            })
            .ok_or_else(|| pe("no param_groups list".into()))?;
        if pg.len() != groups.len() {
            return Err(pe(format!(
                "{} parameter groups, this model configuration has {}",
                pg.len(),
                groups.len()
            )));
        }
        let state = root.get("state").ok_or_else(|| pe("no state".into()))?;
        let by_idx = |i: i64| {
            state
                .as_dict()
                .and_then(|d| d.iter().find(|(k, _)| k.as_int() == Some(i)))
                .map(|(_, v)| v.clone())
        };
        for (g, names) in pg.iter().zip(&groups) {
            let ids: Vec<i64> = match g.get("params") {
                Some(Value::List(l)) => l.iter().filter_map(Value::as_int).collect(),
                _ => return Err(pe("a parameter group has no params list".into())),
            };
            if ids.len() != names.len() {
                return Err(pe(format!(
                    "a parameter group has {} parameters, expected {} ({})",
                    ids.len(),
                    names.len(),
                    names.join(", ")
                )));
            }
            let muon = g.get("kind").and_then(Value::as_str) == Some("muon");
            if muon {
                let Some(st) = by_idx(ids[0]) else { continue };
                let k = names.len();
                let chunk = k.div_ceil(world);
                let (m, n) = {
                    let s = shape(&names[0]);
                    (s[0], s[1])
                };
                for (buf, per, short) in [
                    ("momentum_buffer", m * n, vec![m, n]),
                    (
                        "second_momentum_buffer",
                        if m >= n { m } else { n },
                        if m >= n { vec![m, 1] } else { vec![1, n] },
                    ),
                ] {
                    let Some(Value::Tensor(t)) = st.get(buf) else {
                        return Err(pe(format!("Muon state of {} has no {buf}", names[0])));
                    };
                    let t = f.tensor(t, buf)?;
                    let vals = t.to_f32();
                    let mut want = vec![chunk];
                    want.extend(&short);
                    if t.shape != want {
                        return Err(pe(format!(
                            "{buf} of the Muon group of {} has shape {:?}, expected {want:?}",
                            names[0], t.shape
                        )));
                    }
                    for j in 0..chunk {
                        let idx = r * chunk + j;
                        if idx < k {
                            out.insert(format!("{buf}.{}", names[idx]), vals[j * per..(j + 1) * per].to_vec());
                        }
                    }
                }
            } else {
                for (id, name) in ids.iter().zip(names) {
                    let Some(st) = by_idx(*id) else { continue };
                    if let Some(s) = st.get("step") {
                        let v = match s {
                            Value::Tensor(t) => f.tensor(t, "step")?.to_f32().first().map(|x| *x as i64),
                            other => other.as_int().or(match other {
                                Value::Float(x) => Some(*x as i64),
                                _ => None,
                            }),
                        };
                        steps = steps.or(v);
                    }
                    let full = shape(name);
                    let numel: usize = full.iter().product();
                    for buf in ["exp_avg", "exp_avg_sq"] {
                        let Some(Value::Tensor(t)) = st.get(buf) else {
                            return Err(pe(format!("AdamW state of {name} has no {buf}")));
                        };
                        let t = f.tensor(t, buf)?;
                        let vals = t.to_f32();
                        let dst = out.entry(format!("{buf}.{name}")).or_insert_with(|| vec![0.0; numel]);
                        if t.shape == full {
                            dst.copy_from_slice(&vals);
                        } else if t.shape.len() == full.len()
                            && t.shape[1..] == full[1..]
                            && t.shape[0] * world == full[0]
                        {
                            // A ZeRO-2 row slice: rank r owns rows [r·S0/W, (r+1)·S0/W).
                            let at = r * vals.len();
                            dst[at..at + vals.len()].copy_from_slice(&vals);
                        } else {
                            return Err(pe(format!(
                                "{buf} of {name} has shape {:?}; expected {full:?} or a 1/{world} row slice",
                                t.shape
                            )));
                        }
                    }
                }
            }
        }
    }
    let mut tensors = BTreeMap::new();
    for (name, vals) in out {
        let (kind, pname) = name.split_once('.').expect("kind.name");
        let s = shape(pname);
        let shape = if kind == "second_momentum_buffer" {
            if s[0] >= s[1] {
                vec![s[0], 1]
            } else {
                vec![1, s[1]]
            }
        } else {
            s
        };
        tensors.insert(name, Tensor::from_f32(shape, &vals));
    }
    let step_v = steps.unwrap_or(0);
    tensors.insert(
        "step".to_string(),
        Tensor {
            dtype: Dtype::I64,
            shape: vec![1],
            data: step_v.to_le_bytes().to_vec(),
        },
    );
    Ok(Some((tensors, world)))
}

/// Exports checkpoint `step` (the latest when None) of `source`/`tag` from base dir `from` to an upstream base
/// dir `to`: `tokenizer/tokenizer.pkl`, `tokenizer/token_bytes.pt`, `<phase>/<tag>/model_<step>.pt` and
/// `meta_<step>.json`. Returns the directory and step written.
pub fn export(
    from: &Path,
    to: &Path,
    source: &str,
    tag: Option<&str>,
    step: Option<usize>,
) -> Result<(PathBuf, usize), String> {
    let phase = phase_dir(source)?;
    let src_phase = from.join(phase);
    let tag = match tag {
        Some(t) => t.to_string(),
        None => checkpoint::find_largest_model(&src_phase)
            .ok_or_else(|| format!("no checkpoints in {}", src_phase.display()))?,
    };
    let l = checkpoint::load(&src_phase.join(&tag), step, 0, None)?;
    let tok = tokenizer::load_tokenizer(from)?;
    let tdir = to.join("tokenizer");
    std::fs::create_dir_all(&tdir).map_err(|e| format!("cannot create {}: {e}", tdir.display()))?;
    super::write_tokenizer_pkl(&tok, &tdir.join("tokenizer.pkl"))?;
    // Upstream's convention: the UTF-8 length of each token decoded with replacement (not its raw length).
    let mut tb: Vec<i32> = tok
        .mergeable_tokens()
        .iter()
        .map(|t| String::from_utf8_lossy(t).len() as i32)
        .collect();
    tb.resize(tok.vocab_size(), 0);
    super::torch_zip::write_tensor(
        &tdir.join("token_bytes.pt"),
        "token_bytes",
        &Tensor::from_i32(vec![tb.len()], &tb),
    )?;
    let dir = to.join(phase).join(&tag);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let s = l.meta.step;
    let table = ParamTable::new(&l.meta.model_config);
    super::write_model_pt(&dir.join(format!("model_{s:06}.pt")), &table, &l.params)?;
    // Upstream's own metadata keys; the loader position is ours and means nothing upstream.
    let mut meta = serde_json::to_value(&l.meta).map_err(|e| e.to_string())?;
    meta["dataloader_state_dict"] = serde_json::Value::Null;
    let text = serde_json::to_vec_pretty(&meta).map_err(|e| e.to_string())?;
    checkpoint::write_atomic(&dir.join(format!("meta_{s:06}.json")), &text)?;
    Ok((dir, s))
}
