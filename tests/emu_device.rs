//! The device interface: the CUDA device's errors on a machine without a GPU (never a panic), and the
//! GEMM semantics shared by both devices (row-major, transposes, strided batches, bf16/fp32 output,
//! beta accumulation) checked on the Emu device against a plain loop.

use half::bf16;
use nanochat::backend::Backend;
use nanochat::device::cuda::{driver_present, CudaDevice};
use nanochat::device::emu::EmuDevice;
use nanochat::device::{Device, Dtype, Gemm, Op, Schedule};

#[test]
fn cuda_device_reports_a_missing_driver_or_gpu_as_an_error() {
    let r = CudaDevice::open(0);
    if !driver_present() {
        let e = r.err().expect("opening CUDA without a driver must fail");
        assert!(e.0.contains("libcuda.so") && e.0.contains("--device cpu"), "{e}");
    } else if let Err(e) = r {
        assert!(e.0.starts_with("cuda: "), "{e}");
    }
    // Through the generic entry point too, and a bad ordinal is an error, not a panic.
    if let Err(e) = Backend::Cuda.kernel_device(Schedule::Forward) {
        assert!(e.starts_with("--device cuda: cuda: "), "{e}");
    }
    // A CPU choice is no kernel device.
    let e = Backend::CpuBf16.kernel_device(Schedule::Forward).err().unwrap();
    assert!(
        e.starts_with("--device cpu-bf16: ") && e.contains("--device emu"),
        "{e}"
    );
    // No machine has a GPU with ordinal 1000: opening it must fail, and say why.
    let e = CudaDevice::open(1_000).err().expect("GPU ordinal 1000 must not open");
    if driver_present() {
        assert!(
            e.0.starts_with("cuda: ") && (e.0.contains("1000") || e.0.contains("cuInit")),
            "{e}"
        );
    } else {
        assert!(e.0.contains("libcuda.so"), "{e}");
    }
}

#[test]
fn emu_device_opens() {
    let d = Backend::Emu.kernel_device(Schedule::Forward).unwrap();
    assert!(d.name().starts_with("emu"));
    d.synchronize().unwrap();
}

struct Case {
    m: usize,
    n: usize,
    k: usize,
    op_a: Op,
    op_b: Op,
    c_dtype: Dtype,
    beta: f32,
    batch: usize,
    pad: usize, // extra elements per row (ld > cols)
}

fn round(x: f32) -> f32 {
    bf16::from_f32(x).to_f32()
}

fn run_case(dev: &dyn Device, c: &Case) {
    let (ar, ac) = if c.op_a == Op::N { (c.m, c.k) } else { (c.k, c.m) };
    let (br, bc) = if c.op_b == Op::N { (c.k, c.n) } else { (c.n, c.k) };
    let (lda, ldb, ldc) = (ac + c.pad, bc + c.pad, c.n + c.pad);
    let (sa, sb, sc) = (ar * lda + 3, br * ldb + 5, c.m * ldc + 1);
    let a: Vec<f32> = (0..sa * c.batch)
        .map(|i| round(((i * 37) % 101) as f32 / 50.0 - 1.0))
        .collect();
    let b: Vec<f32> = (0..sb * c.batch)
        .map(|i| round(((i * 53) % 97) as f32 / 48.0 - 1.0))
        .collect();
    let c0: Vec<f32> = (0..sc * c.batch)
        .map(|i| round(((i * 29) % 89) as f32 / 44.0 - 1.0))
        .collect();
    let da = dev
        .upload_new(&a.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>())
        .unwrap();
    let db = dev
        .upload_new(&b.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>())
        .unwrap();
    let dc = match c.c_dtype {
        Dtype::F32 => dev.upload_new(&c0).unwrap(),
        Dtype::Bf16 => dev
            .upload_new(&c0.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>())
            .unwrap(),
    };
    let g = Gemm {
        m: c.m,
        n: c.n,
        k: c.k,
        a: da.ptr(),
        lda,
        op_a: c.op_a,
        b: db.ptr(),
        ldb,
        op_b: c.op_b,
        c: dc.ptr(),
        ldc,
        c_dtype: c.c_dtype,
        alpha: 0.5,
        beta: c.beta,
        batch: c.batch,
        stride_a: sa,
        stride_b: sb,
        stride_c: sc,
    };
    dev.gemm(&g).unwrap();
    let got: Vec<f32> = match c.c_dtype {
        Dtype::F32 => dev.download_vec(dc.ptr(), sc * c.batch).unwrap(),
        Dtype::Bf16 => dev
            .download_vec::<bf16>(dc.ptr(), sc * c.batch)
            .unwrap()
            .iter()
            .map(|x| x.to_f32())
            .collect(),
    };
    for bi in 0..c.batch {
        for i in 0..c.m {
            for j in 0..c.n {
                let mut acc = 0f64;
                for p in 0..c.k {
                    let x = if c.op_a == Op::N {
                        a[bi * sa + i * lda + p]
                    } else {
                        a[bi * sa + p * lda + i]
                    };
                    let y = if c.op_b == Op::N {
                        b[bi * sb + p * ldb + j]
                    } else {
                        b[bi * sb + j * ldb + p]
                    };
                    acc += x as f64 * y as f64;
                }
                let at = bi * sc + i * ldc + j;
                let want = 0.5 * acc + c.beta as f64 * c0[at] as f64;
                let tol = match c.c_dtype {
                    Dtype::F32 => 1e-4 * (1.0 + want.abs()),
                    Dtype::Bf16 => 1e-2 * (1.0 + want.abs()),
                };
                assert!(
                    (got[at] as f64 - want).abs() <= tol,
                    "batch {bi} ({i},{j}): {} vs {want}",
                    got[at]
                );
            }
            // Padding columns are not written.
            for j in c.n..ldc {
                let at = bi * sc + i * ldc + j;
                assert_eq!(got[at], c0[at], "padding ({i},{j}) was written");
            }
        }
    }
}

#[test]
fn gemm_semantics_on_the_emu_device() {
    let dev = EmuDevice::new(Schedule::Forward);
    for op_a in [Op::N, Op::T] {
        for op_b in [Op::N, Op::T] {
            for c_dtype in [Dtype::F32, Dtype::Bf16] {
                for (beta, batch, pad) in [(0.0, 1, 0), (1.0, 3, 2)] {
                    for (m, n, k) in [(7, 5, 3), (33, 17, 64), (1, 9, 130)] {
                        let case = Case {
                            m,
                            n,
                            k,
                            op_a,
                            op_b,
                            c_dtype,
                            beta,
                            batch,
                            pad,
                        };
                        run_case(&dev, &case);
                    }
                }
            }
        }
    }
}

#[test]
fn gemm_rejects_bad_descriptions() {
    let dev = EmuDevice::new(Schedule::Forward);
    let d: &dyn Device = &dev;
    let a = d.alloc(2 * 8 * 4).unwrap();
    let b = d.alloc(2 * 4 * 8).unwrap();
    let c = d.alloc(4 * 8 * 8).unwrap();
    let ok = Gemm::new(8, 8, 4, a.ptr(), b.ptr(), c.ptr(), Dtype::F32);
    d.gemm(&ok).unwrap();
    let e = d.gemm(&Gemm { lda: 2, ..ok.clone() }).unwrap_err();
    assert!(e.0.contains("leading dimensions too small"), "{e}");
    let e = d
        .gemm(&Gemm {
            k: 8,
            lda: 8,
            ..ok.clone()
        })
        .unwrap_err();
    assert!(e.0.contains("gemm operand A"), "{e}");
    let e = d
        .gemm(&Gemm {
            c: a.ptr(),
            c_dtype: Dtype::Bf16,
            m: 4,
            ..ok.clone()
        })
        .unwrap_err();
    assert!(e.0.contains("overlaps"), "{e}");
    let e = d.gemm(&Gemm { m: 0, ..ok.clone() }).unwrap_err();
    assert!(e.0.contains("empty shape"), "{e}");
    let e = d.gemm(&ok.clone().transpose_a().transpose_b()).map(|_| ()).err();
    assert!(e.is_none(), "{e:?}");
}
