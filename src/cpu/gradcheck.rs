//! Finite-difference gradient checks: every op of `ops` and the whole model.
//!
//! Each check takes the scalar `L = Σ w ⊙ f(inputs)` with a fixed random `w`, and compares the analytic gradient
//! of every input (from the op's backward with `dout = w`) with central differences at sampled coordinates.

use super::gemm::{gemm, Trans};
use super::gpt::Gpt;
use super::ops::{self, AttnShape};
use crate::config::ModelConfig;
use crate::rng::Rng;

fn randn(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| scale * rng.normal()).collect()
}

fn weighted(out: &[f32], w: &[f32]) -> f64 {
    out.iter().zip(w).map(|(a, b)| *a as f64 * *b as f64).sum()
}

/// Checks `analytic[k]` against central differences of `loss(inputs)` for every input k.
fn check(
    name: &str,
    inputs: &[Vec<f32>],
    loss: &dyn Fn(&[Vec<f32>]) -> f64,
    analytic: &[Vec<f32>],
    eps: f32,
    tol: f64,
) {
    let mut rng = Rng::new(99);
    let mut worst = 0f64;
    for (k, x) in inputs.iter().enumerate() {
        assert_eq!(x.len(), analytic[k].len(), "{name}: gradient {k} has the wrong length");
        let probes = x.len().min(24);
        for p in 0..probes {
            let i = if probes == x.len() {
                p
            } else {
                rng.below(x.len() as u64) as usize
            };
            let mut plus = inputs.to_vec();
            plus[k][i] += eps;
            let mut minus = inputs.to_vec();
            minus[k][i] -= eps;
            let num = (loss(&plus) - loss(&minus)) / (2.0 * eps as f64);
            let ana = analytic[k][i] as f64;
            let err = (num - ana).abs() / (1e-2 + num.abs().max(ana.abs()));
            worst = worst.max(err);
            assert!(
                err < tol,
                "{name}: input {k}[{i}]: numeric {num:.6e} vs analytic {ana:.6e}"
            );
        }
    }
    eprintln!("{name}: worst relative error {worst:.2e}");
}

#[test]
fn linear() {
    let (n, i, o) = (5, 7, 3);
    let mut rng = Rng::new(1);
    let inputs = vec![randn(&mut rng, n * i, 1.0), randn(&mut rng, o * i, 1.0)];
    let w = randn(&mut rng, n * o, 1.0);
    let f = |x: &[Vec<f32>]| {
        let mut y = vec![0.0; n * o];
        ops::linear_forward(&mut y, &x[0], &x[1], n, i, o);
        weighted(&y, &w)
    };
    let (mut dx, mut dw) = (vec![0.0; n * i], vec![0.0; o * i]);
    ops::linear_backward(Some(&mut dx), &mut dw, &w, &inputs[0], &inputs[1], n, i, o);
    check("linear", &inputs, &f, &[dx, dw], 1e-2, 1e-2);
}

#[test]
fn embedding() {
    let (v, c) = (6, 4);
    let ids = [3u32, 0, 3, 5, 1];
    let mut rng = Rng::new(2);
    let inputs = vec![randn(&mut rng, v * c, 1.0)];
    let w = randn(&mut rng, ids.len() * c, 1.0);
    let f = |x: &[Vec<f32>]| {
        let mut y = vec![0.0; ids.len() * c];
        ops::embedding_forward(&mut y, &ids, &x[0], c);
        weighted(&y, &w)
    };
    let mut dt = vec![0.0; v * c];
    ops::embedding_backward(&mut dt, &w, &ids, c);
    check("embedding", &inputs, &f, &[dt], 1e-2, 1e-2);
}

#[test]
fn rmsnorm() {
    let (n, c) = (4, 16);
    let mut rng = Rng::new(3);
    let inputs = vec![randn(&mut rng, n * c, 1.0)];
    let w = randn(&mut rng, n * c, 1.0);
    let f = |x: &[Vec<f32>]| {
        let (mut y, mut r) = (vec![0.0; n * c], vec![0.0; n]);
        ops::rmsnorm_forward(&mut y, &mut r, &x[0], c);
        weighted(&y, &w)
    };
    let (mut y, mut r) = (vec![0.0; n * c], vec![0.0; n]);
    ops::rmsnorm_forward(&mut y, &mut r, &inputs[0], c);
    let mut dx = vec![0.0; n * c];
    ops::rmsnorm_backward(&mut dx, &w, &inputs[0], &r, c);
    check("rmsnorm", &inputs, &f, &[dx], 1e-2, 1e-2);
}

#[test]
fn smear() {
    let (b, t, c) = (2, 5, 30);
    let mut rng = Rng::new(4);
    // inputs: x, gate (24), lambda (1)
    let inputs = vec![randn(&mut rng, b * t * c, 1.0), randn(&mut rng, 24, 0.3), vec![0.7]];
    let w = randn(&mut rng, b * t * c, 1.0);
    let f = |x: &[Vec<f32>]| {
        let (mut y, mut g) = (vec![0.0; b * t * c], vec![0.0; b * t]);
        ops::smear_forward(&mut y, &mut g, &x[0], &x[1], x[2][0], b, t, c);
        weighted(&y, &w)
    };
    let (mut dx, mut dg, mut dl) = (vec![0.0; b * t * c], vec![0.0; 24], 0.0);
    ops::smear_backward(
        &mut dx,
        &mut dg,
        &mut dl,
        &w,
        &inputs[0],
        &inputs[1],
        inputs[2][0],
        b,
        t,
        c,
    );
    check("smear", &inputs, &f, &[dx, dg, vec![dl]], 1e-2, 1e-2);
}

#[test]
fn lambda_mix_and_backout() {
    let n = 12;
    let mut rng = Rng::new(5);
    let inputs = vec![randn(&mut rng, n, 1.0), randn(&mut rng, n, 1.0), vec![1.1], vec![0.2]];
    let w = randn(&mut rng, n, 1.0);
    let f = |x: &[Vec<f32>]| {
        let mut y = vec![0.0; n];
        ops::lambda_mix_forward(&mut y, &x[0], &x[1], x[2][0], x[3][0]);
        weighted(&y, &w)
    };
    let (mut dx, mut dx0) = (vec![0.0; n], vec![0.0; n]);
    let (dr, dz) = ops::lambda_mix_backward(&mut dx, &mut dx0, &w, &inputs[0], &inputs[1], 1.1, 0.2);
    check("lambda_mix", &inputs, &f, &[dx, dx0, vec![dr], vec![dz]], 1e-2, 1e-2);

    let inputs = vec![randn(&mut rng, n, 1.0), randn(&mut rng, n, 1.0), vec![0.3]];
    let f = |x: &[Vec<f32>]| {
        let mut y = vec![0.0; n];
        ops::backout_forward(&mut y, &x[0], &x[1], x[2][0]);
        weighted(&y, &w)
    };
    let (mut dx, mut dm) = (vec![0.0; n], vec![0.0; n]);
    let dl = ops::backout_backward(&mut dx, &mut dm, &w, &inputs[1], 0.3);
    check("backout", &inputs, &f, &[dx, dm, vec![dl]], 1e-2, 1e-2);
}

#[test]
fn ve_gate() {
    let (n, c, hkv, d) = (3, 16, 2, 4);
    let mut rng = Rng::new(6);
    // inputs: v, xn, ve, wg
    let inputs = vec![
        randn(&mut rng, n * hkv * d, 1.0),
        randn(&mut rng, n * c, 1.0),
        randn(&mut rng, n * hkv * d, 1.0),
        randn(&mut rng, hkv * 12, 0.5),
    ];
    let w = randn(&mut rng, n * hkv * d, 1.0);
    let f = |x: &[Vec<f32>]| {
        let (mut v, mut g) = (x[0].clone(), vec![0.0; n * hkv]);
        ops::ve_gate_forward(&mut v, &mut g, &x[1], &x[2], &x[3], n, c, hkv, d);
        weighted(&v, &w)
    };
    let (mut v, mut g) = (inputs[0].clone(), vec![0.0; n * hkv]);
    ops::ve_gate_forward(&mut v, &mut g, &inputs[1], &inputs[2], &inputs[3], n, c, hkv, d);
    let (mut dve, mut dwg, mut dxn) = (vec![0.0; n * hkv * d], vec![0.0; hkv * 12], vec![0.0; n * c]);
    ops::ve_gate_backward(
        &mut dve, &mut dwg, &mut dxn, &w, &g, &inputs[1], &inputs[2], &inputs[3], n, c, hkv, d,
    );
    // The gated v passes its own gradient straight through.
    check("ve_gate", &inputs, &f, &[w.clone(), dxn, dve, dwg], 1e-2, 1e-2);
}

#[test]
fn rope_and_qk_norm() {
    let (b, t, h, d) = (2, 6, 3, 8);
    let (cos, sin) = ops::rope_tables(64, d, 100_000.0);
    let mut rng = Rng::new(7);
    let inputs = vec![randn(&mut rng, b * t * h * d, 1.0)];
    let w = randn(&mut rng, b * t * h * d, 1.0);
    for pos0 in [0, 17] {
        let f = |x: &[Vec<f32>]| {
            let mut y = x[0].clone();
            ops::rope_forward(&mut y, &cos, &sin, t, h, d, pos0);
            let (mut z, mut r) = (vec![0.0; y.len()], vec![0.0; b * t * h]);
            ops::qk_norm_forward(&mut z, &mut r, &y, d);
            weighted(&z, &w)
        };
        let mut y = inputs[0].clone();
        ops::rope_forward(&mut y, &cos, &sin, t, h, d, pos0);
        let (mut z, mut r) = (vec![0.0; y.len()], vec![0.0; b * t * h]);
        ops::qk_norm_forward(&mut z, &mut r, &y, d);
        let mut dy = vec![0.0; y.len()];
        ops::qk_norm_backward(&mut dy, &w, &y, &r, d);
        ops::rope_backward(&mut dy, &cos, &sin, t, h, d, pos0);
        check("rope+qk_norm", &inputs, &f, &[dy], 1e-2, 1e-2);
    }
}

#[test]
fn rope_rotates_by_minus_theta_with_half_split() {
    let d = 4;
    let (cos, sin) = ops::rope_tables(4, d, 100_000.0);
    let mut x = vec![1.0, 0.0, 0.0, 0.0];
    ops::rope_forward(&mut x, &cos, &sin, 4, 1, d, 1);
    // Position 1, pair 0 (x1 = x[0], x2 = x[2]) rotates by angle 1: y1 = cos 1, y2 = -sin 1.
    assert!(
        (x[0] - 1f32.cos()).abs() < 1e-6 && (x[2] + 1f32.sin()).abs() < 1e-6,
        "{x:?}"
    );
}

fn attention_case(b: usize, t: usize, h: usize, hkv: usize, d: usize, window: usize) {
    let s = AttnShape {
        b,
        t,
        h,
        hkv,
        d,
        window,
    };
    let mut rng = Rng::new(8 + window as u64);
    let inputs = vec![
        randn(&mut rng, b * t * h * d, 1.0),
        randn(&mut rng, b * t * hkv * d, 1.0),
        randn(&mut rng, b * t * hkv * d, 1.0),
    ];
    let w = randn(&mut rng, b * t * h * d, 1.0);
    let f = |x: &[Vec<f32>]| {
        let (mut o, mut l) = (vec![0.0; b * t * h * d], vec![0.0; b * h * t]);
        ops::attention_forward(&mut o, &mut l, &x[0], &x[1], &x[2], s);
        weighted(&o, &w)
    };
    let (mut o, mut l) = (vec![0.0; b * t * h * d], vec![0.0; b * h * t]);
    ops::attention_forward(&mut o, &mut l, &inputs[0], &inputs[1], &inputs[2], s);
    let (mut dq, mut dk, mut dv) = (
        vec![0.0; inputs[0].len()],
        vec![0.0; inputs[1].len()],
        vec![0.0; inputs[2].len()],
    );
    ops::attention_backward(
        &mut dq, &mut dk, &mut dv, &w, &o, &l, &inputs[0], &inputs[1], &inputs[2], s,
    );
    check(
        &format!("attention w={window} h={h} hkv={hkv}"),
        &inputs,
        &f,
        &[dq, dk, dv],
        1e-2,
        2e-2,
    );
}

#[test]
fn attention_gradients_with_windows_and_gqa() {
    attention_case(2, 7, 2, 2, 4, 100); // full causal
    attention_case(1, 9, 4, 2, 4, 3); // sliding window, GQA group of 2
    attention_case(1, 5, 3, 1, 6, 0); // window 0: each query sees only itself
}

#[test]
fn attention_matches_explicit_softmax() {
    // Independent oracle: a dense masked softmax built with GEMMs.
    let (t, d, window) = (6, 4, 2);
    let s = AttnShape {
        b: 1,
        t,
        h: 1,
        hkv: 1,
        d,
        window,
    };
    let mut rng = Rng::new(11);
    let (q, k, v) = (
        randn(&mut rng, t * d, 1.0),
        randn(&mut rng, t * d, 1.0),
        randn(&mut rng, t * d, 1.0),
    );
    let mut scores = vec![0.0; t * t];
    gemm(
        Trans::N,
        Trans::T,
        t,
        t,
        d,
        1.0 / (d as f32).sqrt(),
        &q,
        &k,
        0.0,
        &mut scores,
    );
    for p in 0..t {
        let row = &mut scores[p * t..(p + 1) * t];
        for (j, sc) in row.iter_mut().enumerate() {
            if j > p || j + window < p {
                *sc = f32::NEG_INFINITY;
            }
        }
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = row.iter().map(|x| (x - m).exp()).sum();
        row.iter_mut().for_each(|x| *x = (*x - m).exp() / sum);
    }
    let mut want = vec![0.0; t * d];
    gemm(Trans::N, Trans::N, t, d, t, 1.0, &scores, &v, 0.0, &mut want);
    let (mut o, mut l) = (vec![0.0; t * d], vec![0.0; t]);
    ops::attention_forward(&mut o, &mut l, &q, &k, &v, s);
    assert!(
        o.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-5),
        "{o:?} vs {want:?}"
    );
}

#[test]
fn relu2() {
    let n = 20;
    let mut rng = Rng::new(12);
    // Keep inputs away from the kink at 0.
    let inputs: Vec<Vec<f32>> = vec![randn(&mut rng, n, 1.0)
        .into_iter()
        .map(|x| if x.abs() < 0.1 { x + 0.3 } else { x })
        .collect()];
    let w = randn(&mut rng, n, 1.0);
    let f = |x: &[Vec<f32>]| {
        let mut y = vec![0.0; n];
        ops::relu2_forward(&mut y, &x[0]);
        weighted(&y, &w)
    };
    let mut dx = vec![0.0; n];
    ops::relu2_backward(&mut dx, &w, &inputs[0]);
    check("relu2", &inputs, &f, &[dx], 1e-2, 1e-2);
}

#[test]
fn softcap_cross_entropy() {
    let (n, v, vp) = (5, 7, 8);
    let targets = [3, -1, 0, 6, 2];
    let mut rng = Rng::new(13);
    let inputs = vec![randn(&mut rng, n * vp, 8.0)];
    let dloss = [0.5, 0.0, 1.0, -0.3, 0.25];
    let f = |x: &[Vec<f32>]| {
        let (mut l, mut z) = (vec![0.0; n], x[0].clone());
        ops::softcap_ce_forward(&mut l, &mut z, &targets, v, vp);
        weighted(&l, &dloss)
    };
    let (mut l, mut z) = (vec![0.0; n], inputs[0].clone());
    ops::softcap_ce_forward(&mut l, &mut z, &targets, v, vp);
    assert_eq!(l[1], 0.0, "ignored target has zero loss");
    let mut dz = vec![0.0; n * vp];
    ops::softcap_ce_backward(&mut dz, &z, &targets, &dloss, v, vp);
    assert!(dz.chunks(vp).all(|r| r[v] == 0.0), "padding columns get no gradient");
    check("softcap_ce", &inputs, &f, &[dz], 1e-2, 1e-2);
}

/// The whole model, on the shapes that other fixtures use: GQA, odd depth, padded vocabulary, "SL", T = 320
/// with a 128 short window, value embeddings on even layers.
#[test]
fn whole_model_gradient() {
    let cfg = ModelConfig {
        sequence_len: 320,
        vocab_size: 70,
        n_layer: 3,
        n_head: 4,
        n_kv_head: 2,
        n_embd: 32,
        window_pattern: "SL".into(),
    };
    let gpt = Gpt::new(&cfg).unwrap();
    assert_eq!(cfg.padded_vocab(), 128);
    assert_eq!(cfg.window_sizes(), vec![128, 320, 320]);
    let mut params = vec![0.0; gpt.table.numel];
    gpt.table.init(&mut params, 5);
    // Upstream's zero inits would hide gradients: randomise everything a little, as the fixture does.
    let mut rng = Rng::new(21);
    params.iter_mut().for_each(|p| *p += 0.05 * rng.normal());
    let (b, t) = (1, 160);
    let ids: Vec<u32> = (0..b * t).map(|_| rng.below(70) as u32).collect();
    let targets: Vec<i32> = (0..b * t)
        .map(|i| if i % 11 == 3 { -1 } else { rng.below(70) as i32 })
        .collect();
    let fwd = gpt.forward(&params, &ids, Some(&targets), b, t).unwrap();
    let mut grads = vec![0.0; params.len()];
    gpt.backward(&params, &fwd, &Gpt::mean_dloss(&fwd), &mut grads);

    // Mean of the per-token losses in f64: the f32 mean would drown small gradients in rounding noise.
    let valid = fwd.valid_targets() as f64;
    let loss = |p: &[f32]| {
        let f = gpt.forward(p, &ids, Some(&targets), b, t).unwrap();
        f.losses.iter().map(|&l| l as f64).sum::<f64>() / valid
    };
    let mut worst = 0f64;
    for param in &gpt.table.params {
        // Probe the coordinate with the largest gradient of each tensor, where f32 differences are reliable.
        let (i, _) = grads[param.range.clone()]
            .iter()
            .enumerate()
            .fold(
                (0, 0f32),
                |best, (i, g)| {
                    if g.abs() > best.1 {
                        (i, g.abs())
                    } else {
                        best
                    }
                },
            );
        let i = param.range.start + i;
        let eps = 1e-2f32.max(params[i].abs() * 1e-2);
        let (mut plus, mut minus) = (params.clone(), params.clone());
        plus[i] += eps;
        minus[i] -= eps;
        let num = (loss(&plus) - loss(&minus)) / (2.0 * eps as f64);
        let ana = grads[i] as f64;
        let err = (num - ana).abs() / (1e-4 + num.abs().max(ana.abs()));
        worst = worst.max(err);
        assert!(err < 5e-2, "{}: numeric {num:.6e} vs analytic {ana:.6e}", param.name);
    }
    eprintln!("whole model: worst relative error {worst:.2e}");
}
