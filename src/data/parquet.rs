//! Reading and writing the `text` column of parquet shards.
//!
//! Upstream's shards (ClimbMix and the legacy FineWeb-Edu) hold one string column `text`, in row groups of
//! 1024 documents, zstd-compressed, no dictionary, no statistics. Reading goes one row group at a time so a
//! 100 MB shard never sits in memory as a whole; a missing `text` column or a damaged file is an error that
//! names the file.

use std::cell::Cell;
use std::fs::File;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::basic::{Compression, Repetition, Type as PhysicalType, ZstdLevel};
use parquet::column::reader::ColumnReader;
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type as SchemaType;

use super::Result;

/// Documents per row group in upstream's shards; also the unit in which documents are sharded across ranks.
pub const ROW_GROUP_DOCS: usize = 1024;

/// An open parquet shard whose `text` column is read one row group at a time.
///
/// Not `Sync`: parquet reads a `File` through clones of its handle that share one file offset, so two
/// threads reading row groups of the same `TextParquet` would corrupt each other's reads. Open one per
/// thread instead (opening reads only the footer).
pub struct TextParquet {
    path: PathBuf,
    reader: SerializedFileReader<File>,
    text_column: usize,
    nullable: bool,
    _not_sync: PhantomData<Cell<()>>,
}

impl TextParquet {
    /// Opens `path` and finds its `text` column (a top-level string column, required or optional).
    pub fn open(path: &Path) -> Result<TextParquet> {
        let file = File::open(path).map_err(|e| data_err!("cannot open parquet file {}: {e}", path.display()))?;
        let reader = SerializedFileReader::new(file)
            .map_err(|e| data_err!("{} is not a readable parquet file: {e}", path.display()))?;
        let schema = reader.metadata().file_metadata().schema_descr_ptr();
        let columns: Vec<String> = schema.columns().iter().map(|c| c.path().string()).collect();
        let text_column = columns.iter().position(|name| name == "text").ok_or_else(|| {
            data_err!(
                "parquet file {} has no `text` column (columns: {})",
                path.display(),
                columns.join(", ")
            )
        })?;
        let descr = schema.column(text_column);
        if descr.physical_type() != PhysicalType::BYTE_ARRAY || descr.max_rep_level() != 0 {
            return Err(data_err!(
                "parquet file {}: column `text` must be a plain string column, found {:?} (repetition level {})",
                path.display(),
                descr.physical_type(),
                descr.max_rep_level()
            ));
        }
        let nullable = descr.max_def_level() > 0;
        Ok(TextParquet {
            path: path.to_path_buf(),
            reader,
            text_column,
            nullable,
            _not_sync: PhantomData,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn num_row_groups(&self) -> usize {
        self.reader.num_row_groups()
    }

    /// Total number of documents, from the footer (no decoding).
    pub fn num_docs(&self) -> usize {
        self.reader.metadata().file_metadata().num_rows().max(0) as usize
    }

    /// The documents of row group `rg`. A null `text` reads as an empty document, so the document count
    /// always matches the row count; invalid UTF-8 is replaced rather than rejected, as a tokenizer would.
    pub fn read_row_group(&self, rg: usize) -> Result<Vec<String>> {
        let ctx = || format!("parquet file {}, row group {rg}", self.path.display());
        if rg >= self.num_row_groups() {
            return Err(data_err!("{}: only {} row groups", ctx(), self.num_row_groups()));
        }
        let group = self.reader.get_row_group(rg).map_err(|e| data_err!("{}: {e}", ctx()))?;
        let rows = group.metadata().num_rows().max(0) as usize;
        let column = group
            .get_column_reader(self.text_column)
            .map_err(|e| data_err!("{}: {e}", ctx()))?;
        let ColumnReader::ByteArrayColumnReader(mut column) = column else {
            return Err(data_err!("{}: column `text` is not a byte-array column", ctx()));
        };
        let mut values: Vec<ByteArray> = Vec::with_capacity(rows);
        let mut def_levels: Vec<i16> = Vec::with_capacity(rows);
        let mut records = 0;
        while records < rows {
            let (read, _, _) = column
                .read_records(rows - records, Some(&mut def_levels), None, &mut values)
                .map_err(|e| data_err!("{}: damaged column `text`: {e}", ctx()))?;
            if read == 0 {
                return Err(data_err!(
                    "{}: damaged: footer says {rows} rows, data has {records}",
                    ctx()
                ));
            }
            records += read;
        }
        let text = |v: &ByteArray| String::from_utf8_lossy(v.data()).into_owned();
        if !self.nullable {
            return Ok(values.iter().map(text).collect());
        }
        // Only non-null values are stored; the definition levels say which rows they belong to.
        let mut values = values.iter();
        let mut docs = Vec::with_capacity(rows);
        for &level in &def_levels {
            if level > 0 {
                let v = values
                    .next()
                    .ok_or_else(|| data_err!("{}: damaged: fewer values than levels", ctx()))?;
                docs.push(text(v));
            } else {
                docs.push(String::new());
            }
        }
        Ok(docs)
    }
}

/// Writes `docs` as a parquet shard with upstream's settings: one optional string column `text` (as pyarrow
/// writes it), row groups of `row_group_docs` documents, zstd level 3, no dictionary, no statistics.
/// Written to a temporary file first and renamed, so a reader never sees half a shard.
pub fn write_text_parquet(path: &Path, docs: &[&str], row_group_docs: usize) -> Result<()> {
    let ctx = |e: &dyn std::fmt::Display| data_err!("cannot write parquet file {}: {e}", path.display());
    let field = SchemaType::primitive_type_builder("text", PhysicalType::BYTE_ARRAY)
        .with_repetition(Repetition::OPTIONAL)
        .with_logical_type(Some(parquet::basic::LogicalType::String))
        .build()
        .map_err(|e| ctx(&e))?;
    let schema = SchemaType::group_type_builder("schema")
        .with_fields(vec![Arc::new(field)])
        .build()
        .map_err(|e| ctx(&e))?;
    let zstd = ZstdLevel::try_new(3).map_err(|e| ctx(&e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(zstd))
        .set_dictionary_enabled(false)
        .set_statistics_enabled(EnabledStatistics::None)
        .set_max_row_group_row_count(Some(row_group_docs.max(1)))
        .build();
    let tmp = path.with_extension("parquet.tmp");
    let file = File::create(&tmp).map_err(|e| ctx(&e))?;
    let mut writer = SerializedFileWriter::new(file, Arc::new(schema), Arc::new(props)).map_err(|e| ctx(&e))?;
    for chunk in docs.chunks(row_group_docs.max(1)) {
        let mut group = writer.next_row_group().map_err(|e| ctx(&e))?;
        let mut column = group
            .next_column()
            .map_err(|e| ctx(&e))?
            .ok_or_else(|| ctx(&"no column"))?;
        let values: Vec<ByteArray> = chunk.iter().map(|d| ByteArray::from(d.as_bytes().to_vec())).collect();
        let levels = vec![1i16; chunk.len()];
        column
            .typed::<ByteArrayType>()
            .write_batch(&values, Some(&levels), None)
            .map_err(|e| ctx(&e))?;
        column.close().map_err(|e| ctx(&e))?;
        group.close().map_err(|e| ctx(&e))?;
    }
    writer.close().map_err(|e| ctx(&e))?;
    std::fs::rename(&tmp, path).map_err(|e| ctx(&e))?;
    Ok(())
}
