//! Optimizer state for checkpoints: a save/load round trip resumes bit for bit; bad state is a clear error.

use nanochat::config::ModelConfig;
use nanochat::optim::{MuonAdamW, SetupArgs, StepSettings};
use nanochat::params::ParamTable;
use nanochat::rng::Rng;
use nanochat::safetensors::{self, Dtype, Tensor};
use std::collections::BTreeMap;

fn config(n_kv_head: usize) -> ModelConfig {
    ModelConfig {
        sequence_len: 64,
        vocab_size: 100,
        n_layer: 3,
        n_head: 2,
        n_kv_head,
        n_embd: 64,
        window_pattern: "SL".into(),
    }
}

fn grads(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.normal()).collect()
}

const S: StepSettings = StepSettings {
    lr_multiplier: 0.5,
    muon_momentum: 0.9,
    muon_weight_decay: 0.2,
};

#[test]
fn saved_state_resumes_bit_for_bit() {
    let t = ParamTable::new(&config(1));
    let args = SetupArgs::default();
    let mut a = MuonAdamW::new(&t, &args);
    let mut p = vec![0.0; t.numel];
    t.init(&mut p, 9);
    for k in 0..2 {
        a.step(&mut p, &grads(t.numel, k), &S);
    }
    // Through a real file, as a checkpoint would.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("optim.safetensors");
    safetensors::write(&path, &a.state_tensors(), &BTreeMap::new()).unwrap();
    let loaded = safetensors::read(&path).unwrap().tensors;
    assert_eq!(loaded["step"].dtype, Dtype::I64);
    assert_eq!(
        loaded["second_momentum_buffer.transformer.h.0.mlp.c_fc.weight"].shape,
        vec![256, 1]
    );
    assert_eq!(
        loaded["second_momentum_buffer.transformer.h.0.attn.c_k.weight"].shape,
        vec![1, 64]
    );
    assert!(loaded.contains_key("exp_avg_sq.value_embeds.2.weight"));

    let mut b = MuonAdamW::new(&t, &args);
    b.load_state_tensors(&loaded).unwrap();
    assert_eq!(b.step_count(), 2);
    let mut q = p.clone();
    for k in 2..4 {
        let g = grads(t.numel, k);
        a.step(&mut p, &g, &S);
        b.step(&mut q, &g, &S);
    }
    assert!(p.iter().zip(&q).all(|(x, y)| x.to_bits() == y.to_bits()));
    assert_eq!(a.state_tensors(), b.state_tensors());

    // A fresh optimizer (no state) does not reproduce the run: the state matters.
    let mut c = MuonAdamW::new(&t, &args);
    let mut r = vec![0.0; t.numel];
    t.init(&mut r, 9);
    c.step(&mut r, &grads(t.numel, 0), &S);
    assert_ne!(c.state_tensors(), a.state_tensors());
}

#[test]
fn bad_state_is_a_clear_error_and_changes_nothing() {
    let t = ParamTable::new(&config(1));
    let mut opt = MuonAdamW::new(&t, &SetupArgs::default());
    let mut p = vec![0.0; t.numel];
    t.init(&mut p, 1);
    opt.step(&mut p, &grads(t.numel, 1), &S);
    let good = opt.state_tensors();

    let expect_err = |opt: &mut MuonAdamW, state: BTreeMap<String, Tensor>, needle: &str| {
        let e = opt.load_state_tensors(&state).unwrap_err();
        assert!(e.contains(needle), "error '{e}' should mention '{needle}'");
        assert_eq!(opt.state_tensors(), good, "a failed load must not change the state");
    };
    let mut fresh = MuonAdamW::new(&t, &SetupArgs::default());
    let empty = fresh.state_tensors();

    let mut s = good.clone();
    s.remove("exp_avg.lm_head.weight");
    expect_err(&mut opt, s, "exp_avg.lm_head.weight");

    let mut s = good.clone();
    s.insert(
        "momentum_buffer.transformer.h.1.attn.c_q.weight".into(),
        Tensor::from_f32(vec![64, 32], &vec![0.0; 64 * 32]),
    );
    expect_err(&mut opt, s, "shape [64, 32], expected [64, 64]");

    let mut s = good.clone();
    s.insert("exp_avg_sq.resid_lambdas".into(), Tensor::from_i32(vec![3], &[1, 2, 3]));
    expect_err(&mut opt, s, "dtype");

    let mut s = good.clone();
    s.insert("exp_avg.not_a_param".into(), Tensor::from_f32(vec![1], &[0.0]));
    expect_err(&mut opt, s, "unexpected tensor 'exp_avg.not_a_param'");

    let mut s = good.clone();
    s.remove("step");
    expect_err(&mut opt, s, "'step' is missing");

    let mut s = good.clone();
    s.insert("step".into(), Tensor::from_f32(vec![1], &[1.0]));
    expect_err(&mut opt, s, "integer");

    // State of another model shape (no GQA: k/v become square) names the first mismatching tensor.
    let other = ParamTable::new(&config(2));
    let other_state = MuonAdamW::new(&other, &SetupArgs::default()).state_tensors();
    expect_err(&mut opt, other_state, "c_k.weight");

    // The good state loads into a fresh optimizer.
    assert_ne!(empty, good);
    fresh.load_state_tensors(&good).unwrap();
    assert_eq!(fresh.state_tensors(), good);
}
