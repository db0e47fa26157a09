//! Kernel devices: where the hand-written CUDA kernels of `cuda/` run.
//!
//! A [`Device`] allocates flat device memory, copies to and from it, launches a kernel by name with
//! `cuLaunchKernel`-style parameters and runs GEMMs. Two implementations:
//! - [`cuda::CudaDevice`]: a GPU through the CUDA driver API (cudarc, dynamically loaded), running the
//!   kernels compiled into `ptx/kernels.fatbin` and GEMMs through cuBLASLt. On a machine without the
//!   driver or without a GPU, opening it returns an error; it never panics.
//! - [`emu::EmuDevice`]: the same `.cu` sources compiled for the CPU against the kernel emulator
//!   (`cuda/emu/`), with guard pages around every buffer and diagnostics for barrier, warp-collective and
//!   argument bugs, under a chosen thread [`Schedule`]. GEMMs follow cuBLASLt's semantics on the CPU.
//!
//! Device memory is addressed by [`DevPtr`] (a raw device address, offsettable like a C pointer);
//! [`Buffer`] owns an allocation and frees it when dropped.

pub mod check;
pub mod cuda;
pub mod emu;
pub mod gemm;
mod gpt;
pub mod infer;
pub mod kernels;
pub mod memory;
pub mod model;
pub mod profile;
pub mod projection;
pub mod record;
pub mod reference;
pub mod roofline;
mod zero;

use std::fmt;
use std::sync::Arc;

pub use gemm::{Gemm, Op};

/// An error from a device: what was attempted and why it failed.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceError(pub String);

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for DeviceError {}

pub type Result<T> = std::result::Result<T, DeviceError>;

pub(crate) fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(DeviceError(msg.into()))
}

/// Element type of device tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    Bf16,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 => 2,
        }
    }
}

/// A device address. Arithmetic on it is the caller's business, as with a C pointer; the emulator's
/// guard pages catch accesses past the end of an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DevPtr(pub u64);

impl DevPtr {
    /// The address `bytes` further on.
    pub fn byte_add(self, bytes: usize) -> DevPtr {
        DevPtr(self.0 + bytes as u64)
    }
    /// The address of element `i` of an array of `T` starting here.
    pub fn at<T>(self, i: usize) -> DevPtr {
        self.byte_add(i * std::mem::size_of::<T>())
    }
}

/// An owned device allocation; freed on drop.
pub struct Buffer {
    ptr: DevPtr,
    bytes: usize,
    free: Arc<dyn Fn(DevPtr) + Send + Sync>,
}

impl Buffer {
    pub(crate) fn new(ptr: DevPtr, bytes: usize, free: Arc<dyn Fn(DevPtr) + Send + Sync>) -> Buffer {
        Buffer { ptr, bytes, free }
    }
    pub fn ptr(&self) -> DevPtr {
        self.ptr
    }
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    /// The address of element `i` when the buffer holds `T`s.
    pub fn at<T>(&self, i: usize) -> DevPtr {
        self.ptr.at::<T>(i)
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        (self.free)(self.ptr)
    }
}

impl fmt::Debug for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Buffer({:#x}, {} bytes)", self.ptr.0, self.bytes)
    }
}

/// Launch geometry, as in CUDA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dim3 {
    pub x: u32,
    pub y: u32,
    pub z: u32,
}

impl Dim3 {
    pub fn x(x: u32) -> Dim3 {
        Dim3 { x, y: 1, z: 1 }
    }
    pub fn xy(x: u32, y: u32) -> Dim3 {
        Dim3 { x, y, z: 1 }
    }
}

/// One kernel parameter, passed by value. Its size must match the kernel's C++ parameter type; the
/// emulator checks that, the GPU cannot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arg {
    Ptr(DevPtr),
    I32(i32),
    U32(u32),
    I64(i64),
    U64(u64),
    F32(f32),
}

impl Arg {
    /// The parameter's bytes as the kernel sees them, and their count.
    pub(crate) fn bytes(&self) -> ([u8; 8], usize) {
        let mut b = [0u8; 8];
        let n = match *self {
            Arg::Ptr(p) => put(&mut b, &p.0.to_ne_bytes()),
            Arg::I32(v) => put(&mut b, &v.to_ne_bytes()),
            Arg::U32(v) => put(&mut b, &v.to_ne_bytes()),
            Arg::I64(v) => put(&mut b, &v.to_ne_bytes()),
            Arg::U64(v) => put(&mut b, &v.to_ne_bytes()),
            Arg::F32(v) => put(&mut b, &v.to_ne_bytes()),
        };
        (b, n)
    }
}

fn put(dst: &mut [u8; 8], src: &[u8]) -> usize {
    dst[..src.len()].copy_from_slice(src);
    src.len()
}

impl From<DevPtr> for Arg {
    fn from(p: DevPtr) -> Arg {
        Arg::Ptr(p)
    }
}
impl From<&Buffer> for Arg {
    fn from(b: &Buffer) -> Arg {
        Arg::Ptr(b.ptr())
    }
}
impl From<i32> for Arg {
    fn from(v: i32) -> Arg {
        Arg::I32(v)
    }
}
impl From<u32> for Arg {
    fn from(v: u32) -> Arg {
        Arg::U32(v)
    }
}
impl From<f32> for Arg {
    fn from(v: f32) -> Arg {
        Arg::F32(v)
    }
}
impl From<i64> for Arg {
    fn from(v: i64) -> Arg {
        Arg::I64(v)
    }
}
impl From<u64> for Arg {
    fn from(v: u64) -> Arg {
        Arg::U64(v)
    }
}

/// The order in which the emulator resumes the runnable threads of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    Forward,
    Reverse,
    /// A seeded random permutation per block.
    Random(u64),
}

impl Schedule {
    /// The three schedules every kernel test runs under.
    pub const ALL: [Schedule; 3] = [Schedule::Forward, Schedule::Reverse, Schedule::Random(0x5eed)];
}

/// The operations the model code needs from a kernel device.
pub trait Device: Send + Sync {
    /// A short description: "emu (forward schedule)", "cuda: NVIDIA H100 80GB HBM3".
    fn name(&self) -> String;
    /// Allocates `bytes` of device memory (contents undefined; the emulator fills it with NaN bits).
    fn alloc(&self, bytes: usize) -> Result<Buffer>;
    /// Copies host bytes to device address `dst`.
    fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<()>;
    /// Copies device bytes at `src` to the host.
    fn download(&self, src: DevPtr, dst: &mut [u8]) -> Result<()>;
    /// Sets `bytes` bytes at `dst` to zero.
    fn zero(&self, dst: DevPtr, bytes: usize) -> Result<()>;
    /// Copies `bytes` bytes from device address `src` to device address `dst` (non-overlapping).
    fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()>;
    /// Launches kernel `name` (an `extern "C" __global__` function of `cuda/`).
    fn launch(&self, name: &str, grid: Dim3, block: Dim3, smem_bytes: u32, args: &[Arg]) -> Result<()>;
    /// C = alpha * op(A) @ op(B) + beta * C, see [`Gemm`].
    fn gemm(&self, g: &Gemm) -> Result<()>;
    /// Waits for all queued work; reports asynchronous errors.
    fn synchronize(&self) -> Result<()>;
    /// (free, total) device memory in bytes, where the device knows it.
    fn memory_info(&self) -> Option<(usize, usize)> {
        None
    }
    /// Whether every allocation is fenced by guard pages (the emulator), so that separate allocations catch
    /// overruns that one carved allocation would not.
    fn guard_pages(&self) -> bool {
        false
    }
}

impl dyn Device + '_ {
    /// Allocates and fills a buffer with `data`.
    pub fn upload_new<T: bytemuck::Pod>(&self, data: &[T]) -> Result<Buffer> {
        let buf = self.alloc(std::mem::size_of_val(data))?;
        self.upload(buf.ptr(), bytemuck::cast_slice(data))?;
        Ok(buf)
    }
    /// Reads `n` elements of `T` at `src`.
    pub fn download_vec<T: bytemuck::Pod + Default>(&self, src: DevPtr, n: usize) -> Result<Vec<T>> {
        let mut v = vec![T::default(); n];
        self.download(src, bytemuck::cast_slice_mut(&mut v))?;
        Ok(v)
    }
}
