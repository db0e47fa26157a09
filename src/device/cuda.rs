//! The CUDA device: the first (or a chosen) GPU through the driver API, kernels from a fatbin built by
//! `tools/build_ptx.sh` (sm_80 and sm_90a SASS, compute_80 PTX), GEMMs through cuBLASLt with descriptors
//! and algorithms cached per shape.
//!
//! Two builds of the kernels are embedded and one is chosen at start-up from `cuDriverGetVersion`
//! ([`select_image`]): `ptx/kernels.fatbin` (nvcc 13.0) for drivers of CUDA 13.0 or newer, and
//! `ptx/kernels_cu12.fatbin` (the CUDA 12.9 compilers) for drivers of CUDA 12.x. `NANOCHAT_CUDA_FATBIN=cu12`
//! (or `cu13`) forces one.
//!
//! Debugging: with `NANOCHAT_CUDA_DEBUG=1` every launch and GEMM is followed by a stream synchronisation,
//! so that a fault is reported by the operation that caused it, with the kernel's name, grid, block, shared
//! memory and arguments (or the GEMM's shapes), instead of at a later, unrelated synchronisation. Slow: for
//! finding faults only.
//!
//! cudarc loads the CUDA libraries at run time and *panics* when one is missing, so every entry here first
//! checks that the library can be loaded and turns its absence into a [`DeviceError`]. Work is queued on
//! one stream; errors of asynchronous work surface at the next [`Device::synchronize`]. Small uploads (a
//! micro-batch's ids and targets) go through pinned staging buffers and do not wait for the stream; larger
//! ones, and downloads, do.

use super::{err, Arg, Buffer, DevPtr, Device, DeviceError, Dim3, Dtype, Gemm, Op, Result};
use cudarc::cublaslt::{result as lt, sys as ltsys};
use cudarc::driver::{result as drv, sys};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex};

/// One build of the kernels, embedded so that a binary carries them to the GPU machine.
#[derive(Debug)]
pub struct KernelImage {
    /// Its file under `ptx/`.
    pub file: &'static str,
    /// The compiler that built it.
    pub compiler: &'static str,
    /// The oldest CUDA version (as `cuDriverGetVersion` reports it: 1000·major + 10·minor) a driver must
    /// support to load it.
    pub min_cuda: i32,
    /// The oldest Linux driver of that CUDA version.
    pub min_driver: &'static str,
    /// Its name for `NANOCHAT_CUDA_FATBIN`.
    pub key: &'static str,
    pub bytes: &'static [u8],
}

/// The embedded kernel builds, newest first.
pub static IMAGES: [KernelImage; 2] = [
    KernelImage {
        file: "ptx/kernels.fatbin",
        compiler: "nvcc 13.0",
        min_cuda: 13000,
        min_driver: "580",
        key: "cu13",
        bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/ptx/kernels.fatbin")),
    },
    KernelImage {
        file: "ptx/kernels_cu12.fatbin",
        compiler: "CUDA 12.9 (NVRTC, ptxas)",
        // SASS built by CUDA 12.9 runs on every CUDA 12 driver (minor-version compatibility).
        min_cuda: 12000,
        min_driver: "525",
        key: "cu12",
        bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/ptx/kernels_cu12.fatbin")),
    },
];

/// "13.0" for 13000.
fn cuda_version(v: i32) -> String {
    format!("{}.{}", v / 1000, v % 1000 / 10)
}

/// The kernel build for a driver of CUDA version `driver` (`cuDriverGetVersion`): the newest the driver
/// can load, or the one `forced` names (`NANOCHAT_CUDA_FATBIN`). Errors name the versions needed.
pub fn select_image(driver: i32, forced: Option<&str>) -> Result<&'static KernelImage> {
    let needs = IMAGES
        .iter()
        .map(|i| {
            format!(
                "CUDA {} (driver {} or newer) for {}",
                cuda_version(i.min_cuda),
                i.min_driver,
                i.file
            )
        })
        .collect::<Vec<_>>()
        .join(", or ");
    if let Some(key) = forced.map(str::trim).filter(|k| !k.is_empty()) {
        let Some(img) = IMAGES.iter().find(|i| i.key == key) else {
            let keys: Vec<_> = IMAGES.iter().map(|i| i.key).collect();
            return err(format!("cuda: NANOCHAT_CUDA_FATBIN={key:?} is not one of {keys:?}"));
        };
        if driver < img.min_cuda {
            return err(format!(
                "cuda: NANOCHAT_CUDA_FATBIN={key} needs a driver for CUDA {} (driver {} or newer); this driver \
                 supports CUDA {}",
                cuda_version(img.min_cuda),
                img.min_driver,
                cuda_version(driver)
            ));
        }
        return Ok(img);
    }
    IMAGES.iter().find(|i| driver >= i.min_cuda).ok_or_else(|| {
        DeviceError(format!(
            "cuda: this driver supports CUDA {}; the kernels need a driver for {needs}: update the NVIDIA driver",
            cuda_version(driver)
        ))
    })
}

/// Whether an environment switch's value turns it on ("1", "true", "yes", "on").
pub fn switch_on(value: Option<&str>) -> bool {
    value.is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// Whether a launch must request the large-shared-memory attribute: a block may use 48 KiB of shared
/// memory, static and dynamic together, unless the kernel opts in to more.
pub fn needs_smem_opt_in(static_bytes: u32, dynamic_bytes: u32) -> bool {
    static_bytes as u64 + dynamic_bytes as u64 > 48 * 1024
}

/// A launch's arguments as the debug switch prints them: pointers in hex, numbers as they are.
pub fn describe_args(args: &[Arg]) -> String {
    let parts: Vec<String> = args
        .iter()
        .map(|a| match *a {
            Arg::Ptr(p) => format!("{:#x}", p.0),
            Arg::I32(v) => v.to_string(),
            Arg::U32(v) => v.to_string(),
            Arg::I64(v) => v.to_string(),
            Arg::U64(v) => v.to_string(),
            Arg::F32(v) => format!("{v:?}"),
        })
        .collect();
    format!("({})", parts.join(", "))
}

/// A GEMM's shapes as the debug switch prints them.
pub fn describe_gemm(g: &Gemm) -> String {
    format!(
        "gemm m={} n={} k={} op_a={:?} op_b={:?} lda={} ldb={} ldc={} batch={} strides=({}, {}, {}) c={:?} \
         a={:#x} b={:#x} c={:#x}",
        g.m,
        g.n,
        g.k,
        g.op_a,
        g.op_b,
        g.lda,
        g.ldb,
        g.ldc,
        g.batch,
        g.stride_a,
        g.stride_b,
        g.stride_c,
        g.c_dtype,
        g.a.0,
        g.b.0,
        g.c.0
    )
}

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

/// Uploads of at most this many bytes (a micro-batch's ids, buckets and targets) go through pinned staging
/// buffers and return without waiting for the stream.
const STAGING_BYTES: usize = 4 << 20;
/// Staging buffers, used in turn: one is written again only after the copy that last read it has finished
/// (an event), which with several of them in turn is long done.
const STAGING_SLOTS: usize = 4;

/// A pinned host buffer and the event recorded after the last copy out of it.
struct Staging {
    host: *mut u8,
    event: sys::CUevent,
    pending: bool,
}

struct Inner {
    ctx: sys::CUcontext,
    stream: sys::CUstream,
    module: sys::CUmodule,
    /// Each kernel's handle and static shared memory in bytes.
    functions: HashMap<String, (sys::CUfunction, u32)>,
    lt: Option<ltsys::cublasLtHandle_t>,
    workspace: Option<u64>,
    plans: HashMap<String, GemmPlan>,
    staging: Vec<Staging>,
    next_staging: usize,
}

pub struct CudaDevice {
    ordinal: i32,
    name: String,
    /// The kernel build in use.
    image: &'static KernelImage,
    /// `NANOCHAT_CUDA_DEBUG`: synchronise after every launch and GEMM.
    debug_sync: bool,
    inner: Arc<Mutex<Inner>>,
}

// SAFETY: the raw CUDA handles (and the pinned staging buffers) are only used with the context made current
// and behind the mutex.
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
        let mut version = 0;
        // SAFETY: writes one int.
        unsafe { sys::cuDriverGetVersion(&mut version) }
            .result()
            .map_err(|e| driver_err("cuDriverGetVersion", e))?;
        let forced = std::env::var("NANOCHAT_CUDA_FATBIN").ok();
        let img = select_image(version, forced.as_deref())?;
        let fatbin = img.bytes;
        // The driver wants the image aligned and owned until unload; a leaked copy is both.
        let image: &'static mut [u64] = Box::leak(vec![0u64; fatbin.len().div_ceil(8)].into_boxed_slice());
        bytemuck::cast_slice_mut::<u64, u8>(image)[..fatbin.len()].copy_from_slice(fatbin);
        // SAFETY: image holds a complete fatbin and outlives the module.
        let module = unsafe { drv::module::load_data(image.as_ptr() as *const c_void) }.map_err(|e| {
            driver_err(
                &format!(
                    "loading the embedded kernels ({}, built by {}: sm_80 and sm_90a code; this driver supports \
                     CUDA {})",
                    img.file,
                    img.compiler,
                    cuda_version(version)
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
            staging: Vec::new(),
            next_staging: 0,
        };
        Ok(CudaDevice {
            ordinal,
            name,
            image: img,
            debug_sync: switch_on(std::env::var("NANOCHAT_CUDA_DEBUG").ok().as_deref()),
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    /// The kernel build in use.
    pub fn image(&self) -> &'static KernelImage {
        self.image
    }

    /// Whether `NANOCHAT_CUDA_DEBUG` is on.
    pub fn debug_sync(&self) -> bool {
        self.debug_sync
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
    /// The kernel's handle and its static shared memory in bytes.
    fn function(&mut self, name: &str) -> Result<(sys::CUfunction, u32)> {
        if let Some(&f) = self.functions.get(name) {
            return Ok(f);
        }
        let cname = CString::new(name).map_err(|_| DeviceError(format!("kernel name {name:?} contains NUL")))?;
        // SAFETY: module is loaded; cname is NUL-terminated.
        let f = unsafe { drv::module::get_function(self.module, cname) }
            .map_err(|e| driver_err(&format!("kernel `{name}` is not in the embedded kernels"), e))?;
        // SAFETY: f is a valid function handle.
        let stat = unsafe {
            drv::function::get_function_attribute(f, sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)
        }
        .map_err(|e| driver_err(&format!("kernel `{name}`: static shared memory size"), e))?;
        self.functions.insert(name.to_string(), (f, stat.max(0) as u32));
        Ok((f, stat.max(0) as u32))
    }

    /// The next staging buffer, allocated on first use, once the copy that last read it has finished; None
    /// when pinned memory cannot be had (the caller then uploads synchronously).
    fn staging_slot(&mut self) -> Result<Option<usize>> {
        let k = self.next_staging;
        self.next_staging = (k + 1) % STAGING_SLOTS;
        if k == self.staging.len() {
            // SAFETY: plain pinned host allocation and event creation with the context current.
            let host = match unsafe { drv::malloc_host(STAGING_BYTES, 0) } {
                Ok(p) => p as *mut u8,
                Err(_) => return Ok(None),
            };
            let event = drv::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
                .map_err(|e| driver_err("cuEventCreate", e))?;
            self.staging.push(Staging {
                host,
                event,
                pending: false,
            });
        }
        let slot = &mut self.staging[k];
        if slot.pending {
            // SAFETY: the event was recorded on our stream.
            unsafe { drv::event::synchronize(slot.event) }
                .map_err(|e| driver_err("waiting for an earlier upload (a kernel failed?)", e))?;
            slot.pending = false;
        }
        Ok(Some(k))
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
        let debug = if self.debug_sync { ", NANOCHAT_CUDA_DEBUG" } else { "" };
        format!(
            "cuda:{} {} (kernels {}{debug})",
            self.ordinal, self.name, self.image.key
        )
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
        let mut g = self.lock()?;
        if src.len() <= STAGING_BYTES {
            if let Some(k) = g.staging_slot()? {
                let stream = g.stream;
                let slot = &mut g.staging[k];
                // SAFETY: the staging buffer holds STAGING_BYTES and no copy reads it any more (staging_slot
                // waited for its event); the asynchronous copy reads it in stream order, and the event
                // recorded after it guards the next reuse. Work queued later on the stream sees the data.
                unsafe {
                    std::ptr::copy_nonoverlapping(src.as_ptr(), slot.host, src.len());
                    let staged = std::slice::from_raw_parts(slot.host as *const u8, src.len());
                    drv::memcpy_htod_async(dst.0, staged, stream).map_err(|e| driver_err("cuMemcpyHtoDAsync", e))?;
                    drv::event::record(slot.event, stream).map_err(|e| driver_err("cuEventRecord", e))?;
                }
                slot.pending = true;
                if self.debug_sync {
                    // SAFETY: stream is ours and alive.
                    unsafe { drv::stream::synchronize(stream) }.map_err(|e| {
                        driver_err(
                            &format!("NANOCHAT_CUDA_DEBUG: upload of {} bytes to {:#x}", src.len(), dst.0),
                            e,
                        )
                    })?;
                }
                return Ok(());
            }
        }
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
        let (f, static_smem) = g.function(name)?;
        if needs_smem_opt_in(static_smem, smem_bytes) {
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
                    &format!("kernel `{name}`: {smem_bytes} bytes of dynamic shared memory (+ {static_smem} static)"),
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
        .map_err(|e| driver_err(&format!("launching kernel `{name}` grid {grid:?} block {block:?}"), e))?;
        if self.debug_sync {
            // SAFETY: stream is ours and alive.
            unsafe { drv::stream::synchronize(g.stream) }.map_err(|e| {
                driver_err(
                    &format!(
                        "NANOCHAT_CUDA_DEBUG: kernel `{name}` grid ({}, {}, {}) block ({}, {}, {}) shared memory {} + \
                         {static_smem} static, arguments {} failed",
                        grid.x,
                        grid.y,
                        grid.z,
                        block.x,
                        block.y,
                        block.z,
                        smem_bytes,
                        describe_args(args)
                    ),
                    e,
                )
            })?;
        }
        Ok(())
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
        .map_err(|e| cublas_err(&format!("cublasLtMatmul ({})", describe_gemm(gm)), e))?;
        if self.debug_sync {
            // SAFETY: stream is ours and alive.
            unsafe { drv::stream::synchronize(g.stream) }
                .map_err(|e| driver_err(&format!("NANOCHAT_CUDA_DEBUG: {} failed", describe_gemm(gm)), e))?;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cuda_13_driver_gets_the_cuda_13_build() {
        for v in [13000, 13010, 14020] {
            assert_eq!(select_image(v, None).unwrap().file, "ptx/kernels.fatbin", "{v}");
        }
    }

    #[test]
    fn a_cuda_12_driver_gets_the_cuda_12_build() {
        for v in [12000, 12020, 12090, 12080] {
            assert_eq!(select_image(v, None).unwrap().file, "ptx/kernels_cu12.fatbin", "{v}");
        }
    }

    #[test]
    fn a_driver_older_than_both_names_the_versions_needed() {
        for v in [11080, 10020, 0] {
            let e = select_image(v, None).unwrap_err().0;
            assert!(
                e.contains(&format!("this driver supports CUDA {}", cuda_version(v))),
                "{e}"
            );
            assert!(e.contains("CUDA 13.0 (driver 580 or newer)"), "{e}");
            assert!(e.contains("CUDA 12.0 (driver 525 or newer)"), "{e}");
        }
    }

    #[test]
    fn the_build_can_be_forced_where_the_driver_supports_it() {
        assert_eq!(select_image(13000, Some("cu12")).unwrap().key, "cu12");
        assert_eq!(select_image(13000, Some(" cu13 ")).unwrap().key, "cu13");
        assert_eq!(select_image(12080, Some("")).unwrap().key, "cu12");
        let e = select_image(12080, Some("cu13")).unwrap_err().0;
        assert!(
            e.contains("needs a driver for CUDA 13.0") && e.contains("supports CUDA 12.8"),
            "{e}"
        );
        let e = select_image(13000, Some("cu11")).unwrap_err().0;
        assert!(e.contains("\"cu11\" is not one of"), "{e}");
    }

    #[test]
    fn both_builds_are_embedded_fatbins() {
        // A fatbin starts with the magic 0xBA55ED50 (little-endian).
        for img in &IMAGES {
            assert!(img.bytes.len() > 1 << 16, "{}", img.file);
            assert_eq!(&img.bytes[..4], &[0x50, 0xed, 0x55, 0xba], "{}", img.file);
        }
        assert_ne!(IMAGES[0].bytes, IMAGES[1].bytes);
    }

    #[test]
    fn shared_memory_opt_in_counts_static_and_dynamic() {
        const K: u32 = 48 * 1024;
        assert!(!needs_smem_opt_in(0, K));
        assert!(needs_smem_opt_in(0, K + 1));
        assert!(!needs_smem_opt_in(128, K - 128));
        assert!(needs_smem_opt_in(128, K - 127));
        // The muon statistics kernels: 128 static bytes and 48 KiB - 64 dynamic ones need the opt-in that
        // the dynamic size alone does not ask for.
        assert!(needs_smem_opt_in(128, K - 64));
        assert!(needs_smem_opt_in(K, 1));
        assert!(!needs_smem_opt_in(K, 0));
        assert!(!needs_smem_opt_in(1024, 0));
        assert!(needs_smem_opt_in(u32::MAX, u32::MAX));
    }

    #[test]
    fn debug_switch_values() {
        for v in ["1", "true", "YES", " on "] {
            assert!(switch_on(Some(v)), "{v}");
        }
        for v in ["", "0", "false", "off", "2"] {
            assert!(!switch_on(Some(v)), "{v}");
        }
        assert!(!switch_on(None));
    }

    #[test]
    fn debug_descriptions_name_arguments_and_shapes() {
        let args = [
            Arg::Ptr(DevPtr(0x7f00)),
            Arg::I32(768),
            Arg::U32(3),
            Arg::F32(0.5),
            Arg::U64(9),
        ];
        assert_eq!(describe_args(&args), "(0x7f00, 768, 3, 0.5, 9)");
        let g = Gemm::new(64, 32, 16, DevPtr(0x100), DevPtr(0x200), DevPtr(0x300), Dtype::Bf16);
        let g = Gemm { op_b: Op::T, ..g };
        let d = describe_gemm(&g);
        assert!(
            d.contains("m=64 n=32 k=16 op_a=N op_b=T") && d.contains("a=0x100"),
            "{d}"
        );
    }
}
