//! Checks of `kernels/decode.rs` (`cuda/decode.cu`) against `cpu::decode`: steps mixing chunks of several
//! tokens with one-token decodes on rows of different lengths (a subset of the cache's rows), GQA groups
//! 1/2/4, windows below, equal to and above the context, one split, several, and more splits than keys.

use super::Scale;
use super::{bf, compare, down_bf, rand, round, summary};
use crate::config::{ROPE_BASE, SMEAR_CHANNELS};
use crate::cpu::decode::{self as reference, StepShape};
use crate::cpu::ops;
use crate::device::kernels::decode::{self, StepTokens, TokenTable};
use crate::device::{Buffer, Device, Result};
use crate::rng::Rng;

/// A step over cache rows `rows` with chunks of `lens` tokens on rows of lengths `row_len`.
struct Step {
    cache_rows: usize,
    rows: Vec<usize>,
    lens: Vec<usize>,
    row_len: Vec<usize>,
}

fn step(cache_rows: usize, rows: &[usize], lens: &[usize], row_len: &[usize]) -> Step {
    Step {
        cache_rows,
        rows: rows.to_vec(),
        lens: lens.to_vec(),
        row_len: row_len.to_vec(),
    }
}

fn shape(n: usize, h: usize, hkv: usize, d: usize, t_max: usize, window: usize) -> StepShape {
    StepShape {
        n,
        h,
        hkv,
        d,
        t_max,
        window,
    }
}

/// Uploads the token table; returns it with its device addresses.
fn upload(dev: &dyn Device, tok: &StepTokens, sel: &[usize]) -> Result<(Buffer, TokenTable)> {
    let buf = dev.upload_new(&tok.table(sel))?;
    let t = TokenTable::at(buf.ptr(), tok.n(), sel.len());
    Ok((buf, t))
}

/// kv_rope_append: q out, and the whole caches (untouched positions must keep their values).
pub(super) fn check_kv_rope_append(dev: &dyn Device, scale: Scale) -> Result<String> {
    let mut rng = Rng::new(31);
    let mut worst = 0f32;
    // (step, h, hkv, d, t_max)
    let cases: Vec<(Step, usize, usize, usize, usize)> = scale.pick(
        vec![
            (step(3, &[0, 1, 2], &[1, 1, 1], &[0, 4, 8]), 4, 2, 16, 9),
            (step(4, &[3, 1], &[3, 1], &[0, 4]), 2, 2, 64, 7),
            (step(2, &[1], &[5], &[6]), 4, 1, 128, 12),
            (step(3, &[2, 0], &[1, 2], &[3, 1]), 6, 3, 32, 4),
        ],
        vec![(
            step(
                32,
                &(0..32).collect::<Vec<_>>(),
                &[1; 32],
                &(0..32).map(|r| 60 * r).collect::<Vec<_>>(),
            ),
            16,
            4,
            128,
            2048,
        )],
    );
    for (st, h, hkv, d, t_max) in cases {
        let tok = StepTokens::new(&st.rows, &st.lens, &st.row_len);
        let n = tok.n();
        let s = shape(n, h, hkv, d, t_max, t_max);
        let what = |k: &str| {
            format!(
                "kv_rope_append {k} ({s:?}, rows {:?} lens {:?} at {:?})",
                st.rows, st.lens, st.row_len
            )
        };
        let positions = t_max;
        let (cos, sin) = ops::rope_tables(positions, d, ROPE_BASE);
        let x_stride = (h + hkv) * d + 8; // a strided view, as the QKV GEMM output
        let cache_len = st.cache_rows * t_max * hkv * d;
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
        let (bcos, bsin) = (dev.upload_new(&cos)?, dev.upload_new(&sin)?);
        let (_tb, table) = upload(dev, &tok, &[])?;
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
            &table,
            &tok,
            s,
            st.cache_rows,
            x_stride,
            positions,
        )?;
        let (mut wq, mut wk, mut wv) = (vec![0.0; n * h * d], k0.clone(), v0.clone());
        reference::kv_rope_append(
            &mut wq, &mut wk, &mut wv, &qk, &v, &cos, &sin, &tok.row, &tok.pos, s, x_stride,
        );
        // bf16 outputs of O(1) normalised values: half an ulp of bf16 plus fp32 noise.
        worst = worst.max(compare(
            &what("q"),
            &down_bf(dev, bq.ptr(), n * h * d)?,
            &round(&wq),
            8e-3,
            1e-2,
        )?);
        let k_got = down_bf(dev, bk0.ptr(), cache_len)?;
        worst = worst.max(compare(&what("k cache"), &k_got, &round(&wk), 8e-3, 1e-2)?);
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
    // (step, h, hkv, d, t_max, window, splits); every token attends unless `sel` drops some.
    let cases: Vec<(Step, usize, usize, usize, usize, usize, usize)> = scale.pick(
        vec![
            // GQA 1, rows of different lengths, window above the context, one split
            (step(3, &[0, 1, 2], &[1, 1, 1], &[0, 17, 39]), 2, 2, 16, 40, 64, 1),
            // GQA 2, window below the context, three splits, a subset of the cache's rows
            (step(4, &[3, 0], &[1, 1], &[49, 5]), 4, 2, 32, 50, 12, 3),
            // GQA 4, head_dim 64, window equal to a row's context, more splits than keys for the short row
            (step(2, &[0, 1], &[1, 1], &[20, 2]), 4, 1, 64, 30, 20, 7),
            // head_dim 128, a 3-token chunk after a cached prefix next to a one-token decode, two splits
            (step(2, &[1, 0], &[3, 1], &[10, 4]), 2, 1, 128, 24, 24, 2),
            // head_dim 8 (16 keys per warp pass), window 0 (each query sees itself only)
            (step(2, &[0, 1], &[2, 2], &[3, 11]), 2, 1, 8, 20, 0, 1),
            (step(2, &[1, 0], &[2, 5], &[1, 60]), 2, 1, 8, 70, 64, 4),
        ],
        vec![
            (step(1, &[0], &[1], &[3999]), 16, 4, 128, 4096, 4096, 16),
            (
                step(
                    64,
                    &(0..64).collect::<Vec<_>>(),
                    &[1; 64],
                    &(0..64).map(|r| 15 * r).collect::<Vec<_>>(),
                ),
                16,
                4,
                128,
                1024,
                1024,
                2,
            ),
        ],
    );
    for (i, (st, h, hkv, d, t_max, window, splits)) in cases.into_iter().enumerate() {
        let tok = StepTokens::new(&st.rows, &st.lens, &st.row_len);
        let n = tok.n();
        let s = shape(n, h, hkv, d, t_max, window);
        // The last small case attends for every other token only: the others keep what `out` held.
        let sel: Vec<usize> = if i == 5 {
            (0..n).step_by(2).collect()
        } else {
            (0..n).collect()
        };
        let what = format!(
            "decode_attention ({s:?}, rows {:?} lens {:?} at {:?}, {splits} splits)",
            st.rows, st.lens, st.row_len
        );
        let cache_len = st.cache_rows * t_max * hkv * d;
        let (q, k, v) = (
            rand(&mut rng, n * h * d, 1.5),
            rand(&mut rng, cache_len, 1.5),
            rand(&mut rng, cache_len, 1.0),
        );
        let (bq, bk, bv) = (
            dev.upload_new(&bf(&q))?,
            dev.upload_new(&bf(&k))?,
            dev.upload_new(&bf(&v))?,
        );
        let (_tb, table) = upload(dev, &tok, &sel)?;
        let (po, pml) = decode::split_scratch(&s, splits);
        let (part_o, part_ml) = (dev.alloc(po.max(1) * 4)?, dev.alloc(pml.max(1) * 4)?);
        let out = dev.upload_new(&vec![half::bf16::from_f32(7.0); n * h * d])?;
        decode::decode_attention(
            dev,
            out.ptr(),
            part_o.ptr(),
            part_ml.ptr(),
            bq.ptr(),
            bk.ptr(),
            bv.ptr(),
            &table,
            &tok,
            &sel,
            s,
            st.cache_rows,
            splits,
        )?;
        let mut want = reference::cached_attention(&q, &k, &v, &tok.row, &tok.pos, &sel, s);
        for j in (0..n).filter(|j| !sel.contains(j)) {
            want[j * h * d..(j + 1) * h * d].iter_mut().for_each(|w| *w = 7.0);
        }
        worst = worst.max(compare(&what, &down_bf(dev, out.ptr(), n * h * d)?, &want, 1e-2, 5e-3)?);
    }
    Ok(summary(worst))
}

/// decode_smear: chunks of several tokens, one-token chunks on rows with a previous embedding and on a
/// fresh row; each row's previous embedding replaced by its chunk's last token, the other rows untouched.
pub(super) fn check_decode_smear(dev: &dyn Device, scale: Scale) -> Result<String> {
    let mut rng = Rng::new(33);
    let mut worst = 0f32;
    let cases: Vec<(Step, usize)> = scale.pick(
        vec![
            (step(6, &[0, 2, 5, 1], &[1, 3, 1, 1], &[0, 0, 7, 2]), 40),
            (step(1, &[0], &[1], &[9]), 24),
            (step(3, &[1, 2], &[4, 1], &[5, 3]), 100),
        ],
        vec![(step(128, &(0..128).collect::<Vec<_>>(), &[1; 128], &[100; 128]), 1280)],
    );
    for (st, c) in cases {
        let tok = StepTokens::new(&st.rows, &st.lens, &st.row_len);
        let n = tok.n();
        let what = |k: &str| {
            format!(
                "decode_smear {k} (rows {:?} lens {:?} at {:?}, c={c})",
                st.rows, st.lens, st.row_len
            )
        };
        let k = SMEAR_CHANNELS;
        let (x, mut prev, w) = (
            rand(&mut rng, n * c, 2.0),
            rand(&mut rng, st.cache_rows * c, 2.0),
            rand(&mut rng, k, 0.5),
        );
        let lambda = [0.7f32];
        let (bx, bprev, bw, bl) = (
            dev.upload_new(&bf(&x))?,
            dev.upload_new(&bf(&prev))?,
            dev.upload_new(&w)?,
            dev.upload_new(&lambda)?,
        );
        let (_tb, table) = upload(dev, &tok, &[])?;
        let out = dev.alloc(n * c * 2)?;
        decode::decode_smear(
            dev,
            out.ptr(),
            bprev.ptr(),
            bx.ptr(),
            bw.ptr(),
            bl.ptr(),
            &table,
            &tok,
            st.cache_rows,
            c,
            k,
        )?;
        let mut want = vec![0.0; n * c];
        reference::decode_smear(
            &mut want,
            &mut prev,
            &x,
            &w,
            lambda[0],
            &tok.src_tok,
            &tok.src_row,
            &tok.last_row,
            c,
        );
        let got = down_bf(dev, out.ptr(), n * c)?;
        worst = worst.max(compare(&what("out"), &got, &round(&want), 8e-3, 1e-2)?);
        // Tokens without a source are copied exactly.
        for j in (0..n).filter(|&j| tok.src_tok[j] < 0 && tok.src_row[j] < 0) {
            compare(
                &what("unsmeared token"),
                &got[j * c..(j + 1) * c],
                &x[j * c..(j + 1) * c],
                0.0,
                0.0,
            )?;
        }
        worst = worst.max(compare(
            &what("prev"),
            &down_bf(dev, bprev.ptr(), st.cache_rows * c)?,
            &prev,
            0.0,
            0.0,
        )?);
    }
    Ok(summary(worst))
}
