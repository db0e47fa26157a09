// Planted access patterns with known profiler answers (tests/emu_profile.rs): a coalesced and a stride-2
// fp32 load, a shared-memory column read of a 32x32 tile with and without padding, and a half-masked warp.
#include "../kernel_common.cuh"

// out[i] = in[stride * i]: stride 1 reads 4 sectors per warp (the ideal), stride 2 reads 8.
extern "C" __global__ void prof_strided_load(float* out, const float* in, int stride, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = in[(int64_t)stride * i];
}
KERNEL_REGISTER("prof_strided_load", prof_strided_load);

// One 32x32 warp tile: each lane writes its row, then reads a column. With `pad` = 0 the 32 words of the
// column all lie in one bank (32-way conflict); a row pitch of 33 words puts them in 32 different banks.
extern "C" __global__ void prof_smem_column(float* out, const float* in, int pad) {
    __shared__ float tile[32 * 33];
    int lane = threadIdx.x, pitch = 32 + (pad ? 1 : 0);
    for (int c = 0; c < 32; ++c) tile[c * pitch + lane] = in[c * 32 + lane];  // row c, conflict-free
    __syncwarp();
    float acc = 0.f;
    for (int c = 0; c < 32; ++c) acc += tile[lane * pitch + c];  // column: lane-strided rows
    out[lane] = acc;
}
KERNEL_REGISTER("prof_smem_column", prof_smem_column);

// Only the lower half of each warp stores.
extern "C" __global__ void prof_half_warp(float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if ((threadIdx.x & 31) < 16 && i < n) out[i] = float(i);
}
KERNEL_REGISTER("prof_half_warp", prof_half_warp);
