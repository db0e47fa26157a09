//! The step projection (`device::projection`) over a recorded step: its FLOPs add up to the model's
//! `flops_per_token × tokens` (spec §1.7), every op of the step is priced, counters derate what they
//! measure, and the report names the five largest gaps.

use nanochat::device::projection::{report, speedrun, Counters, Kind, Resources, StepProjection};
use nanochat::device::record::{record_step, Op, RecordDevice};

fn project(
    depth: usize,
    world: usize,
    counters: &Counters,
) -> (StepProjection, Vec<nanochat::device::record::Recorded>) {
    let (cfg, plan) = speedrun(depth, world).unwrap();
    let ops = record_step(RecordDevice::dry(), &cfg, &plan).unwrap();
    let p = StepProjection::price("d12", &cfg, &plan, &ops, &Resources::built_in(), counters).unwrap();
    (p, ops)
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b
}

#[test]
fn step_flops_add_up_to_the_model_formula() {
    for world in [8, 1] {
        let (p, ops) = project(12, world, &Counters::default());
        let want = p.config.flops_per_token() * p.plan.tokens_per_gpu() as f64;
        let got = p.model_flops();
        // The only matmul parameters not in a GEMM or the attention are the tiny smear and VE gates (4e-6).
        assert!(
            rel(got, want) < 1e-4,
            "world {world}: {got:e} FLOPs priced, the model counts {want:e}"
        );
        // Executed FLOPs exceed the model's count by the optimizer's GEMMs and the attention's recomputation,
        // and fall short of it by the causal half of the attention: within a few tens of percent.
        let exec: f64 = p.ops.iter().map(|x| x.cost.flops).sum();
        assert!(exec > 0.8 * want && exec < 1.3 * want, "executed {exec:e} vs {want:e}");

        // One forward GEMM fewer (of one micro-batch: 2e-4 of the step on one GPU) is a visible shortfall.
        let first = ops.iter().position(|r| matches!(r.op, Op::Gemm(_))).unwrap();
        let mut planted = ops.clone();
        planted.remove(first);
        let q = StepProjection::price(
            "d12",
            &p.config,
            &p.plan,
            &planted,
            &Resources::built_in(),
            &Counters::default(),
        )
        .unwrap();
        assert!(
            rel(q.model_flops(), want) > 1e-4,
            "a missing GEMM went unnoticed: {:?}",
            ops[first]
        );

        // Projected times are at least the roofline, per op and per GPU; the H200's bandwidth helps.
        for x in &p.ops {
            for t in &x.times {
                assert!(t.projected_s >= t.roofline_s && t.roofline_s >= 0.0, "{:?}", x.cost);
            }
        }
        let (h100, h200) = (p.totals(0), p.totals(1));
        assert!(h200.projected_s < h100.projected_s && h100.mfu > 0.0 && h100.mfu < h100.roofline_mfu);
        assert_eq!(world > 1, p.ops.iter().any(|x| x.cost.kind == Kind::Collective));
    }
}

#[test]
fn counters_derate_what_they_measure_and_the_report_names_five_gaps() {
    let (plain, _) = project(12, 8, &Counters::default());
    let counters = Counters::parse(
        "{\"kernel\":\"relu2_forward\",\"shape\":\"s\",\"sectors_per_request\":8,\"ideal_sectors_per_request\":4}",
    )
    .unwrap();
    let (derated, _) = project(12, 8, &counters);
    let time = |p: &StepProjection, name: &str| -> f64 {
        p.families()
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.projected_s[0])
            .unwrap()
    };
    // relu2 is memory-bound: twice the sectors, about twice the time; nothing else moves.
    let ratio = time(&derated, "relu2_forward") / time(&plain, "relu2_forward");
    assert!(ratio > 1.8 && ratio < 2.01, "relu2_forward: {ratio}");
    assert_eq!(time(&derated, "relu2_backward"), time(&plain, "relu2_backward"));

    let md = report(&[derated], Some("counters.json"), false);
    assert!(md.contains("## Step projection") && md.contains("counters.json"));
    for i in 1..=5 {
        assert!(md.contains(&format!("\n{i}. **")), "gap {i} missing");
    }
    assert!(md.contains("| relu2_forward |") && md.contains("measured"));
}
