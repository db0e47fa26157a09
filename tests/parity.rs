//! Parity with upstream nanochat on the two shipped fixtures (`nanochat-ref-a`, and `nanochat-ref-c`: GQA 3:1,
//! five layers, vocabulary 1000 padded to 1024, "SSL", T 192): the CPU reference within about ten times the
//! errors it achieves (far tighter than the fixtures' suggested fp32 limits, so an accuracy regression fails),
//! the kernels (run by the emulator) with bf16 tolerances. Also the `parity` binary on fixtures of other shapes
//! that `write_fixture` makes from this implementation's own CPU numbers: those check the kernels against the
//! CPU reference and the binary's handling of shapes, not agreement with upstream.

use nanochat::config::ModelConfig;
use nanochat::cpu::gpt::{Gpt, Storage};
use nanochat::optim::{MuonAdamW, SetupArgs, StepSettings};
use nanochat::parity::{self, Tolerances};
use nanochat::rng::Rng;
use nanochat::safetensors::{self, Tensor};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

const FIXTURE: &str = "tests/fixtures/nanochat-ref-a";
const FIXTURE_C: &str = "tests/fixtures/nanochat-ref-c";

/// About ten times what the CPU reference achieves on nanochat-ref-a (loss exact, one float ulp is 5e-7;
/// logits 1.2e-6; gradients at most 1.6e-6 relative L2; steps at most 3.3e-4 of the update). The fixture's
/// suggested limits (`Tolerances::FP32`: 1e-4, 1e-3, 1e-3, 1e-2) are hundreds of times looser.
const ACHIEVED_A: Tolerances = Tolerances {
    loss_abs: 1e-6,
    logits: 1.5e-5,
    logits_rel_l2: false,
    grad_rel_l2: 2e-5,
    step_rel_update: 3e-3,
};

/// The same for nanochat-ref-c (loss 4.8e-7, logits 1.8e-6, gradients at most 2.8e-5 (x0_lambdas, a dot
/// product with heavy cancellation; the others below 3e-6), steps at most 4.7e-4).
const ACHIEVED_C: Tolerances = Tolerances {
    loss_abs: 5e-6,
    logits: 2e-5,
    logits_rel_l2: false,
    grad_rel_l2: 3e-4,
    step_rel_update: 5e-3,
};

fn failed(rows: &[parity::Row]) -> Vec<&parity::Row> {
    rows.iter().filter(|r| !r.ok).collect()
}

#[test]
fn upstream_fixture_passes_on_cpu() {
    let rows = parity::run_cpu(Path::new(FIXTURE), ACHIEVED_A, Storage::F32).unwrap();
    // loss, logits, 35 grads, groups, 2 x 35 steps, loss_after_step1
    assert_eq!(rows.len(), 1 + 1 + 35 + 1 + 70 + 1);
    assert!(failed(&rows).is_empty(), "{:#?}", failed(&rows));
}

#[test]
fn upstream_fixture_c_passes_on_cpu() {
    let rows = parity::run_cpu(Path::new(FIXTURE_C), ACHIEVED_C, Storage::F32).unwrap();
    // loss, logits, 43 grads (5 layers, value embeddings on 3 of them), groups, 2 x 43 steps, loss_after_step1
    assert_eq!(rows.len(), 1 + 1 + 43 + 1 + 86 + 1);
    assert!(failed(&rows).is_empty(), "{:#?}", failed(&rows));
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    for n in [
        "grad.transformer.h.4.attn.c_k.weight",
        "grad.value_embeds.4.weight",
        "step2.transformer.h.4.attn.ve_gate.weight",
    ] {
        assert!(names.contains(&n), "{n} not compared: {names:?}");
    }
}

#[test]
fn the_cpu_limits_catch_a_small_logits_or_gradient_error() {
    // An error of 1e-4 in one logit, or of 1e-4 relative L2 in one gradient, passes the fixture's suggested
    // limits but not the achieved-error limits above.
    let tmp = fixture_copy();
    let path = tmp.path().join("expected.safetensors");
    let mut exp = safetensors::read(&path).unwrap();
    let mut logits = exp.get("logits").unwrap().to_f32();
    logits[1234] += 1e-4;
    let shape = exp.get("logits").unwrap().shape.clone();
    exp.tensors.insert("logits".into(), Tensor::from_f32(shape, &logits));
    let name = "grad.transformer.h.2.mlp.c_proj.weight";
    let mut g = exp.get(name).unwrap().to_f32();
    let norm = g.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    g[99] += (1e-4 * norm) as f32;
    let shape = exp.get(name).unwrap().shape.clone();
    exp.tensors.insert(name.into(), Tensor::from_f32(shape, &g));
    safetensors::write(&path, &exp.tensors, &exp.metadata).unwrap();
    let loose = parity::run_cpu(tmp.path(), Tolerances::FP32, Storage::F32).unwrap();
    assert!(failed(&loose).is_empty(), "{:#?}", failed(&loose));
    let tight = parity::run_cpu(tmp.path(), ACHIEVED_A, Storage::F32).unwrap();
    let names: Vec<&str> = failed(&tight).iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["logits", name]);
}

/// Writes a fixture for `cfg` in upstream's format with this implementation's own numbers: it tests the kernels
/// against the CPU reference and the binary on other shapes, not agreement with upstream.
#[allow(clippy::needless_range_loop)] // k is the step number, also used to name the fixture tensors
fn write_fixture(dir: &Path, cfg: &ModelConfig, b: usize, t: usize) {
    let gpt = Gpt::new(cfg).unwrap();
    let mut rng = Rng::new(3);
    let mut p0 = vec![0.0; gpt.table.numel];
    gpt.table.init(&mut p0, 1);
    p0.iter_mut().for_each(|p| *p += 0.02 * rng.normal());
    let v = cfg.vocab_size as u64;
    let ids: Vec<i32> = (0..b * t).map(|_| rng.below(v) as i32).collect();
    let targets: Vec<i32> = (0..b * t)
        .map(|i| if i < 4 { -1 } else { rng.below(v) as i32 })
        .collect();
    let ids_u: Vec<u32> = ids.iter().map(|&x| x as u32).collect();

    let args = SetupArgs {
        unembedding_lr: 0.008,
        embedding_lr: 0.3,
        matrix_lr: 0.02,
        weight_decay: 0.28,
        scalar_lr: 0.5,
    };
    let steps = [
        StepSettings {
            lr_multiplier: 0.025,
            muon_momentum: 0.85,
            muon_weight_decay: 0.28,
        },
        StepSettings {
            lr_multiplier: 0.05,
            muon_momentum: 0.8503,
            muon_weight_decay: 0.2799993,
        },
    ];
    let mut opt = MuonAdamW::new(&gpt.table, &args);
    let mut exp = BTreeMap::new();
    let mut params = p0.clone();
    for k in 0..=2 {
        let fwd = gpt.forward(&params, &ids_u, Some(&targets), b, t).unwrap();
        let mut grads = vec![0.0; params.len()];
        gpt.backward(&params, &fwd, &Gpt::mean_dloss(&fwd), &mut grads);
        match k {
            0 => {
                exp.insert("loss".to_string(), Tensor::from_f32(vec![1], &[fwd.loss]));
                exp.insert(
                    "logits".into(),
                    Tensor::from_f32(vec![b, t, cfg.vocab_size], &fwd.logits_unpadded(cfg.vocab_size)),
                );
                for p in &gpt.table.params {
                    exp.insert(
                        format!("grad.{}", p.name),
                        Tensor::from_f32(p.shape.clone(), &grads[p.range.clone()]),
                    );
                }
            }
            1 => {
                exp.insert("loss_after_step1".into(), Tensor::from_f32(vec![1], &[fwd.loss]));
            }
            _ => break,
        }
        opt.step(&mut params, &grads, &steps[k]);
        for p in &gpt.table.params {
            exp.insert(
                format!("step{}.{}", k + 1, p.name),
                Tensor::from_f32(p.shape.clone(), &params[p.range.clone()]),
            );
        }
    }
    let none = BTreeMap::new();
    safetensors::write(&dir.join("expected.safetensors"), &exp, &none).unwrap();
    safetensors::export_params(
        &gpt.table,
        &p0,
        &dir.join("model.safetensors"),
        safetensors::ExportDtype::F32,
    )
    .unwrap();
    let mut batch = BTreeMap::new();
    batch.insert("inputs".to_string(), Tensor::from_i32(vec![b, t], &ids));
    batch.insert("targets".to_string(), Tensor::from_i32(vec![b, t], &targets));
    safetensors::write(&dir.join("batch.safetensors"), &batch, &none).unwrap();
    let config = serde_json::json!({
        "model": cfg, "batch": b, "seq": t,
        "setup_optimizer_args": args,
        "optimizer_param_groups": opt_groups(&gpt, &args),
        "steps": [
            {"it": 0, "lr_multiplier": 0.025, "muon_momentum": 0.85, "muon_weight_decay": 0.28},
            {"it": 1, "lr_multiplier": 0.05, "muon_momentum": 0.8503, "muon_weight_decay": 0.2799993}
        ],
    });
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config).unwrap()).unwrap();
}

fn opt_groups(gpt: &Gpt, args: &SetupArgs) -> serde_json::Value {
    serde_json::to_value(MuonAdamW::new(&gpt.table, args).group_summaries()).unwrap()
}

fn run_parity(dir: &Path) -> (i32, String) {
    run_parity_on(dir, "cpu")
}

fn run_parity_on(dir: &Path, device: &str) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_parity"))
        .arg(dir)
        .args(["--device", device])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn binary_accepts_other_fixture_shapes_and_detects_mismatches() {
    let cfg = ModelConfig {
        sequence_len: 320,
        vocab_size: 700,
        n_layer: 3,
        n_head: 4,
        n_kv_head: 2,
        n_embd: 64,
        window_pattern: "SL".into(),
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_fixture(dir, &cfg, 2, 320);
    let (code, text) = run_parity(dir);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("grad.transformer.h.0.attn.ve_gate.weight"), "{text}");
    assert!(text.contains("value_embeds.2.weight"), "{text}");

    // A wrong gradient in the reference makes that row, and the run, fail.
    let path = dir.join("expected.safetensors");
    let mut exp = safetensors::read(&path).unwrap();
    let name = "grad.transformer.h.1.mlp.c_fc.weight";
    let mut g = exp.get(name).unwrap().to_f32();
    g[7] += 1.0;
    let shape = exp.get(name).unwrap().shape.clone();
    exp.tensors.insert(name.into(), Tensor::from_f32(shape, &g));
    safetensors::write(&path, &exp.tensors, &exp.metadata).unwrap();
    let (code, text) = run_parity(dir);
    assert_eq!(code, 1, "{text}");
    let bad = text.lines().find(|l| l.starts_with(name)).unwrap();
    assert!(bad.ends_with("NO"), "{bad}");

    // A missing file is a clear error naming it.
    std::fs::remove_file(dir.join("batch.safetensors")).unwrap();
    let (code, text) = run_parity(dir);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("batch.safetensors"), "{text}");
}

#[test]
fn the_upstream_fixture_models_group_order() {
    // Muon groups sorted by shape; ve_gate (Hkv, 12) first.
    let text = std::fs::read_to_string(Path::new(FIXTURE).join("config.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cfg: ModelConfig = serde_json::from_value(v["model"].clone()).unwrap();
    let gpt = Gpt::new(&cfg).unwrap();
    let args: SetupArgs = serde_json::from_value(v["setup_optimizer_args"].clone()).unwrap();
    assert_eq!(
        opt_groups(&gpt, &args)[6]["params"][0],
        "transformer.h.1.attn.ve_gate.weight"
    );
}

/// Copies the shipped fixture into a temporary directory so a test can damage it.
fn fixture_copy() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "batch.safetensors",
        "expected.safetensors",
    ] {
        std::fs::copy(Path::new(FIXTURE).join(f), tmp.path().join(f)).unwrap();
    }
    tmp
}

#[test]
fn malformed_fixtures_give_clear_errors() {
    // Missing parameter in the model file.
    let tmp = fixture_copy();
    let path = tmp.path().join("model.safetensors");
    let mut model = safetensors::read(&path).unwrap();
    model.tensors.remove("transformer.h.2.mlp.c_fc.weight");
    safetensors::write(&path, &model.tensors, &model.metadata).unwrap();
    let (code, text) = run_parity(tmp.path());
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("transformer.h.2.mlp.c_fc.weight") && text.contains("missing"),
        "{text}"
    );

    // Wrong shape.
    let tmp = fixture_copy();
    let path = tmp.path().join("model.safetensors");
    let mut model = safetensors::read(&path).unwrap();
    model
        .tensors
        .insert("smear_gate.weight".into(), Tensor::from_f32(vec![1, 12], &[0.0; 12]));
    safetensors::write(&path, &model.tensors, &model.metadata).unwrap();
    let (code, text) = run_parity(tmp.path());
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("smear_gate.weight") && text.contains("[1, 12]"), "{text}");

    // Truncated expected file.
    let tmp = fixture_copy();
    let path = tmp.path().join("expected.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    let (code, text) = run_parity(tmp.path());
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("expected.safetensors"), "{text}");

    // An expected tensor missing, a batch with an id outside the vocabulary, a broken config.
    let tmp = fixture_copy();
    let path = tmp.path().join("expected.safetensors");
    let mut exp = safetensors::read(&path).unwrap();
    exp.tensors.remove("grad.lm_head.weight");
    safetensors::write(&path, &exp.tensors, &exp.metadata).unwrap();
    let (code, text) = run_parity(tmp.path());
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("grad.lm_head.weight is missing"), "{text}");

    let tmp = fixture_copy();
    let path = tmp.path().join("batch.safetensors");
    let mut batch = safetensors::read(&path).unwrap();
    let mut ids: Vec<i32> = batch
        .get("inputs")
        .unwrap()
        .to_i64()
        .iter()
        .map(|&x| x as i32)
        .collect();
    ids[3] = 9999;
    batch
        .tensors
        .insert("inputs".into(), Tensor::from_i32(vec![2, 256], &ids));
    safetensors::write(&path, &batch.tensors, &batch.metadata).unwrap();
    let (code, text) = run_parity(tmp.path());
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("token id 9999"), "{text}");

    let tmp = fixture_copy();
    std::fs::write(tmp.path().join("config.json"), "{\"model\": {}}").unwrap();
    let (code, text) = run_parity(tmp.path());
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("config.json"), "{text}");
}

/// Every row of a bf16 run passes except, possibly, the two kinds of step that amplify bf16 noise, and those
/// only by a little (see the README's "Precision"): AdamW's first steps of the embedding tables (at step 1
/// every element moves by ±lr, m̂/√v̂ = sign g, so an element whose reference gradient is smaller than the
/// bf16 error flips its update) and Muon's step of the tiny (Hkv, 12) value-embedding gates (bf16
/// orthogonalisation alone, with exact gradients, is 6% off the fp32 reference there).
/// The kernels against the fixture, judged against the CPU reference that only rounds to bf16 where the
/// kernels store bf16 (`Storage::Bf16`): on every row the kernels are no worse than that floor (up to rounding
/// order), and they fail a row only where bf16 storage alone is at or past the tolerance.
fn check_bf16_rows(dir: &Path) -> Vec<parity::Row> {
    let dev = nanochat::backend::Backend::Emu
        .kernel_device(nanochat::device::Schedule::Forward)
        .unwrap();
    let kernels = parity::run_kernels(dir, Tolerances::BF16, dev).unwrap();
    let floor = parity::run_cpu(dir, Tolerances::BF16, Storage::Bf16).unwrap();
    let expected = 1 + 1 + kernels.iter().filter(|r| r.name.starts_with("grad.")).count();
    assert!(kernels.len() > expected, "too few rows: {kernels:#?}");
    assert_eq!(kernels.len(), floor.len());
    for (k, f) in kernels.iter().zip(&floor) {
        assert_eq!(k.name, f.name);
        // The scalars' gradients (resid/x0/smear/backout lambdas) are sums over every activation with heavy
        // cancellation: their bf16 error is noise whose size depends on the rounding order, so one run's value
        // is no floor for another's; those rows (and the steps they drive) face the tolerance only.
        let cancelling = k.name.contains("lambda");
        // Muon's steps of the tiny (Hkv, 12) value-embedding gates turn any bf16 error upstream of them (their
        // gradient's, and at step 2 every parameter's step 1) into a 10-17% update error (README,
        // "Precision"): whether a rounding order lands low or high is luck, so the CPU's value is no floor for
        // the kernels' either. They face twice the tolerance: a wrong update is off by order one.
        if k.name.starts_with("step") && k.name.contains("ve_gate") {
            assert!(k.value <= 2.0 * k.tolerance, "kernels {k:?} (bf16 storage {f:?})");
            continue;
        }
        assert!(
            cancelling || k.value <= 1.5 * f.value + 0.25 * k.tolerance,
            "kernels {k:?} against bf16 storage {f:?}"
        );
        if !k.ok {
            eprintln!(
                "{}: kernels {:.3e}, bf16 storage {:.3e}, tolerance {:.1e}",
                k.name, k.value, f.value, k.tolerance
            );
            assert!(
                f.value > 0.8 * f.tolerance,
                "kernels {k:?} fail where bf16 storage passes: {f:?}"
            );
        }
    }
    kernels
}

#[test]
fn upstream_fixture_on_the_kernels() {
    let rows = check_bf16_rows(Path::new(FIXTURE));
    assert_eq!(rows.len(), 1 + 1 + 35 + 1 + 70 + 1);
    let get = |name: &str| rows.iter().find(|r| r.name == name).unwrap().value;
    // Far inside the tolerances where bf16 has no excuse.
    assert!(get("loss") < 2e-3, "{}", get("loss"));
    assert!(get("logits") < 1e-2, "{}", get("logits"));
}

#[test]
fn kernels_on_other_fixture_shapes() {
    // GQA 4/2, odd depth, padded vocabulary, "SL", T = 320 not a multiple of the attention tile; head_dim 64
    // (flash kernels) and 32 (the naive kernels). These fixtures hold this implementation's CPU numbers: the
    // kernels against the CPU reference, not against upstream.
    for (n_embd, n_head) in [(256, 4), (64, 2)] {
        let cfg = ModelConfig {
            sequence_len: 320,
            vocab_size: 700,
            n_layer: 3,
            n_head,
            n_kv_head: n_head / 2,
            n_embd,
            window_pattern: "SL".into(),
        };
        let tmp = tempfile::tempdir().unwrap();
        write_fixture(tmp.path(), &cfg, 1, 320);
        check_bf16_rows(tmp.path());
    }
}

/// The rows of nanochat-ref-c at the bf16 floor (its README): the CPU reference that only rounds to bf16 where
/// the kernels store bf16 fails exactly these, so no bf16 kernel set can pass them. x0_lambdas' gradient is a
/// dot product with heavy cancellation (38% off in bf16), its sign flips move AdamW's first step, and the
/// step-2 smear gate follows; the value-embedding rows are AdamW's first steps of embedding tables (README,
/// "Precision").
const REF_C_BF16_FLOOR: [&str; 7] = [
    "grad.x0_lambdas",
    "step1.value_embeds.0.weight",
    "step1.value_embeds.2.weight",
    "step1.value_embeds.4.weight",
    "step1.x0_lambdas",
    "step2.x0_lambdas",
    "step2.smear_gate.weight",
];

/// Rows of nanochat-ref-c whose bf16-storage error sits right at the tolerance (step 2 of a value-embedding
/// table: 0.0997 against 0.1), so they pass or fail with the rounding order: allowed either way.
const REF_C_BF16_BORDERLINE: [&str; 1] = ["step2.value_embeds.4.weight"];

#[test]
fn upstream_fixture_c_on_the_kernels() {
    let dir = Path::new(FIXTURE_C);
    let floor = parity::run_cpu(dir, Tolerances::BF16, Storage::Bf16).unwrap();
    let floor_failed: Vec<&str> = failed(&floor)
        .iter()
        .map(|r| r.name.as_str())
        .filter(|n| !REF_C_BF16_BORDERLINE.contains(n))
        .collect();
    assert_eq!(floor_failed, REF_C_BF16_FLOOR);
    let dev = nanochat::backend::Backend::Emu
        .kernel_device(nanochat::device::Schedule::Forward)
        .unwrap();
    let kernels = parity::run_kernels(dir, Tolerances::BF16, dev).unwrap();
    assert_eq!(kernels.len(), 133);
    // Every row outside the floor passes the bf16 tolerance.
    let bad: Vec<_> = failed(&kernels)
        .into_iter()
        .filter(|r| !REF_C_BF16_FLOOR.contains(&r.name.as_str()) && !REF_C_BF16_BORDERLINE.contains(&r.name.as_str()))
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
    let get = |name: &str| kernels.iter().find(|r| r.name == name).unwrap().value;
    assert!(get("loss") < 2e-3, "{}", get("loss"));
    assert!(get("logits") < 1e-2, "{}", get("logits"));
}

#[test]
fn binary_on_the_emulator() {
    let (code, text) = run_parity_on(Path::new(FIXTURE), "emu");
    // A row may fail (exit 1) only where bf16 storage alone fails it too (`--device cpu-bf16`).
    assert!(code == 0 || code == 1, "{text}");
    assert!(text.contains("109 rows"), "{text}");
    let (floor_code, floor) = run_parity_on(Path::new(FIXTURE), "cpu-bf16");
    assert!(floor_code == 0 || floor_code == 1, "{floor}");
    for line in text.lines().filter(|l| l.ends_with("NO")) {
        let name = line.split_whitespace().next().unwrap();
        let floor_row = floor
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} missing:\n{floor}"));
        let f: Vec<f64> = floor_row
            .split_whitespace()
            .skip(2)
            .take(2)
            .map(|v| v.parse().unwrap())
            .collect();
        assert!(f[0] > 0.8 * f[1], "{line}\nbf16 storage: {floor_row}");
    }
    // No GPU here: --device cuda is a clear error, not a crash.
    if !nanochat::device::cuda::driver_present() {
        let (code, text) = run_parity_on(Path::new(FIXTURE), "cuda");
        assert_eq!(code, 2, "{text}");
        assert!(text.contains("--device cuda"), "{text}");
    }
}
