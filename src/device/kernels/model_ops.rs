//! `cuda/model_ops.cu`: the value-embedding gate, smear and backout, forward and backward. Same math as
//! the CPU references [`crate::cpu::ops::ve_gate_forward`], [`crate::cpu::ops::smear_forward`] and
//! [`crate::cpu::ops::backout_forward`]; bf16 activations, fp32 scalar parameters and their gradients.
//! Parameter gradients are added (`+=`, accumulation across micro-steps) in a fixed order: each row writes
//! its share into `scratch`, then a second kernel sums each parameter's shares in a fixed order. Scratch
//! sizes: [`ve_gate_scratch`], [`smear_scratch`], [`backout_scratch`].

use super::{as_i32, blocks_for, launch_rows, ELEMENTWISE_BLOCK};
use crate::device::{err, Arg, DevPtr, Device, Dim3, Result};

/// Rows (one warp each) per block of the gate kernels.
const GATE_WARPS: u32 = 4;

/// `out[p] += Σ_i partials[p·n + i]` for `p < m` (f32), in a fixed order.
fn column_sums(dev: &dyn Device, out: DevPtr, partials: DevPtr, m: usize, n: usize) -> Result<()> {
    if n == 0 {
        return Ok(()); // nothing to add
    }
    let ints = [as_i32(m, "column sums")?, as_i32(n, "column sums rows")?];
    launch_rows(dev, "column_sums_accumulate", m, &[out, partials], &ints)
}

/// Shape of the value-embedding gate: `n` rows, `xn (n, c)`, `hkv` kv heads of `d`, `k` gate inputs per
/// head (the first `k` channels of `xn`, at most 32 and at most `c`), `v` rows `v_stride` apart.
#[derive(Clone, Copy, Debug)]
pub struct GateShape {
    pub n: usize,
    pub c: usize,
    pub hkv: usize,
    pub d: usize,
    pub k: usize,
    pub v_stride: usize,
}

impl GateShape {
    fn check(&self, what: &str) -> Result<[i32; 6]> {
        let s = self;
        if s.k == 0 || s.k > 32 || s.k > s.c {
            return err(format!("{what} {s:?}: gate width k must be in 1..=min(32, c)"));
        }
        if s.v_stride < s.hkv * s.d {
            return err(format!("{what} {s:?}: v row stride shorter than hkv·d"));
        }
        as_i32(s.hkv * s.d, what)?;
        Ok([
            as_i32(s.n, what)?,
            as_i32(s.c, what)?,
            as_i32(s.hkv, what)?,
            as_i32(s.d, what)?,
            as_i32(s.k, what)?,
            as_i32(s.v_stride, what)?,
        ])
    }
}

/// `gate (n·hkv) f32 = 3·sigmoid(wg[h] · xn[:k])` saved, `v[h] += gate · ve[h]` in place (v strided, bf16;
/// `ve (n, hkv·d)` bf16; `wg (hkv, k)` f32).
pub fn ve_gate_forward(
    dev: &dyn Device,
    v: DevPtr,
    gate: DevPtr,
    xn: DevPtr,
    ve: DevPtr,
    wg: DevPtr,
    s: GateShape,
) -> Result<()> {
    let [n, c, hkv, d, k, vs] = s.check("ve_gate_forward")?;
    if s.n == 0 || s.hkv == 0 {
        return Ok(());
    }
    let args = [
        Arg::Ptr(v),
        Arg::Ptr(gate),
        Arg::Ptr(xn),
        Arg::Ptr(ve),
        Arg::Ptr(wg),
        Arg::I32(n),
        Arg::I32(c),
        Arg::I32(hkv),
        Arg::I32(d),
        Arg::I32(k),
        Arg::I32(vs),
    ];
    let grid = Dim3::x(blocks_for(s.n, GATE_WARPS, "ve_gate_forward rows")?);
    dev.launch("ve_gate_forward", grid, Dim3::x(32 * GATE_WARPS), 0, &args)
}

/// Backward of the gate from `dv` (the gradient of the gated v, strided like v): `dve (n, hkv·d) bf16 =
/// gate · dv`, `dxn[:, :k] += Σ_h dz_h · wg[h]` (bf16), `dwg (hkv, k) f32 += Σ_rows dz_h · xn[:k]`.
#[allow(clippy::too_many_arguments)]
pub fn ve_gate_backward(
    dev: &dyn Device,
    dve: DevPtr,
    dxn: DevPtr,
    dwg: DevPtr,
    scratch: DevPtr,
    dv: DevPtr,
    gate: DevPtr,
    xn: DevPtr,
    ve: DevPtr,
    wg: DevPtr,
    s: GateShape,
) -> Result<()> {
    let [n, c, hkv, d, k, vs] = s.check("ve_gate_backward")?;
    if s.n == 0 || s.hkv == 0 {
        return Ok(());
    }
    let args = [
        Arg::Ptr(dve),
        Arg::Ptr(dxn),
        Arg::Ptr(scratch),
        Arg::Ptr(dv),
        Arg::Ptr(gate),
        Arg::Ptr(xn),
        Arg::Ptr(ve),
        Arg::Ptr(wg),
        Arg::I32(n),
        Arg::I32(c),
        Arg::I32(hkv),
        Arg::I32(d),
        Arg::I32(k),
        Arg::I32(vs),
    ];
    let grid = Dim3::x(blocks_for(s.n, GATE_WARPS, "ve_gate_backward rows")?);
    dev.launch("ve_gate_backward", grid, Dim3::x(32 * GATE_WARPS), 0, &args)?;
    column_sums(dev, dwg, scratch, s.hkv * s.k, s.n)
}

/// Scratch f32 elements [`ve_gate_backward`] needs.
pub fn ve_gate_scratch(s: &GateShape) -> usize {
    s.hkv * s.k * s.n
}

fn smear_check(n: usize, t: usize, c: usize, k: usize) -> Result<[i32; 4]> {
    if t == 0 || n % t != 0 {
        return err(format!("smear: {n} rows are not whole sequences of length {t}"));
    }
    if k > c {
        return err(format!("smear: gate width {k} exceeds the row width {c}"));
    }
    Ok([
        as_i32(n, "smear rows")?,
        as_i32(t, "smear sequence length")?,
        as_i32(c, "smear width")?,
        as_i32(k, "smear gate width")?,
    ])
}

/// `out (n, c) bf16`: `out[t] = x[t] + g_t · x[t−1]` within each sequence of length `t`, `out[0] = x[0]`,
/// `g_t = lambda · sigmoid(w · x[t, :k])` saved in `g (n)` f32 (0 at sequence starts); `w (k)`, `lambda`
/// f32 on the device.
#[allow(clippy::too_many_arguments)]
pub fn smear_forward(
    dev: &dyn Device,
    out: DevPtr,
    g: DevPtr,
    x: DevPtr,
    w: DevPtr,
    lambda: DevPtr,
    n: usize,
    t: usize,
    c: usize,
    k: usize,
) -> Result<()> {
    let [ni, ti, ci, ki] = smear_check(n, t, c, k)?;
    launch_rows(dev, "smear_forward", n, &[out, g, x, w, lambda], &[ni, ti, ci, ki])
}

/// Backward of smear: `dx (n, c) bf16 +=` the input gradient, `dw (k) f32 +=`, `dlambda (1) f32 +=`.
/// `dx` must not alias `dout` (row r reads `dout[r + 1]`, which the next row's block updates).
#[allow(clippy::too_many_arguments)]
pub fn smear_backward(
    dev: &dyn Device,
    dx: DevPtr,
    dw: DevPtr,
    dlambda: DevPtr,
    scratch: DevPtr,
    dout: DevPtr,
    x: DevPtr,
    w: DevPtr,
    lambda: DevPtr,
    n: usize,
    t: usize,
    c: usize,
    k: usize,
) -> Result<()> {
    let [ni, ti, ci, ki] = smear_check(n, t, c, k)?;
    launch_rows(
        dev,
        "smear_backward",
        n,
        &[dx, scratch, dout, x, w, lambda],
        &[ni, ti, ci, ki],
    )?;
    column_sums(dev, dlambda, scratch, 1, n)?;
    column_sums(dev, dw, scratch.at::<f32>(n), k, n)
}

/// Scratch f32 elements [`smear_backward`] needs for `n` rows and gate width `k`.
pub fn smear_scratch(n: usize, k: usize) -> usize {
    (1 + k) * n
}

/// `out = x − lambda · x_mid` over `count` bf16 elements; `lambda` f32 on the device.
pub fn backout_forward(
    dev: &dyn Device,
    out: DevPtr,
    x: DevPtr,
    x_mid: DevPtr,
    lambda: DevPtr,
    count: usize,
) -> Result<()> {
    if count == 0 {
        return Ok(());
    }
    let args = [
        Arg::Ptr(out),
        Arg::Ptr(x),
        Arg::Ptr(x_mid),
        Arg::Ptr(lambda),
        Arg::I64(count as i64),
    ];
    let grid = Dim3::x(blocks_for(count, ELEMENTWISE_BLOCK, "backout_forward")?);
    dev.launch("backout_forward", grid, Dim3::x(ELEMENTWISE_BLOCK), 0, &args)
}

/// Backward of backout over rows `(n, c)`: `dx += dout`, `dx_mid −= lambda · dout` (bf16),
/// `dlambda (1) f32 += −Σ dout · x_mid`. `dx` and `dx_mid` are distinct from `dout`.
#[allow(clippy::too_many_arguments)]
pub fn backout_backward(
    dev: &dyn Device,
    dx: DevPtr,
    dx_mid: DevPtr,
    dlambda: DevPtr,
    scratch: DevPtr,
    dout: DevPtr,
    x_mid: DevPtr,
    lambda: DevPtr,
    n: usize,
    c: usize,
) -> Result<()> {
    let ints = [as_i32(n, "backout rows")?, as_i32(c, "backout width")?];
    launch_rows(
        dev,
        "backout_backward",
        n,
        &[dx, dx_mid, scratch, dout, x_mid, lambda],
        &ints,
    )?;
    column_sums(dev, dlambda, scratch, 1, n)
}

/// Scratch f32 elements [`backout_backward`] needs for `n` rows.
pub fn backout_scratch(n: usize) -> usize {
    n
}
