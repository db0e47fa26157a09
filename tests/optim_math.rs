//! MuonAdamW behaviour on synthetic problems: AdamW against torch.optim.AdamW's math, bitwise determinism,
//! convergence on a quadratic, the near-orthogonality of the first Muon update, and the Muon pieces.

use nanochat::config::ModelConfig;
use nanochat::optim::muon::{self, lr_shape_factor};
use nanochat::optim::{GroupKind, MuonAdamW, SetupArgs, StepSettings};
use nanochat::params::{ParamTable, Slot};
use nanochat::rng::Rng;

/// A small model with every kind of group: square, wide and tall Muon matrices (GQA makes k/v wide), a 1×12
/// ve_gate, AdamW tensors above and below 1024 elements.
fn table() -> ParamTable {
    ParamTable::new(&ModelConfig {
        sequence_len: 64,
        vocab_size: 100,
        n_layer: 2,
        n_head: 2,
        n_kv_head: 1,
        n_embd: 64,
        window_pattern: "SL".into(),
    })
}

fn normal(n: usize, seed: u64, std: f32) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| std * rng.normal()).collect()
}

fn settings(lr_multiplier: f64) -> StepSettings {
    StepSettings {
        lr_multiplier,
        muon_momentum: 0.95,
        muon_weight_decay: 0.1,
    }
}

#[test]
fn adamw_matches_hand_computed_torch_values() {
    // resid_lambdas: lr = scalar_lr · 0.01 = 0.1, betas (0.8, 0.95), eps 1e-10, wd 0.05. The expected values
    // were computed in f64 with torch.optim.AdamW's algorithm (decay, lerp, addcmul, bias corrections, addcdiv).
    let t = table();
    let args = SetupArgs {
        scalar_lr: 10.0,
        ..SetupArgs::default()
    };
    let mut opt = MuonAdamW::new(&t, &args);
    let mut p = vec![0.0; t.numel];
    t.init(&mut p, 1);
    let r = t.range(Slot::ResidLambdas, 0);
    assert_eq!(&p[r.clone()], &[1.15, 1.05]);
    let grads = [[0.5, -0.25], [-0.1, 0.3], [0.2, 0.2]];
    let lrm = [1.0, 0.5, 0.25];
    let expected = [
        [1.0442499762973514, 1.144749952514703],
        [1.0182483691875992, 1.1318517265368582],
        [1.0024594351252563, 1.1190764175410157],
    ];
    for k in 0..3 {
        let mut g = vec![0.0; t.numel];
        g[r.clone()].copy_from_slice(&grads[k]);
        opt.step(&mut p, &g, &settings(lrm[k]));
        for (i, &e) in expected[k].iter().enumerate() {
            let got = p[r.start + i] as f64;
            assert!(
                (got - e).abs() <= 1e-6,
                "step {}: resid_lambdas[{i}] = {got}, expected {e}",
                k + 1
            );
        }
    }
}

#[test]
fn adamw_groups_match_a_reference_over_ten_steps() {
    // Every AdamW tensor against an f64 torch.optim.AdamW with each group's lr, betas, eps and weight decay.
    let t = table();
    let args = SetupArgs::default();
    let mut opt = MuonAdamW::new(&t, &args);
    let mut p = vec![0.0; t.numel];
    t.init(&mut p, 2);
    let mut reference: Vec<f64> = p.iter().map(|&x| x as f64).collect();
    let mut m = vec![0f64; t.numel];
    let mut v = vec![0f64; t.numel];
    let groups = opt.groups().to_vec();
    for step in 1..=10 {
        let g = normal(t.numel, 100 + step, 0.1);
        let lrm = 1.0 - 0.05 * step as f64;
        opt.step(&mut p, &g, &settings(lrm));
        for group in &groups {
            let GroupKind::AdamW {
                betas: [b1, b2],
                eps,
                weight_decay,
            } = group.kind
            else {
                continue;
            };
            let lr = group.initial_lr * lrm;
            for &slot in &group.slots {
                for i in t.slot(slot).range() {
                    let (gi, x) = (g[i] as f64, &mut reference[i]);
                    *x *= 1.0 - lr * weight_decay;
                    m[i] = b1 * m[i] + (1.0 - b1) * gi;
                    v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                    let denom = v[i].sqrt() / (1.0 - b2.powi(step as i32)).sqrt() + eps;
                    *x -= lr / (1.0 - b1.powi(step as i32)) * m[i] / denom;
                }
            }
        }
    }
    let mut checked = 0;
    for s in t.slots.iter().filter(|s| s.group != nanochat::params::Group::Muon) {
        for i in s.range() {
            let (got, want) = (p[i] as f64, reference[i]);
            assert!(
                // The embedding moves by ~0.7 per step, so fp32 rounding alone reaches a few 1e-7.
                (got - want).abs() <= 1e-5 + 1e-5 * want.abs(),
                "{:?}[{}]: {got} vs reference {want}",
                s.slot,
                i - s.offset
            );
            checked += 1;
        }
    }
    assert!(checked > 1024);
}

/// Three steps from a fixed start with random gradients; returns the parameters and the state.
fn run(t: &ParamTable) -> (Vec<f32>, Vec<(String, Vec<u8>)>) {
    let mut opt = MuonAdamW::new(t, &SetupArgs::default());
    let mut p = vec![0.0; t.numel];
    t.init(&mut p, 3);
    for k in 0..3 {
        opt.step(&mut p, &normal(t.numel, 200 + k, 1.0), &settings(1.0));
    }
    let state = opt.state_tensors().into_iter().map(|(k, v)| (k, v.data)).collect();
    (p, state)
}

#[test]
fn steps_are_bitwise_deterministic() {
    let t = table();
    let (p1, s1) = run(&t);
    // Again on a single thread: the result must not depend on how rayon schedules the matrices.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let (p2, s2) = pool.install(|| run(&t));
    assert!(p1.iter().zip(&p2).all(|(a, b)| a.to_bits() == b.to_bits()));
    assert_eq!(s1, s2);
    assert!(p1.iter().all(|x| x.is_finite()));
}

#[test]
fn minimising_distance_to_a_target_halves_it_within_50_steps() {
    // loss = ||p − target||², gradient 2(p − target), constant lrs; every slot (each AdamW tensor and each Muon
    // stack) must halve its own distance, not just the total.
    let t = table();
    let args = SetupArgs {
        unembedding_lr: 0.02,
        embedding_lr: 0.02,
        matrix_lr: 0.3,
        weight_decay: 0.0,
        scalar_lr: 2.0,
    };
    let mut opt = MuonAdamW::new(&t, &args);
    let mut p = vec![0.0; t.numel];
    t.init(&mut p, 4);
    // Adam moves each element by about lr per step, so its targets lie 25 steps away; Muon matrices get unit
    // noise (distance ~sqrt(m·n), Muon moving each singular value by about lr per step).
    let mut target = p.clone();
    let noise = normal(t.numel, 5, 1.0);
    for g in opt.groups() {
        let scale = match g.kind {
            GroupKind::AdamW { .. } => 25.0 * g.initial_lr as f32,
            GroupKind::Muon { .. } => 1.0,
        };
        for &slot in &g.slots {
            for i in t.slot(slot).range() {
                target[i] += scale * noise[i];
            }
        }
    }
    let dist = |p: &[f32], slot| {
        t.slot(slot)
            .range()
            .map(|i| (p[i] as f64 - target[i] as f64).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let start: Vec<f64> = t.slots.iter().map(|s| dist(&p, s.slot)).collect();
    let s = StepSettings {
        lr_multiplier: 1.0,
        muon_momentum: 0.85,
        muon_weight_decay: 0.0,
    };
    for _ in 0..50 {
        let g: Vec<f32> = p.iter().zip(&target).map(|(x, y)| 2.0 * (x - y)).collect();
        opt.step(&mut p, &g, &s);
    }
    for (spec, s0) in t.slots.iter().zip(&start) {
        let end = dist(&p, spec.slot);
        println!("{:?}: {s0:.3} -> {end:.3}", spec.slot);
        assert!(end <= 0.5 * s0, "{:?}: distance {s0} only fell to {end}", spec.slot);
    }
}

/// Eigenvalues of a symmetric (k, k) matrix by cyclic Jacobi rotations.
fn symmetric_eigenvalues(mut a: Vec<f64>, k: usize) -> Vec<f64> {
    for _sweep in 0..100 {
        let off: f64 = (0..k)
            .flat_map(|i| (0..k).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * k + j].powi(2))
            .sum();
        if off < 1e-22 {
            break;
        }
        for p in 0..k {
            for q in p + 1..k {
                let apq = a[p * k + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * k + q] - a[p * k + p]) / (2.0 * apq);
                let tan = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let tan = if theta == 0.0 { 1.0 } else { tan };
                let c = 1.0 / (tan * tan + 1.0).sqrt();
                let s = tan * c;
                for r in 0..k {
                    let (arp, arq) = (a[r * k + p], a[r * k + q]);
                    a[r * k + p] = c * arp - s * arq;
                    a[r * k + q] = s * arp + c * arq;
                }
                for r in 0..k {
                    let (apr, aqr) = (a[p * k + r], a[q * k + r]);
                    a[p * k + r] = c * apr - s * aqr;
                    a[q * k + r] = s * apr + c * aqr;
                }
            }
        }
    }
    (0..k).map(|i| a[i * k + i]).collect()
}

/// Singular values of an (m, n) row-major matrix via the eigenvalues of its Gram matrix on the short side.
fn singular_values(x: &[f32], m: usize, n: usize) -> Vec<f64> {
    let k = m.min(n);
    let mut gram = vec![0f64; k * k];
    for i in 0..k {
        for j in 0..k {
            gram[i * k + j] = if m >= n {
                (0..m).map(|r| x[r * n + i] as f64 * x[r * n + j] as f64).sum()
            } else {
                (0..n).map(|c| x[i * n + c] as f64 * x[j * n + c] as f64).sum()
            };
        }
    }
    symmetric_eigenvalues(gram, k)
        .into_iter()
        .map(|e| e.max(0.0).sqrt())
        .collect()
}

#[test]
fn jacobi_finds_known_singular_values() {
    // diag(3, 2, 0.5) rotated on the right by a Givens rotation: singular values 3, 2, 0.5.
    let (c, s) = (0.6f32, 0.8f32);
    let x = [
        3.0 * c,
        3.0 * s,
        0.0,
        -2.0 * s,
        2.0 * c,
        0.0,
        0.0,
        0.0,
        0.5,
        0.0,
        0.0,
        0.0,
    ];
    let mut sv = singular_values(&x, 4, 3);
    sv.sort_by(|a, b| b.total_cmp(a));
    for (got, want) in sv.iter().zip([3.0, 2.0, 0.5]) {
        assert!((got - want).abs() < 1e-5, "{sv:?}");
    }
}

#[test]
fn first_muon_update_is_nearly_semi_orthogonal() {
    // lr 1, momentum 0, no weight decay, beta2 1 (NorMuon a no-op): from zero parameters the new parameters are
    // −lr_factor·O, with O the orthogonalised gradient. Checked on the rectangular matrices, as upstream's test
    // does: a random square matrix can have singular values too close to 0 for 5 iterations to lift.
    let t = table();
    let args = SetupArgs {
        matrix_lr: 1.0,
        ..SetupArgs::default()
    };
    let mut opt = MuonAdamW::new(&t, &args);
    opt.set_muon_beta2(1.0);
    let mut p = vec![0.0; t.numel];
    let g = normal(t.numel, 6, 1.0);
    let s = StepSettings {
        lr_multiplier: 1.0,
        muon_momentum: 0.0,
        muon_weight_decay: 0.0,
    };
    opt.step(&mut p, &g, &s);
    let mut shapes_seen = Vec::new();
    for spec in t.slots.iter().filter(|s| s.group == nanochat::params::Group::Muon) {
        let (m, n) = spec.matrix_dims();
        if m == n {
            continue;
        }
        for k in 0..spec.count() {
            let o: Vec<f32> = p[spec.copy_range(k)]
                .iter()
                .map(|&x| -x / lr_shape_factor(m, n) as f32)
                .collect();
            let sv = singular_values(&o, m, n);
            let (lo, hi) = sv.iter().fold((f64::MAX, 0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            println!("{:?} {k} ({m}, {n}): singular values in [{lo:.3}, {hi:.3}]", spec.slot);
            assert!(
                lo > 0.0 && hi / lo < 4.0,
                "{:?} copy {k}: max/min {}",
                spec.slot,
                hi / lo
            );
            // Muon+ fixes the Frobenius norm at sqrt(min(m, n)).
            let fro = sv.iter().map(|x| x * x).sum::<f64>().sqrt();
            assert!((fro - (m.min(n) as f64).sqrt()).abs() < 1e-3 * fro);
        }
        shapes_seen.push((m, n));
    }
    assert!(shapes_seen.iter().any(|&(m, n)| m > n) && shapes_seen.iter().any(|&(m, n)| m < n));
}

#[test]
fn muon_pieces_keep_their_invariants() {
    let (m, n) = (6, 4);
    let mut x = normal(m * n, 7, 1.0);
    x[..n].iter_mut().for_each(|v| *v *= 10.0);
    let fro = |x: &[f32]| x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
    let before = fro(&x);
    muon::muon_eq(&mut x, (m, n));
    let row_norms: Vec<f64> = x.chunks(n).map(fro).collect();
    assert!(row_norms.iter().all(|r| (r - row_norms[0]).abs() < 1e-5 * r));
    assert!((fro(&x) - before).abs() < 1e-5 * before);

    muon::frobenius_normalize(&mut x, false);
    assert!((fro(&x) - 1.0 / 1.01).abs() < 1e-5);

    // NorMuon keeps the Frobenius norm and, for a wide matrix, equalises column energy on the first step
    // (S = (1−β2)·v, so every column is scaled by 1/sqrt(v) up to one global factor).
    let (m, n) = (3, 5);
    let mut o = normal(m * n, 8, 1.0);
    let mut second = vec![0.0; muon::second_moment_len(m, n)];
    assert_eq!(second.len(), 5);
    let before = fro(&o);
    muon::normuon(&mut o, &mut second, (m, n), 0.9);
    assert!((fro(&o) - before).abs() < 1e-5 * before);
    let col = |j: usize| (0..m).map(|i| (o[i * n + j] as f64).powi(2)).sum::<f64>();
    assert!((0..n).all(|j| (col(j) - col(0)).abs() < 1e-4 * col(0)));
    assert!(second.iter().all(|&s| s > 0.0));

    // Cautious weight decay only where update and parameter agree in sign.
    let mut p = [1.0f32, 1.0, -1.0, -1.0];
    muon::cautious_update(&mut p, &[0.5, -0.5, 0.5, -0.5], 0.1, 0.5);
    let want = [1.0 - 0.05 - 0.05, 1.0 + 0.05, -1.0 - 0.05, -1.0 + 0.05 + 0.05];
    for (a, b) in p.iter().zip(want) {
        assert!((a - b).abs() < 1e-6, "{p:?} vs {want:?}");
    }
    assert_eq!(lr_shape_factor(256, 64), 2.0);
    assert_eq!(lr_shape_factor(64, 256), 1.0);
}

#[test]
fn d12_groups_and_peak_lrs_follow_the_spec() {
    // Spec §2.1 and §3.2: at d12 (n_embd 768, dmodel scale 1) with base_train's lrs the peak lrs are lm_head 0.008,
    // wte 0.3, VE 0.15, resid 0.005, x0 0.5, smear 0.2, Muon 0.02 (c_fc ×2); Muon groups by ascending shape.
    let cfg = ModelConfig::from_depth(12, 64, 128, 2048, 32768, "SSSL");
    let t = ParamTable::new(&cfg);
    let args = SetupArgs {
        unembedding_lr: 0.008,
        embedding_lr: 0.3,
        matrix_lr: 0.02,
        weight_decay: 0.28,
        scalar_lr: 0.5,
    };
    let opt = MuonAdamW::new(&t, &args);
    let lrs: Vec<f64> = opt.groups().iter().map(|g| g.initial_lr).collect();
    let want = [0.008, 0.3, 0.15, 0.005, 0.5, 0.2, 0.02, 0.02, 0.02, 0.02];
    assert_eq!(lrs.len(), want.len());
    for (i, (a, b)) in lrs.iter().zip(want).enumerate() {
        assert!((a - b).abs() < 1e-15, "group {i}: lr {a}, expected {b}");
    }
    let muon: Vec<((usize, usize), usize, f64)> = opt
        .groups()
        .iter()
        .filter_map(|g| match g.kind {
            GroupKind::Muon {
                shape, weight_decay, ..
            } => {
                assert_eq!(weight_decay, 0.28);
                Some((shape, g.params.len(), lr_shape_factor(shape.0, shape.1)))
            }
            GroupKind::AdamW { .. } => None,
        })
        .collect();
    assert_eq!(
        muon,
        vec![
            ((6, 12), 6, 1.0),
            ((768, 768), 48, 1.0),
            ((768, 3072), 12, 1.0),
            ((3072, 768), 12, 2.0)
        ]
    );
    let square = &opt.groups()[7].params;
    assert_eq!(
        &square[..5],
        &[
            "transformer.h.0.attn.c_q.weight",
            "transformer.h.0.attn.c_k.weight",
            "transformer.h.0.attn.c_v.weight",
            "transformer.h.0.attn.c_proj.weight",
            "transformer.h.1.attn.c_q.weight"
        ]
    );
    // Every parameter is in exactly one group.
    let mut all: Vec<&String> = opt.groups().iter().flat_map(|g| &g.params).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), t.params.len());
}

#[test]
fn gqa_splits_attention_matrices_into_two_muon_groups() {
    let opt = MuonAdamW::new(&table(), &SetupArgs::default());
    let kv = opt
        .groups()
        .iter()
        .find(|g| matches!(g.kind, GroupKind::Muon { shape: (32, 64), .. }))
        .expect("a (32, 64) group for c_k and c_v");
    assert_eq!(
        kv.params,
        [
            "transformer.h.0.attn.c_k.weight",
            "transformer.h.0.attn.c_v.weight",
            "transformer.h.1.attn.c_k.weight",
            "transformer.h.1.attn.c_v.weight"
        ]
    );
    assert_eq!(kv.slots, [Slot::AttnK, Slot::AttnV]);
}
