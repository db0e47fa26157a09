//! A data-only pickle reader for the two kinds of pickle upstream nanochat writes: `torch.save` state dicts
//! (protocol 2) and the pickled tiktoken `Encoding` (protocol 4).
//!
//! Python's unpickler imports and calls whatever globals the stream names, which is why `torch.load` on an
//! untrusted file can run arbitrary code. This reader never calls anything: it knows the handful of globals
//! these files use and builds plain values from them; any other global (say `os.system`) is refused with an
//! error naming it.

use std::collections::HashMap;

/// Element type of a torch storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageKind {
    F32,
    BF16,
    F16,
    I64,
    I32,
    U8,
}

impl StorageKind {
    fn from_class(name: &str) -> Option<StorageKind> {
        Some(match name {
            "FloatStorage" => StorageKind::F32,
            "BFloat16Storage" => StorageKind::BF16,
            "HalfStorage" => StorageKind::F16,
            "LongStorage" => StorageKind::I64,
            "IntStorage" => StorageKind::I32,
            "ByteStorage" => StorageKind::U8,
            _ => return None,
        })
    }
    pub fn class(self) -> &'static str {
        match self {
            StorageKind::F32 => "FloatStorage",
            StorageKind::BF16 => "BFloat16Storage",
            StorageKind::F16 => "HalfStorage",
            StorageKind::I64 => "LongStorage",
            StorageKind::I32 => "IntStorage",
            StorageKind::U8 => "ByteStorage",
        }
    }
    pub fn size(self) -> usize {
        match self {
            StorageKind::F32 | StorageKind::I32 => 4,
            StorageKind::BF16 | StorageKind::F16 => 2,
            StorageKind::I64 => 8,
            StorageKind::U8 => 1,
        }
    }
}

/// A tensor as the pickle describes it: a view into storage `key` (the zip entry `<name>/data/<key>`).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    pub key: String,
    pub kind: StorageKind,
    /// Elements in the storage, as the pickle states it.
    pub storage_numel: usize,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

/// The values these pickles can hold.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// dict and OrderedDict, in insertion order.
    Dict(Vec<(Value, Value)>),
    Tensor(TensorRef),
    /// A tiktoken `Encoding` once its state is built in: the state dict.
    Encoding(Vec<(Value, Value)>),
    // Intermediate values that never appear in a finished result unless misused.
    Global(Global),
    Storage(StorageKind, String, usize),
    Mark,
}

/// The globals these files name; nothing else is accepted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Global {
    OrderedDict,
    RebuildTensorV2,
    Storage(StorageKind),
    Encoding,
}

fn resolve_global(module: &str, name: &str) -> Result<Global, String> {
    match (module, name) {
        ("collections", "OrderedDict") => Ok(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Ok(Global::RebuildTensorV2),
        ("tiktoken.core", "Encoding") => Ok(Global::Encoding),
        ("torch", cls) => StorageKind::from_class(cls)
            .map(Global::Storage)
            .ok_or_else(|| refused(module, name)),
        _ => Err(refused(module, name)),
    }
}

fn refused(module: &str, name: &str) -> String {
    format!(
        "pickle refers to global {module}.{name}, which is not data: refused (only OrderedDict, \
         torch._utils._rebuild_tensor_v2, torch *Storage and tiktoken.core.Encoding are read)"
    )
}

impl Value {
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    /// Entries of a dict (or the state of an Encoding).
    pub fn as_dict(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Dict(d) | Value::Encoding(d) => Some(d),
            _ => None,
        }
    }
    /// Item of a dict by string key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_dict()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }
    fn describe(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Tensor(_) => "tensor",
            Value::Encoding(_) => "Encoding",
            Value::Global(_) => "global",
            Value::Storage(..) => "storage",
            Value::Mark => "mark",
        }
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            return Err(format!(
                "pickle ends early: {n} bytes wanted at offset {} of {}",
                self.pos,
                self.data.len()
            ));
        };
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn line(&mut self) -> Result<String, String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("pickle ends inside a GLOBAL name")?;
        let s = String::from_utf8(rest[..n].to_vec()).map_err(|_| "GLOBAL name is not UTF-8")?;
        self.pos += n + 1;
        Ok(s)
    }
    fn utf8(&mut self, n: usize) -> Result<String, String> {
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "string is not UTF-8".to_string())
    }
}

/// Parses one pickle into a value. Errors name the opcode offset and what went wrong.
pub fn parse(data: &[u8]) -> Result<Value, String> {
    let mut r = Reader { data, pos: 0 };
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();
    loop {
        let at = r.pos;
        let op = r.u8()?;
        let ctx = |e: String| format!("pickle offset {at} (opcode 0x{op:02x}): {e}");
        step(op, &mut r, &mut stack, &mut memo).map_err(ctx)?;
        if op == b'.' {
            let v = stack.pop().ok_or_else(|| ctx("empty stack at STOP".into()))?;
            return Ok(v);
        }
    }
}

fn pop(stack: &mut Vec<Value>) -> Result<Value, String> {
    stack.pop().ok_or_else(|| "stack underflow".to_string())
}

/// Pops everything above the topmost mark, and the mark.
fn pop_mark(stack: &mut Vec<Value>) -> Result<Vec<Value>, String> {
    let m = stack
        .iter()
        .rposition(|v| matches!(v, Value::Mark))
        .ok_or("no MARK on the stack")?;
    let items = stack.split_off(m + 1);
    stack.pop();
    Ok(items)
}

fn usize_of(v: &Value, what: &str) -> Result<usize, String> {
    match v.as_int() {
        Some(i) if i >= 0 => Ok(i as usize),
        _ => Err(format!("{what} must be a non-negative int, found {}", v.describe())),
    }
}

fn usizes(v: &Value, what: &str) -> Result<Vec<usize>, String> {
    match v {
        Value::Tuple(items) | Value::List(items) => items.iter().map(|x| usize_of(x, what)).collect(),
        other => Err(format!("{what} must be a tuple, found {}", other.describe())),
    }
}

fn step(op: u8, r: &mut Reader, stack: &mut Vec<Value>, memo: &mut HashMap<u32, Value>) -> Result<(), String> {
    match op {
        0x80 => {
            let proto = r.u8()?;
            if proto > 5 {
                return Err(format!("pickle protocol {proto} is not supported"));
            }
        }
        0x95 => {
            r.u64()?; // FRAME: a length hint only
        }
        b'.' => {}
        b'(' => stack.push(Value::Mark),
        b'}' => stack.push(Value::Dict(Vec::new())),
        b']' => stack.push(Value::List(Vec::new())),
        b')' => stack.push(Value::Tuple(Vec::new())),
        b't' => {
            let items = pop_mark(stack)?;
            stack.push(Value::Tuple(items));
        }
        0x85..=0x87 => {
            let n = (op - 0x84) as usize;
            if stack.len() < n {
                return Err("stack underflow".into());
            }
            let items = stack.split_off(stack.len() - n);
            stack.push(Value::Tuple(items));
        }
        b'q' | b'r' | 0x94 => {
            let key = match op {
                b'q' => r.u8()? as u32,
                b'r' => r.u32()?,
                _ => memo.len() as u32,
            };
            let top = stack.last().ok_or("memo put on an empty stack")?.clone();
            memo.insert(key, top);
        }
        b'h' | b'j' => {
            let key = if op == b'h' { r.u8()? as u32 } else { r.u32()? };
            let v = memo.get(&key).ok_or(format!("memo key {key} unset"))?;
            stack.push(v.clone());
        }
        b'J' => stack.push(Value::Int(r.u32()? as i32 as i64)),
        b'K' => stack.push(Value::Int(r.u8()? as i64)),
        b'M' => stack.push(Value::Int(r.u16()? as i64)),
        0x8a => {
            let n = r.u8()? as usize;
            if n > 8 {
                return Err(format!("LONG1 of {n} bytes is too large"));
            }
            let b = r.take(n)?;
            let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                [0xff; 8]
            } else {
                [0; 8]
            };
            buf[..n].copy_from_slice(b);
            stack.push(Value::Int(i64::from_le_bytes(buf)));
        }
        b'G' => {
            let b = r.take(8)?;
            stack.push(Value::Float(f64::from_be_bytes(b.try_into().expect("8 bytes"))));
        }
        b'N' => stack.push(Value::None),
        0x88 => stack.push(Value::Bool(true)),
        0x89 => stack.push(Value::Bool(false)),
        b'X' => {
            let n = r.u32()? as usize;
            stack.push(Value::Str(r.utf8(n)?));
        }
        0x8c => {
            let n = r.u8()? as usize;
            stack.push(Value::Str(r.utf8(n)?));
        }
        0x8d => {
            let n = r.u64()? as usize;
            stack.push(Value::Str(r.utf8(n)?));
        }
        b'C' => {
            let n = r.u8()? as usize;
            stack.push(Value::Bytes(r.take(n)?.to_vec()));
        }
        b'B' => {
            let n = r.u32()? as usize;
            stack.push(Value::Bytes(r.take(n)?.to_vec()));
        }
        0x8e => {
            let n = r.u64()? as usize;
            stack.push(Value::Bytes(r.take(n)?.to_vec()));
        }
        b'c' => {
            let module = r.line()?;
            let name = r.line()?;
            stack.push(Value::Global(resolve_global(&module, &name)?));
        }
        0x93 => {
            let name = pop(stack)?;
            let module = pop(stack)?;
            match (module, name) {
                (Value::Str(m), Value::Str(n)) => stack.push(Value::Global(resolve_global(&m, &n)?)),
                _ => return Err("STACK_GLOBAL needs two strings".into()),
            }
        }
        b'Q' => {
            let pid = pop(stack)?;
            stack.push(persistent_load(&pid)?);
        }
        b'R' => {
            let args = pop(stack)?;
            let f = pop(stack)?;
            stack.push(reduce(f, args)?);
        }
        0x81 => {
            let _args = pop(stack)?;
            match pop(stack)? {
                Value::Global(Global::Encoding) => stack.push(Value::Encoding(Vec::new())),
                Value::Global(Global::OrderedDict) => stack.push(Value::Dict(Vec::new())),
                other => return Err(format!("NEWOBJ of a {}", other.describe())),
            }
        }
        b'b' => {
            let state = pop(stack)?;
            let obj = pop(stack)?;
            match (obj, state) {
                (Value::Encoding(_), Value::Dict(d)) => stack.push(Value::Encoding(d)),
                // A state dict's attributes (`_metadata`: module versions) arrive as BUILD state; they are
                // not tensors, so the dict's items are kept and the attributes dropped.
                (v @ Value::Dict(_), Value::None | Value::Dict(_)) => stack.push(v),
                (o, s) => {
                    return Err(format!(
                        "BUILD of a {} with a {} state is not data this reader knows",
                        o.describe(),
                        s.describe()
                    ))
                }
            }
        }
        b's' | b'u' => {
            let items = if op == b's' {
                let v = pop(stack)?;
                let k = pop(stack)?;
                vec![k, v]
            } else {
                pop_mark(stack)?
            };
            if items.len() % 2 != 0 {
                return Err("SETITEMS with an odd number of items".into());
            }
            let Some(Value::Dict(d)) = stack.last_mut() else {
                return Err("SETITEMS on something that is not a dict".into());
            };
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                if let Some(slot) = d.iter_mut().find(|(ek, _)| *ek == k) {
                    slot.1 = v;
                } else {
                    d.push((k, v));
                }
            }
        }
        b'a' | b'e' => {
            let items = if op == b'a' {
                vec![pop(stack)?]
            } else {
                pop_mark(stack)?
            };
            let Some(Value::List(l)) = stack.last_mut() else {
                return Err("APPENDS on something that is not a list".into());
            };
            l.extend(items);
        }
        b'0' => {
            pop(stack)?;
        }
        b'1' => {
            pop_mark(stack)?;
        }
        b'2' => {
            let top = stack.last().ok_or("DUP on an empty stack")?.clone();
            stack.push(top);
        }
        other => {
            return Err(format!(
                "opcode 0x{other:02x} is not one torch.save or tiktoken writes: refused"
            ))
        }
    }
    Ok(())
}

/// torch's persistent id: `('storage', <Storage class>, key, location, numel)`.
fn persistent_load(pid: &Value) -> Result<Value, String> {
    let Value::Tuple(t) = pid else {
        return Err(format!("persistent id must be a tuple, found {}", pid.describe()));
    };
    match t.as_slice() {
        [Value::Str(tag), Value::Global(Global::Storage(kind)), key, _location, numel] if tag == "storage" => {
            let key = match key {
                Value::Str(s) => s.clone(),
                Value::Int(i) => i.to_string(),
                _ => return Err("storage key must be a string".into()),
            };
            Ok(Value::Storage(*kind, key, usize_of(numel, "storage size")?))
        }
        _ => Err("persistent id is not ('storage', torch.<T>Storage, key, location, numel)".into()),
    }
}

fn reduce(f: Value, args: Value) -> Result<Value, String> {
    let Value::Tuple(args) = args else {
        return Err("REDUCE arguments must be a tuple".into());
    };
    match f {
        Value::Global(Global::OrderedDict) if args.is_empty() => Ok(Value::Dict(Vec::new())),
        Value::Global(Global::RebuildTensorV2) => {
            // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
            if args.len() < 4 {
                return Err(format!(
                    "_rebuild_tensor_v2 takes at least 4 arguments, got {}",
                    args.len()
                ));
            }
            let Value::Storage(kind, key, numel) = &args[0] else {
                return Err("_rebuild_tensor_v2: first argument is not a storage".into());
            };
            let shape = usizes(&args[2], "tensor size")?;
            let stride = usizes(&args[3], "tensor stride")?;
            if shape.len() != stride.len() {
                return Err(format!("tensor size {shape:?} and stride {stride:?} differ in rank"));
            }
            Ok(Value::Tensor(TensorRef {
                key: key.clone(),
                kind: *kind,
                storage_numel: *numel,
                offset: usize_of(&args[1], "storage offset")?,
                shape,
                stride,
            }))
        }
        Value::Global(g) => Err(format!("calling {g:?} with these arguments is refused")),
        other => Err(format!("REDUCE on a {}", other.describe())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_unknown_globals_by_name() {
        // pickle.dumps of os.system("echo hi") at protocol 2, hand-assembled.
        let data = b"\x80\x02cposix\nsystem\nq\x00X\x07\x00\x00\x00echo hiq\x01\x85q\x02Rq\x03.";
        let e = parse(data).unwrap_err();
        assert!(e.contains("posix.system"), "{e}");
        let data = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.";
        let e = parse(data).unwrap_err();
        assert!(e.contains("builtins.eval"), "{e}");
    }

    #[test]
    fn reads_basic_values() {
        // pickle.dumps({'a': [1, -2, 3.5, None, True], 'b': b'xy', 300: (70000,)}, protocol=2)
        let data = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01J\xfe\xff\xff\xffG@\x0c\x00\x00\x00\x00\x00\x00N\x88eX\x01\x00\x00\x00bq\x03C\x02xyq\x04M,\x01J\x70\x11\x01\x00\x85q\x05u.";
        let v = parse(data).unwrap();
        assert_eq!(
            v.get("a"),
            Some(&Value::List(vec![
                Value::Int(1),
                Value::Int(-2),
                Value::Float(3.5),
                Value::None,
                Value::Bool(true)
            ]))
        );
        assert_eq!(v.get("b"), Some(&Value::Bytes(b"xy".to_vec())));
        assert_eq!(
            v.as_dict().unwrap()[2],
            (Value::Int(300), Value::Tuple(vec![Value::Int(70000)]))
        );
    }

    #[test]
    fn truncated_pickle_is_an_error() {
        let e = parse(b"\x80\x02X\x10\x00\x00\x00ab").unwrap_err();
        assert!(e.contains("ends early"), "{e}");
    }
}
