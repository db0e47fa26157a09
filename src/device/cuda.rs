//! The CUDA device: the first (or a chosen) GPU through the driver API, kernels from the fatbin built by
//! `tools/build_ptx.sh` (`ptx/kernels.fatbin`: sm_80 and sm_90a SASS, compute_80 PTX), GEMMs through
//! cuBLASLt with descriptors and algorithms cached per shape.
//!
//! cudarc loads the CUDA libraries at run time and *panics* when one is missing, so every entry here first
//! checks that the library can be loaded and turns its absence into a [`DeviceError`]. Work is queued on
//! one stream; errors of asynchronous work surface at the next [`Device::synchronize`].

use super::{err, Arg, Buffer, DevPtr, Device, DeviceError, Dim3, Dtype, Gemm, Op, Result};
use cudarc::cublaslt::{result as lt, sys as ltsys};
use cudarc::driver::{result as drv, sys};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex};

/// The compiled kernels, embedded so that a binary carries them to the GPU machine.
static FATBIN: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/ptx/kernels.fatbin"));

/// cuBLASLt workspace: 32 MiB, what cuBLAS recommends for Hopper.
const WORKSPACE_BYTES: usize = 32 << 20;

fn driver_err(what: &str, e: drv::DriverError) -> DeviceError {
    DeviceError(format!("cuda: {what}: {e:?}"))
}

/// Whether the CUDA driver library can be loaded on this machine (never panics).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library under its usual names.
    unsafe { sys::is_culib_present() }
}

struct GemmPlan {
    desc: ltsys::cublasLtMatmulDesc_t,
    layouts: [ltsys::cublasLtMatrixLayout_t; 3],
    algo: ltsys::cublasLtMatmulAlgo_t,
}

struct Inner {
    ctx: sys::CUcontext,
    stream: sys::CUstream,
    module: sys::CUmodule,
    functions: HashMap<String, sys::CUfunction>,
    lt: Option<ltsys::cublasLtHandle_t>,
    workspace: Option<u64>,
    plans: HashMap<String, GemmPlan>,
}

pub struct CudaDevice {
    ordinal: i32,
    name: String,
    inner: Arc<Mutex<Inner>>,
}

// SAFETY: the raw CUDA handles are only used with the context made current and behind the mutex.
unsafe impl Send for Inner {}

impl CudaDevice {
    /// Opens GPU `ordinal`. Errors (never panics) when the driver library is missing, when there is no
    /// GPU, or when the embedded kernels cannot be loaded.
    pub fn open(ordinal: i32) -> Result<CudaDevice> {
        if !driver_present() {
            return err(
                "cuda: the CUDA driver library (libcuda.so) is not installed on this machine; \
                 use --device cpu or --device emu",
            );
        }
        drv::init().map_err(|e| driver_err("cuInit (is there a GPU?)", e))?;
        let count = drv::device::get_count().map_err(|e| driver_err("cuDeviceGetCount", e))?;
        if ordinal < 0 || ordinal >= count {
            return err(format!("cuda: no GPU with ordinal {ordinal} ({count} found)"));
        }
        let dev = drv::device::get(ordinal).map_err(|e| driver_err("cuDeviceGet", e))?;
        let name = drv::device::get_name(dev).map_err(|e| driver_err("cuDeviceGetName", e))?;
        // SAFETY: dev is a valid device handle; the primary context lives as long as the process.
        let ctx = unsafe { drv::primary_ctx::retain(dev) }.map_err(|e| driver_err("cuDevicePrimaryCtxRetain", e))?;
        unsafe { drv::ctx::set_current(ctx) }.map_err(|e| driver_err("cuCtxSetCurrent", e))?;
        let stream =
            drv::stream::create(drv::stream::StreamKind::NonBlocking).map_err(|e| driver_err("cuStreamCreate", e))?;
        // The driver wants the image aligned and owned until unload; a leaked copy is both.
        let image: &'static mut [u64] = Box::leak(vec![0u64; FATBIN.len().div_ceil(8)].into_boxed_slice());
        bytemuck::cast_slice_mut::<u64, u8>(image)[..FATBIN.len()].copy_from_slice(FATBIN);
        // SAFETY: image holds a complete fatbin and outlives the module.
        let module = unsafe { drv::module::load_data(image.as_ptr() as *const c_void) }.map_err(|e| {
            let mut version = 0;
            // SAFETY: writes one int.
            unsafe { sys::cuDriverGetVersion(&mut version) };
            driver_err(
                &format!(
                    "loading the embedded kernels (ptx/kernels.fatbin: sm_80 and sm_90a code, PTX 9.0, which \
                     needs a CUDA 13.0 driver or newer; this driver is CUDA {}.{})",
                    version / 1000,
                    version % 1000 / 10
                ),
                e,
            )
        })?;
        let inner = Inner {
            ctx,
            stream,
            module,
            functions: HashMap::new(),
            lt: None,
            workspace: None,
            plans: HashMap::new(),
        };
        Ok(CudaDevice {
            ordinal,
            name,
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>> {
        let g = self
            .inner
            .lock()
            .map_err(|_| DeviceError("cuda: device state poisoned".into()))?;
        // SAFETY: ctx is the retained primary context of this device.
        unsafe { drv::ctx::set_current(g.ctx) }.map_err(|e| driver_err("cuCtxSetCurrent", e))?;
        Ok(g)
    }
}

impl Inner {
    fn function(&mut self, name: &str) -> Result<sys::CUfunction> {
        if let Some(&f) = self.functions.get(name) {
            return Ok(f);
        }
        let cname = CString::new(name).map_err(|_| DeviceError(format!("kernel name {name:?} contains NUL")))?;
        // SAFETY: module is loaded; cname is NUL-terminated.
        let f = unsafe { drv::module::get_function(self.module, cname) }
            .map_err(|e| driver_err(&format!("kernel `{name}` is not in ptx/kernels.fatbin"), e))?;
        self.functions.insert(name.to_string(), f);
        Ok(f)
    }

    fn cublaslt(&mut self) -> Result<(ltsys::cublasLtHandle_t, u64)> {
        if let (Some(h), Some(w)) = (self.lt, self.workspace) {
            return Ok((h, w));
        }
        // SAFETY: only tries to dlopen the library.
        if !unsafe { ltsys::is_culib_present() } {
            return err(
                "cuda: cuBLASLt (libcublasLt.so) is not on the library path: add the folder that holds it \
                 (a CUDA toolkit's lib64, or the nvidia/cublas/lib folder of a Python environment) to \
                 LD_LIBRARY_PATH",
            );
        }
        let h = lt::create_handle().map_err(|e| DeviceError(format!("cuda: cublasLtCreate: {e}")))?;
        // SAFETY: a plain device allocation with the context current.
        let w = unsafe { drv::malloc_sync(WORKSPACE_BYTES) }.map_err(|e| driver_err("cuBLASLt workspace", e))?;
        self.lt = Some(h);
        self.workspace = Some(w);
        Ok((h, w))
    }
}

fn cublas_err(what: &str, e: lt::CublasError) -> DeviceError {
    DeviceError(format!("cuda: {what}: {e}"))
}

/// Builds the cuBLASLt plan for one GEMM shape. Row-major C = op(A) op(B) is column-major
/// C^T = op(B)^T op(A)^T, so B is passed as cuBLASLt's first operand and A as its second.
fn make_plan(h: ltsys::cublasLtHandle_t, g: &Gemm) -> std::result::Result<GemmPlan, lt::CublasError> {
    use ltsys::cublasLtMatmulDescAttributes_t as D;
    use ltsys::cublasLtMatrixLayoutAttribute_t as L;
    let bf16 = ltsys::cudaDataType::CUDA_R_16BF;
    let c_type = match g.c_dtype {
        Dtype::F32 => ltsys::cudaDataType::CUDA_R_32F,
        Dtype::Bf16 => bf16,
    };
    let desc = lt::create_matmul_desc(
        ltsys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        ltsys::cudaDataType::CUDA_R_32F,
    )?;
    // cublasOperation_t as the attribute expects it: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1.
    let t = |op: Op| -> i32 {
        match op {
            Op::N => 0,
            Op::T => 1,
        }
    };
    let (ta, tb) = (t(g.op_b), t(g.op_a));
    // Column-major shapes of the stored operands: X stored row-major (r, c) is column-major (c, r).
    let (b_rows, b_cols) = match g.op_b {
        Op::N => (g.n, g.k),
        Op::T => (g.k, g.n),
    };
    let (a_rows, a_cols) = match g.op_a {
        Op::N => (g.k, g.m),
        Op::T => (g.m, g.k),
    };
    // SAFETY: descriptors are freshly created; attribute buffers are live locals of the right size.
    unsafe {
        let sz = std::mem::size_of::<i32>();
        lt::set_matmul_desc_attribute(
            desc,
            D::CUBLASLT_MATMUL_DESC_TRANSA,
            &ta as *const _ as *const c_void,
            sz,
        )?;
        lt::set_matmul_desc_attribute(
            desc,
            D::CUBLASLT_MATMUL_DESC_TRANSB,
            &tb as *const _ as *const c_void,
            sz,
        )?;
        let la = lt::create_matrix_layout(bf16, b_rows as u64, b_cols as u64, g.ldb as i64)?;
        let lb = lt::create_matrix_layout(bf16, a_rows as u64, a_cols as u64, g.lda as i64)?;
        let lc = lt::create_matrix_layout(c_type, g.n as u64, g.m as u64, g.ldc as i64)?;
        if g.batch > 1 {
            let batch = g.batch as i32;
            for (l, stride) in [(la, g.stride_b), (lb, g.stride_a), (lc, g.stride_c)] {
                let s = stride as i64;
                lt::set_matrix_layout_attribute(
                    l,
                    L::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                    &batch as *const _ as *const c_void,
                    4,
                )?;
                lt::set_matrix_layout_attribute(
                    l,
                    L::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                    &s as *const _ as *const c_void,
                    8,
                )?;
            }
        }
        let pref = lt::create_matmul_pref()?;
        let ws = WORKSPACE_BYTES;
        use ltsys::cublasLtMatmulPreferenceAttributes_t as P;
        lt::set_matmul_pref_attribute(
            pref,
            P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            &ws as *const _ as *const c_void,
            std::mem::size_of::<usize>(),
        )?;
        // Without these the heuristic assumes 256-byte aligned operands; slots of the flat buffers are not.
        // cuBLASLt's A is our B (see above).
        let [align_a, align_b, align_c] = g.alignments();
        for (attr, bytes) in [
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_b),
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_a),
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_c),
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_c),
        ] {
            lt::set_matmul_pref_attribute(
                pref,
                attr,
                &bytes as *const u32 as *const c_void,
                std::mem::size_of::<u32>(),
            )?;
        }
        let heur = lt::get_matmul_algo_heuristic(h, desc, la, lb, lc, lc, pref);
        lt::destroy_matmul_pref(pref)?;
        Ok(GemmPlan {
            desc,
            layouts: [la, lb, lc],
            algo: heur?.algo,
        })
    }
}

impl Device for CudaDevice {
    fn name(&self) -> String {
        format!("cuda:{} {}", self.ordinal, self.name)
    }

    fn alloc(&self, bytes: usize) -> Result<Buffer> {
        let _g = self.lock()?;
        // SAFETY: context is current.
        let p =
            unsafe { drv::malloc_sync(bytes.max(1)) }.map_err(|e| driver_err(&format!("cuMemAlloc({bytes})"), e))?;
        let inner = self.inner.clone();
        let free = Arc::new(move |ptr: DevPtr| {
            if let Ok(g) = inner.lock() {
                // SAFETY: ptr came from cuMemAlloc in this context and Buffer frees it once.
                unsafe {
                    let _ = drv::ctx::set_current(g.ctx);
                    let _ = drv::free_sync(ptr.0);
                }
            }
        });
        Ok(Buffer::new(DevPtr(p), bytes, free))
    }

    fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        let g = self.lock()?;
        // SAFETY: the copy is ordered on our stream after the work that may still read `dst`, and before any
        // later launch; waiting for it keeps `src` alive until the copy has read it. (A synchronous
        // cuMemcpyHtoD runs on the legacy stream, which our non-blocking stream does not wait for, and may
        // return before a pageable copy has landed.)
        unsafe {
            drv::memcpy_htod_async(dst.0, src, g.stream).map_err(|e| driver_err("cuMemcpyHtoDAsync", e))?;
            drv::stream::synchronize(g.stream).map_err(|e| driver_err("stream sync after upload", e))
        }
    }

    fn download(&self, src: DevPtr, dst: &mut [u8]) -> Result<()> {
        let g = self.lock()?;
        // SAFETY: synchronous copy from device memory after the stream's work finished.
        unsafe {
            drv::stream::synchronize(g.stream).map_err(|e| driver_err("stream sync before download", e))?;
            drv::memcpy_dtoh_sync(dst, src.0).map_err(|e| driver_err("cuMemcpyDtoH", e))
        }
    }

    fn zero(&self, dst: DevPtr, bytes: usize) -> Result<()> {
        let g = self.lock()?;
        // SAFETY: asynchronous memset on our stream; the driver validates the range.
        unsafe { drv::memset_d8_async(dst.0, 0, bytes, g.stream) }.map_err(|e| driver_err("cuMemsetD8Async", e))
    }

    fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()> {
        let g = self.lock()?;
        // SAFETY: asynchronous device-to-device copy on our stream; the driver validates both ranges.
        unsafe { drv::memcpy_dtod_async(dst.0, src.0, bytes, g.stream) }.map_err(|e| driver_err("cuMemcpyDtoDAsync", e))
    }

    fn launch(&self, name: &str, grid: Dim3, block: Dim3, smem_bytes: u32, args: &[Arg]) -> Result<()> {
        let mut g = self.lock()?;
        let f = g.function(name)?;
        if smem_bytes > 48 * 1024 {
            // SAFETY: f is a valid function handle.
            unsafe {
                drv::function::set_function_attribute(
                    f,
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem_bytes as i32,
                )
            }
            .map_err(|e| {
                driver_err(
                    &format!("kernel `{name}`: {smem_bytes} bytes of dynamic shared memory"),
                    e,
                )
            })?;
        }
        let mut values: Vec<[u8; 8]> = args.iter().map(|a| a.bytes().0).collect();
        let mut params: Vec<*mut c_void> = values.iter_mut().map(|v| v.as_mut_ptr() as *mut c_void).collect();
        // SAFETY: params point at live 8-byte slots; the driver copies the parameter values at launch.
        unsafe {
            drv::launch_kernel(
                f,
                (grid.x, grid.y, grid.z),
                (block.x, block.y, block.z),
                smem_bytes,
                g.stream,
                &mut params,
            )
        }
        .map_err(|e| driver_err(&format!("launching kernel `{name}` grid {grid:?} block {block:?}"), e))
    }

    fn gemm(&self, gm: &Gemm) -> Result<()> {
        gm.validate()?;
        let mut g = self.lock()?;
        let (h, ws) = g.cublaslt()?;
        let key = format!(
            "{} {} {} {} {} {} {:?} {:?} {:?} {} {} {} {} {:?}",
            gm.m,
            gm.n,
            gm.k,
            gm.lda,
            gm.ldb,
            gm.ldc,
            gm.op_a,
            gm.op_b,
            gm.c_dtype,
            gm.batch,
            gm.stride_a,
            gm.stride_b,
            gm.stride_c,
            gm.alignments()
        );
        if !g.plans.contains_key(&key) {
            let plan = make_plan(h, gm).map_err(|e| cublas_err(&format!("planning gemm {gm:?}"), e))?;
            g.plans.insert(key.clone(), plan);
        }
        let plan = &g.plans[&key];
        let (alpha, beta) = (gm.alpha, gm.beta);
        // SAFETY: the plan matches the operands' shapes; pointers are device addresses the caller owns.
        unsafe {
            lt::matmul(
                h,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                gm.b.0 as *const c_void,
                plan.layouts[0],
                gm.a.0 as *const c_void,
                plan.layouts[1],
                gm.c.0 as *const c_void,
                plan.layouts[2],
                gm.c.0 as *mut c_void,
                plan.layouts[2],
                &plan.algo,
                ws as *mut c_void,
                WORKSPACE_BYTES,
                g.stream as ltsys::cudaStream_t,
            )
        }
        .map_err(|e| cublas_err("cublasLtMatmul", e))
    }

    fn memory_info(&self) -> Option<(usize, usize)> {
        let _g = self.lock().ok()?;
        drv::mem_get_info().ok()
    }

    fn synchronize(&self) -> Result<()> {
        let g = self.lock()?;
        // SAFETY: stream is ours and alive.
        unsafe { drv::stream::synchronize(g.stream) }
            .map_err(|e| driver_err("cuStreamSynchronize (a kernel failed?)", e))
    }
}
