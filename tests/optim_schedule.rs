//! The pretraining schedules of spec §2.5 at chosen points, and the fixture's step settings.

use nanochat::optim::Schedule;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12
}

#[test]
fn lr_multiplier_warmup_constant_warmdown() {
    let s = Schedule::new(1000);
    assert_eq!(s.warmdown_steps(), 650);
    assert!(close(s.lr_multiplier(0), 1.0 / 40.0));
    assert!(close(s.lr_multiplier(1), 0.05));
    assert!(close(s.lr_multiplier(39), 1.0));
    assert!(close(s.lr_multiplier(40), 1.0));
    // Constant through it = N − W_dn inclusive, then linear towards final_lr_frac.
    assert!(close(s.lr_multiplier(350), 1.0));
    let p = 649.0 / 650.0;
    assert!(close(s.lr_multiplier(351), p + (1.0 - p) * 0.05));
    assert!(close(s.lr_multiplier(675), 0.5 + 0.5 * 0.05));
    let p = 1.0 / 650.0;
    assert!(close(s.lr_multiplier(999), p + (1.0 - p) * 0.05));
    // Monotone non-increasing after warmup.
    assert!((40..999).all(|i| s.lr_multiplier(i + 1) <= s.lr_multiplier(i)));
}

#[test]
fn warmdown_length_rounds_like_python() {
    // Python's round() sends ties to even: round(6.5) = 6, round(0.65 · 30) = round(19.5) = 20.
    assert_eq!(Schedule::new(10).warmdown_steps(), 6);
    assert_eq!(Schedule::new(30).warmdown_steps(), 20);
    assert_eq!(Schedule::new(2520).warmdown_steps(), 1638);
}

#[test]
fn muon_momentum_warmup_and_warmdown() {
    let s = Schedule::new(2000); // warmdown from 700 (W_dn = 1300)
    assert!(close(s.muon_momentum(0), 0.85));
    assert!(close(s.muon_momentum(1), 0.8503));
    assert!(close(s.muon_momentum(200), 0.91));
    assert!(close(s.muon_momentum(399), 0.85 + 0.12 * 399.0 / 400.0));
    assert!(close(s.muon_momentum(400), 0.97));
    assert!(close(s.muon_momentum(699), 0.97));
    assert!(close(s.muon_momentum(700), 0.97));
    assert!(close(s.muon_momentum(1350), 0.935));
    assert!(close(
        s.muon_momentum(1999),
        0.97 * (1.0 - 1299.0 / 1300.0) + 0.90 * 1299.0 / 1300.0
    ));
    // A short run: the warmdown starts before step 400, the warmup branch wins until then.
    let short = Schedule::new(500); // warmdown from 175
    assert!(close(short.muon_momentum(300), 0.85 + 0.12 * 0.75));
    let q = (450.0 - 175.0) / 325.0;
    assert!(close(short.muon_momentum(450), 0.97 * (1.0 - q) + 0.90 * q));
}

#[test]
fn muon_weight_decay_is_a_cosine_to_zero() {
    let s = Schedule::new(1000);
    assert!(close(s.muon_weight_decay(0.28, 0), 0.28));
    assert!(close(s.muon_weight_decay(0.28, 500), 0.14));
    assert!(s.muon_weight_decay(0.28, 999) < 1e-6);
    assert!(close(s.muon_weight_decay(0.28, 250), 0.14 * (1.0 + 0.5f64.sqrt())));
}

#[test]
fn fixture_steps_come_from_these_schedules() {
    // nanochat-ref-a's config.json: steps[0] = (0.025, 0.85, 0.28), steps[1] = (0.05, 0.8503, 0.2799993091282602).
    // The weight decay pins N: wd(1)/wd(0) = (1 + cos(π/N))/2, so N = π / acos(2·wd(1)/wd(0) − 1).
    let (wd0, wd1): (f64, f64) = (0.28, 0.2799993091282602);
    let n = (std::f64::consts::PI / (2.0 * wd1 / wd0 - 1.0).acos()).round() as usize;
    assert_eq!(n, 1000);
    let s = Schedule::new(n);
    let steps = [(0.025, 0.85, wd0), (0.05, 0.8503, wd1)];
    for (it, (lrm, mom, wd)) in steps.into_iter().enumerate() {
        assert!(close(s.lr_multiplier(it), lrm), "lrm at {it}");
        assert!(close(s.muon_momentum(it), mom), "momentum at {it}");
        assert!((s.muon_weight_decay(wd0, it) - wd).abs() < 1e-15, "wd at {it}");
    }
}
