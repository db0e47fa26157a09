//! Numerical parity with upstream nanochat: reads a reference fixture (model, batch, expected loss, logits,
//! gradients and two optimizer steps, produced by upstream's PyTorch code) and compares every quantity.
//!
//! Fixture layout (a directory): `config.json` (`model`, `batch`, `seq`, `setup_optimizer_args`,
//! `optimizer_param_groups`, `steps`), `model.safetensors` (parameters under upstream names), `batch.safetensors`
//! (`inputs`, `targets`, int), `expected.safetensors` (`loss`, `logits`, `grad.<name>`, `step1.<name>`,
//! `loss_after_step1`, `step2.<name>`).

use crate::config::ModelConfig;
use crate::cpu::gpt::Storage;
use crate::cpu::model::CpuModel;
use crate::device::model::KernelModel;
use crate::model::ModelDevice;
use crate::optim::{GroupSummary, MuonAdamW, SetupArgs, StepSettings};
use crate::params::ParamTable;
use crate::safetensors::{self, File};
use serde::Deserialize;
use std::path::Path;

#[derive(Deserialize)]
struct FixtureConfig {
    model: ModelConfig,
    batch: usize,
    seq: usize,
    setup_optimizer_args: SetupArgs,
    optimizer_param_groups: Vec<GroupSummary>,
    steps: Vec<StepSettings>,
}

/// The fixture README's tolerances for one precision.
#[derive(Clone, Copy, Debug)]
pub struct Tolerances {
    pub loss_abs: f64,
    /// Logits: max abs for fp32, relative L2 for bf16.
    pub logits: f64,
    pub logits_rel_l2: bool,
    pub grad_rel_l2: f64,
    pub step_rel_update: f64,
}

impl Tolerances {
    pub const FP32: Tolerances = Tolerances {
        loss_abs: 1e-4,
        logits: 1e-3,
        logits_rel_l2: false,
        grad_rel_l2: 1e-3,
        step_rel_update: 1e-2,
    };
    pub const BF16: Tolerances = Tolerances {
        loss_abs: 2e-2,
        logits: 2e-2,
        logits_rel_l2: true,
        grad_rel_l2: 5e-2,
        step_rel_update: 1e-1,
    };
}

/// One compared quantity.
#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    pub metric: &'static str,
    pub value: f64,
    pub tolerance: f64,
    pub ok: bool,
}

fn row(name: impl Into<String>, metric: &'static str, value: f64, tolerance: f64) -> Row {
    // NaN never passes.
    Row {
        name: name.into(),
        metric,
        value,
        tolerance,
        ok: value <= tolerance,
    }
}

fn rel_l2(ours: &[f32], reference: &[f32], base: Option<&[f32]>) -> f64 {
    let mut num = 0f64;
    let mut den = 0f64;
    for i in 0..ours.len() {
        num += (ours[i] as f64 - reference[i] as f64).powi(2);
        let r = reference[i] as f64 - base.map_or(0.0, |b| b[i] as f64);
        den += r * r;
    }
    if den == 0.0 {
        // Nothing moved in the reference: ours must not move either.
        return if num == 0.0 { 0.0 } else { f64::INFINITY };
    }
    (num / den).sqrt()
}

fn tensor(file: &File, name: &str, what: &Path, len: usize) -> Result<Vec<f32>, String> {
    let t = file
        .get(name)
        .ok_or_else(|| format!("{}: tensor {name} is missing", what.display()))?;
    let v = t.to_f32();
    if v.len() != len {
        return Err(format!(
            "{}: tensor {name} has {} elements, expected {len}",
            what.display(),
            v.len()
        ));
    }
    Ok(v)
}

/// Runs the comparison on the CPU reference, with its numbers kept in `storage` between ops, and returns one
/// row per compared quantity.
pub fn run_cpu(dir: &Path, tol: Tolerances, storage: Storage) -> Result<Vec<Row>, String> {
    run(dir, tol, |cfg, p0, setup| {
        Ok(Box::new(CpuModel::new(cfg, p0, setup)?.with_storage(storage)))
    })
}

/// Runs the comparison on a kernel device (the model in bf16, see `crate::device::model`).
pub fn run_kernels(dir: &Path, tol: Tolerances, dev: Box<dyn crate::device::Device>) -> Result<Vec<Row>, String> {
    run(dir, tol, |cfg, p0, setup| {
        Ok(Box::new(KernelModel::new(dev, cfg, &p0, setup)?))
    })
}

/// A model on some device, built from the fixture's config, parameters and optimizer arguments.
type MakeModel<'a> = dyn FnOnce(&ModelConfig, Vec<f32>, &SetupArgs) -> Result<Box<dyn ModelDevice>, String> + 'a;

/// Runs the comparison on the model `make` builds and returns one row per compared quantity.
pub fn run(
    dir: &Path,
    tol: Tolerances,
    make: impl FnOnce(&ModelConfig, Vec<f32>, &SetupArgs) -> Result<Box<dyn ModelDevice>, String>,
) -> Result<Vec<Row>, String> {
    let make: Box<MakeModel> = Box::new(make);
    let cfg_path = dir.join("config.json");
    let text = std::fs::read(&cfg_path).map_err(|e| format!("{}: {e}", cfg_path.display()))?;
    let cfg: FixtureConfig =
        serde_json::from_slice(&text).map_err(|e| format!("{}: not a fixture config: {e}", cfg_path.display()))?;
    cfg.model.validate()?;
    let table = ParamTable::new(&cfg.model);
    let read = |name: &str| {
        let p = dir.join(name);
        safetensors::read(&p).map_err(|e| e.to_string()).map(|f| (f, p))
    };
    let (model_file, model_path) = read("model.safetensors")?;
    let (batch, batch_path) = read("batch.safetensors")?;
    let (expected, exp_path) = read("expected.safetensors")?;
    let p0 = safetensors::import_params(&table, &model_file, &model_path).map_err(|e| e.to_string())?;
    let (b, t) = (cfg.batch, cfg.seq);
    let n = b * t;
    let ids: Vec<u32> = tensor(&batch, "inputs", &batch_path, n)?
        .iter()
        .map(|&x| x as u32)
        .collect();
    let targets: Vec<i32> = tensor(&batch, "targets", &batch_path, n)?
        .iter()
        .map(|&x| x as i32)
        .collect();
    let mut model = make(&cfg.model, p0.clone(), &cfg.setup_optimizer_args)?;

    let mut rows = Vec::new();
    // Loss and gradients at the current parameters (the gradient buffer is empty: fresh or just stepped).
    let loss_grad = |model: &mut dyn ModelDevice| -> Result<(f32, Vec<f32>), String> {
        let loss = model.forward_backward(&ids, &targets, b, t, 1.0)?;
        Ok((loss, model.grads()?))
    };

    // Loss, logits, gradients at p0.
    let (loss, grads) = loss_grad(model.as_mut())?;
    let logits = model.logits(&ids, b, t)?;
    let ref_loss = tensor(&expected, "loss", &exp_path, 1)?[0];
    rows.push(row("loss", "abs", (loss - ref_loss).abs() as f64, tol.loss_abs));
    let ref_logits = tensor(&expected, "logits", &exp_path, n * cfg.model.vocab_size)?;
    let logit_err = if tol.logits_rel_l2 {
        rel_l2(&logits, &ref_logits, None)
    } else {
        logits
            .iter()
            .zip(&ref_logits)
            .map(|(a, b)| (a - b).abs() as f64)
            .fold(0.0, f64::max)
    };
    rows.push(row(
        "logits",
        if tol.logits_rel_l2 { "rel_l2" } else { "max_abs" },
        logit_err,
        tol.logits,
    ));
    for p in &table.params {
        let r = tensor(&expected, &format!("grad.{}", p.name), &exp_path, p.range.len())?;
        rows.push(row(
            format!("grad.{}", p.name),
            "rel_l2",
            rel_l2(&grads[p.range.clone()], &r, None),
            tol.grad_rel_l2,
        ));
    }

    // Two optimizer steps on the same batch, gradients recomputed in between.
    let groups_ok = MuonAdamW::new(&table, &cfg.setup_optimizer_args).check_groups(&cfg.optimizer_param_groups);
    if let Err(e) = &groups_ok {
        eprintln!("optimizer groups differ: {e}");
    }
    rows.push(row(
        "optimizer_param_groups",
        "mismatch",
        if groups_ok.is_ok() { 0.0 } else { 1.0 },
        0.0,
    ));
    let mut before = p0;
    for (k, settings) in cfg.steps.iter().enumerate() {
        model.step(settings)?;
        let params = model.params()?;
        for p in &table.params {
            let name = format!("step{}.{}", k + 1, p.name);
            let r = tensor(&expected, &name, &exp_path, p.range.len())?;
            let err = rel_l2(&params[p.range.clone()], &r, Some(&before[p.range.clone()]));
            rows.push(row(name, "rel_update_l2", err, tol.step_rel_update));
        }
        if k + 1 < cfg.steps.len() || k == 0 {
            let (loss, _) = loss_grad(model.as_mut())?;
            if k == 0 {
                if let Some(t) = expected.get("loss_after_step1") {
                    let r = t.to_f32().first().copied().unwrap_or(f32::NAN);
                    rows.push(row("loss_after_step1", "abs", (loss - r).abs() as f64, tol.loss_abs));
                }
            }
        }
        before = params;
    }
    Ok(rows)
}

/// Prints the rows as a table; returns whether all passed.
pub fn print_rows(rows: &[Row]) -> bool {
    println!(
        "{:<52} {:<14} {:>12} {:>10}  ok",
        "tensor", "metric", "value", "tolerance"
    );
    for r in rows {
        println!(
            "{:<52} {:<14} {:>12.3e} {:>10.1e}  {}",
            r.name,
            r.metric,
            r.value,
            r.tolerance,
            if r.ok { "yes" } else { "NO" }
        );
    }
    let failed = rows.iter().filter(|r| !r.ok).count();
    println!("{} rows, {} passed, {} failed", rows.len(), rows.len() - failed, failed);
    failed == 0
}
