//! `torch.save` files: a zip (entries stored, uncompressed) holding `<name>/data.pkl` (the pickled object, tensors
//! as `_rebuild_tensor_v2` of persistent-id storages), `<name>/data/<key>` (each storage's raw bytes),
//! `<name>/byteorder`, `<name>/version`, `<name>/.format_version` and `<name>/.storage_alignment`.

use super::pickle::{self, StorageKind, TensorRef, Value};
use crate::safetensors::{Dtype, Tensor};
use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};
use std::path::Path;

/// An opened torch.save file: the unpickled object and access to its storages.
pub struct TorchFile {
    pub root: Value,
    prefix: String,
    archive: zip::ZipArchive<Cursor<Vec<u8>>>,
    path: String,
}

fn dtype_of(kind: StorageKind) -> Dtype {
    match kind {
        StorageKind::F32 => Dtype::F32,
        StorageKind::BF16 => Dtype::BF16,
        StorageKind::F16 => Dtype::F16,
        StorageKind::I64 => Dtype::I64,
        StorageKind::I32 => Dtype::I32,
        StorageKind::U8 => Dtype::U8,
    }
}

fn kind_of(dtype: Dtype) -> StorageKind {
    match dtype {
        Dtype::F32 => StorageKind::F32,
        Dtype::BF16 => StorageKind::BF16,
        Dtype::F16 => StorageKind::F16,
        Dtype::I64 => StorageKind::I64,
        Dtype::I32 => StorageKind::I32,
        Dtype::U8 => StorageKind::U8,
    }
}

impl TorchFile {
    pub fn open(path: &Path) -> Result<TorchFile, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        TorchFile::from_bytes(bytes, &path.display().to_string())
    }

    pub fn from_bytes(bytes: Vec<u8>, path: &str) -> Result<TorchFile, String> {
        let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
            .map_err(|e| format!("{path}: not a torch.save zip (truncated or another format?): {e}"))?;
        let pkl = archive
            .file_names()
            .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
            .map(str::to_string)
            .ok_or_else(|| format!("{path}: no <name>/data.pkl entry: not a torch.save file"))?;
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        let read_entry = |archive: &mut zip::ZipArchive<Cursor<Vec<u8>>>, name: &str| {
            let mut f = archive
                .by_name(name)
                .map_err(|e| format!("{path}: entry {name}: {e}"))?;
            let mut out = Vec::new();
            f.read_to_end(&mut out)
                .map_err(|e| format!("{path}: entry {name}: {e}"))?;
            Ok::<_, String>(out)
        };
        let byteorder = format!("{prefix}byteorder");
        if archive.file_names().any(|n| n == byteorder) {
            let b = read_entry(&mut archive, &byteorder)?;
            if b != b"little" {
                return Err(format!(
                    "{path}: byteorder is {:?}; only little-endian files are read",
                    String::from_utf8_lossy(&b)
                ));
            }
        }
        let data = read_entry(&mut archive, &pkl)?;
        let root = pickle::parse(&data).map_err(|e| format!("{path}: {pkl}: {e}"))?;
        Ok(TorchFile {
            root,
            prefix,
            archive,
            path: path.to_string(),
        })
    }

    /// The tensor's values, contiguous, as a safetensors tensor; checks the storage holds every element.
    pub fn tensor(&mut self, t: &TensorRef, name: &str) -> Result<Tensor, String> {
        let entry = format!("{}data/{}", self.prefix, t.key);
        let mut f = self
            .archive
            .by_name(&entry)
            .map_err(|e| format!("{}: tensor {name}: storage {entry}: {e}", self.path))?;
        let mut raw = Vec::new();
        f.read_to_end(&mut raw)
            .map_err(|e| format!("{}: tensor {name}: storage {entry}: {e}", self.path))?;
        let es = t.kind.size();
        let have = raw.len() / es;
        let numel: usize = t.shape.iter().product();
        // Highest element index the view touches.
        let last = if numel == 0 {
            0
        } else {
            t.offset + t.shape.iter().zip(&t.stride).map(|(&n, &s)| (n - 1) * s).sum::<usize>() + 1
        };
        if numel > 0 && (last > have || last > t.storage_numel) {
            return Err(format!(
                "{}: tensor {name} (shape {:?}, stride {:?}, offset {}) needs {last} elements of its storage, \
                 which holds {have} (the pickle says {}): the file is truncated or corrupt",
                self.path, t.shape, t.stride, t.offset, t.storage_numel
            ));
        }
        let mut data = Vec::with_capacity(numel * es);
        let mut idx = vec![0usize; t.shape.len()];
        for _ in 0..numel {
            let e = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
            data.extend_from_slice(&raw[e * es..(e + 1) * es]);
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < t.shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        Ok(Tensor {
            dtype: dtype_of(t.kind),
            shape: t.shape.clone(),
            data,
        })
    }

    /// Every tensor of a flat state dict (name -> tensor), as upstream's model files hold.
    pub fn state_dict(&mut self) -> Result<BTreeMap<String, Tensor>, String> {
        let Some(items) = self.root.as_dict().map(<[_]>::to_vec) else {
            return Err(format!("{}: the pickled object is not a dict", self.path));
        };
        let mut out = BTreeMap::new();
        for (k, v) in items {
            let Some(name) = k.as_str() else {
                return Err(format!("{}: a state dict key is not a string", self.path));
            };
            let Value::Tensor(t) = &v else {
                return Err(format!("{}: entry {name} is not a tensor", self.path));
            };
            out.insert(name.to_string(), self.tensor(t, name)?);
        }
        Ok(out)
    }
}

/// A pickle writer for exactly what `write_state_dict` needs (protocol 2, no memo).
struct PickleOut(Vec<u8>);

impl PickleOut {
    fn global(&mut self, module: &str, name: &str) {
        self.0.push(b'c');
        self.0.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }
    fn str(&mut self, s: &str) {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn int(&mut self, v: usize) {
        if v < (1 << 31) {
            self.0.push(b'J');
            self.0.extend_from_slice(&(v as i32).to_le_bytes());
        } else {
            self.0.extend_from_slice(&[0x8a, 8]);
            self.0.extend_from_slice(&(v as i64).to_le_bytes());
        }
    }
    fn tuple_of(&mut self, vals: &[usize]) {
        self.0.push(b'(');
        for &v in vals {
            self.int(v);
        }
        self.0.push(b't');
    }
}

/// Writes `tensors` (in the given order) as `torch.save(OrderedDict)` would: loadable with
/// `torch.load(path, weights_only=True)`. `name` is the archive's top folder (torch uses the file stem).
pub fn write_state_dict(path: &Path, name: &str, tensors: &[(String, Tensor)]) -> Result<(), String> {
    write(path, name, tensors, true)
}

/// Writes one tensor as `torch.save(tensor)` would (upstream's `token_bytes.pt`).
pub fn write_tensor(path: &Path, name: &str, t: &Tensor) -> Result<(), String> {
    write(path, name, &[(String::new(), t.clone())], false)
}

fn write(path: &Path, name: &str, tensors: &[(String, Tensor)], dict: bool) -> Result<(), String> {
    let mut p = PickleOut(vec![0x80, 2]);
    if dict {
        p.global("collections", "OrderedDict");
        p.0.extend_from_slice(b")R(");
    }
    for (key, (tname, t)) in tensors.iter().enumerate() {
        let kind = kind_of(t.dtype);
        if dict {
            p.str(tname);
        }
        p.global("torch._utils", "_rebuild_tensor_v2");
        p.0.extend_from_slice(b"((");
        p.str("storage");
        p.global("torch", kind.class());
        p.str(&key.to_string());
        p.str("cpu");
        p.int(t.numel());
        p.0.extend_from_slice(b"tQ");
        p.int(0);
        p.tuple_of(&t.shape);
        let mut stride = vec![1usize; t.shape.len()];
        for d in (0..t.shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * t.shape[d + 1];
        }
        p.tuple_of(&stride);
        p.0.push(0x89); // requires_grad = False
        p.global("collections", "OrderedDict");
        p.0.extend_from_slice(b")Rt"); // backward hooks, end of the argument tuple
        p.0.push(b'R');
    }
    p.0.extend_from_slice(if dict { b"u." } else { b"." });

    let buf = Cursor::new(Vec::new());
    let mut zw = zip::ZipWriter::new(buf);
    let big = tensors.iter().any(|(_, t)| t.data.len() as u64 >= u32::MAX as u64);
    // torch aligns storages to 64 bytes so they can be memory-mapped; stored, never compressed.
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(big)
        .with_alignment(64);
    let zerr = |e: zip::result::ZipError| format!("cannot write {}: {e}", path.display());
    let ierr = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let put = |zw: &mut zip::ZipWriter<Cursor<Vec<u8>>>, entry: &str, bytes: &[u8]| {
        zw.start_file(format!("{name}/{entry}"), opts).map_err(zerr)?;
        zw.write_all(bytes).map_err(ierr)
    };
    put(&mut zw, "data.pkl", &p.0)?;
    put(&mut zw, ".format_version", b"1")?;
    put(&mut zw, ".storage_alignment", b"64")?;
    put(&mut zw, "byteorder", b"little")?;
    for (key, (_, t)) in tensors.iter().enumerate() {
        put(&mut zw, &format!("data/{key}"), &t.data)?;
    }
    put(&mut zw, "version", b"3\n")?;
    let bytes = zw.finish().map_err(zerr)?.into_inner();
    crate::checkpoint::write_atomic(path, &bytes)
}

impl PickleOut {
    fn value(&mut self, v: &Value) -> Result<(), String> {
        match v {
            Value::None => self.0.push(b'N'),
            Value::Bool(b) => self.0.push(if *b { 0x88 } else { 0x89 }),
            Value::Int(i) => {
                if (i32::MIN as i64..=i32::MAX as i64).contains(i) {
                    self.0.push(b'J');
                    self.0.extend_from_slice(&(*i as i32).to_le_bytes());
                } else {
                    self.0.extend_from_slice(&[0x8a, 8]);
                    self.0.extend_from_slice(&i.to_le_bytes());
                }
            }
            Value::Float(f) => {
                self.0.push(b'G');
                self.0.extend_from_slice(&f.to_be_bytes());
            }
            Value::Str(s) => self.str(s),
            Value::Tuple(items) | Value::List(items) => {
                let list = matches!(v, Value::List(_));
                self.0.push(if list { b']' } else { b'(' });
                if list {
                    self.0.push(b'(');
                }
                for x in items {
                    self.value(x)?;
                }
                self.0.push(if list { b'e' } else { b't' });
            }
            Value::Dict(items) => {
                self.0.extend_from_slice(b"}(");
                for (k, x) in items {
                    self.value(k)?;
                    self.value(x)?;
                }
                self.0.push(b'u');
            }
            Value::Tensor(t) => {
                self.global("torch._utils", "_rebuild_tensor_v2");
                self.0.extend_from_slice(b"((");
                self.str("storage");
                self.global("torch", t.kind.class());
                self.str(&t.key);
                self.str("cpu");
                self.int(t.storage_numel);
                self.0.extend_from_slice(b"tQ");
                self.int(t.offset);
                self.tuple_of(&t.shape);
                self.tuple_of(&t.stride);
                self.0.push(0x89);
                self.global("collections", "OrderedDict");
                self.0.extend_from_slice(b")RtR");
            }
            other => return Err(format!("cannot write a {other:?} into a torch file")),
        }
        Ok(())
    }
}

/// Writes `torch.save(root)` for a tree of plain values whose tensors refer to `storages` by key (the index as a
/// string): used for optimizer state dicts (`{'state': {...}, 'param_groups': [...]}`).
pub fn write_value(path: &Path, name: &str, root: &Value, storages: &[Tensor]) -> Result<(), String> {
    let mut p = PickleOut(vec![0x80, 2]);
    p.value(root)?;
    p.0.push(b'.');
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(storages.iter().any(|t| t.data.len() as u64 >= u32::MAX as u64))
        .with_alignment(64);
    let zerr = |e: zip::result::ZipError| format!("cannot write {}: {e}", path.display());
    let ierr = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut zw = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let mut entries: Vec<(String, &[u8])> = vec![
        ("data.pkl".into(), &p.0),
        (".format_version".into(), b"1"),
        (".storage_alignment".into(), b"64"),
        ("byteorder".into(), b"little"),
    ];
    for (k, t) in storages.iter().enumerate() {
        entries.push((format!("data/{k}"), &t.data));
    }
    entries.push(("version".into(), b"3\n"));
    for (entry, bytes) in entries {
        zw.start_file(format!("{name}/{entry}"), opts).map_err(zerr)?;
        zw.write_all(bytes).map_err(ierr)?;
    }
    let bytes = zw.finish().map_err(zerr)?.into_inner();
    crate::checkpoint::write_atomic(path, &bytes)
}

/// A contiguous tensor value referring to storage `key`.
pub fn tensor_value(key: usize, t: &Tensor) -> Value {
    let mut stride = vec![1usize; t.shape.len()];
    for d in (0..t.shape.len().saturating_sub(1)).rev() {
        stride[d] = stride[d + 1] * t.shape[d + 1];
    }
    Value::Tensor(TensorRef {
        key: key.to_string(),
        kind: kind_of(t.dtype),
        storage_numel: t.numel(),
        offset: 0,
        shape: t.shape.clone(),
        stride,
    })
}
