// Deliberately broken kernels: each must be caught by the emulator diagnostic named in its comment
// (tests/emu_diagnostics.rs). Emulator only: these are not compiled for the GPU.
#include "../kernel_common.cuh"

// divergent barrier: even and odd threads wait at different __syncthreads
extern "C" __global__ void bug_divergent_barrier(float* out) {
    if (threadIdx.x % 2 == 0) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1.f;
}
KERNEL_REGISTER("bug_divergent_barrier", bug_divergent_barrier);

// post-exit barrier: threads at or past n return before the barrier
extern "C" __global__ void bug_exit_then_barrier(float* out, int n) {
    if ((int)threadIdx.x >= n) return;
    out[threadIdx.x] = 1.f;
    __syncthreads();
    out[threadIdx.x] += 1.f;
}
KERNEL_REGISTER("bug_exit_then_barrier", bug_exit_then_barrier);

// warp collective naming exited lanes: lanes 16..31 return, the others shuffle with the full mask
extern "C" __global__ void bug_partial_shuffle(float* out) {
    if (threadIdx.x >= 16) return;
    float v = __shfl_xor_sync(0xffffffffu, 1.f, 1);
    out[threadIdx.x] = v;
}
KERNEL_REGISTER("bug_partial_shuffle", bug_partial_shuffle);

// deadlock: lanes 0..15 wait in a full-mask shuffle that lanes 16..31 never reach (they wait at a barrier)
extern "C" __global__ void bug_deadlock(float* out) {
    float v = 1.f;
    if (threadIdx.x < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
    else __syncthreads();
    out[threadIdx.x] = v;
}
KERNEL_REGISTER("bug_deadlock", bug_deadlock);

// out-of-bounds read: in[i + 1] for the last i reads one element past the buffer
extern "C" __global__ void bug_oob_read(float* out, const float* in, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = in[i + 1];
}
KERNEL_REGISTER("bug_oob_read", bug_oob_read);

// dynamic shared memory overrun: writes element n of an n-element array
extern "C" __global__ void bug_smem_overrun(float* out, int n) {
    DYNAMIC_SMEM(float, s);
    s[threadIdx.x + 1] = 1.f;  // thread n - 1 writes s[n]
    __syncthreads();
    out[threadIdx.x] = s[threadIdx.x];
    (void)n;
}
KERNEL_REGISTER("bug_smem_overrun", bug_smem_overrun);

// fiber stack overflow: a 4 MiB local array
extern "C" __global__ void bug_stack_overflow(float* out) {
    volatile float big[1 << 20];
    for (int i = 0; i < (1 << 20); i += 1024) big[i] = (float)i;
    out[threadIdx.x] = big[threadIdx.x];
}
KERNEL_REGISTER("bug_stack_overflow", bug_stack_overflow);

// caller not in its mask
extern "C" __global__ void bug_not_in_mask(float* out) {
    float v = __shfl_sync(0x1u, 1.f, 0);
    out[threadIdx.x] = v;
}
KERNEL_REGISTER("bug_not_in_mask", bug_not_in_mask);

// livelock: spin (with __nanosleep) on a flag nobody sets
extern "C" __global__ void bug_livelock(int* flag) {
    while (*(volatile int*)flag == 0) __nanosleep(100);
}
KERNEL_REGISTER("bug_livelock", bug_livelock);

// misaligned ldmatrix row address
extern "C" __global__ void bug_ldmatrix_misaligned(unsigned* out) {
    __shared__ __align__(16) uint16_t s[32 * 8 + 8];
    for (int i = threadIdx.x; i < 32 * 8 + 8; i += 32) s[i] = (uint16_t)i;
    __syncwarp();
    uint32_t r[4];
    ldmatrix_x4(r, s + threadIdx.x * 8 + 1);
    out[threadIdx.x] = r[0];
}
KERNEL_REGISTER("bug_ldmatrix_misaligned", bug_ldmatrix_misaligned);

// divergent warp collectives: even and odd lanes shuffle with the same full mask at different call sites
extern "C" __global__ void bug_divergent_shuffle(float* out) {
    float v = 1.f;
    if (threadIdx.x % 2 == 0) {
        v = __shfl_xor_sync(0xffffffffu, v, 2);
    } else {
        v = __shfl_xor_sync(0xffffffffu, v, 2);
    }
    out[threadIdx.x] = v;
}
KERNEL_REGISTER("bug_divergent_shuffle", bug_divergent_shuffle);

// misaligned cp.async destination
extern "C" __global__ void bug_cp_async_misaligned(float* out, const float* in) {
    __shared__ __align__(16) float s[64];
    cp_async_16(s + 4 * threadIdx.x + 1, in + 4 * threadIdx.x);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    out[threadIdx.x] = s[4 * threadIdx.x];
}
KERNEL_REGISTER("bug_cp_async_misaligned", bug_cp_async_misaligned);
