//! Upstream nanochat's files: `tokenizer/tokenizer.pkl` (pickled tiktoken Encoding), `tokenizer/token_bytes.pt`,
//! and `<phase>_checkpoints/<tag>/model_<step>.pt` / `meta_<step>.json` / `optim_<step>_rank<r>.pt`, read with a
//! data-only pickle reader (never executing anything) and converted to and from this project's files.

pub mod convert;
pub mod pickle;
pub mod torch_zip;

use crate::config::ModelConfig;
use crate::params::ParamTable;
use crate::safetensors::{Dtype, Tensor};
use crate::tokenizer::Tokenizer;
use pickle::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// Reads upstream's `tokenizer.pkl`: the mergeable ranks must be exactly 0..n, the special tokens n..n+k, and
/// the split pattern one this project's tokenizer implements.
pub fn read_tokenizer_pkl(path: &Path) -> Result<Tokenizer, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let at = |e: String| format!("{}: {e}", path.display());
    let v = pickle::parse(&bytes).map_err(at)?;
    let Value::Encoding(_) = v else {
        return Err(at("the pickle is not a tiktoken Encoding".into()));
    };
    let pat = v
        .get("pat_str")
        .and_then(Value::as_str)
        .ok_or_else(|| at("Encoding has no pat_str".into()))?;
    let ranks = v
        .get("mergeable_ranks")
        .and_then(Value::as_dict)
        .ok_or_else(|| at("Encoding has no mergeable_ranks".into()))?;
    let mut tokens: Vec<Option<Vec<u8>>> = vec![None; ranks.len()];
    for (k, r) in ranks {
        let (Value::Bytes(b), Some(r)) = (k, r.as_int()) else {
            return Err(at("mergeable_ranks must map bytes to int".into()));
        };
        let slot = usize::try_from(r)
            .ok()
            .and_then(|r| tokens.get_mut(r))
            .ok_or_else(|| at(format!("rank {r} is outside 0..{}", ranks.len())))?;
        if slot.replace(b.clone()).is_some() {
            return Err(at(format!("rank {r} appears twice")));
        }
    }
    let tokens: Vec<Vec<u8>> = tokens.into_iter().map(|t| t.expect("ranks 0..n all set")).collect();
    let n = tokens.len();
    let specials = v
        .get("special_tokens")
        .and_then(Value::as_dict)
        .ok_or_else(|| at("Encoding has no special_tokens".into()))?;
    let mut named: Vec<(i64, String)> = Vec::new();
    for (k, id) in specials {
        let (Some(k), Some(id)) = (k.as_str(), id.as_int()) else {
            return Err(at("special_tokens must map str to int".into()));
        };
        named.push((id, k.to_string()));
    }
    named.sort();
    for (i, (id, name)) in named.iter().enumerate() {
        if *id != (n + i) as i64 {
            return Err(at(format!(
                "special token {name:?} has id {id}; this project puts special tokens right after the {n} \
                 mergeable tokens (expected {})",
                n + i
            )));
        }
    }
    let names = named.into_iter().map(|(_, s)| s).collect();
    Tokenizer::from_parts(tokens, pat, names)
        .map_err(|e| at(format!("cannot use this tokenizer: {e} (its split pattern is {pat:?})")))
}

/// Writes a tokenizer as upstream's `tokenizer.pkl` (what `pickle.dump(tiktoken.Encoding)` writes: NEWOBJ of
/// `tiktoken.core.Encoding`, then BUILD with its state dict).
pub fn write_tokenizer_pkl(tok: &Tokenizer, path: &Path) -> Result<(), String> {
    let mut p: Vec<u8> = vec![0x80, 3];
    p.extend_from_slice(b"ctiktoken.core\nEncoding\n)\x81}(");
    let s = |p: &mut Vec<u8>, s: &str| {
        p.push(b'X');
        p.extend_from_slice(&(s.len() as u32).to_le_bytes());
        p.extend_from_slice(s.as_bytes());
    };
    let int = |p: &mut Vec<u8>, v: usize| {
        p.push(b'J');
        p.extend_from_slice(&(v as i32).to_le_bytes());
    };
    s(&mut p, "name");
    s(&mut p, "rustbpe");
    s(&mut p, "pat_str");
    s(&mut p, tok.pattern());
    s(&mut p, "mergeable_ranks");
    p.extend_from_slice(b"}(");
    let n = tok.mergeable_tokens().len();
    for (i, t) in tok.mergeable_tokens().iter().enumerate() {
        p.push(b'B');
        p.extend_from_slice(&(t.len() as u32).to_le_bytes());
        p.extend_from_slice(t);
        int(&mut p, i);
    }
    p.push(b'u');
    s(&mut p, "special_tokens");
    p.extend_from_slice(b"}(");
    for (i, name) in tok.specials().iter().enumerate() {
        s(&mut p, name);
        int(&mut p, n + i);
    }
    p.extend_from_slice(b"uub.");
    crate::checkpoint::write_atomic(path, &p)
}

/// Reads an upstream model file into a parameter buffer for `cfg`. `_orig_mod.` prefixes are stripped; missing
/// `resid_lambdas` / `x0_lambdas` (older checkpoints) are patched to ones / zeros as upstream's loader does.
pub fn read_model_pt(path: &Path, cfg: &ModelConfig) -> Result<(Vec<f32>, BTreeMap<String, Dtype>), String> {
    let mut f = torch_zip::TorchFile::open(path)?;
    let mut tensors: BTreeMap<String, Tensor> = f
        .state_dict()?
        .into_iter()
        .map(|(k, v)| (k.strip_prefix("_orig_mod.").unwrap_or(&k).to_string(), v))
        .collect();
    let l = cfg.n_layer;
    tensors
        .entry("resid_lambdas".into())
        .or_insert_with(|| Tensor::from_f32(vec![l], &vec![1.0; l]));
    tensors
        .entry("x0_lambdas".into())
        .or_insert_with(|| Tensor::from_f32(vec![l], &vec![0.0; l]));
    let dtypes = tensors.iter().map(|(k, t)| (k.clone(), t.dtype)).collect();
    let table = ParamTable::new(cfg);
    let file = crate::safetensors::File {
        tensors,
        metadata: BTreeMap::new(),
    };
    let params = crate::safetensors::import_params(&table, &file, path).map_err(|e| e.to_string())?;
    Ok((params, dtypes))
}

/// Writes a parameter buffer as upstream's model file: every parameter under its upstream name, in upstream
/// module order, embeddings (wte, value embeds) in bf16 as upstream stores them, the rest fp32.
pub fn write_model_pt(path: &Path, table: &ParamTable, params: &[f32]) -> Result<(), String> {
    use crate::params::StoreDtype;
    let tensors: Vec<(String, Tensor)> = table
        .params
        .iter()
        .map(|p| {
            let v = &params[p.range.clone()];
            let t = if table.slot(p.slot).dtype == StoreDtype::Compute {
                Tensor::from_bf16(p.shape.clone(), v)
            } else {
                Tensor::from_f32(p.shape.clone(), v)
            };
            (p.name.clone(), t)
        })
        .collect();
    torch_zip::write_state_dict(path, &archive_name(path), &tensors)
}

/// torch.save names the archive's folder after the file stem.
pub fn archive_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "archive".into())
}
