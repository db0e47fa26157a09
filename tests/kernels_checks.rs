//! Every kernel check of `nanochat::device::check` (each written once, next to its launcher's file, and
//! also what `kernel_bench` and the GPU self-check run) at CI sizes on the emulator, under every thread
//! schedule: one test per check, so a failure names the kernel.

use nanochat::device::check::{all, ptx_helper_checks, Check, Scale};
use nanochat::device::emu::EmuDevice;
use nanochat::device::{Device, Schedule};

/// Runs the check named `name` under every schedule (the PTX helper checks under one: they are warp-level).
fn run(name: &str) {
    let (checks, schedules) = if let Some(c) = all().into_iter().find(|c| c.name == name) {
        (c, &Schedule::ALL[..])
    } else {
        let c = ptx_helper_checks()
            .into_iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check named {name:?}"));
        (c, &[Schedule::Reverse][..])
    };
    let Check { name, run } = checks;
    for &s in schedules {
        let dev = EmuDevice::new(s);
        let summary = run(&dev as &dyn Device, Scale::Small).unwrap_or_else(|e| panic!("{name} under {s:?}: {e}"));
        assert!(summary.starts_with("ok"), "{name} under {s:?}: {summary}");
    }
}

macro_rules! check_tests {
    ($($test:ident => $name:literal,)*) => {
        $(#[test] fn $test() { run($name) })*

        /// A check added to `device::check` gets a test here.
        #[test]
        fn every_check_has_a_test() {
            let tested = [$($name),*];
            for c in all().into_iter().chain(ptx_helper_checks()) {
                assert!(tested.contains(&c.name), "no test runs the check {:?}", c.name);
            }
        }
    };
}

check_tests! {
    adamw_step => "adamw_step",
    softcap_ce => "softcap_ce",
    relu2 => "relu2_forward/backward",
    casts => "cast_f32_to_bf16/bf16_to_f32",
    adds => "add_bf16/add_f32_bf16",
    embedding => "embedding_forward/backward",
    reduce => "reduce (sum, norm)",
    rmsnorm => "rmsnorm fwd/bwd, residual mix fwd/bwd",
    rmsnorm_mix_backward => "rmsnorm_mix_backward (fused)",
    rmsnorm_backout_backward => "rmsnorm_backout_backward (fused)",
    gemm => "gemm (transposes, batches, beta)",
    gemm_on_slots => "gemm on the parameter table's slots (alignment)",
    attention_flash => "attention flash fwd/bwd (d64, d128)",
    attention_naive => "attention naive fwd/bwd",
    kv_rope_append => "kv_rope_append (per-row positions into the KV cache)",
    decode_attention => "decode_attention (KV cache, splits, combine)",
    decode_smear => "decode_smear (from the cached previous embedding)",
    rope_qknorm => "rope_qknorm fwd/bwd (strided q, k)",
    ve_gate => "ve_gate fwd/bwd",
    smear => "smear fwd/bwd",
    backout => "backout fwd/bwd",
    muon_step => "muon_step (bf16 Polar Express), cautious update",
    muon_stages => "muon stages (nesterov, eq, frobenius, plus, normuon, cautious)",
    polar_express => "polar_express (bf16, through the GEMM)",
    ptx_mma => "mma.m16n8k16 bf16 (helper, reference, loop)",
    ptx_ldmatrix => "ldmatrix x1/x2/x4 (.trans) (helper, reference)",
    ptx_pipeline => "cp.async + ldmatrix + mma pipeline",
}
