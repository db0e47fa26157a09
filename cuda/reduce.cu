// Deterministic reductions (sum, sum of squares, and from them norms) in two passes:
//   reduce_partials_{f32,bf16}  block b sums a fixed, grid-strided subset of x into partials[b]
//   reduce_finish               one block sums the partials; optionally takes the square root, and
//                               writes (=) or accumulates (+=, gradients across micro-steps) the result
// The grid size is a function of n only (chosen by the launcher), and every sum has a fixed order, so
// the result is bitwise reproducible from run to run: no float atomics.
// Launcher: src/device/kernels/reduce.rs. CPU reference: src/device/reference.rs (fp64 sums). Check: src/device/check/reduce.rs.
#include "kernel_common.cuh"

template <typename T>
__device__ void reduce_partials(float* partials, const T* x, int64_t n, int square) {
    __shared__ float scratch[32];
    float s = 0.f;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float v = (float)x[i];
        s += square ? v * v : v;
    }
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

extern "C" __global__ void reduce_partials_f32(float* partials, const float* x, int64_t n, int square) {
    reduce_partials(partials, x, n, square);
}
KERNEL_REGISTER("reduce_partials_f32", reduce_partials_f32);

extern "C" __global__ void reduce_partials_bf16(float* partials, const bf16* x, int64_t n, int square) {
    reduce_partials(partials, x, n, square);
}
KERNEL_REGISTER("reduce_partials_bf16", reduce_partials_bf16);

extern "C" __global__ void reduce_finish(float* out, const float* partials, int nparts, int take_sqrt, int accumulate) {
    __shared__ float scratch[32];
    float s = 0.f;
    for (int i = threadIdx.x; i < nparts; i += blockDim.x) s += partials[i];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) {
        float r = take_sqrt ? sqrtf(s) : s;
        out[0] = accumulate ? out[0] + r : r;
    }
}
KERNEL_REGISTER("reduce_finish", reduce_finish);
