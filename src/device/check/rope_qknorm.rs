//! Checks of `kernels/rope_qknorm.rs` (`cuda/rope_qknorm.cu`): RoPE + QK-norm forward and backward against `cpu::ops`.

use super::Scale;
use super::{bf, columns, compare, down_bf, rand, summary};
use crate::cpu::ops;
use crate::device::kernels::rope_qknorm;
use crate::device::kernels::rope_qknorm::RopeShape;
use crate::device::Device;
use crate::device::Result;
use crate::rng::Rng;
use half::bf16;

/// q and k read from a fused QKV GEMM output (GQA head counts, a position offset), forward, then backward
/// into the strided gradient of that output: q's added to what is there, k's written over it; v's
/// columns are left alone.
pub(super) fn check_rope_qknorm(dev: &dyn Device, scale: Scale) -> Result<String> {
    let (b, t, h, hkv, d, pos0) = scale.pick((2, 5, 4, 2, 64, 3), (16, 1024, 10, 5, 128, 0));
    let (n, stride, positions) = (b * t, (h + 2 * hkv) * d, pos0 + t);
    let (cos, sin) = ops::rope_tables(positions, d, 10000.0);
    let mut rng = Rng::new(21);
    let (qkv, g0) = (
        rand(&mut rng, n * stride, 1.0),
        rand(&mut rng, n * stride, 0.5),
    );
    let (bqkv, bcos, bsin, bgrad) = (
        dev.upload_new(&bf(&qkv))?,
        dev.upload_new(&cos)?,
        dev.upload_new(&sin)?,
        dev.upload_new(&bf(&g0))?,
    );
    let mut want_grad = g0.clone();
    let mut worst = 0f32;
    for (col, heads, name, accumulate) in [(0, h, "q", true), (h * d, hkv, "k", false)] {
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
        rope_qknorm::rope_qknorm_forward(
            dev,
            y.ptr(),
            rstd.ptr(),
            x,
            bcos.ptr(),
            bsin.ptr(),
            shape,
        )?;
        worst = worst.max(compare(
            &format!("rope_qknorm {name} rstd"),
            &dev.download_vec::<f32>(rstd.ptr(), n * heads)?,
            &wr,
            1e-4,
            0.0,
        )?);
        worst = worst.max(compare(
            &format!("rope_qknorm {name} y"),
            &down_bf(dev, y.ptr(), m)?,
            &wy,
            8e-3,
            1e-3,
        )?);
        let dy = rand(&mut rng, m, 1.0);
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
        for (row, g) in want_grad
            .chunks_exact_mut(stride)
            .zip(dx.chunks_exact(heads * d))
        {
            for (w, g) in row[col..col + heads * d].iter_mut().zip(g) {
                *w = if accumulate { *w + g } else { *g };
            }
        }
    }
    let got = down_bf(dev, bgrad.ptr(), n * stride)?;
    worst = worst.max(compare(
        "rope_qknorm gradient",
        &got,
        &want_grad,
        1e-2,
        2e-2,
    )?);
    let vcol = (h + hkv) * d;
    compare(
        "rope_qknorm gradient (v columns, untouched)",
        &columns(&got, stride, vcol, hkv * d),
        &columns(&g0, stride, vcol, hkv * d),
        0.0,
        0.0,
    )?;
    Ok(summary(worst))
}
