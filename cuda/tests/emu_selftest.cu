// Kernels that exercise the emulator itself (tests/emu_selftest.rs): block barriers, warp collectives,
// dynamic shared memory, and a tiled matmul whose buggy twin lacks its second barrier.
#include "../kernel_common.cuh"

// out[i] = in[n - 1 - i] within one block, through static shared memory.
extern "C" __global__ void emu_block_reverse(float* out, const float* in, int n) {
    __shared__ float s[1024];
    int i = threadIdx.x;
    if (i < n) s[i] = in[i];
    __syncthreads();
    if (i < n) out[i] = s[n - 1 - i];
}
KERNEL_REGISTER("emu_block_reverse", emu_block_reverse);

// C (M, N) = A (M, K) @ B (K, N), fp32, 16x16 tiles in static and dynamic shared memory, ragged edges.
template <bool SecondBarrier>
__device__ void tiled_matmul(float* C, const float* A, const float* B, int M, int N, int K) {
    __shared__ float As[16][16];
    DYNAMIC_SMEM(float, Bs);  // 16 * 16 floats
    int tx = threadIdx.x, ty = threadIdx.y;
    int row = blockIdx.y * 16 + ty, col = blockIdx.x * 16 + tx;
    float acc = 0.f;
    for (int k0 = 0; k0 < K; k0 += 16) {
        As[ty][tx] = (row < M && k0 + tx < K) ? A[row * K + k0 + tx] : 0.f;
        Bs[ty * 16 + tx] = (k0 + ty < K && col < N) ? B[(k0 + ty) * N + col] : 0.f;
        __syncthreads();
        for (int k = 0; k < 16; ++k) acc += As[ty][k] * Bs[k * 16 + tx];
        if (SecondBarrier) __syncthreads();
    }
    if (row < M && col < N) C[row * N + col] = acc;
}
extern "C" __global__ void emu_tiled_matmul(float* C, const float* A, const float* B, int M, int N, int K) {
    tiled_matmul<true>(C, A, B, M, N, K);
}
extern "C" __global__ void emu_tiled_matmul_buggy(float* C, const float* A, const float* B, int M, int N, int K) {
    tiled_matmul<false>(C, A, B, M, N, K);
}
KERNEL_REGISTER("emu_tiled_matmul", emu_tiled_matmul);
KERNEL_REGISTER("emu_tiled_matmul_buggy", emu_tiled_matmul_buggy);

// One shuffle per thread of value 100 * lane + 1: mode 0 idx, 1 up, 2 down, 3 xor.
extern "C" __global__ void emu_shuffle(int* out, int mode, int arg, int width) {
    int lane = threadIdx.x & 31;
    int v = 100 * lane + 1;
    int r = 0;
    if (mode == 0) r = __shfl_sync(0xffffffffu, v, arg, width);
    if (mode == 1) r = __shfl_up_sync(0xffffffffu, v, arg, width);
    if (mode == 2) r = __shfl_down_sync(0xffffffffu, v, arg, width);
    if (mode == 3) r = __shfl_xor_sync(0xffffffffu, v, arg, width);
    out[blockIdx.x * blockDim.x + threadIdx.x] = r;
}
KERNEL_REGISTER("emu_shuffle", emu_shuffle);

// Votes and barrier counts of the predicate `in[i] != 0`: out[4i..4i+3] = ballot, any, all, block count.
extern "C" __global__ void emu_votes(unsigned* out, const int* in) {
    int i = threadIdx.x;
    int p = in[i] != 0;
    unsigned b = __ballot_sync(0xffffffffu, p);
    int any = __any_sync(0xffffffffu, p);
    int all = __all_sync(0xffffffffu, p);
    int count = __syncthreads_count(p);
    int all_block = __syncthreads_and(p);
    int any_block = __syncthreads_or(p);
    out[6 * i + 0] = b;
    out[6 * i + 1] = any;
    out[6 * i + 2] = all;
    out[6 * i + 3] = count;
    out[6 * i + 4] = all_block;
    out[6 * i + 5] = any_block;
}
KERNEL_REGISTER("emu_votes", emu_votes);

// Sum of each row of x (rows, n) with a warp-shuffle block reduction; one block per row.
extern "C" __global__ void emu_row_sum(float* out, const float* x, int n) {
    __shared__ float warp_sums[32];
    const float* row = x + (size_t)blockIdx.x * n;
    float s = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += row[i];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) warp_sums[warp] = s;
    __syncthreads();
    if (warp == 0) {
        int nw = blockDim.x / 32;
        float t = lane < nw ? warp_sums[lane] : 0.f;
        for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
        if (lane == 0) out[blockIdx.x] = t;
    }
}
KERNEL_REGISTER("emu_row_sum", emu_row_sum);

// Two half-warps reduce independently with half masks, then __syncwarp; out[lane] = its half's sum.
extern "C" __global__ void emu_half_warps(int* out) {
    int lane = threadIdx.x & 31;
    unsigned mask = lane < 16 ? 0x0000ffffu : 0xffff0000u;
    int v = lane;
    for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(mask, v, o, 16);
    __syncwarp();
    out[threadIdx.x] = v + (int)__reduce_add_sync(0xffffffffu, 1u) * 1000;
}
KERNEL_REGISTER("emu_half_warps", emu_half_warps);

// Each block reads the dynamic shared memory it did not write: it must be poisoned (all bits set).
extern "C" __global__ void emu_smem_poison(unsigned* out) {
    DYNAMIC_SMEM(unsigned, s);
    out[blockIdx.x * blockDim.x + threadIdx.x] = s[threadIdx.x];
    __syncthreads();
    s[threadIdx.x] = 7;
}
KERNEL_REGISTER("emu_smem_poison", emu_smem_poison);

// Intra-block producer/consumer through a spin-wait with __nanosleep (allowed: it yields).
extern "C" __global__ void emu_spin_wait(int* out) {
    __shared__ int flag;
    if (threadIdx.x == 0) flag = 0;
    __syncthreads();
    if (threadIdx.x == blockDim.x - 1) {
        flag = 42;
    } else {
        while (*(volatile int*)&flag == 0) __nanosleep(100);
    }
    out[threadIdx.x] = flag;
}
KERNEL_REGISTER("emu_spin_wait", emu_spin_wait);

// atomics within a launch: out[0] += 1 per thread, out[1] = max thread index.
extern "C" __global__ void emu_atomics(int* out) {
    atomicAdd(&out[0], 1);
    atomicMax(&out[1], (int)(blockIdx.x * blockDim.x + threadIdx.x));
}
KERNEL_REGISTER("emu_atomics", emu_atomics);

// bf16 round trip: out[i] = bf16(x[i]) as float.
extern "C" __global__ void emu_bf16_round(float* out, const float* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __bfloat162float(__float2bfloat16(x[i]));
}
KERNEL_REGISTER("emu_bf16_round", emu_bf16_round);
