//! Checks of `kernels/rope_qknorm.rs` (`cuda/rope_qknorm.cu`): RoPE + QK-norm forward and backward against
//! `cpu::ops`. Small shapes: GQA head counts, head dims of 16 (a quarter warp) to 256 (four pairs per lane),
//! ragged t, position offsets (decoding with a KV cache) and tables longer than needed; the large one is d20's.

use super::Scale;
use super::{bf, columns, compare, down_bf, rand, summary};
use crate::cpu::ops;
use crate::device::kernels::rope_qknorm;
use crate::device::kernels::rope_qknorm::RopeShape;
use crate::device::Device;
use crate::device::Result;
use crate::rng::Rng;
use half::bf16;

/// One case of the fused-QKV check: (b, t, h, hkv, d, pos0, positions in the tables beyond pos0 + t,
/// whether k's gradient is added to the buffer (else written over it)).
type Case = (usize, usize, usize, usize, usize, usize, usize, bool);

const SMALL: &[Case] = &[
    (2, 5, 4, 2, 64, 3, 0, false),
    (2, 5, 3, 1, 16, 0, 2, true),
    (1, 7, 4, 2, 64, 3, 2, true),
    (3, 3, 2, 2, 128, 0, 2, true),
    (1, 2, 1, 1, 256, 9, 2, true),
    (1, 1, 6, 3, 32, 17, 2, true),
];
const LARGE: &[Case] = &[(16, 1024, 10, 5, 128, 0, 0, false)];

/// q and k read from a fused QKV GEMM output, forward, then backward into the strided gradient of that
/// output: q's added to what is there, k's added or written over it; v's columns are left alone. Then
/// the plain layout: one (n, heads, d) tensor, its gradient written over a fresh buffer.
pub(super) fn check_rope_qknorm(dev: &dyn Device, scale: Scale) -> Result<String> {
    let mut rng = Rng::new(21);
    let mut worst = 0f32;
    for &case in scale.pick(SMALL, LARGE) {
        worst = worst.max(fused_case(dev, &mut rng, case)?);
    }
    for &(n, heads, d) in scale.pick(&[(3, 2, 64)][..], &[(16384, 10, 128)]) {
        worst = worst.max(plain_case(dev, &mut rng, n, heads, d)?);
    }
    Ok(summary(worst))
}

fn fused_case(dev: &dyn Device, rng: &mut Rng, case: Case) -> Result<f32> {
    let (b, t, h, hkv, d, pos0, spare, k_accumulates) = case;
    let what = |k: &str| format!("rope_qknorm {k} (b={b} t={t} h={h} hkv={hkv} d={d} pos0={pos0})");
    let (n, stride, positions) = (b * t, (h + 2 * hkv) * d, pos0 + t + spare);
    let (cos, sin) = ops::rope_tables(positions, d, 10000.0);
    let (qkv, g0) = (rand(rng, n * stride, 1.0), rand(rng, n * stride, 0.5));
    let (bqkv, bcos, bsin, bgrad) = (
        dev.upload_new(&bf(&qkv))?,
        dev.upload_new(&cos)?,
        dev.upload_new(&sin)?,
        dev.upload_new(&bf(&g0))?,
    );
    let mut want_grad = g0.clone();
    let mut worst = 0f32;
    for (col, heads, name, accumulate) in [(0, h, "q", true), (h * d, hkv, "k", k_accumulates)] {
        let shape = RopeShape {
            n,
            t,
            heads,
            d,
            pos0,
            x_stride: stride,
            positions,
        };
        let m = n * heads * d;
        let mut xr = columns(&qkv, stride, col, heads * d);
        ops::rope_forward(&mut xr, &cos, &sin, t, heads, d, pos0);
        let (mut wy, mut wr) = (vec![0f32; m], vec![0f32; n * heads]);
        ops::qk_norm_forward(&mut wy, &mut wr, &xr, d);
        let (y, rstd) = (dev.alloc(2 * m)?, dev.alloc(4 * n * heads)?);
        let x = bqkv.at::<bf16>(col);
        rope_qknorm::rope_qknorm_forward(dev, y.ptr(), rstd.ptr(), x, bcos.ptr(), bsin.ptr(), shape)?;
        worst = worst.max(compare(
            &what(&format!("{name} rstd")),
            &dev.download_vec::<f32>(rstd.ptr(), n * heads)?,
            &wr,
            1e-4,
            0.0,
        )?);
        worst = worst.max(compare(
            &what(&format!("{name} y")),
            &down_bf(dev, y.ptr(), m)?,
            &wy,
            8e-3,
            1e-3,
        )?);
        let dy = rand(rng, m, 1.0);
        let bdy = dev.upload_new(&bf(&dy))?;
        rope_qknorm::rope_qknorm_backward(
            dev,
            bgrad.at::<bf16>(col),
            bdy.ptr(),
            x,
            rstd.ptr(),
            bcos.ptr(),
            bsin.ptr(),
            shape,
            stride,
            accumulate,
        )?;
        let mut dx = vec![0f32; m];
        ops::qk_norm_backward(&mut dx, &dy, &xr, &wr, d);
        ops::rope_backward(&mut dx, &cos, &sin, t, heads, d, pos0);
        for (row, g) in want_grad.chunks_exact_mut(stride).zip(dx.chunks_exact(heads * d)) {
            for (w, g) in row[col..col + heads * d].iter_mut().zip(g) {
                *w = if accumulate { *w + g } else { *g };
            }
        }
    }
    let got = down_bf(dev, bgrad.ptr(), n * stride)?;
    worst = worst.max(compare(&what("gradient"), &got, &want_grad, 1e-2, 2e-2)?);
    let vcol = (h + hkv) * d;
    compare(
        &what("gradient (v columns, untouched)"),
        &columns(&got, stride, vcol, hkv * d),
        &columns(&g0, stride, vcol, hkv * d),
        0.0,
        0.0,
    )?;
    Ok(worst)
}

/// One (n, heads, d) tensor of n positions from 0, not a view; the gradient is written (`accumulate`
/// false) over whatever a fresh buffer holds (NaN on the emulator).
fn plain_case(dev: &dyn Device, rng: &mut Rng, n: usize, heads: usize, d: usize) -> Result<f32> {
    let what = |k: &str| format!("rope_qknorm plain {k} (n={n} heads={heads} d={d})");
    let m = n * heads * d;
    let shape = RopeShape {
        n,
        t: n,
        heads,
        d,
        pos0: 0,
        x_stride: heads * d,
        positions: n,
    };
    let (cos, sin) = ops::rope_tables(n, d, 10000.0);
    let (x, dy) = (rand(rng, m, 1.0), rand(rng, m, 1.0));
    let (bx, bdy, bcos, bsin) = (
        dev.upload_new(&bf(&x))?,
        dev.upload_new(&bf(&dy))?,
        dev.upload_new(&cos)?,
        dev.upload_new(&sin)?,
    );
    let (y, rstd, grad) = (dev.alloc(2 * m)?, dev.alloc(4 * n * heads)?, dev.alloc(2 * m)?);
    rope_qknorm::rope_qknorm_forward(dev, y.ptr(), rstd.ptr(), bx.ptr(), bcos.ptr(), bsin.ptr(), shape)?;
    rope_qknorm::rope_qknorm_backward(
        dev,
        grad.ptr(),
        bdy.ptr(),
        bx.ptr(),
        rstd.ptr(),
        bcos.ptr(),
        bsin.ptr(),
        shape,
        heads * d,
        false,
    )?;
    let mut xr = x;
    ops::rope_forward(&mut xr, &cos, &sin, n, heads, d, 0);
    let (mut wy, mut wr) = (vec![0f32; m], vec![0f32; n * heads]);
    ops::qk_norm_forward(&mut wy, &mut wr, &xr, d);
    let mut want = vec![0f32; m];
    ops::qk_norm_backward(&mut want, &dy, &xr, &wr, d);
    ops::rope_backward(&mut want, &cos, &sin, n, heads, d, 0);
    compare(&what("gradient"), &down_bf(dev, grad.ptr(), m)?, &want, 1e-2, 2e-2)
}
