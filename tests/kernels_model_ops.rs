//! The model's remaining elementwise kernels (`cuda/rope_qknorm.cu`, `cuda/model_ops.cu`) on the Emu device
//! against their CPU references in `nanochat::cpu::ops`, under the three thread schedules, on ragged shapes
//! (head dims that do not fill a warp, GQA head counts, position offsets, strided views).

use half::bf16;
use nanochat::cpu::ops;
use nanochat::device::emu::EmuDevice;
use nanochat::device::kernels::model_ops::{self, GateShape};
use nanochat::device::kernels::rope_qknorm::{self, RopeShape};
use nanochat::device::{Device, Schedule};
use nanochat::rng::Rng;

mod common;
use common::{assert_close, devices, down_bf16, randn, to_bf16};

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

// ------------------------------------------------------------------------------------------------------------
// Value-embedding gate, smear, backout

/// The gate on the v columns of a fused QKV output, GQA head counts, head dims below and above a warp,
/// forward and backward (adding into dxn and into nonzero dwg, as across micro-steps).
#[test]
fn ve_gate_matches_reference() {
    let mut rng = Rng::new(73);
    let k = 12;
    // (n, c, h, hkv, d)
    let shapes = [
        (5usize, 20usize, 2usize, 1usize, 16usize),
        (7, 40, 6, 3, 64),
        (1, 12, 2, 2, 128),
        (33, 24, 1, 1, 40),
    ];
    for (s, dev) in devices() {
        let dev = dev.as_ref();
        for &(n, c, h, hkv, d) in &shapes {
            let what = format!("{s:?} n={n} c={c} h={h} hkv={hkv} d={d}");
            let stride = (h + 2 * hkv) * d;
            let vcol = (h + hkv) * d;
            let shape = GateShape {
                n,
                c,
                hkv,
                d,
                k,
                v_stride: stride,
            };
            let qkv = randn(&mut rng, n * stride, 1.0);
            let xn = randn(&mut rng, n * c, 2.0);
            let ve = randn(&mut rng, n * hkv * d, 1.0);
            let wg = randn(&mut rng, hkv * k, 0.5);
            let (dqkv, dxn_in, dve_in, dwg_in) = (
                dev.upload_new(&to_bf16(&qkv)).unwrap(),
                dev.upload_new(&to_bf16(&xn)).unwrap(),
                dev.upload_new(&to_bf16(&ve)).unwrap(),
                dev.upload_new(&wg).unwrap(),
            );
            let gate = dev.alloc(4 * n * hkv).unwrap();
            model_ops::ve_gate_forward(
                dev,
                dqkv.at::<bf16>(vcol),
                gate.ptr(),
                dxn_in.ptr(),
                dve_in.ptr(),
                dwg_in.ptr(),
                shape,
            )
            .unwrap();
            let mut want_v = columns(&qkv, stride, vcol, hkv * d);
            let mut want_gate = vec![0.0; n * hkv];
            ops::ve_gate_forward(&mut want_v, &mut want_gate, &xn, &ve, &wg, n, c, hkv, d);
            let got_gate: Vec<f32> = dev.download_vec(gate.ptr(), n * hkv).unwrap();
            assert_close(&got_gate, &want_gate, 1e-4, 1e-6, &format!("{what} gate"));
            let got = down_bf16(dev, dqkv.ptr(), n * stride);
            assert_close(
                &columns(&got, stride, vcol, hkv * d),
                &want_v,
                8e-3,
                1e-3,
                &format!("{what} v"),
            );
            assert_eq!(
                columns(&got, stride, 0, vcol),
                columns(&qkv, stride, 0, vcol),
                "{what}: q and k columns"
            );

            // Backward from a strided dv; dxn and dwg start nonzero.
            let dqkv_grad = randn(&mut rng, n * stride, 1.0);
            let dxn0 = randn(&mut rng, n * c, 0.5);
            let dwg0 = randn(&mut rng, hkv * k, 0.5);
            let (ddv, ddxn, ddwg) = (
                dev.upload_new(&to_bf16(&dqkv_grad)).unwrap(),
                dev.upload_new(&to_bf16(&dxn0)).unwrap(),
                dev.upload_new(&dwg0).unwrap(),
            );
            let dve = dev.alloc(2 * n * hkv * d).unwrap();
            let scratch = dev.alloc(4 * model_ops::ve_gate_scratch(&shape)).unwrap();
            model_ops::ve_gate_backward(
                dev,
                dve.ptr(),
                ddxn.ptr(),
                ddwg.ptr(),
                scratch.ptr(),
                ddv.at::<bf16>(vcol),
                gate.ptr(),
                dxn_in.ptr(),
                dve_in.ptr(),
                dwg_in.ptr(),
                shape,
            )
            .unwrap();
            let dv = columns(&dqkv_grad, stride, vcol, hkv * d);
            let (mut want_dve, mut want_dwg, mut want_dxn) =
                (vec![0.0; n * hkv * d], dwg0.clone(), dxn0.clone());
            ops::ve_gate_backward(
                &mut want_dve,
                &mut want_dwg,
                &mut want_dxn,
                &dv,
                &want_gate,
                &xn,
                &ve,
                &wg,
                n,
                c,
                hkv,
                d,
            );
            let got_dve = down_bf16(dev, dve.ptr(), n * hkv * d);
            assert_close(&got_dve, &want_dve, 8e-3, 1e-4, &format!("{what} dve"));
            let got_dxn = down_bf16(dev, ddxn.ptr(), n * c);
            assert_close(&got_dxn, &want_dxn, 1e-2, 1e-2, &format!("{what} dxn"));
            let got_dwg: Vec<f32> = dev.download_vec(ddwg.ptr(), hkv * k).unwrap();
            assert_close(&got_dwg, &want_dwg, 1e-3, 1e-3, &format!("{what} dwg"));
        }
    }
}

/// Smear within sequences (a sequence of length 1, rows wider than the block), forward and backward
/// with the gate-weight and lambda gradients added to nonzero values.
#[test]
fn smear_matches_reference() {
    let mut rng = Rng::new(74);
    let k = 24;
    // (b, t, c)
    for (s, dev) in devices() {
        let dev = dev.as_ref();
        for &(b, t, c) in &[(2usize, 5usize, 40usize), (3, 1, 30), (1, 4, 300)] {
            let what = format!("{s:?} b={b} t={t} c={c}");
            let n = b * t;
            let x = randn(&mut rng, n * c, 1.5);
            let w = randn(&mut rng, k, 0.4);
            let lambda = 0.7f32;
            let (dxp, dw_, dl_) = (
                dev.upload_new(&to_bf16(&x)).unwrap(),
                dev.upload_new(&w).unwrap(),
                dev.upload_new(&[lambda]).unwrap(),
            );
            let (out, g) = (dev.alloc(2 * n * c).unwrap(), dev.alloc(4 * n).unwrap());
            model_ops::smear_forward(
                dev,
                out.ptr(),
                g.ptr(),
                dxp.ptr(),
                dw_.ptr(),
                dl_.ptr(),
                n,
                t,
                c,
                k,
            )
            .unwrap();
            let (mut want, mut want_g) = (vec![0.0; n * c], vec![0.0; n]);
            ops::smear_forward(&mut want, &mut want_g, &x, &w, lambda, b, t, c);
            let got_g: Vec<f32> = dev.download_vec(g.ptr(), n).unwrap();
            assert_close(&got_g, &want_g, 1e-4, 1e-6, &format!("{what} g"));
            assert_close(
                &down_bf16(dev, out.ptr(), n * c),
                &want,
                8e-3,
                1e-3,
                &format!("{what} out"),
            );

            let dout = randn(&mut rng, n * c, 1.0);
            let dx0 = randn(&mut rng, n * c, 0.5);
            let dw0 = randn(&mut rng, k, 0.5);
            let dl0 = 0.25f32;
            let (ddout, ddx, ddw, ddl) = (
                dev.upload_new(&to_bf16(&dout)).unwrap(),
                dev.upload_new(&to_bf16(&dx0)).unwrap(),
                dev.upload_new(&dw0).unwrap(),
                dev.upload_new(&[dl0]).unwrap(),
            );
            let scratch = dev.alloc(4 * model_ops::smear_scratch(n, k)).unwrap();
            model_ops::smear_backward(
                dev,
                ddx.ptr(),
                ddw.ptr(),
                ddl.ptr(),
                scratch.ptr(),
                ddout.ptr(),
                dxp.ptr(),
                dw_.ptr(),
                dl_.ptr(),
                n,
                t,
                c,
                k,
            )
            .unwrap();
            let (mut want_dx, mut want_dw, mut want_dl) = (dx0.clone(), dw0.clone(), dl0);
            ops::smear_backward(
                &mut want_dx,
                &mut want_dw,
                &mut want_dl,
                &dout,
                &x,
                &w,
                lambda,
                b,
                t,
                c,
            );
            assert_close(
                &down_bf16(dev, ddx.ptr(), n * c),
                &want_dx,
                1e-2,
                1e-2,
                &format!("{what} dx"),
            );
            let got_dw: Vec<f32> = dev.download_vec(ddw.ptr(), k).unwrap();
            assert_close(&got_dw, &want_dw, 1e-3, 1e-3, &format!("{what} dw"));
            let got_dl: Vec<f32> = dev.download_vec(ddl.ptr(), 1).unwrap();
            assert_close(&got_dl, &[want_dl], 1e-3, 1e-3, &format!("{what} dlambda"));
        }
    }
}

#[test]
fn backout_matches_reference() {
    let mut rng = Rng::new(75);
    for (s, dev) in devices() {
        let dev = dev.as_ref();
        for &(n, c) in &[(3usize, 300usize), (1, 7), (9, 33)] {
            let what = format!("{s:?} n={n} c={c}");
            let len = n * c;
            let (x, xm) = (randn(&mut rng, len, 2.0), randn(&mut rng, len, 2.0));
            let lambda = 0.35f32;
            let (dxp, dxm, dl_) = (
                dev.upload_new(&to_bf16(&x)).unwrap(),
                dev.upload_new(&to_bf16(&xm)).unwrap(),
                dev.upload_new(&[lambda]).unwrap(),
            );
            let out = dev.alloc(2 * len).unwrap();
            model_ops::backout_forward(dev, out.ptr(), dxp.ptr(), dxm.ptr(), dl_.ptr(), len)
                .unwrap();
            let mut want = vec![0.0; len];
            ops::backout_forward(&mut want, &x, &xm, lambda);
            assert_close(
                &down_bf16(dev, out.ptr(), len),
                &want,
                8e-3,
                1e-3,
                &format!("{what} out"),
            );

            let dout = randn(&mut rng, len, 1.0);
            let (g0, gm0) = (randn(&mut rng, len, 0.5), randn(&mut rng, len, 0.5));
            let dl0 = -0.5f32;
            let (ddout, dg, dgm, ddl) = (
                dev.upload_new(&to_bf16(&dout)).unwrap(),
                dev.upload_new(&to_bf16(&g0)).unwrap(),
                dev.upload_new(&to_bf16(&gm0)).unwrap(),
                dev.upload_new(&[dl0]).unwrap(),
            );
            let scratch = dev.alloc(4 * model_ops::backout_scratch(n)).unwrap();
            model_ops::backout_backward(
                dev,
                dg.ptr(),
                dgm.ptr(),
                ddl.ptr(),
                scratch.ptr(),
                ddout.ptr(),
                dxm.ptr(),
                dl_.ptr(),
                n,
                c,
            )
            .unwrap();
            let (mut want_dx, mut want_dm) = (g0.clone(), gm0.clone());
            let want_dl =
                dl0 + ops::backout_backward(&mut want_dx, &mut want_dm, &dout, &xm, lambda);
            assert_close(
                &down_bf16(dev, dg.ptr(), len),
                &want_dx,
                8e-3,
                1e-3,
                &format!("{what} dx"),
            );
            assert_close(
                &down_bf16(dev, dgm.ptr(), len),
                &want_dm,
                8e-3,
                1e-3,
                &format!("{what} dx_mid"),
            );
            let got_dl: Vec<f32> = dev.download_vec(ddl.ptr(), 1).unwrap();
            assert_close(&got_dl, &[want_dl], 1e-4, 1e-3, &format!("{what} dlambda"));
        }
    }
}

/// Shapes the gate and smear kernels cannot take are errors, not launches.
#[test]
fn model_ops_reject_bad_shapes() {
    let dev: Box<dyn Device> = Box::new(EmuDevice::new(Schedule::Forward));
    let dev = dev.as_ref();
    let buf = dev.alloc(1 << 16).unwrap();
    let p = buf.ptr();
    let ok = GateShape {
        n: 2,
        c: 16,
        hkv: 2,
        d: 8,
        k: 12,
        v_stride: 16,
    };
    for s in [
        GateShape { k: 33, c: 64, ..ok },
        GateShape { k: 17, ..ok },
        GateShape { v_stride: 15, ..ok },
    ] {
        assert!(
            model_ops::ve_gate_forward(dev, p, p, p, p, p, s).is_err(),
            "{s:?}"
        );
    }
    assert!(model_ops::smear_forward(dev, p, p, p, p, p, 5, 2, 8, 4).is_err());
    assert!(model_ops::smear_forward(dev, p, p, p, p, p, 4, 2, 8, 9).is_err());
}

/// The parameter gradients do not depend on the thread schedule: bitwise the same under all three.
#[test]
fn parameter_gradients_are_deterministic() {
    let mut rng = Rng::new(76);
    let (b, t, c, hkv, d, k) = (2, 6, 48, 2, 32, 12);
    let n = b * t;
    let shape = GateShape {
        n,
        c,
        hkv,
        d,
        k,
        v_stride: hkv * d,
    };
    let (x, dv, ve) = (
        randn(&mut rng, n * c, 1.0),
        randn(&mut rng, n * hkv * d, 1.0),
        randn(&mut rng, n * hkv * d, 1.0),
    );
    let (wg, w) = (randn(&mut rng, hkv * k, 0.5), randn(&mut rng, 24, 0.5));
    let mut seen: Option<Vec<f32>> = None;
    for (s, dev) in devices() {
        let dev = dev.as_ref();
        let up = |v: &[f32]| dev.upload_new(&to_bf16(v)).unwrap();
        let (dx_, ddv, dve_in) = (up(&x), up(&dv), up(&ve));
        let (dwg_in, dw_in, dl_in) = (
            dev.upload_new(&wg).unwrap(),
            dev.upload_new(&w).unwrap(),
            dev.upload_new(&[0.6f32]).unwrap(),
        );
        // Gradients: dwg (hkv·k), dw (24), dlambda smear, dlambda backout.
        let grads = dev.upload_new(&vec![0f32; hkv * k + 26]).unwrap();
        let gate = dev.alloc(4 * n * hkv).unwrap();
        let (dve, dxn) = (dev.alloc(2 * n * hkv * d).unwrap(), up(&x));
        let (gbuf, scratch) = (up(&x), dev.alloc(4 * n * 64).unwrap());
        model_ops::ve_gate_forward(
            dev,
            ddv.ptr(),
            gate.ptr(),
            dx_.ptr(),
            dve_in.ptr(),
            dwg_in.ptr(),
            shape,
        )
        .unwrap();
        model_ops::ve_gate_backward(
            dev,
            dve.ptr(),
            dxn.ptr(),
            grads.ptr(),
            scratch.ptr(),
            ddv.ptr(),
            gate.ptr(),
            dx_.ptr(),
            dve_in.ptr(),
            dwg_in.ptr(),
            shape,
        )
        .unwrap();
        model_ops::smear_backward(
            dev,
            gbuf.ptr(),
            grads.at::<f32>(hkv * k),
            grads.at::<f32>(hkv * k + 24),
            scratch.ptr(),
            dxn.ptr(),
            dx_.ptr(),
            dw_in.ptr(),
            dl_in.ptr(),
            n,
            t,
            c,
            24,
        )
        .unwrap();
        model_ops::backout_backward(
            dev,
            gbuf.ptr(),
            dxn.ptr(),
            grads.at::<f32>(hkv * k + 25),
            scratch.ptr(),
            dx_.ptr(),
            dx_.ptr(),
            dl_in.ptr(),
            n,
            c,
        )
        .unwrap();
        let got: Vec<f32> = dev.download_vec(grads.ptr(), hkv * k + 26).unwrap();
        assert!(got.iter().all(|v| v.is_finite()), "{s:?}: {got:?}");
        match &seen {
            None => seen = Some(got),
            Some(first) => assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                first.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{s:?}"
            ),
        }
    }
}
