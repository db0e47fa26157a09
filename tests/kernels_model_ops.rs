//! The model's remaining elementwise kernels (`cuda/rope_qknorm.cu`, `cuda/model_ops.cu`) on the Emu device
//! against their CPU references in `nanochat::cpu::ops`, under the three thread schedules, on ragged shapes
//! (head dims that do not fill a warp, GQA head counts, position offsets, strided views).

use half::bf16;
use nanochat::cpu::ops;
use nanochat::device::emu::EmuDevice;
use nanochat::device::kernels::rope_qknorm::{self, RopeShape};
use nanochat::device::{DevPtr, Device, Schedule};
use nanochat::rng::Rng;

fn devices() -> Vec<(Schedule, Box<dyn Device>)> {
    Schedule::ALL
        .iter()
        .map(|&s| (s, Box::new(EmuDevice::new(s)) as Box<dyn Device>))
        .collect()
}

/// Values in [-scale, scale), rounded to bf16 (so the device and the reference see the same inputs).
fn randn(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| bf16::from_f32(rng.uniform(-scale, scale)).to_f32())
        .collect()
}

fn to_bf16(x: &[f32]) -> Vec<bf16> {
    x.iter().map(|&v| bf16::from_f32(v)).collect()
}

fn down_bf16(dev: &dyn Device, p: DevPtr, n: usize) -> Vec<f32> {
    dev.download_vec::<bf16>(p, n)
        .unwrap()
        .iter()
        .map(|v| v.to_f32())
        .collect()
}

fn assert_close(got: &[f32], want: &[f32], rel: f32, abs: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= abs + rel * w.abs(),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

/// Columns `[col, col + w)` of each row of a row-major `(n, stride)` matrix.
fn columns(x: &[f32], stride: usize, col: usize, w: usize) -> Vec<f32> {
    x.chunks_exact(stride)
        .flat_map(|r| r[col..col + w].iter().copied())
        .collect()
}

// ------------------------------------------------------------------------------------------------------------
// RoPE + QK-norm

/// CPU reference of the fused forward on one (n, heads, d) tensor: (rotated input, output, rstd).
fn rope_qknorm_ref(
    x: &[f32],
    cos: &[f32],
    sin: &[f32],
    t: usize,
    heads: usize,
    d: usize,
    pos0: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut xr = x.to_vec();
    ops::rope_forward(&mut xr, cos, sin, t, heads, d, pos0);
    let mut y = vec![0.0; x.len()];
    let mut rstd = vec![0.0; x.len() / d];
    ops::qk_norm_forward(&mut y, &mut rstd, &xr, d);
    (xr, y, rstd)
}

/// q and k read from a fused QKV GEMM output (rows of (h + 2·hkv)·d), forward and backward, with GQA
/// head counts, head dims of 16 (a quarter warp) to 256 (four pairs per lane), ragged t and a position
/// offset (decoding with a KV cache).
#[test]
fn rope_qknorm_matches_reference() {
    let mut rng = Rng::new(71);
    // (b, t, h, hkv, d, pos0)
    let shapes = [
        (2usize, 5usize, 3usize, 1usize, 16usize, 0usize),
        (1, 7, 4, 2, 64, 3),
        (3, 3, 2, 2, 128, 0),
        (1, 2, 1, 1, 256, 9),
        (1, 1, 6, 3, 32, 17),
    ];
    for (s, dev) in devices() {
        let dev = dev.as_ref();
        for &(b, t, h, hkv, d, pos0) in &shapes {
            let n = b * t;
            let stride = (h + 2 * hkv) * d;
            let positions = pos0 + t + 2;
            let (cos, sin) = ops::rope_tables(positions, d, 10000.0);
            let qkv = randn(&mut rng, n * stride, 1.0);
            let (dqkv, dcos, dsin) = (
                dev.upload_new(&to_bf16(&qkv)).unwrap(),
                dev.upload_new(&cos).unwrap(),
                dev.upload_new(&sin).unwrap(),
            );
            // The gradient buffer starts with values the backward must add to.
            let g0 = randn(&mut rng, n * stride, 0.5);
            let dgrad = dev.upload_new(&to_bf16(&g0)).unwrap();
            let mut want_grad = g0.clone();
            for (col, heads, name) in [(0, h, "q"), (h * d, hkv, "k")] {
                let what = format!("{s:?} {name} b={b} t={t} h={h} hkv={hkv} d={d} pos0={pos0}");
                let shape = RopeShape {
                    n,
                    t,
                    heads,
                    d,
                    pos0,
                    x_stride: stride,
                    positions,
                };
                let x = columns(&qkv, stride, col, heads * d);
                let (xr, want_y, want_r) = rope_qknorm_ref(&x, &cos, &sin, t, heads, d, pos0);
                let y = dev.alloc(2 * n * heads * d).unwrap();
                let rstd = dev.alloc(4 * n * heads).unwrap();
                let xp = dqkv.at::<bf16>(col);
                rope_qknorm::rope_qknorm_forward(
                    dev,
                    y.ptr(),
                    rstd.ptr(),
                    xp,
                    dcos.ptr(),
                    dsin.ptr(),
                    shape,
                )
                .unwrap();
                let got_r: Vec<f32> = dev.download_vec(rstd.ptr(), n * heads).unwrap();
                assert_close(&got_r, &want_r, 1e-4, 0.0, &format!("{what} rstd"));
                let got_y = down_bf16(dev, y.ptr(), n * heads * d);
                assert_close(&got_y, &want_y, 8e-3, 1e-3, &format!("{what} y"));

                // Backward: dy through the norm, then the transposed rotation, added into the strided
                // gradient of the GEMM output.
                let dy = randn(&mut rng, n * heads * d, 1.0);
                let ddy = dev.upload_new(&to_bf16(&dy)).unwrap();
                rope_qknorm::rope_qknorm_backward(
                    dev,
                    dgrad.at::<bf16>(col),
                    ddy.ptr(),
                    xp,
                    rstd.ptr(),
                    dcos.ptr(),
                    dsin.ptr(),
                    shape,
                    stride,
                    true,
                )
                .unwrap();
                let mut dxr = vec![0.0; n * heads * d];
                ops::qk_norm_backward(&mut dxr, &dy, &xr, &want_r, d);
                ops::rope_backward(&mut dxr, &cos, &sin, t, heads, d, pos0);
                for (r, row) in want_grad.chunks_exact_mut(stride).enumerate() {
                    for (w, g) in row[col..col + heads * d]
                        .iter_mut()
                        .zip(&dxr[r * heads * d..(r + 1) * heads * d])
                    {
                        *w += g;
                    }
                }
            }
            // q and k columns carry their gradients; the v columns are untouched.
            let got = down_bf16(dev, dgrad.ptr(), n * stride);
            let what = format!("{s:?} grad b={b} t={t} h={h} hkv={hkv} d={d} pos0={pos0}");
            assert_close(&got, &want_grad, 1e-2, 2e-2, &what);
            assert_eq!(
                columns(&got, stride, (h + hkv) * d, hkv * d),
                columns(&g0, stride, (h + hkv) * d, hkv * d),
                "{what}: v columns"
            );
        }
    }
}

/// Without `accumulate` the gradient is written, whatever the buffer held (the emulator fills fresh
/// buffers with NaN).
#[test]
fn rope_qknorm_backward_overwrites() {
    let mut rng = Rng::new(72);
    let dev: Box<dyn Device> = Box::new(EmuDevice::new(Schedule::Forward));
    let dev = dev.as_ref();
    let (n, heads, d) = (3, 2, 64);
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
    let x = randn(&mut rng, n * heads * d, 1.0);
    let dy = randn(&mut rng, n * heads * d, 1.0);
    let (dx_, ddy, dcos, dsin) = (
        dev.upload_new(&to_bf16(&x)).unwrap(),
        dev.upload_new(&to_bf16(&dy)).unwrap(),
        dev.upload_new(&cos).unwrap(),
        dev.upload_new(&sin).unwrap(),
    );
    let (y, rstd, grad) = (
        dev.alloc(2 * x.len()).unwrap(),
        dev.alloc(4 * n * heads).unwrap(),
        dev.alloc(2 * x.len()).unwrap(),
    );
    rope_qknorm::rope_qknorm_forward(
        dev,
        y.ptr(),
        rstd.ptr(),
        dx_.ptr(),
        dcos.ptr(),
        dsin.ptr(),
        shape,
    )
    .unwrap();
    rope_qknorm::rope_qknorm_backward(
        dev,
        grad.ptr(),
        ddy.ptr(),
        dx_.ptr(),
        rstd.ptr(),
        dcos.ptr(),
        dsin.ptr(),
        shape,
        heads * d,
        false,
    )
    .unwrap();
    let (xr, _, r) = rope_qknorm_ref(&x, &cos, &sin, n, heads, d, 0);
    let mut want = vec![0.0; x.len()];
    ops::qk_norm_backward(&mut want, &dy, &xr, &r, d);
    ops::rope_backward(&mut want, &cos, &sin, n, heads, d, 0);
    assert_close(
        &down_bf16(dev, grad.ptr(), x.len()),
        &want,
        1e-2,
        2e-2,
        "overwrite",
    );
}

/// Shapes the kernels cannot take are errors, not launches.
#[test]
fn rope_qknorm_rejects_bad_shapes() {
    let dev: Box<dyn Device> = Box::new(EmuDevice::new(Schedule::Forward));
    let dev = dev.as_ref();
    let buf = dev.alloc(1 << 16).unwrap();
    let p = buf.ptr();
    let ok = RopeShape {
        n: 4,
        t: 2,
        heads: 2,
        d: 8,
        pos0: 0,
        x_stride: 16,
        positions: 2,
    };
    let bad = [
        RopeShape { d: 7, ..ok },
        RopeShape {
            d: 258,
            x_stride: 1000,
            ..ok
        },
        RopeShape { t: 3, ..ok },
        RopeShape { x_stride: 15, ..ok },
        RopeShape { pos0: 1, ..ok },
    ];
    for s in bad {
        let e = rope_qknorm::rope_qknorm_forward(dev, p, p, p, p, p, s);
        assert!(e.is_err(), "{s:?} accepted");
    }
    assert!(rope_qknorm::rope_qknorm_backward(dev, p, p, p, p, p, p, ok, 15, false).is_err());
}
