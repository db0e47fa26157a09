//! Checks of `kernels/decode.rs` (`cuda/decode.cu`) against `cpu::decode`: rows of different lengths, GQA
//! groups 1/2/4, windows below and above the context, one split, several, and more splits than keys.

use super::Scale;
use super::{bf, compare, down_bf, rand, round, summary};
use crate::config::{ROPE_BASE, SMEAR_CHANNELS};
use crate::cpu::decode::{self as reference, StepShape};
use crate::cpu::ops;
use crate::device::kernels::decode;
use crate::device::Device;
use crate::device::Result;
use crate::rng::Rng;

fn shape(rows: usize, t: usize, h: usize, hkv: usize, d: usize, t_max: usize, window: usize) -> StepShape {
    StepShape {
        rows,
        t,
        h,
        hkv,
        d,
        t_max,
        window,
    }
}

fn upload_pos(dev: &dyn Device, pos: &[usize]) -> Result<crate::device::Buffer> {
    let p: Vec<i32> = pos.iter().map(|&p| p as i32).collect();
    dev.upload_new(&p)
}

/// kv_rope_append: q out, and the whole caches (untouched positions must keep their values).
pub(super) fn check_kv_rope_append(dev: &dyn Device, scale: Scale) -> Result<String> {
    let mut rng = Rng::new(31);
    let mut worst = 0f32;
    let cases: Vec<(StepShape, Vec<usize>)> = scale.pick(
        vec![
            (shape(3, 1, 4, 2, 16, 9, 9), vec![0, 4, 8]),
            (shape(2, 3, 2, 2, 64, 7, 7), vec![0, 4]),
            (shape(1, 5, 4, 1, 128, 12, 12), vec![6]),
            (shape(2, 1, 6, 3, 32, 4, 4), vec![3, 1]),
        ],
        vec![(shape(32, 1, 16, 4, 128, 2048, 2048), (0..32).map(|r| 60 * r).collect())],
    );
    for (s, pos) in cases {
        let what = |k: &str| format!("kv_rope_append {k} ({s:?}, pos {pos:?})");
        let positions = s.t_max;
        let (cos, sin) = ops::rope_tables(positions, s.d, ROPE_BASE);
        let (h, hkv, d, n) = (s.h, s.hkv, s.d, s.n());
        let x_stride = (h + hkv) * d + 8; // a strided view, as the QKV GEMM output
        let cache_len = s.rows * s.t_max * hkv * d;
        let (qk, v, k0, v0) = (
            rand(&mut rng, n * x_stride, 2.0),
            rand(&mut rng, n * hkv * d, 1.0),
            rand(&mut rng, cache_len, 1.0),
            rand(&mut rng, cache_len, 1.0),
        );
        let (bqk, bv, bk0, bv0) = (
            dev.upload_new(&bf(&qk))?,
            dev.upload_new(&bf(&v))?,
            dev.upload_new(&bf(&k0))?,
            dev.upload_new(&bf(&v0))?,
        );
        let (bcos, bsin, bpos) = (dev.upload_new(&cos)?, dev.upload_new(&sin)?, upload_pos(dev, &pos)?);
        let bq = dev.alloc(n * h * d * 2)?;
        decode::kv_rope_append(
            dev,
            bq.ptr(),
            bk0.ptr(),
            bv0.ptr(),
            bqk.ptr(),
            bv.ptr(),
            bcos.ptr(),
            bsin.ptr(),
            bpos.ptr(),
            &pos,
            s,
            x_stride,
            positions,
        )?;
        let (mut wq, mut wk, mut wv) = (vec![0.0; n * h * d], k0.clone(), v0.clone());
        reference::kv_rope_append(&mut wq, &mut wk, &mut wv, &qk, &v, &cos, &sin, &pos, s, x_stride);
        // bf16 outputs of O(1) normalised values: half an ulp of bf16 plus fp32 noise.
        worst = worst.max(compare(
            &what("q"),
            &down_bf(dev, bq.ptr(), n * h * d)?,
            &round(&wq),
            8e-3,
            1e-2,
        )?);
        worst = worst.max(compare(
            &what("k cache"),
            &down_bf(dev, bk0.ptr(), cache_len)?,
            &round(&wk),
            8e-3,
            1e-2,
        )?);
        worst = worst.max(compare(
            &what("v cache"),
            &down_bf(dev, bv0.ptr(), cache_len)?,
            &wv,
            0.0,
            0.0,
        )?);
    }
    Ok(summary(worst))
}

/// decode_attention (+ decode_combine) against the reference on one layer's cache.
pub(super) fn check_decode_attention(dev: &dyn Device, scale: Scale) -> Result<String> {
    let mut rng = Rng::new(32);
    let mut worst = 0f32;
    // (shape, positions, splits)
    let cases: Vec<(StepShape, Vec<usize>, usize)> = scale.pick(
        vec![
            // GQA 1, rows of different lengths, window above the context, one split
            (shape(3, 1, 2, 2, 16, 40, 64), vec![0, 17, 39], 1),
            // GQA 2, window below the context, three splits
            (shape(2, 1, 4, 2, 32, 50, 12), vec![49, 5], 3),
            // GQA 4, head_dim 64, window equal to a row's context, more splits than keys for the short row
            (shape(2, 1, 4, 1, 64, 30, 20), vec![20, 2], 7),
            // head_dim 128, a 3-token step at an offset (a chunk after a cached prefix), two splits
            (shape(1, 3, 2, 1, 128, 24, 24), vec![10], 2),
            // head_dim 8 (16 keys per warp pass), window 0 (each query sees itself only)
            (shape(2, 2, 2, 1, 8, 20, 0), vec![3, 11], 1),
            (shape(2, 2, 2, 1, 8, 70, 64), vec![1, 66], 4),
        ],
        vec![
            (shape(1, 1, 16, 4, 128, 4096, 4096), vec![4000], 16),
            (
                shape(64, 1, 16, 4, 128, 1024, 1024),
                (0..64).map(|r| 15 * r).collect(),
                2,
            ),
        ],
    );
    for (s, pos, splits) in cases {
        let what = format!("decode_attention ({s:?}, pos {pos:?}, {splits} splits)");
        let (h, hkv, d, n) = (s.h, s.hkv, s.d, s.n());
        let cache_len = s.rows * s.t_max * hkv * d;
        let (q, k, v) = (
            rand(&mut rng, n * h * d, 1.5),
            rand(&mut rng, cache_len, 1.5),
            rand(&mut rng, cache_len, 1.0),
        );
        let (bq, bk, bv, bpos) = (
            dev.upload_new(&bf(&q))?,
            dev.upload_new(&bf(&k))?,
            dev.upload_new(&bf(&v))?,
            upload_pos(dev, &pos)?,
        );
        let (po, pml) = decode::split_scratch(&s, splits);
        let (part_o, part_ml) = (dev.alloc(po.max(1) * 4)?, dev.alloc(pml.max(1) * 4)?);
        let out = dev.alloc(n * h * d * 2)?;
        decode::decode_attention(
            dev,
            out.ptr(),
            part_o.ptr(),
            part_ml.ptr(),
            bq.ptr(),
            bk.ptr(),
            bv.ptr(),
            bpos.ptr(),
            &pos,
            s,
            splits,
        )?;
        let want = reference::cached_attention(&q, &k, &v, &pos, s);
        worst = worst.max(compare(&what, &down_bf(dev, out.ptr(), n * h * d)?, &want, 1e-2, 5e-3)?);
    }
    Ok(summary(worst))
}

/// decode_smear: rows with a previous embedding and a fresh (zero) one; prev replaced by x.
pub(super) fn check_decode_smear(dev: &dyn Device, scale: Scale) -> Result<String> {
    let mut rng = Rng::new(33);
    let mut worst = 0f32;
    for &(rows, c) in scale.pick(&[(5, 40), (1, 24), (6, 100)][..], &[(128, 1280)]) {
        let what = |k: &str| format!("decode_smear {k} (rows={rows} c={c})");
        let k = SMEAR_CHANNELS;
        let (x, mut prev, w) = (
            rand(&mut rng, rows * c, 2.0),
            rand(&mut rng, rows * c, 2.0),
            rand(&mut rng, k, 0.5),
        );
        prev[..c].iter_mut().for_each(|p| *p = 0.0);
        let lambda = [0.7f32];
        let (bx, bprev, bw, bl) = (
            dev.upload_new(&bf(&x))?,
            dev.upload_new(&bf(&prev))?,
            dev.upload_new(&w)?,
            dev.upload_new(&lambda)?,
        );
        let out = dev.alloc(rows * c * 2)?;
        decode::decode_smear(dev, out.ptr(), bprev.ptr(), bx.ptr(), bw.ptr(), bl.ptr(), rows, c, k)?;
        let mut want = vec![0.0; rows * c];
        reference::decode_smear(&mut want, &mut prev, &x, &w, lambda[0], rows, c);
        let got = down_bf(dev, out.ptr(), rows * c)?;
        worst = worst.max(compare(&what("out"), &got, &round(&want), 8e-3, 1e-2)?);
        // The fresh row is not smeared at all.
        worst = worst.max(compare(&what("fresh row"), &got[..c], &x[..c], 0.0, 0.0)?);
        worst = worst.max(compare(
            &what("prev"),
            &down_bf(dev, bprev.ptr(), rows * c)?,
            &x,
            0.0,
            0.0,
        )?);
    }
    Ok(summary(worst))
}
