//! The launch recorder (`device::record`): a dry recording of a training step is the sequence of kernels the
//! emulator executes for the same step, and the sharded step records its collectives and only its share of
//! the optimizer.

use nanochat::config::ModelConfig;
use nanochat::device::emu::EmuDevice;
use nanochat::device::record::{record_step, Op, RecordDevice, Recorded, StepPlan};
use nanochat::device::{Arg, Schedule};

fn tiny() -> ModelConfig {
    // Two layers (one short window, one long), head_dim 64 (the flash kernels), value embeddings on both.
    ModelConfig::from_depth(2, 64, 64, 64, 512, "SL")
}

/// What must agree between two recordings: everything but the device addresses.
fn shape_of(r: &Recorded) -> String {
    match &r.op {
        Op::Launch {
            name,
            grid,
            block,
            smem,
            args,
        } => {
            let scalars: Vec<String> = args
                .iter()
                .filter(|a| !matches!(a, Arg::Ptr(_)))
                .map(|a| format!("{a:?}"))
                .collect();
            format!("{} {name} {grid:?} {block:?} {smem} {}", r.phase, scalars.join(","))
        }
        Op::Gemm(g) => format!(
            "{} gemm {}x{}x{} {:?}{:?} ld {} {} {} {:?} a{} b{} batch {} strides {} {} {}",
            r.phase,
            g.m,
            g.n,
            g.k,
            g.op_a,
            g.op_b,
            g.lda,
            g.ldb,
            g.ldc,
            g.c_dtype,
            g.alpha,
            g.beta,
            g.batch,
            g.stride_a,
            g.stride_b,
            g.stride_c
        ),
        other => format!("{} {other:?}", r.phase),
    }
}

#[test]
fn dry_recording_matches_what_the_emulator_executes() {
    let cfg = tiny();
    let plan = StepPlan {
        device_batch: 2,
        seq: 64,
        grad_accum: 2,
        world: 1,
    };
    let dry = record_step(RecordDevice::dry(), &cfg, &plan).unwrap();

    let emu = EmuDevice::new(Schedule::Forward);
    let executed = emu.sync_log();
    let dev = RecordDevice::wrapping(Box::new(emu));
    let log = dev.log();
    let wet = record_step(dev, &cfg, &plan).unwrap();
    // Every kernel the emulator ran went through the recorder, setup included.
    assert_eq!(log.kernels_ever(), executed.ops());

    let (a, b): (Vec<String>, Vec<String>) = (dry.iter().map(shape_of).collect(), wet.iter().map(shape_of).collect());
    assert_eq!(a.len(), b.len(), "dry and executed recordings differ in length");
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x, y, "op {i} differs");
    }

    // The step has all three phases, each micro-batch the same forward and backward.
    let count = |phase: &str| dry.iter().filter(|r| r.phase == phase && r.op.is_kernel()).count();
    let (f, bw, o) = (count("forward"), count("backward"), count("optimizer"));
    assert!(f > 0 && bw > f && o > 0, "forward {f}, backward {bw}, optimizer {o}");
    assert_eq!(f % plan.grad_accum, 0);
    let launched = |name: &str| {
        dry.iter()
            .filter(|r| matches!(&r.op, Op::Launch { name: n, .. } if n == name))
            .count()
    };
    // One flash forward per layer and micro-batch; one Nesterov launch per Muon stack.
    assert_eq!(launched("attention_flash_forward_d64"), cfg.n_layer * plan.grad_accum);
    assert!(launched("muon_nesterov") >= 1);
    assert!(dry.iter().all(|r| !matches!(r.op, Op::Collective { .. })));
}

#[test]
fn sharded_step_records_collectives_and_its_share_of_the_optimizer() {
    let cfg = ModelConfig::from_depth(4, 64, 64, 64, 512, "SSSL");
    let one = StepPlan {
        device_batch: 1,
        seq: 64,
        grad_accum: 1,
        world: 1,
    };
    let four = StepPlan { world: 4, ..one };
    let solo = record_step(RecordDevice::dry(), &cfg, &one).unwrap();
    let rank0 = record_step(RecordDevice::dry(), &cfg, &four).unwrap();
    let muon_rows = |ops: &[Recorded]| -> i64 {
        ops.iter()
            .filter_map(|r| match &r.op {
                Op::Launch { name, args, .. } if name == "muon_nesterov" => match args[3] {
                    Arg::I64(n) => Some(n),
                    _ => None,
                },
                _ => None,
            })
            .sum()
    };
    // Each Muon group's matrices are chunked over four ranks (rank 0 takes a chunk rounded up): about a quarter.
    let (r, s) = (muon_rows(&rank0), muon_rows(&solo));
    assert!(4 * r >= s && 3 * r < s, "rank 0 updates {r} of {s} Muon elements");
    let kinds: Vec<&str> = rank0
        .iter()
        .filter_map(|r| match r.op {
            Op::Collective { kind, world, .. } => {
                assert_eq!(world, 4);
                Some(kind)
            }
            _ => None,
        })
        .collect();
    assert!(
        kinds.contains(&"reduce_scatter") && kinds.contains(&"all_gather"),
        "{kinds:?}"
    );
    // Forward and backward do not depend on the sharding.
    let fwd = |ops: &[Recorded]| ops.iter().filter(|r| r.phase != "optimizer").count();
    assert_eq!(fwd(&solo), fwd(&rank0));
}
