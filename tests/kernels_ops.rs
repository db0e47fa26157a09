//! What the kernel checks (`nanochat::device::check`, run by `tests/kernels_checks.rs`) do not cover for the
//! kernels of `elementwise.cu`, `reduce.cu`, `rmsnorm.cu`, `cross_entropy.cu`, `embedding.cu` and `adamw.cu`:
//! bitwise determinism (two runs, every thread schedule) and bad inputs rejected.

use nanochat::cpu::ops;
use nanochat::device::kernels::{embedding, reduce, rmsnorm};
use nanochat::device::Dtype;
use nanochat::rng::Rng;

mod common;
use common::{devices, down_bf16, randn, to_bf16};

/// The values are checked against the fp64 sums in `device::check::reduce` (with two runs giving the same
/// bits); here: the summation order does not depend on the thread schedule either.
#[test]
fn reductions_do_not_depend_on_the_schedule() {
    use reduce::Reduction::*;
    let mut first: Vec<u32> = Vec::new();
    for (s, dev) in devices() {
        let mut rng = Rng::new(3);
        let mut bits = Vec::new();
        for n in [1usize, 1000, 70_001] {
            let x = randn(&mut rng, n, 3.0);
            for dtype in [Dtype::F32, Dtype::Bf16] {
                let dx = match dtype {
                    Dtype::F32 => dev.upload_new(&x).unwrap(),
                    Dtype::Bf16 => dev.upload_new(&to_bf16(&x)).unwrap(),
                };
                let scratch = dev.alloc(4 * reduce::partials_for(n)).unwrap();
                let out = dev.alloc(4).unwrap();
                for r in [Sum, SumOfSquares, Norm] {
                    reduce::reduce(dev.as_ref(), out.ptr(), scratch.ptr(), dx.ptr(), dtype, n, r).unwrap();
                    bits.push(dev.download_vec::<f32>(out.ptr(), 1).unwrap()[0].to_bits());
                }
            }
        }
        if first.is_empty() {
            first = bits;
        } else {
            assert_eq!(bits, first, "{s:?} differs from the forward schedule");
        }
    }
}

/// The values are checked against the CPU reference in `device::check::embedding`; here: two backward runs
/// give the same bits, and ids outside the vocabulary are errors.
#[test]
fn embedding_backward_is_deterministic_and_bad_ids_are_errors() {
    let mut rng = Rng::new(6);
    for (s, dev) in devices() {
        let (vocab, c, n) = (50usize, 70usize, 200usize);
        let table = randn(&mut rng, vocab * c, 1.0);
        let ids: Vec<u32> = (0..n).map(|t| ((t * t * 7 + 3) % 23) as u32).collect(); // repeats, unused rows
        let d = dev.as_ref();
        let (bt, bids, out) = (
            d.upload_new(&to_bf16(&table)).unwrap(),
            d.alloc(embedding::ids_bytes(n)).unwrap(),
            d.alloc(2 * n * c).unwrap(),
        );
        let dids = embedding::upload_ids(d, bids.ptr(), &ids, vocab).unwrap();
        let dout = randn(&mut rng, n * c, 1.0);
        let dtable0 = randn(&mut rng, vocab * c, 0.1);
        let bdout = d.upload_new(&to_bf16(&dout)).unwrap();
        let mut results = Vec::new();
        for _ in 0..2 {
            let bdt = d.upload_new(&dtable0).unwrap();
            embedding::embedding_backward(d, bdt.ptr(), bdout.ptr(), &dids, c).unwrap();
            results.push(d.download_vec::<f32>(bdt.ptr(), vocab * c).unwrap());
        }
        assert_eq!(results[0], results[1], "{s:?} backward not reproducible");
        assert_ne!(results[0], dtable0, "{s:?} backward added nothing");

        let bad = [0u32, 50];
        let e = embedding::embedding_forward(d, out.ptr(), bids.ptr(), bt.ptr(), &bad, vocab, c).unwrap_err();
        assert!(e.0.contains("token 1 has id 50 but the vocabulary has 50 rows"), "{e}");
        let e = embedding::upload_ids(d, bids.ptr(), &bad, vocab).unwrap_err();
        assert!(e.0.contains("token 1 has id 50"), "{e}");
    }
}

/// The values are checked against the CPU reference in `device::check::rmsnorm`; here: two runs, the same bits.
#[test]
fn residual_mix_backward_is_bitwise_deterministic() {
    let mut rng = Rng::new(8);
    for (s, dev) in devices() {
        for (n, c) in [(1usize, 40usize), (9, 300)] {
            let d = dev.as_ref();
            let (x, x0, dmix) = (
                randn(&mut rng, n * c, 2.0),
                randn(&mut rng, n * c, 2.0),
                randn(&mut rng, n * c, 1.0),
            );
            let dx0_init = randn(&mut rng, n * c, 0.5);
            let lambdas = [0.8f32, -0.4];
            let dl_init = [0.125f32, -2.0];
            let (bx, bx0, bl) = (
                d.upload_new(&to_bf16(&x)).unwrap(),
                d.upload_new(&to_bf16(&x0)).unwrap(),
                d.upload_new(&lambdas).unwrap(),
            );
            let mut runs = Vec::new();
            for _ in 0..2 {
                // dx aliases dxmix: the in-place use the model makes of it.
                let bmix = d.upload_new(&to_bf16(&dmix)).unwrap();
                let (bdx0, bdl) = (d.upload_new(&dx0_init).unwrap(), d.upload_new(&dl_init).unwrap());
                let scratch = d.alloc(4 * rmsnorm::mix_backward_scratch(n)).unwrap();
                rmsnorm::mix_backward(
                    d,
                    bmix.ptr(),
                    bdx0.ptr(),
                    bdl.ptr(),
                    scratch.ptr(),
                    bmix.ptr(),
                    bx.ptr(),
                    bx0.ptr(),
                    bl.ptr(),
                    n,
                    c,
                )
                .unwrap();
                runs.push((
                    down_bf16(d, bmix.ptr(), n * c),
                    d.download_vec::<f32>(bdx0.ptr(), n * c).unwrap(),
                    d.download_vec::<f32>(bdl.ptr(), 2).unwrap(),
                ));
            }
            assert_eq!(runs[0], runs[1], "{s:?} not reproducible");
        }
    }
}

/// rstd of each row of `x` (n, c), as the forward saves it.
fn rstd_of(x: &[f32], c: usize) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    let mut r = vec![0f32; x.len() / c];
    ops::rmsnorm_forward(&mut y, &mut r, x, c);
    r
}

/// The values are checked against the CPU reference in `device::check::rmsnorm`; here: two runs, the same bits.
#[test]
fn fused_norm_and_mix_backward_is_bitwise_deterministic() {
    let mut rng = Rng::new(18);
    for (s, dev) in devices() {
        for (n, c) in [(1usize, 40usize), (7, 300)] {
            let d = dev.as_ref();
            let (x, x0, dres, dy) = (
                randn(&mut rng, n * c, 2.0),
                randn(&mut rng, n * c, 2.0),
                randn(&mut rng, n * c, 1.0),
                randn(&mut rng, n * c, 1.0),
            );
            let lambdas = [0.8f32, -0.4];
            let xmix: Vec<f32> = to_bf16(
                &x.iter()
                    .zip(&x0)
                    .map(|(a, b)| lambdas[0] * a + lambdas[1] * b)
                    .collect::<Vec<_>>(),
            )
            .iter()
            .map(|v| v.to_f32())
            .collect();
            let rstd = rstd_of(&xmix, c);
            let dx0_init = randn(&mut rng, n * c, 0.5);
            let dl_init = [0.125f32, -2.0];
            let up = |v: &[f32]| d.upload_new(&to_bf16(v)).unwrap();
            let (bx, bx0, bmix, bdy) = (up(&x), up(&x0), up(&xmix), up(&dy));
            let (bl, brstd) = (d.upload_new(&lambdas).unwrap(), d.upload_new(&rstd).unwrap());
            let mut runs = Vec::new();
            for _ in 0..2 {
                // dx aliases dres: the in-place use the model makes of it.
                let bres = up(&dres);
                let (bdx0, bdl) = (d.upload_new(&dx0_init).unwrap(), d.upload_new(&dl_init).unwrap());
                let scratch = d.alloc(4 * rmsnorm::mix_backward_scratch(n)).unwrap();
                rmsnorm::rmsnorm_mix_backward(
                    d,
                    bres.ptr(),
                    bdx0.ptr(),
                    bdl.ptr(),
                    scratch.ptr(),
                    bres.ptr(),
                    bdy.ptr(),
                    bmix.ptr(),
                    brstd.ptr(),
                    bx.ptr(),
                    bx0.ptr(),
                    bl.ptr(),
                    n,
                    c,
                )
                .unwrap();
                runs.push((
                    down_bf16(d, bres.ptr(), n * c),
                    d.download_vec::<f32>(bdx0.ptr(), n * c).unwrap(),
                    d.download_vec::<f32>(bdl.ptr(), 2).unwrap(),
                ));
            }
            assert_eq!(runs[0], runs[1], "{s:?} not reproducible");
        }
    }
}
