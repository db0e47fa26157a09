//! safetensors reading and writing (the format: u64 little-endian header length, a JSON header mapping names to
//! `{dtype, shape, data_offsets}`, then the raw little-endian data), plus import/export of the whole model under
//! upstream parameter names, so checkpoints move between this project and upstream nanochat.

use crate::params::{ParamTable, StoreDtype};
use half::bf16;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
    I64,
    I32,
    U8,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I64 => 8,
            Dtype::U8 => 1,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I64 => "I64",
            Dtype::I32 => "I32",
            Dtype::U8 => "U8",
        }
    }
    fn parse(s: &str) -> Option<Dtype> {
        Some(match s {
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "I64" => Dtype::I64,
            "I32" => Dtype::I32,
            "U8" => Dtype::U8,
            _ => return None,
        })
    }
}

#[derive(Debug)]
pub struct Error {
    pub path: PathBuf,
    pub msg: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.msg)
    }
}

impl std::error::Error for Error {}

fn err<T>(path: &Path, msg: impl Into<String>) -> Result<T, Error> {
    Err(Error {
        path: path.to_path_buf(),
        msg: msg.into(),
    })
}

/// One tensor: dtype, shape and its little-endian bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl Tensor {
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), values.len());
        Tensor {
            dtype: Dtype::F32,
            shape,
            data: bytemuck::cast_slice(values).to_vec(),
        }
    }
    pub fn from_bf16(shape: Vec<usize>, values: &[f32]) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), values.len());
        let data = values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect();
        Tensor {
            dtype: Dtype::BF16,
            shape,
            data,
        }
    }
    pub fn from_i32(shape: Vec<usize>, values: &[i32]) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), values.len());
        Tensor {
            dtype: Dtype::I32,
            shape,
            data: bytemuck::cast_slice(values).to_vec(),
        }
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Values as f32 (floats widened; integers converted).
    pub fn to_f32(&self) -> Vec<f32> {
        let d = &self.data;
        match self.dtype {
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::BF16 => d
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F16 => d
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            _ => self.to_i64().into_iter().map(|v| v as f32).collect(),
        }
    }
    /// Integer values as i64 (floats truncated).
    pub fn to_i64(&self) -> Vec<i64> {
        let d = &self.data;
        match self.dtype {
            Dtype::I64 => d
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                .collect(),
            Dtype::I32 => d
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                .collect(),
            Dtype::U8 => d.iter().map(|&b| b as i64).collect(),
            _ => self.to_f32().into_iter().map(|v| v as i64).collect(),
        }
    }
}

/// A parsed file: tensors by name plus the optional `__metadata__` string map.
#[derive(Clone, Debug, Default)]
pub struct File {
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: BTreeMap<String, String>,
}

impl File {
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }
}

pub fn read(path: &Path) -> Result<File, Error> {
    let bytes = std::fs::read(path).or_else(|e| err(path, format!("cannot read: {e}")))?;
    parse(path, &bytes)
}

fn parse(path: &Path, bytes: &[u8]) -> Result<File, Error> {
    if bytes.len() < 8 {
        return err(path, "too short to be a safetensors file");
    }
    let hlen = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8])) as usize;
    if hlen > bytes.len() - 8 || hlen > 100 << 20 {
        return err(
            path,
            format!("header length {hlen} exceeds the file size {}", bytes.len()),
        );
    }
    let header: Map<String, Value> = serde_json::from_slice(&bytes[8..8 + hlen])
        .or_else(|e| err(path, format!("header is not a JSON object: {e}")))?;
    let body = &bytes[8 + hlen..];
    let mut file = File::default();
    for (name, v) in header {
        if name == "__metadata__" {
            if let Some(m) = v.as_object() {
                for (k, v) in m {
                    file.metadata
                        .insert(k.clone(), v.as_str().unwrap_or_default().to_string());
                }
            }
            continue;
        }
        let bad = |m: &str| err(path, format!("tensor {name}: {m}"));
        let dtype = match v.get("dtype").and_then(Value::as_str).and_then(Dtype::parse) {
            Some(d) => d,
            None => return bad("missing or unsupported dtype"),
        };
        let shape: Option<Vec<usize>> = v
            .get("shape")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|x| x.as_u64()).map(|x| x as usize).collect());
        let offs: Option<Vec<usize>> = v
            .get("data_offsets")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|x| x.as_u64()).map(|x| x as usize).collect());
        let (Some(shape), Some(offs)) = (shape, offs) else {
            return bad("missing shape or data_offsets");
        };
        if offs.len() != 2 || offs[0] > offs[1] || offs[1] > body.len() {
            return bad(&format!(
                "data_offsets {offs:?} outside the data of {} bytes",
                body.len()
            ));
        }
        if shape.iter().product::<usize>() * dtype.size() != offs[1] - offs[0] {
            return bad(&format!(
                "shape {shape:?} of {} does not match {} data bytes",
                dtype.name(),
                offs[1] - offs[0]
            ));
        }
        file.tensors.insert(
            name,
            Tensor {
                dtype,
                shape,
                data: body[offs[0]..offs[1]].to_vec(),
            },
        );
    }
    Ok(file)
}

/// Writes atomically: a temporary file in the same directory, fsync, then rename.
pub fn write(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
) -> Result<(), Error> {
    let mut header = Map::new();
    if !metadata.is_empty() {
        let m: Map<String, Value> = metadata
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        header.insert("__metadata__".into(), Value::Object(m));
    }
    let mut offset = 0usize;
    for (name, t) in tensors {
        let mut e = Map::new();
        e.insert("dtype".into(), Value::String(t.dtype.name().into()));
        e.insert("shape".into(), Value::from(t.shape.clone()));
        e.insert("data_offsets".into(), Value::from(vec![offset, offset + t.data.len()]));
        offset += t.data.len();
        header.insert(name.clone(), Value::Object(e));
    }
    let mut hbytes = serde_json::to_vec(&Value::Object(header)).unwrap_or_default();
    while hbytes.len() % 8 != 0 {
        hbytes.push(b' ');
    }
    let write_all = || -> std::io::Result<()> {
        let tmp = tmp_path(path);
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        f.write_all(&(hbytes.len() as u64).to_le_bytes())?;
        f.write_all(&hbytes)?;
        for t in tensors.values() {
            f.write_all(&t.data)?;
        }
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write_all().or_else(|e| err(path, format!("cannot write: {e}")))
}

/// `name.tmp` beside `path`, for write-then-rename.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// How parameters are written: all fp32, or embeddings in bf16 as upstream stores them on GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportDtype {
    F32,
    UpstreamBf16,
}

/// Exports every parameter of the flat buffer under its upstream name.
pub fn export_params(table: &ParamTable, params: &[f32], path: &Path, dtype: ExportDtype) -> Result<(), Error> {
    let mut tensors = BTreeMap::new();
    for p in &table.params {
        let values = &params[p.range.clone()];
        let bf = dtype == ExportDtype::UpstreamBf16 && table.slot(p.slot).dtype == StoreDtype::Compute;
        let t = if bf {
            Tensor::from_bf16(p.shape.clone(), values)
        } else {
            Tensor::from_f32(p.shape.clone(), values)
        };
        tensors.insert(p.name.clone(), t);
    }
    let mut meta = BTreeMap::new();
    meta.insert("format".into(), "pt".into());
    write(path, &tensors, &meta)
}

/// Imports parameters by upstream name into a flat buffer; every parameter must be present with its exact shape.
/// Accepts upstream's `_orig_mod.` prefix (torch.compile) and any float dtype.
pub fn import_params(table: &ParamTable, file: &File, path: &Path) -> Result<Vec<f32>, Error> {
    let mut out = vec![0f32; table.numel];
    let mut lookup: BTreeMap<&str, &Tensor> = BTreeMap::new();
    for (name, t) in &file.tensors {
        lookup.insert(name.strip_prefix("_orig_mod.").unwrap_or(name), t);
    }
    for p in &table.params {
        let Some(t) = lookup.remove(p.name.as_str()) else {
            return err(
                path,
                format!("parameter {} is missing (expected shape {:?})", p.name, p.shape),
            );
        };
        if t.shape != p.shape {
            return err(
                path,
                format!(
                    "parameter {} has shape {:?}, the model expects {:?}",
                    p.name, t.shape, p.shape
                ),
            );
        }
        if !matches!(t.dtype, Dtype::F32 | Dtype::BF16 | Dtype::F16) {
            return err(path, format!("parameter {} has non-float dtype {:?}", p.name, t.dtype));
        }
        out[p.range.clone()].copy_from_slice(&t.to_f32());
    }
    if let Some(extra) = lookup.keys().next() {
        return err(
            path,
            format!("unexpected tensor {extra} (not a parameter of this model configuration)"),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;

    #[test]
    fn roundtrip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ModelConfig {
            sequence_len: 64,
            vocab_size: 100,
            n_layer: 3,
            n_head: 2,
            n_kv_head: 1,
            n_embd: 64,
            window_pattern: "SL".into(),
        };
        let table = ParamTable::new(&cfg);
        let mut p = vec![0.0; table.numel];
        table.init(&mut p, 1);
        let path = dir.path().join("m.safetensors");
        export_params(&table, &p, &path, ExportDtype::F32).unwrap();
        let back = import_params(&table, &read(&path).unwrap(), &path).unwrap();
        assert_eq!(p, back);

        export_params(&table, &p, &path, ExportDtype::UpstreamBf16).unwrap();
        let f = read(&path).unwrap();
        assert_eq!(f.get("transformer.wte.weight").unwrap().dtype, Dtype::BF16);
        assert_eq!(f.get("lm_head.weight").unwrap().dtype, Dtype::F32);
        let back = import_params(&table, &f, &path).unwrap();
        let wte = table.range(crate::params::Slot::Wte, 0);
        assert!(p[wte.clone()]
            .iter()
            .zip(&back[wte])
            .all(|(a, b)| (a - b).abs() <= a.abs() / 128.0));

        // A model of another shape is rejected naming the tensor.
        let mut other = cfg.clone();
        other.n_kv_head = 2;
        let e = import_params(&ParamTable::new(&other), &f, &path).unwrap_err();
        assert!(e.msg.contains("c_k.weight"), "{e}");

        // Truncated and garbage files are errors, not panics.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(read(&path).unwrap_err().msg.contains("data_offsets"));
        std::fs::write(&path, b"\xff\xff\xff\xff\xff\xff\xff\x7fxx").unwrap();
        assert!(read(&path).is_err());
    }
}
