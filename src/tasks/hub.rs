//! Task data on disk: the parquet files of a Hugging Face dataset as `download_data --tasks` stores them
//! (`task_data/{owner--name}/{subset}/{split}/NNNNN.parquet`, upstream's layout), or a JSONL file of rows in the
//! same folder (how offline data such as HumanEval's problems is stored). Rows are kept as compact JSON text and
//! parsed when an example is built; every task sees them in the order of upstream's `shuffle(seed=42)`.

use std::fs::File;
use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use serde_json::{Map, Value};

use super::nprandom;

/// The seed every upstream task shuffles its rows with.
pub const SHUFFLE_SEED: u64 = 42;

/// `<base>/task_data/{owner--name}/{subset}/{split}`.
pub fn dataset_dir(base: &Path, repo: &str, subset: &str, split: &str) -> PathBuf {
    base.join("task_data")
        .join(repo.replace('/', "--"))
        .join(subset)
        .join(split)
}

/// The rows of one dataset split, in shuffled order.
pub struct Rows {
    /// Row JSON in file order.
    rows: Vec<Box<str>>,
    /// `order[i]` = the file row of example `i`.
    order: Vec<usize>,
    origin: PathBuf,
}

impl Rows {
    /// Rows given directly (tests, JSONL tasks), shuffled with `seed` when given.
    pub fn from_values(values: Vec<Value>, seed: Option<u64>, origin: PathBuf) -> Rows {
        let rows: Vec<Box<str>> = values.iter().map(|v| v.to_string().into()).collect();
        let order = match seed {
            Some(s) => nprandom::permutation(s, rows.len()),
            None => (0..rows.len()).collect(),
        };
        Rows { rows, order, origin }
    }

    /// Reads every `*.parquet` file of `dir` in name order (else every `*.jsonl` file) and shuffles the rows with
    /// [`SHUFFLE_SEED`].
    pub fn load(dir: &Path) -> Result<Rows, String> {
        let list = |ext: &str| -> Result<Vec<PathBuf>, String> {
            let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let mut files: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == ext))
                .collect();
            files.sort();
            Ok(files)
        };
        if !dir.is_dir() {
            return Err(format!(
                "no task data in {}: fetch it with `download_data --tasks`",
                dir.display()
            ));
        }
        let parquet = list("parquet")?;
        if !parquet.is_empty() {
            // Each row goes to compact JSON text as it is read: the whole split never exists as a JSON tree.
            let mut rows = Vec::new();
            for f in &parquet {
                for_each_parquet_row(f, &mut |v| rows.push(v.to_string().into_boxed_str()))?;
            }
            let order = nprandom::permutation(SHUFFLE_SEED, rows.len());
            return Ok(Rows {
                rows,
                order,
                origin: dir.to_path_buf(),
            });
        }
        let jsonl = list("jsonl")?;
        if jsonl.is_empty() {
            return Err(format!(
                "{} holds no .parquet or .jsonl files: fetch the data with `download_data --tasks`",
                dir.display()
            ));
        }
        let mut values = Vec::new();
        for f in &jsonl {
            values.extend(read_jsonl(f)?);
        }
        Ok(Rows::from_values(values, Some(SHUFFLE_SEED), dir.to_path_buf()))
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Example `i` (after the shuffle) as JSON.
    pub fn get(&self, i: usize) -> Result<Value, String> {
        let row = *self.order.get(i).ok_or_else(|| {
            format!(
                "{}: row {i} is past the end ({} rows)",
                self.origin.display(),
                self.rows.len()
            )
        })?;
        serde_json::from_str(&self.rows[row]).map_err(|e| format!("{}: row {row}: {e}", self.origin.display()))
    }

    pub fn origin(&self) -> &Path {
        &self.origin
    }
}

/// Every row of a parquet file as a JSON object (nested groups and lists included).
pub fn read_parquet_rows(path: &Path) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for_each_parquet_row(path, &mut |v| out.push(v))?;
    Ok(out)
}

/// Calls `f` with every row of a parquet file as a JSON object, in file order.
pub fn for_each_parquet_row(path: &Path, f: &mut dyn FnMut(Value)) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let reader = SerializedFileReader::new(file).map_err(|e| format!("{}: not a parquet file: {e}", path.display()))?;
    let iter = reader
        .get_row_iter(None)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    for (i, row) in iter.enumerate() {
        let row = row.map_err(|e| format!("{}: row {i}: {e}", path.display()))?;
        let obj: Map<String, Value> = row.get_column_iter().map(|(k, v)| (k.clone(), field_json(v))).collect();
        f(Value::Object(obj));
    }
    Ok(())
}

fn field_json(f: &Field) -> Value {
    match f {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(n) => Value::from(*n),
        Field::Short(n) => Value::from(*n),
        Field::Int(n) => Value::from(*n),
        Field::Long(n) => Value::from(*n),
        Field::UByte(n) => Value::from(*n),
        Field::UShort(n) => Value::from(*n),
        Field::UInt(n) => Value::from(*n),
        Field::ULong(n) => Value::from(*n),
        Field::Float(x) => Value::from(*x as f64),
        Field::Double(x) => Value::from(*x),
        Field::Str(s) => Value::String(s.clone()),
        Field::Bytes(b) => Value::String(String::from_utf8_lossy(b.data()).into_owned()),
        Field::Group(row) => Value::Object(row.get_column_iter().map(|(k, f)| (k.clone(), field_json(f))).collect()),
        Field::ListInternal(list) => Value::Array(list.elements().iter().map(field_json).collect()),
        Field::MapInternal(map) => Value::Object(
            map.entries()
                .iter()
                .map(|(k, v)| {
                    let key = match field_json(k) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, field_json(v))
                })
                .collect(),
        ),
        other => Value::String(other.to_string()),
    }
}

/// Every non-blank line of a JSONL file as JSON.
pub fn read_jsonl(path: &Path) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("{} line {}: {e}", path.display(), i + 1)))
        .collect()
}

/// Field access with errors that name the row and the field.
pub fn str_field<'a>(row: &'a Value, key: &str) -> Result<&'a str, String> {
    row.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("row has no string field {key:?}: {}", short(row)))
}

pub fn str_list(row: &Value, key: &str) -> Result<Vec<String>, String> {
    row.get(key)
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| format!("row has no list of strings {key:?}: {}", short(row)))
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}
