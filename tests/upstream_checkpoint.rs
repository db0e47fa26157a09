//! Upstream nanochat checkpoints (`tests/fixtures/upstream-checkpoint-a`, written by upstream's own code): import,
//! the fp32 forward against upstream's, the tokenizer, greedy chat, export → import round trip, the exported zip's
//! layout, the optimizer state, and the refusals.

use nanochat::checkpoint;
use nanochat::cpu::gpt::Gpt;
use nanochat::engine::load::load_engine;
use nanochat::engine::GenConfig;
use nanochat::optim::{MuonAdamW, SetupArgs};
use nanochat::params::ParamTable;
use nanochat::safetensors::{self, Dtype, Tensor};
use nanochat::tokenizer::{self, load_tokenizer};
use nanochat::upstream::{self, convert, torch_zip};
use std::io::Read;
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/upstream-checkpoint-a")
}

fn imported() -> (tempfile::TempDir, convert::Imported) {
    let tmp = tempfile::tempdir().unwrap();
    let r = convert::import(&fixture(), tmp.path(), "base", None, None).unwrap();
    (tmp, r)
}

#[test]
fn imported_forward_matches_upstream() {
    let (tmp, r) = imported();
    assert_eq!((r.tag.as_str(), r.step), ("d4", 3));
    // dtypes.json: embeddings stored bf16, the rest fp32.
    assert_eq!(r.dtypes["transformer.wte.weight"], Dtype::BF16);
    assert_eq!(r.dtypes["value_embeds.1.weight"], Dtype::BF16);
    assert_eq!(r.dtypes["lm_head.weight"], Dtype::F32);
    let l = checkpoint::load(&r.dir, None, 0, None).unwrap();
    let cfg = &l.meta.model_config;
    assert_eq!((cfg.n_layer, cfg.n_embd, cfg.vocab_size), (4, 128, 512));
    assert_eq!(cfg.window_pattern, "SSSL");
    let exp = safetensors::read(&fixture().join("expected.safetensors")).unwrap();
    let ids: Vec<u32> = exp.get("inputs").unwrap().to_i64().iter().map(|&x| x as u32).collect();
    let tg: Vec<i32> = exp.get("targets").unwrap().to_i64().iter().map(|&x| x as i32).collect();
    let gpt = Gpt::new(cfg).unwrap();
    let fwd = gpt.forward(&l.params, &ids, Some(&tg), 2, 128).unwrap();
    let logits = fwd.logits_unpadded(512);
    let want = exp.get("logits").unwrap().to_f32();
    assert_eq!(logits.len(), want.len());
    let max = logits
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max <= 1e-3, "logits max abs diff {max}");
    let valid: Vec<f32> = fwd
        .losses
        .iter()
        .zip(&tg)
        .filter(|(_, &t)| t >= 0)
        .map(|(l, _)| *l)
        .collect();
    let loss = valid.iter().map(|&x| x as f64).sum::<f64>() / valid.len() as f64;
    let want_loss = exp.get("loss").unwrap().to_f32()[0] as f64;
    assert!((loss - want_loss).abs() <= 1e-4, "loss {loss} vs upstream {want_loss}");
    drop(tmp);
}

#[test]
fn imported_tokenizer_encodes_like_the_pickled_one() {
    let (tmp, _) = imported();
    let tok = load_tokenizer(tmp.path()).unwrap();
    // The pickle holds 503 mergeable ranks (bytes 0..255 first) and 9 specials after them.
    assert_eq!(tok.vocab_size(), 512);
    assert_eq!(tok.mergeable_tokens().len(), 503);
    assert_eq!(tok.mergeable_tokens()[0], vec![0u8]);
    assert_eq!(tok.mergeable_tokens()[255], vec![255u8]);
    for (i, name) in tokenizer::SPECIAL_TOKENS.iter().enumerate() {
        assert_eq!(tok.special_id(name), Some(503 + i as u32), "{name}");
    }
    // `inputs` is upstream's tiktoken encoding of a text (BOS first): decoding and re-encoding gives it back
    // (all but the last few tokens, where the 128-token cut may have split a piece).
    let exp = safetensors::read(&fixture().join("expected.safetensors")).unwrap();
    let ids: Vec<u32> = exp.get("inputs").unwrap().to_i64().iter().map(|&x| x as u32).collect();
    let row = &ids[..128];
    assert_eq!(row[0], tok.bos_id());
    let text = tok.decode(&row[1..]);
    let again = tok.encode_ordinary_bytes(&text);
    assert_eq!(&again[..110], &row[1..111]);
    // token_bytes.bin holds each token's raw byte length. Upstream's token_bytes.pt counts the UTF-8 length of
    // the token decoded with replacement (an invalid byte becomes U+FFFD, 3 bytes): check both readings.
    let mut tb = torch_zip::TorchFile::open(&fixture().join("tokenizer/token_bytes.pt")).unwrap();
    let nanochat::upstream::pickle::Value::Tensor(t) = tb.root.clone() else {
        panic!("not a tensor")
    };
    let upstream_tb: Vec<i64> = tb.tensor(&t, "token_bytes").unwrap().to_i64();
    let have = tokenizer::files::load_token_bytes(&tmp.path().join("tokenizer/token_bytes.bin")).unwrap();
    assert_eq!(have.len(), 512);
    for (i, tok_bytes) in tok.mergeable_tokens().iter().enumerate() {
        assert_eq!(have[i] as usize, tok_bytes.len());
        assert_eq!(
            upstream_tb[i] as usize,
            String::from_utf8_lossy(tok_bytes).len(),
            "token {i}"
        );
    }
    assert!(have[503..].iter().all(|&x| x == 0) && upstream_tb[503..].iter().all(|&x| x == 0));
}

#[test]
fn greedy_chat_replies_match_upstream() {
    let (tmp, _) = imported();
    let (eng, card, _) = load_engine(tmp.path(), "base", None, None).unwrap();
    assert_eq!(card.step, 3);
    let text = std::fs::read_to_string(fixture().join("greedy_replies.json")).unwrap();
    let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
    let tok = &eng.tokenizer;
    let sp = |n: &str| tok.special_id(n).unwrap();
    for c in cases.as_array().unwrap() {
        let want: Vec<u32> = c["reply_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        // upstream chat_cli: <|bos|> <|user_start|> prompt <|user_end|> <|assistant_start|>
        let mut prompt = vec![tok.bos_id(), sp("<|user_start|>")];
        prompt.extend(tok.encode_ordinary(c["prompt"].as_str().unwrap()));
        prompt.extend([sp("<|user_end|>"), sp("<|assistant_start|>")]);
        let cfg = GenConfig {
            num_samples: 1,
            max_tokens: Some(want.len()),
            temperature: 0.0,
            top_k: None,
            seed: 42,
        };
        let mut got = Vec::new();
        eng.generate(&prompt, &cfg, &mut |col, _| {
            got.push(col[0]);
            true
        })
        .unwrap();
        assert_eq!(got, want, "prompt {}", c["prompt"]);
        assert_eq!(String::from_utf8_lossy(&tok.decode(&got)), c["reply"].as_str().unwrap());
    }
}

#[test]
fn export_then_import_is_bit_identical_and_zip_has_torch_layout() {
    let (a, r) = imported();
    let up = tempfile::tempdir().unwrap();
    let (dir, step) = convert::export(a.path(), up.path(), "base", None, None).unwrap();
    assert_eq!(step, 3);
    let b = tempfile::tempdir().unwrap();
    let r2 = convert::import(up.path(), b.path(), "base", None, None).unwrap();
    let la = checkpoint::load(&r.dir, None, 0, None).unwrap();
    let lb = checkpoint::load(&r2.dir, None, 0, None).unwrap();
    assert_eq!(la.meta.model_config, lb.meta.model_config);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&la.params), bits(&lb.params));
    assert_eq!(r.dtypes, r2.dtypes, "exported dtypes follow upstream's");
    for f in [tokenizer::TOKENIZER_FILE, tokenizer::TOKEN_BYTES_FILE] {
        let x = std::fs::read(a.path().join("tokenizer").join(f)).unwrap();
        let y = std::fs::read(b.path().join("tokenizer").join(f)).unwrap();
        assert_eq!(x, y, "{f}");
    }

    // The layout torch.load expects: <stem>/data.pkl, data/<key>, byteorder, version; stored, 64-byte aligned.
    let bytes = std::fs::read(dir.join("model_000003.pt")).unwrap();
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let table = ParamTable::new(&la.meta.model_config);
    let mut names: Vec<String> = z.file_names().map(str::to_string).collect();
    names.sort();
    let mut want: Vec<String> = [
        "data.pkl",
        "byteorder",
        "version",
        ".format_version",
        ".storage_alignment",
    ]
    .iter()
    .map(|s| format!("model_000003/{s}"))
    .chain((0..table.params.len()).map(|k| format!("model_000003/data/{k}")))
    .collect();
    want.sort();
    assert_eq!(names, want);
    for i in 0..z.len() {
        let f = z.by_index(i).unwrap();
        assert_eq!(f.compression(), zip::CompressionMethod::Stored, "{}", f.name());
        if f.name().contains("/data/") {
            assert_eq!(f.data_start().unwrap() % 64, 0, "{} not 64-byte aligned", f.name());
        }
    }
    let mut s = String::new();
    z.by_name("model_000003/byteorder")
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    assert_eq!(s, "little");
    let mut pkl = Vec::new();
    z.by_name("model_000003/data.pkl")
        .unwrap()
        .read_to_end(&mut pkl)
        .unwrap();
    assert_eq!(&pkl[..2], b"\x80\x02");
    let has = |needle: &[u8]| pkl.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"ccollections\nOrderedDict\n"));
    assert!(has(b"ctorch._utils\n_rebuild_tensor_v2\n"));
    assert!(has(b"ctorch\nBFloat16Storage\n") && has(b"ctorch\nFloatStorage\n"));
    assert_eq!(*pkl.last().unwrap(), b'.');
    // The first storage is wte in bf16: 512 x 128 x 2 bytes.
    assert_eq!(z.by_name("model_000003/data/0").unwrap().size(), 512 * 128 * 2);
    // The exported token_bytes.pt equals the one upstream wrote for this tokenizer.
    let read_tb = |p: &Path| {
        let mut f = torch_zip::TorchFile::open(p).unwrap();
        let nanochat::upstream::pickle::Value::Tensor(t) = f.root.clone() else {
            panic!("not a tensor")
        };
        let t = f.tensor(&t, "token_bytes").unwrap();
        (t.dtype, t.to_i64())
    };
    assert_eq!(
        read_tb(&up.path().join("tokenizer/token_bytes.pt")),
        read_tb(&fixture().join("tokenizer/token_bytes.pt"))
    );
    // The exported tokenizer.pkl reads back to the same tokenizer.
    let t1 = upstream::read_tokenizer_pkl(&up.path().join("tokenizer/tokenizer.pkl")).unwrap();
    let t0 = load_tokenizer(a.path()).unwrap();
    assert_eq!(t1.mergeable_tokens(), t0.mergeable_tokens());
    assert_eq!(t1.specials(), t0.specials());
}

#[test]
fn optimizer_state_converts_and_loads() {
    let (_tmp, r) = imported();
    assert_eq!(r.optimizer_ranks, 1);
    let l = checkpoint::load(&r.dir, None, 0, None).unwrap();
    let state = l.optim.expect("optimizer state imported");
    assert_eq!(state["step"].to_i64(), vec![3]);
    // Upstream keeps AdamW state in the parameter's dtype: wte's exp_avg was bf16, now fp32, same values.
    assert_eq!(state["exp_avg.transformer.wte.weight"].shape, vec![512, 128]);
    assert_eq!(
        state["second_momentum_buffer.transformer.h.0.mlp.c_fc.weight"].shape,
        vec![512, 1]
    );
    assert_eq!(
        state["second_momentum_buffer.transformer.h.0.mlp.c_proj.weight"].shape,
        vec![1, 512]
    );
    let table = ParamTable::new(&l.meta.model_config);
    let mut opt = MuonAdamW::new(&table, &SetupArgs::default());
    opt.load_state_tensors(&state).unwrap();
    // After three steps the AdamW second moments are positive somewhere and never negative.
    let v = state["exp_avg_sq.lm_head.weight"].to_f32();
    assert!(v.iter().all(|&x| x >= 0.0) && v.iter().any(|&x| x > 0.0));
}

fn err_of<T>(r: Result<T, String>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

#[test]
fn refusals_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture().join("base_checkpoints/d4/model_000003.pt");
    let bytes = std::fs::read(&model).unwrap();
    // Truncated zip.
    let e = err_of(torch_zip::TorchFile::from_bytes(
        bytes[..bytes.len() / 2].to_vec(),
        "cut.pt",
    ));
    assert!(e.contains("cut.pt") && e.contains("truncated"), "{e}");

    // A pickle naming another global.
    let evil = tmp.path().join("evil.pt");
    {
        use std::io::Write;
        let mut z = zip::ZipWriter::new(std::fs::File::create(&evil).unwrap());
        let o = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        z.start_file("evil/data.pkl", o).unwrap();
        z.write_all(b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.").unwrap();
        z.finish().unwrap();
    }
    let e = err_of(torch_zip::TorchFile::open(&evil).map(|_| ()));
    assert!(e.contains("os.system") && e.contains("refused"), "{e}");

    // A storage shorter than its tensor.
    let short = tmp.path().join("short.pt");
    let t = Tensor {
        dtype: Dtype::F32,
        shape: vec![4, 4],
        data: vec![0u8; 4 * 10],
    };
    torch_zip::write_state_dict(&short, "short", &[("w".into(), t)]).unwrap();
    let e = err_of(torch_zip::TorchFile::open(&short).and_then(|mut f| f.state_dict()));
    assert!(e.contains("tensor w") && e.contains("16 elements"), "{e}");

    // A shape that does not match the configuration.
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture().join("base_checkpoints/d4/meta_000003.json")).unwrap())
            .unwrap();
    let mut cfg: nanochat::config::ModelConfig = serde_json::from_value(meta["model_config"].clone()).unwrap();
    cfg.n_kv_head = 2;
    let e = err_of(upstream::read_model_pt(&model, &cfg));
    assert!(
        e.contains("transformer.h.0.attn.c_k.weight") && e.contains("shape"),
        "{e}"
    );

    // A tokenizer with another split pattern (digits in runs of up to 4: same length, so the pickle stays valid).
    let pkl = std::fs::read(fixture().join("tokenizer/tokenizer.pkl")).unwrap();
    let pos = pkl.windows(8).position(|w| w == b"\\p{N}{1,").unwrap();
    let mut other = pkl.clone();
    other[pos + 8] = b'4';
    let bad = tmp.path().join("tokenizer.pkl");
    std::fs::write(&bad, &other).unwrap();
    let e = err_of(upstream::read_tokenizer_pkl(&bad));
    assert!(e.contains("split pattern") && e.contains("{1,4}"), "{e}");
}

/// Splits our optimizer state into upstream's ZeRO-2 rank files (spec: AdamW tensors of >= 1024 elements by rows,
/// smaller ones replicated; Muon group of K params in chunks of ceil(K/world), zero-padded, state at the group's
/// first parameter) and writes them.
fn write_zero2_shards(
    dir: &Path,
    table: &ParamTable,
    state: &std::collections::BTreeMap<String, Tensor>,
    world: usize,
) {
    use nanochat::upstream::pickle::Value;
    let groups = convert::upstream_groups(table);
    for r in 0..world {
        let mut storages: Vec<Tensor> = Vec::new();
        let mut add = |t: Tensor| {
            storages.push(t.clone());
            torch_zip::tensor_value(storages.len() - 1, &t)
        };
        let mut st = Vec::new();
        let mut pg = Vec::new();
        let mut id = 0i64;
        for (gi, names) in groups.iter().enumerate() {
            let ids: Vec<i64> = (id..id + names.len() as i64).collect();
            id += names.len() as i64;
            let muon = gi >= 6;
            if muon {
                let k = names.len();
                let chunk = k.div_ceil(world);
                let mut entry = Vec::new();
                for buf in ["momentum_buffer", "second_momentum_buffer"] {
                    let one = &state[&format!("{buf}.{}", names[0])];
                    let per = one.numel();
                    let mut vals = vec![0f32; chunk * per];
                    for j in 0..chunk {
                        if let Some(n) = names.get(r * chunk + j) {
                            vals[j * per..(j + 1) * per].copy_from_slice(&state[&format!("{buf}.{n}")].to_f32());
                        }
                    }
                    let mut shape = vec![chunk];
                    shape.extend(&one.shape);
                    entry.push((Value::Str(buf.into()), add(Tensor::from_f32(shape, &vals))));
                }
                st.push((Value::Int(ids[0]), Value::Dict(entry)));
            } else {
                for (i, n) in ids.iter().zip(names) {
                    let mut entry = vec![(Value::Str("step".into()), Value::Int(state["step"].to_i64()[0]))];
                    for buf in ["exp_avg", "exp_avg_sq"] {
                        let t = &state[&format!("{buf}.{n}")];
                        let t = if t.numel() >= 1024 {
                            let rows = t.shape[0] / world;
                            let per = t.numel() / t.shape[0];
                            let v = t.to_f32();
                            let mut shape = t.shape.clone();
                            shape[0] = rows;
                            Tensor::from_f32(shape, &v[r * rows * per..(r + 1) * rows * per])
                        } else {
                            t.clone()
                        };
                        entry.push((Value::Str(buf.into()), add(t)));
                    }
                    st.push((Value::Int(*i), Value::Dict(entry)));
                }
            }
            let kind = if muon { "muon" } else { "adamw" };
            pg.push(Value::Dict(vec![
                (Value::Str("kind".into()), Value::Str(kind.into())),
                (
                    Value::Str("params".into()),
                    Value::List(ids.into_iter().map(Value::Int).collect()),
                ),
            ]));
        }
        let root = Value::Dict(vec![
            (Value::Str("state".into()), Value::Dict(st)),
            (Value::Str("param_groups".into()), Value::List(pg)),
        ]);
        let name = format!("optim_{:06}_rank{r}", state["step"].to_i64()[0]);
        torch_zip::write_value(&dir.join(format!("{name}.pt")), &name, &root, &storages).unwrap();
    }
}

#[test]
fn zero2_optimizer_shards_of_two_ranks_merge_to_the_same_state() {
    let (_a, r) = imported();
    let one = checkpoint::load(&r.dir, None, 0, None).unwrap();
    let state = one.optim.unwrap();
    let table = ParamTable::new(&one.meta.model_config);
    // An upstream base dir like the fixture's, but with its optimizer state split over two ranks.
    let up = tempfile::tempdir().unwrap();
    let d = up.path().join("base_checkpoints/d4");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::create_dir_all(up.path().join("tokenizer")).unwrap();
    std::fs::copy(
        fixture().join("tokenizer/tokenizer.pkl"),
        up.path().join("tokenizer/tokenizer.pkl"),
    )
    .unwrap();
    for f in ["model_000003.pt", "meta_000003.json"] {
        std::fs::copy(fixture().join("base_checkpoints/d4").join(f), d.join(f)).unwrap();
    }
    write_zero2_shards(&d, &table, &state, 2);
    let b = tempfile::tempdir().unwrap();
    let r2 = convert::import(up.path(), b.path(), "base", None, None).unwrap();
    assert_eq!(r2.optimizer_ranks, 2);
    let merged = checkpoint::load(&r2.dir, None, 0, None).unwrap().optim.unwrap();
    assert_eq!(merged.keys().collect::<Vec<_>>(), state.keys().collect::<Vec<_>>());
    for (k, t) in &state {
        assert_eq!(&merged[k], t, "{k}");
    }
}

const WORDS: &[&str] = &[
    "the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "house", "big", "small", "red", "blue", "green",
    "tree", "over", "under", "quickly", "slowly", "jumped", "saw", "bird", "sky", "river", "stone",
];

/// A base directory with parquet shards of generated sentences, a tokenizer and token shards.
fn prepare(base: &Path) {
    let docs = sentences();
    let tok = tokenizer::Tokenizer::train(docs.iter().cloned(), 320, 64, &mut |_, _| {}).unwrap();
    std::fs::create_dir_all(base.join("tokenizer")).unwrap();
    tok.save(&base.join("tokenizer").join(tokenizer::TOKENIZER_FILE))
        .unwrap();
    write_and_tokenize(base, &docs, &tok);
}

fn sentences() -> Vec<String> {
    let mut rng = nanochat::rng::Rng::new(7);
    (0..600)
        .map(|_| {
            let n = 5 + rng.below(60) as usize;
            let w: Vec<&str> = (0..n).map(|_| WORDS[rng.below(WORDS.len() as u64) as usize]).collect();
            format!("{}.", w.join(" "))
        })
        .collect()
}

/// Parquet shards of `docs` in the default data directory, tokenized with `tok`.
fn write_and_tokenize(base: &Path, docs: &[String], tok: &tokenizer::Tokenizer) {
    use nanochat::data::{self, parquet::write_text_parquet};
    let dir = base.join(data::DEFAULT_DIR);
    std::fs::create_dir_all(&dir).unwrap();
    for (i, chunk) in docs.chunks(300).enumerate() {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        write_text_parquet(&dir.join(format!("shard_{i:05}.parquet")), &refs, 100).unwrap();
    }
    data::tokenize::tokenize_dir(&dir, &data::tokens_dir_for(&dir), tok, false).unwrap();
}

fn train_args(extra: &[&str]) -> nanochat::train::run::TrainArgs {
    use clap::Parser;
    let mut a: Vec<&str> = vec![
        "train_gpt",
        "--depth",
        "2",
        "--aspect-ratio",
        "32",
        "--head-dim",
        "32",
        "--max-seq-len",
        "64",
        "--device-batch-size",
        "4",
        "--total-batch-size",
        "256",
        "--eval-every",
        "0",
        "--eval-tokens",
        "512",
        "--sample-every",
        "0",
        "--core-metric-every",
        "0",
        "--warmup-steps",
        "2",
    ];
    a.extend(extra);
    nanochat::train::run::TrainArgs::try_parse_from(a).unwrap()
}

#[test]
fn train_gpt_resumes_from_an_imported_checkpoint_with_two_optimizer_shards() {
    use nanochat::train::run::train;
    // Train 3 steps here, write the result as upstream files with its optimizer split over two ZeRO-2 ranks,
    // import that into a fresh base directory with the same data, and continue to step 6.
    let a = tempfile::tempdir().unwrap();
    prepare(a.path());
    train(&train_args(&["--num-iterations", "3"]), a.path()).unwrap();
    let orig = checkpoint::load(&a.path().join("base_checkpoints/d2"), None, 0, None).unwrap();
    assert_eq!(orig.meta.step, 3);
    let up = tempfile::tempdir().unwrap();
    let (dir, _) = convert::export(a.path(), up.path(), "base", None, None).unwrap();
    let table = ParamTable::new(&orig.meta.model_config);
    write_zero2_shards(&dir, &table, orig.optim.as_ref().unwrap(), 2);

    let b = tempfile::tempdir().unwrap();
    prepare(b.path());
    let r = convert::import(up.path(), b.path(), "base", None, None).unwrap();
    assert_eq!((r.tag.as_str(), r.step, r.optimizer_ranks), ("d2", 3, 2));
    let got = checkpoint::load(&r.dir, None, 0, None).unwrap();
    // Upstream stores the embeddings (wte, value embeds) in bf16, so the export rounds them; the rest is exact.
    let mut want = orig.params.clone();
    for p in &table.params {
        if table.slot(p.slot).dtype == nanochat::params::StoreDtype::Compute {
            for x in &mut want[p.range.clone()] {
                *x = half::bf16::from_f32(*x).to_f32();
            }
        }
    }
    assert_ne!(want, orig.params, "the run's fp32 embeddings are not all bf16 values");
    assert_eq!(got.params, want);
    assert_eq!(
        got.optim, orig.optim,
        "optimizer state survives export, two-rank split and import"
    );
    let resumed = train(&train_args(&["--num-iterations", "6", "--resume"]), b.path()).unwrap();
    assert_eq!(
        (resumed.losses[0].0, resumed.losses.len()),
        (3, 3),
        "the resumed run starts at the imported step and runs to the end"
    );
    assert!(resumed.losses.iter().all(|(_, l)| l.is_finite()));
    assert_eq!(checkpoint::last_step(&r.dir), Some(6));
}

#[test]
fn train_gpt_resumes_upstreams_own_gqa_checkpoint_and_optimizer() {
    use clap::Parser;
    use nanochat::train::run::{train, TrainArgs};
    // The fixture as upstream wrote it (GQA 2:1, width 128, T 128, its rank-0 optimizer file), imported into
    // a base directory whose data is tokenized with the imported tokenizer.
    let b = tempfile::tempdir().unwrap();
    let r = convert::import(&fixture(), b.path(), "base", None, None).unwrap();
    assert_eq!((r.tag.as_str(), r.step, r.optimizer_ranks), ("d4", 3, 1));
    let tok = load_tokenizer(b.path()).unwrap();
    write_and_tokenize(b.path(), &sentences(), &tok);
    let args = |extra: &[&str]| {
        let mut a = vec![
            "train_gpt",
            "--depth",
            "4",
            "--aspect-ratio",
            "32",
            "--head-dim",
            "64",
            "--max-seq-len",
            "128",
            "--device-batch-size",
            "2",
            "--total-batch-size",
            "256",
            "--num-iterations",
            "5",
            "--eval-every",
            "0",
            "--sample-every",
            "0",
            "--core-metric-every",
            "0",
            "--resume",
        ];
        a.extend(extra);
        TrainArgs::try_parse_from(a).unwrap()
    };
    // Without the key/value head count the run builds another model: the error gives the flags to pass.
    let Err(e) = train(&args(&[]), b.path()) else {
        panic!("a model without GQA must not resume a GQA checkpoint")
    };
    assert!(
        e.contains("--n-kv-head 1") && e.contains("--depth 4 --aspect-ratio 32 --head-dim 64"),
        "{e}"
    );
    let resumed = train(&args(&["--n-kv-head", "1"]), b.path()).unwrap();
    let steps: Vec<usize> = resumed.losses.iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, [3, 4], "continues from upstream's step 3 to the horizon");
    // An untrained model (lm_head near 0) scores ln(512) = 6.238 on anything; upstream's 3 steps moved the
    // weights (3.18 on upstream's own text, expected.safetensors): below 6.1 here means they were taken.
    assert!(resumed.losses[0].1 < 6.1, "{:?}", resumed.losses);
    assert!(
        resumed.losses.iter().all(|(_, l)| l.is_finite()),
        "{:?}",
        resumed.losses
    );
    // Upstream recorded no smoothed loss: the smoothing starts at the imported step, so the first logged
    // smoothed loss is that step's loss (not a tenth of it debiased as if it had run since step 0).
    let metrics = std::fs::read_to_string(r.dir.join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["kind"] == "train")
        .unwrap();
    let (loss, smooth) = (first["loss"].as_f64().unwrap(), first["smooth_loss"].as_f64().unwrap());
    assert!((loss - smooth).abs() < 1e-6 * loss, "{first}");
    assert_eq!(checkpoint::last_step(&r.dir), Some(5));
    let l = checkpoint::load(&r.dir, Some(5), 0, None).unwrap();
    assert_eq!(l.meta.model_config.n_kv_head, 1);
    assert!(l.optim.is_some(), "the continued run saves its optimizer state");
}
