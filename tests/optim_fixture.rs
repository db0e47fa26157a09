//! MuonAdamW against upstream nanochat: the groups and the first optimizer step of fixture nanochat-ref-a.

use nanochat::config::ModelConfig;
use nanochat::optim::{GroupSummary, MuonAdamW, SetupArgs, StepSettings};
use nanochat::params::ParamTable;
use nanochat::safetensors::{self, import_params, File};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
struct FixtureConfig {
    model: ModelConfig,
    setup_optimizer_args: SetupArgs,
    optimizer_param_groups: Vec<GroupSummary>,
    steps: Vec<StepSettings>,
}

struct Fixture {
    config: FixtureConfig,
    table: ParamTable,
    p0: Vec<f32>,
    expected: File,
    expected_path: PathBuf,
}

fn fixture() -> Fixture {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nanochat-ref-a");
    let text = std::fs::read_to_string(dir.join("config.json")).expect("fixture config.json");
    let config: FixtureConfig = serde_json::from_str(&text).expect("fixture config.json parses");
    let table = ParamTable::new(&config.model);
    let model_path = dir.join("model.safetensors");
    let p0 = import_params(&table, &safetensors::read(&model_path).unwrap(), &model_path).unwrap();
    let expected_path = dir.join("expected.safetensors");
    let expected = safetensors::read(&expected_path).unwrap();
    Fixture {
        config,
        table,
        p0,
        expected,
        expected_path,
    }
}

/// The tensors `<prefix>.<name>` of the expected file as one flat buffer.
fn flat(f: &Fixture, prefix: &str) -> Vec<f32> {
    let tensors = f
        .expected
        .tensors
        .iter()
        .filter_map(|(k, t)| Some((k.strip_prefix(prefix)?.to_string(), t.clone())))
        .collect();
    let file = File {
        tensors,
        metadata: Default::default(),
    };
    import_params(&f.table, &file, &f.expected_path).unwrap()
}

/// Relative-to-update L2 error per parameter: ||ours − ref|| / ||ref − p0||; returns the worst (value, name).
fn worst_update_error(f: &Fixture, ours: &[f32], reference: &[f32]) -> (f64, String) {
    let mut worst = (0.0, String::new());
    for p in &f.table.params {
        let r = p.range.clone();
        let l2 = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let update = l2(&reference[r.clone()], &f.p0[r.clone()]);
        assert!(update > 0.0, "{}: the reference step does not move it", p.name);
        let err = l2(&ours[r.clone()], &reference[r]) / update;
        println!("{:<40} {err:.3e}", p.name);
        if err > worst.0 {
            worst = (err, p.name.clone());
        }
    }
    worst
}

#[test]
fn groups_match_upstream() {
    let f = fixture();
    let opt = MuonAdamW::new(&f.table, &f.config.setup_optimizer_args);
    opt.check_groups(&f.config.optimizer_param_groups)
        .unwrap_or_else(|e| panic!("{e}"));
    // Upstream's lrs can differ from ours in the last bit (the order of the dmodel scale's multiplications).
    assert_eq!(opt.group_summaries().len(), 10);

    // A changed group is reported, naming the group.
    let mut other = f.config.optimizer_param_groups.clone();
    if let GroupSummary::Muon { params, .. } = &mut other[7] {
        params.swap(0, 1);
    }
    let e = opt.check_groups(&other).unwrap_err();
    assert!(e.contains("group 7") && e.contains("params"), "{e}");
}

#[test]
fn first_step_matches_upstream() {
    let f = fixture();
    let grads = flat(&f, "grad.");
    let step1 = flat(&f, "step1.");
    let mut opt = MuonAdamW::new(&f.table, &f.config.setup_optimizer_args);
    let mut params = f.p0.clone();
    opt.step(&mut params, &grads, &f.config.steps[0]);
    assert_eq!(opt.step_count(), 1);
    let (worst, name) = worst_update_error(&f, &params, &step1);
    println!("worst relative-to-update L2: {worst:.3e} ({name})");
    assert!(worst < 1e-2, "step 1: {name} is off by {worst:.3e} of its update");
}

#[test]
fn first_step_with_bf16_orthogonalization_stays_close() {
    // The device path rounds the orthogonalisation to bf16; the kernels' tolerance is 1e-1 of the update.
    let f = fixture();
    let grads = flat(&f, "grad.");
    let step1 = flat(&f, "step1.");
    let mut opt = MuonAdamW::new(&f.table, &f.config.setup_optimizer_args);
    opt.bf16_orthogonalization = true;
    let mut params = f.p0.clone();
    opt.step(&mut params, &grads, &f.config.steps[0]);
    let (worst, name) = worst_update_error(&f, &params, &step1);
    println!("bf16: worst relative-to-update L2: {worst:.3e} ({name})");
    assert!(worst < 1e-1, "bf16 step 1: {name} is off by {worst:.3e}");
    assert!(worst > 0.0);
}
