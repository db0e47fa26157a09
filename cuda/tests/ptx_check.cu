// One-warp kernels that check the PTX helpers: the instruction (asm on a GPU, emulation on the CPU)
// against the shuffle-only references and, from Rust, against plain loops over the documented layouts.
// Compiled for both backends: the GPU self-check runs them too.
#include "../kernel_common.cuh"

// D (16x8, fp32) = A (16x16, row-major bf16) @ B (16x8, row-major bf16 [k][n]) + C (16x8 fp32).
// Fragments are gathered by plain indexing with the ISA's layout table (see ptx_helpers.cuh).
// mode 0: mma_m16n8k16_bf16, mode 1: mma_m16n8k16_bf16_ref.
extern "C" __global__ void ptx_mma_fragments(float* D, const uint16_t* A, const uint16_t* B, const float* C, int mode) {
    unsigned lane = threadIdx.x, g = lane >> 2, t = lane & 3;
    auto pack = [](uint16_t lo, uint16_t hi) { return uint32_t(lo) | (uint32_t(hi) << 16); };
    uint32_t a[4], b[2];
    float c[4], d[4];
    a[0] = pack(A[g * 16 + 2 * t], A[g * 16 + 2 * t + 1]);
    a[1] = pack(A[(g + 8) * 16 + 2 * t], A[(g + 8) * 16 + 2 * t + 1]);
    a[2] = pack(A[g * 16 + 2 * t + 8], A[g * 16 + 2 * t + 9]);
    a[3] = pack(A[(g + 8) * 16 + 2 * t + 8], A[(g + 8) * 16 + 2 * t + 9]);
    b[0] = pack(B[(2 * t) * 8 + g], B[(2 * t + 1) * 8 + g]);
    b[1] = pack(B[(2 * t + 8) * 8 + g], B[(2 * t + 9) * 8 + g]);
    for (int i = 0; i < 4; ++i) c[i] = C[(g + (i >= 2 ? 8 : 0)) * 8 + 2 * t + (i & 1)];
    if (mode == 0) mma_m16n8k16_bf16(d, a, b, c);
    else mma_m16n8k16_bf16_ref(d, a, b, c);
    for (int i = 0; i < 4; ++i) D[(g + (i >= 2 ? 8 : 0)) * 8 + 2 * t + (i & 1)] = d[i];
}
KERNEL_REGISTER("ptx_mma_fragments", ptx_mma_fragments);

// ldmatrix from a 32-row x 8-column b16 matrix in shared memory (row r = lane r's address).
// mode: 0 x1, 1 x2, 2 x4, 3 x1.trans, 4 x2.trans, 5 x4.trans; ref != 0 uses ldmatrix_ref.
// out[lane * 4 + i] = register i of the lane (unused registers are left untouched).
extern "C" __global__ void ptx_ldmatrix(uint32_t* out, const uint16_t* src, int mode, int ref) {
    __shared__ __align__(16) uint16_t s[32 * 8];
    unsigned lane = threadIdx.x;
    for (int j = 0; j < 8; ++j) s[lane * 8 + j] = src[lane * 8 + j];
    __syncwarp();
    uint32_t r[4] = {0, 0, 0, 0};
    const void* row = s + lane * 8;
    if (!ref) {
        switch (mode) {
            case 0: ldmatrix_x1(r, row); break;
            case 1: ldmatrix_x2(r, row); break;
            case 2: ldmatrix_x4(r, row); break;
            case 3: ldmatrix_x1_trans(r, row); break;
            case 4: ldmatrix_x2_trans(r, row); break;
            default: ldmatrix_x4_trans(r, row); break;
        }
    } else {
        switch (mode) {
            case 0: ldmatrix_ref<1, false>(r, row); break;
            case 1: ldmatrix_ref<2, false>(r, row); break;
            case 2: ldmatrix_ref<4, false>(r, row); break;
            case 3: ldmatrix_ref<1, true>(r, row); break;
            case 4: ldmatrix_ref<2, true>(r, row); break;
            default: ldmatrix_ref<4, true>(r, row); break;
        }
    }
    int n = (mode % 3 == 0) ? 1 : (mode % 3 == 1 ? 2 : 4);
    for (int i = 0; i < n; ++i) out[lane * 4 + i] = r[i];
}
KERNEL_REGISTER("ptx_ldmatrix", ptx_ldmatrix);

// The canonical sm_80 pipeline on one warp: cp.async global -> shared (two commit groups), ldmatrix.x4
// for A and ldmatrix.x2.trans for B, then mma. C (M x N, fp32) = A (M x K) @ B (K x N), all row-major bf16,
// M = 16 * gridDim.y, N = 8 * gridDim.x, K a multiple of 16. `wait_first` = 0 reads shared memory before
// the cp.async wait (a planted bug: the emulator then sees poison).
extern "C" __global__ void ptx_mma_pipeline(float* Cm, const uint16_t* A, const uint16_t* B, int K, int wait_first) {
    __shared__ __align__(16) uint16_t As[16 * 16];
    __shared__ __align__(16) uint16_t Bs[16 * 8];
    unsigned lane = threadIdx.x, g = lane >> 2, t = lane & 3;
    int N = 8 * gridDim.x;
    int m0 = blockIdx.y * 16, n0 = blockIdx.x * 8;
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    for (int k0 = 0; k0 < K; k0 += 16) {
        // A tile: 16 rows x 32 bytes = 32 chunks of 16 B, one per lane; B tile: 16 rows x 16 B, lanes 0..15.
        cp_async_16(As + (lane >> 1) * 16 + (lane & 1) * 8, A + (size_t)(m0 + (lane >> 1)) * K + k0 + (lane & 1) * 8);
        cp_async_commit();
        if (lane < 16) cp_async_16(Bs + lane * 8, B + (size_t)(k0 + lane) * N + n0);
        cp_async_commit();
        if (wait_first) cp_async_wait<0>();
        __syncwarp();
        uint32_t a[4], b[2];
        ldmatrix_x4(a, As + (lane & 15) * 16 + (lane >> 4) * 8);
        ldmatrix_x2_trans(b, Bs + (lane & 15) * 8);
        mma_m16n8k16_bf16(acc, a, b, acc);
        if (!wait_first) cp_async_wait<0>();
        __syncwarp();
    }
    for (int i = 0; i < 4; ++i) Cm[(size_t)(m0 + g + (i >= 2 ? 8 : 0)) * N + n0 + 2 * t + (i & 1)] = acc[i];
}
KERNEL_REGISTER("ptx_mma_pipeline", ptx_mma_pipeline);
