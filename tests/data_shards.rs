//! Parquet reading, token shards and their manifest: round trips, and clear errors on damaged input.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use nanochat::data::loader::open_split;
use nanochat::data::parquet::{write_text_parquet, TextParquet};
use nanochat::data::shards::{self, open_token_dir, write_shard, Manifest, TokenShard, TokenizerId};
use nanochat::data::tokenize::{tokenize_dir, ByteEncoder};
use nanochat::data::{resolve_dataset_dir, split_files, tokens_dir_for, DocEncoder, Split};
use parquet::basic::{Repetition, Type as PhysicalType};
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type as SchemaType;

fn texts(n: usize, salt: &str) -> Vec<String> {
    (0..n)
        .map(|i| format!("document {i} {salt}: {}", "naïve café ".repeat(i % 50)))
        .collect()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn parquet_round_trip_in_row_groups() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shard_00000.parquet");
    let docs = texts(2500, "x");
    write_text_parquet(&path, &refs(&docs), 1024).expect("write");
    let file = TextParquet::open(&path).expect("open");
    assert_eq!(file.num_row_groups(), 3);
    assert_eq!(file.num_docs(), 2500);
    let mut back = Vec::new();
    for rg in 0..file.num_row_groups() {
        let group = file.read_row_group(rg).expect("row group");
        assert_eq!(group.len(), if rg < 2 { 1024 } else { 452 });
        back.extend(group);
    }
    assert_eq!(back, docs);
    assert!(file.read_row_group(3).is_err());
}

/// A parquet file whose only column is called `content`.
fn write_without_text(path: &Path) {
    let field = SchemaType::primitive_type_builder("content", PhysicalType::BYTE_ARRAY)
        .with_repetition(Repetition::REQUIRED)
        .build()
        .expect("field");
    let schema = SchemaType::group_type_builder("schema")
        .with_fields(vec![Arc::new(field)])
        .build()
        .expect("schema");
    let file = File::create(path).expect("create");
    let props = Arc::new(WriterProperties::builder().build());
    let mut writer = SerializedFileWriter::new(file, Arc::new(schema), props).expect("writer");
    let mut group = writer.next_row_group().expect("group");
    let mut column = group.next_column().expect("column").expect("one column");
    column
        .typed::<ByteArrayType>()
        .write_batch(&[ByteArray::from("hello")], None, None)
        .expect("write");
    column.close().expect("close");
    group.close().expect("close");
    writer.close().expect("close");
}

#[test]
fn parquet_without_text_or_damaged_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let no_text = dir.path().join("no_text.parquet");
    write_without_text(&no_text);
    let err = TextParquet::open(&no_text).err().expect("no text column");
    let msg = err.to_string();
    assert!(
        msg.contains("no_text.parquet") && msg.contains("no `text` column") && msg.contains("content"),
        "{msg}"
    );

    let garbage = dir.path().join("garbage.parquet");
    std::fs::write(&garbage, b"<html>rate limited</html>").expect("write");
    let msg = TextParquet::open(&garbage).err().expect("not parquet").to_string();
    assert!(msg.contains("garbage.parquet"), "{msg}");

    // A real file with its middle overwritten: the footer still parses, the data does not.
    let damaged = dir.path().join("damaged.parquet");
    write_text_parquet(&damaged, &refs(&texts(3000, "y")), 1024).expect("write");
    let mut bytes = std::fs::read(&damaged).expect("read");
    let mid = bytes.len() / 3;
    bytes[mid..mid + 2000].iter_mut().for_each(|b| *b = 0xAB);
    std::fs::write(&damaged, &bytes).expect("write");
    match TextParquet::open(&damaged) {
        Err(e) => assert!(e.to_string().contains("damaged.parquet"), "{e}"),
        Ok(file) => {
            let errors: Vec<String> = (0..file.num_row_groups())
                .filter_map(|rg| file.read_row_group(rg).err().map(|e| e.to_string()))
                .collect();
            assert!(!errors.is_empty(), "damage went unnoticed");
            assert!(errors.iter().all(|e| e.contains("damaged.parquet")), "{errors:?}");
        }
    }

    let missing = dir.path().join("missing.parquet");
    assert!(TextParquet::open(&missing)
        .err()
        .expect("missing")
        .to_string()
        .contains("missing.parquet"));
}

fn good_shard(dir: &Path) -> (std::path::PathBuf, Vec<Vec<u32>>) {
    let docs = vec![vec![256, 1, 2, 3], vec![256], vec![256, 255, 0, 7, 9]];
    let path = dir.join("shard_00000.tok");
    write_shard(&path, &docs, 257, 256).expect("write");
    (path, docs)
}

#[test]
fn token_shard_round_trip_and_width() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, docs) = good_shard(dir.path());
    let shard = TokenShard::open(&path).expect("open");
    assert_eq!(
        (shard.num_docs(), shard.num_tokens(), shard.vocab_size(), shard.bos_id()),
        (3, 10, 257, 256)
    );
    for (d, doc) in docs.iter().enumerate() {
        assert_eq!(&shard.doc(d), doc);
        assert_eq!(shard.doc_len(d), doc.len());
    }
    let size = |p: &Path| std::fs::metadata(p).expect("metadata").len();
    assert_eq!(
        size(&path),
        (shards::HEADER_BYTES + 8 * 4 + 2 * 10) as u64,
        "u16 tokens for a small vocabulary"
    );
    // A vocabulary beyond u16 stores u32 ids.
    let wide = dir.path().join("wide.tok");
    let docs = vec![vec![70_000, 69_999, 5]];
    write_shard(&wide, &docs, 70_001, 70_000).expect("write");
    assert_eq!(size(&wide), (shards::HEADER_BYTES + 8 * 2 + 4 * 3) as u64);
    assert_eq!(TokenShard::open(&wide).expect("open").doc(0), docs[0]);
    // The writer refuses ids outside the vocabulary.
    assert!(write_shard(&dir.path().join("bad.tok"), &[vec![256, 300]], 257, 256).is_err());
}

fn expect_error(path: &Path, bytes: &[u8], what: &str) {
    std::fs::write(path, bytes).expect("write");
    let msg = TokenShard::open(path)
        .err()
        .unwrap_or_else(|| panic!("{what}: accepted"))
        .to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "{what}: error does not name the file: {msg}"
    );
    assert!(msg.contains(what), "{what}: unexpected message: {msg}");
}

#[test]
fn damaged_token_shards_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, _) = good_shard(dir.path());
    let good = std::fs::read(&path).expect("read");
    let bad = dir.path().join("bad.tok");

    let mut b = good.clone();
    b[0..8].copy_from_slice(b"PAR1PAR1");
    expect_error(&bad, &b, "bad magic");

    let mut b = good.clone();
    b[8..12].copy_from_slice(&7u32.to_le_bytes());
    expect_error(&bad, &b, "version 7");

    expect_error(&bad, &good[..good.len() - 1], "truncated");
    expect_error(&bad, &good[..20], "truncated");
    expect_error(&bad, &[], "truncated");

    // The last token (u16 at the end of the file) set to 4000 with a vocabulary of 257.
    let mut b = good.clone();
    let n = b.len();
    b[n - 2..].copy_from_slice(&4000u16.to_le_bytes());
    expect_error(&bad, &b, "outside the vocabulary");

    // A document that does not start with BOS (first token of document 1 is at token index 4).
    let mut b = good.clone();
    let at = shards::HEADER_BYTES + 8 * 4 + 2 * 4;
    b[at..at + 2].copy_from_slice(&5u16.to_le_bytes());
    expect_error(&bad, &b, "does not start with BOS");

    // Offsets that go backwards.
    let mut b = good.clone();
    b[shards::HEADER_BYTES + 8..shards::HEADER_BYTES + 16].copy_from_slice(&9u64.to_le_bytes());
    expect_error(&bad, &b, "bad offsets");

    // A huge document count must not overflow or allocate.
    let mut b = good.clone();
    b[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
    expect_error(&bad, &b, "truncated");
}

/// An encoder that differs from `ByteEncoder` only in how it encodes.
struct ShiftedBytes;
impl DocEncoder for ShiftedBytes {
    fn encode_batch(&self, docs: &[&str]) -> Vec<Vec<u32>> {
        docs.iter()
            .map(|d| d.bytes().map(|b| (b as u32 + 1) % 256).collect())
            .collect()
    }
    fn bos_id(&self) -> u32 {
        256
    }
    fn vocab_size(&self) -> usize {
        257
    }
}

#[test]
fn tokenize_directory_resumes_and_rejects_other_tokenizers() {
    let base = tempfile::tempdir().expect("tempdir");
    let parquet_dir = base.path().join("base_data_default");
    std::fs::create_dir_all(&parquet_dir).expect("mkdir");
    // Shard 0 has several row groups of larger documents, read in parallel (this once raced on one file
    // handle and corrupted reads).
    let all: Vec<Vec<String>> = (0..3)
        .map(|s| texts(if s == 0 { 4100 } else { 1100 + s * 10 }, &format!("s{s}")))
        .collect();
    for (s, docs) in all.iter().enumerate() {
        write_text_parquet(&parquet_dir.join(format!("shard_{s:05}.parquet")), &refs(docs), 1024).expect("write");
    }
    assert_eq!(resolve_dataset_dir(base.path()).expect("resolve"), parquet_dir);
    let tokens_dir = tokens_dir_for(&parquet_dir);
    assert_eq!(tokens_dir, base.path().join("base_data_default_tokens"));

    let manifest = tokenize_dir(&parquet_dir, &tokens_dir, &ByteEncoder, false).expect("tokenize");
    assert_eq!(manifest.shards.len(), 3);
    let id = TokenizerId::of(&ByteEncoder);
    let opened = open_token_dir(&tokens_dir, &id).expect("open");
    for (shard, docs) in opened.iter().zip(&all) {
        assert_eq!(shard.num_docs(), docs.len());
        for (d, text) in docs.iter().enumerate() {
            let ids = shard.doc(d);
            assert_eq!(ids[0], 256, "documents start with BOS");
            let bytes: Vec<u8> = ids[1..].iter().map(|&t| t as u8).collect();
            assert_eq!(String::from_utf8(bytes).expect("utf8"), *text);
        }
    }
    let val = split_files(opened, Split::Val, "tokens").expect("split");
    assert_eq!(val.len(), 1);
    let train = open_split(base.path(), &id, Split::Train).expect("open train split");
    assert_eq!(train.len(), 2);
    assert_eq!(train[1].num_docs(), all[1].len());
    assert_eq!(
        val[0].num_docs(),
        all[2].len(),
        "the last shard is the validation split"
    );

    // Re-running does nothing new; a new parquet shard is picked up.
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).expect("mtime");
    let first = tokens_dir.join("shard_00000.tok");
    let before = modified(&first);
    write_text_parquet(&parquet_dir.join("shard_00003.parquet"), &refs(&texts(5, "new")), 1024).expect("write");
    let msg = open_split(base.path(), &id, Split::Train)
        .err()
        .expect("stale")
        .to_string();
    assert!(msg.contains("out of date") && msg.contains("tokenize_data"), "{msg}");
    let manifest = tokenize_dir(&parquet_dir, &tokens_dir, &ByteEncoder, false).expect("resume");
    assert_eq!(manifest.shards.len(), 4);
    assert_eq!(modified(&first), before, "finished shards are not redone");

    // Another tokenizer: a clear error, unless overwriting.
    let other = TokenizerId::of(&ShiftedBytes);
    assert_ne!(other, id);
    let msg = open_token_dir(&tokens_dir, &other).err().expect("mismatch").to_string();
    assert!(
        msg.contains("another tokenizer") && msg.contains("tokenize_data"),
        "{msg}"
    );
    assert!(tokenize_dir(&parquet_dir, &tokens_dir, &ShiftedBytes, false).is_err());
    tokenize_dir(&parquet_dir, &tokens_dir, &ShiftedBytes, true).expect("overwrite");
    let manifest = Manifest::load(&tokens_dir).expect("load").expect("manifest");
    assert_eq!(manifest.tokenizer, other);
    assert!(open_token_dir(&tokens_dir, &other).is_ok());
}

#[test]
fn dataset_resolution_order_and_split() {
    let base = tempfile::tempdir().expect("tempdir");
    let msg = resolve_dataset_dir(base.path()).expect_err("nothing there").to_string();
    assert!(msg.contains("download_data"), "{msg}");
    let put = |name: &str| {
        let dir = base.path().join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        write_text_parquet(&dir.join("shard_00000.parquet"), &["a"], 1024).expect("write");
        dir
    };
    let default = put("base_data_default");
    assert_eq!(resolve_dataset_dir(base.path()).expect("resolve"), default);
    let legacy = put("base_data");
    assert_eq!(resolve_dataset_dir(base.path()).expect("resolve"), legacy);
    let climbmix = put("base_data_climbmix");
    assert_eq!(resolve_dataset_dir(base.path()).expect("resolve"), climbmix);
    assert!(
        split_files(vec![1], Split::Train, "x").is_err(),
        "one shard cannot be split"
    );
    assert_eq!(
        split_files(vec![1, 2, 3], Split::Train, "x").expect("split"),
        vec![1, 2]
    );
}
