//! The CPU reference: plain-Rust fp32 implementations of every op and of the whole model. It is the readable
//! specification, the oracle the kernels are tested against, and the device that trains tiny models without
//! a GPU.

pub mod decode;
pub mod gemm;
pub mod gpt;
#[cfg(test)]
mod gradcheck;
pub mod infer;
pub mod model;
pub mod ops;
pub mod profile;
pub mod simd;

/// Makes freed memory stay in the process heap instead of going back to the kernel, so the activation buffers a
/// training step allocates are reused by the next step instead of being faulted in and zeroed page by page
/// again (glibc returns every allocation above 32 MiB, such as the logits, to the kernel on free; that cost
/// about a tenth of a small model's CPU step). Called once when a CPU model is built; glibc only.
pub fn keep_freed_memory() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes allocator tuning parameters; it is called once, before the model's
        // buffers are allocated.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        }
    });
}
