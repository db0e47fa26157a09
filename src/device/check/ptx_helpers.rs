//! Checks of `cuda/ptx_helpers.cuh` (through `cuda/tests/ptx_check.cu`): on a GPU the asm, on the emulator its emulation, each
//! against the shuffle-only reference and a plain loop over the ISA layout.

use super::Scale;
use super::{bf, compare};
use crate::device::err;
use crate::device::Device;
use crate::device::Result;

pub(super) fn check_mma(dev: &dyn Device, _: Scale) -> Result<String> {
    let a: Vec<f32> = (0..256).map(|i| ((i * 7 + 3) % 9) as f32 - 4.0).collect();
    let b: Vec<f32> = (0..128).map(|i| ((i * 5 + 1) % 7) as f32 - 3.0).collect();
    let c: Vec<f32> = (0..128).map(|i| (i % 5) as f32).collect();
    let mut want = c.clone();
    for i in 0..16 {
        for j in 0..8 {
            want[i * 8 + j] += (0..16).map(|k| a[i * 16 + k] * b[k * 8 + j]).sum::<f32>();
        }
    }
    let (da, db, dc, dd) = (
        dev.upload_new(&bf(&a))?,
        dev.upload_new(&bf(&b))?,
        dev.upload_new(&c)?,
        dev.alloc(512)?,
    );
    for mode in [0, 1] {
        let args = [
            dd.ptr().into(),
            da.ptr().into(),
            db.ptr().into(),
            dc.ptr().into(),
            crate::device::Arg::I32(mode),
        ];
        dev.launch(
            "ptx_mma_fragments",
            crate::device::Dim3::x(1),
            crate::device::Dim3::x(32),
            0,
            &args,
        )?;
        let what = if mode == 0 { "mma helper" } else { "mma reference" };
        compare(what, &dev.download_vec::<f32>(dd.ptr(), 128)?, &want, 0.0, 0.0)?;
    }
    Ok("ok (exact)".into())
}

pub(super) fn check_ldmatrix(dev: &dyn Device, _: Scale) -> Result<String> {
    let m: Vec<u16> = (0..256).map(|i| (i * 3 + 1) as u16).collect();
    let (src, out) = (dev.upload_new(&m)?, dev.alloc(512)?);
    for mode in 0..6 {
        let n = [1, 2, 4][mode % 3];
        let mut results = Vec::new();
        for reference in [0, 1] {
            dev.zero(out.ptr(), 512)?;
            let args = [
                out.ptr().into(),
                src.ptr().into(),
                crate::device::Arg::I32(mode as i32),
                crate::device::Arg::I32(reference),
            ];
            dev.launch(
                "ptx_ldmatrix",
                crate::device::Dim3::x(1),
                crate::device::Dim3::x(32),
                0,
                &args,
            )?;
            results.push(dev.download_vec::<u32>(out.ptr(), 128)?);
        }
        for lane in 0..32 {
            for i in 0..n {
                let mat = |r: usize, c: usize| m[(8 * i + r) * 8 + c] as u32;
                let (g, t) = (lane / 4, lane % 4);
                let want = if mode < 3 {
                    mat(g, 2 * t) | (mat(g, 2 * t + 1) << 16)
                } else {
                    mat(2 * t, g) | (mat(2 * t + 1, g) << 16)
                };
                for (k, r) in results.iter().enumerate() {
                    if r[lane * 4 + i] != want {
                        let who = if k == 0 { "helper" } else { "reference" };
                        return err(format!(
                            "ldmatrix mode {mode} {who}: lane {lane} register {i} = {:#x}, expected {want:#x}",
                            r[lane * 4 + i]
                        ));
                    }
                }
            }
        }
    }
    Ok("ok (exact)".into())
}

pub(super) fn check_pipeline(dev: &dyn Device, s: Scale) -> Result<String> {
    let (m, n, k) = s.pick((32, 16, 48), (256, 128, 512));
    let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 + 2) % 11) as f32 - 5.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i * 3 + 1) % 5) as f32 - 2.0).collect();
    let mut want = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            want[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
        }
    }
    let (da, db, dc) = (
        dev.upload_new(&bf(&a))?,
        dev.upload_new(&bf(&b))?,
        dev.alloc(4 * m * n)?,
    );
    let args = [
        dc.ptr().into(),
        da.ptr().into(),
        db.ptr().into(),
        crate::device::Arg::I32(k as i32),
        crate::device::Arg::I32(1),
    ];
    dev.launch(
        "ptx_mma_pipeline",
        crate::device::Dim3::xy((n / 8) as u32, (m / 16) as u32),
        crate::device::Dim3::x(32),
        0,
        &args,
    )?;
    compare(
        "mma pipeline",
        &dev.download_vec::<f32>(dc.ptr(), m * n)?,
        &want,
        0.0,
        0.0,
    )?;
    Ok("ok (exact)".into())
}
