// Elementwise ops on bf16 storage with fp32 math:
//   relu2_forward   out = relu(x)^2
//   relu2_backward  dx = (x > 0) * 2x * dout          (=, not +=: dx feeds the next GEMM backward directly)
//   cast_f32_to_bf16 / cast_bf16_to_f32              round to nearest even / exact widening
//   add_bf16        out += a                         (in place, bf16 + bf16)
//   add_f32_bf16    out = a + b                      (a fp32, b bf16; out may alias b)
// Each thread handles ELEMS_PER_THREAD elements (bf16-only kernels: consecutive ones, with 16-byte loads and
// stores; kernels with an fp32 side: two pieces of 4, see ew_piece_start) when all its pointers are 16-byte
// aligned (the usual case: buffers are), so that enough bytes are in flight to
// saturate HBM; the last partial chunk and unaligned views take a scalar path. Every thread reads its own
// elements before writing them, so an output may alias an input of the same type (no __restrict__).
// Launcher: src/device/kernels/elementwise.rs. CPU reference: src/cpu/ops.rs (relu2_*), src/device/reference.rs (casts, adds). Check: src/device/check/elementwise.rs.
#include "kernel_common.cuh"

#define ELEMS_PER_THREAD 8


// First element of this thread's chunk, and whether the whole chunk can be moved as vectors.
__device__ __forceinline__ int64_t chunk_start(int64_t n, bool aligned, bool* vec) {
    int64_t i0 = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * ELEMS_PER_THREAD;
    *vec = aligned && i0 + ELEMS_PER_THREAD <= n;
    return i0;
}

__device__ __forceinline__ float relu2(float v) { return v > 0.f ? v * v : 0.f; }

extern "C" __global__ void relu2_forward(bf16* out, const bf16* x, int64_t n) {
    bool vec;
    int64_t i0 = chunk_start(n, aligned16(out) && aligned16(x), &vec);
    if (vec) {
        float f[ELEMS_PER_THREAD];
        load_bf16<ELEMS_PER_THREAD>(f, x + i0);
#pragma unroll
        for (int k = 0; k < ELEMS_PER_THREAD; ++k) f[k] = relu2(f[k]);
        store_bf16<ELEMS_PER_THREAD>(out + i0, f);
    } else {
        for (int64_t i = i0; i < n && i < i0 + ELEMS_PER_THREAD; ++i) out[i] = __float2bfloat16(relu2(__bfloat162float(x[i])));
    }
}
KERNEL_REGISTER("relu2_forward", relu2_forward);

__device__ __forceinline__ float relu2_grad(float v, float g) { return v > 0.f ? 2.f * v * g : 0.f; }

extern "C" __global__ void relu2_backward(bf16* dx, const bf16* dout, const bf16* x, int64_t n) {
    bool vec;
    int64_t i0 = chunk_start(n, aligned16(dx) && aligned16(dout) && aligned16(x), &vec);
    if (vec) {
        float f[ELEMS_PER_THREAD], g[ELEMS_PER_THREAD];
        load_bf16<ELEMS_PER_THREAD>(f, x + i0);
        load_bf16<ELEMS_PER_THREAD>(g, dout + i0);
#pragma unroll
        for (int k = 0; k < ELEMS_PER_THREAD; ++k) f[k] = relu2_grad(f[k], g[k]);
        store_bf16<ELEMS_PER_THREAD>(dx + i0, f);
    } else {
        for (int64_t i = i0; i < n && i < i0 + ELEMS_PER_THREAD; ++i)
            dx[i] = __float2bfloat16(relu2_grad(__bfloat162float(x[i]), __bfloat162float(dout[i])));
    }
}
KERNEL_REGISTER("relu2_backward", relu2_backward);

// The kernels with an fp32 side move, per thread, two pieces of 4 elements 128 apart, so that each warp
// covers 256 consecutive elements and every warp-wide access is contiguous: 16-byte fp32 and 8-byte bf16
// vectors. (One 8-element chunk per thread would read its 32 fp32 bytes as two 16-byte halves, each
// warp-wide access touching twice the sectors it uses.) The grid is the same; blockDim.x is a multiple of 32.
#define EW_PIECE 4
__device__ __forceinline__ int64_t ew_piece_start(int p) {
    int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    return (t >> 5) * (32 * ELEMS_PER_THREAD) + p * (32 * EW_PIECE) + (t & 31) * EW_PIECE;
}

extern "C" __global__ void cast_f32_to_bf16(bf16* out, const float* x, int64_t n) {
    bool aligned = aligned16(out) && aligned16(x);
#pragma unroll
    for (int p = 0; p < ELEMS_PER_THREAD / EW_PIECE; ++p) {
        int64_t i0 = ew_piece_start(p);
        if (aligned && i0 + EW_PIECE <= n) {
            float4 a = *reinterpret_cast<const float4*>(x + i0);
            float f[EW_PIECE] = {a.x, a.y, a.z, a.w};
            store_bf16<EW_PIECE>(out + i0, f);
        } else {
            for (int64_t i = i0; i < n && i < i0 + EW_PIECE; ++i) out[i] = __float2bfloat16(x[i]);
        }
    }
}
KERNEL_REGISTER("cast_f32_to_bf16", cast_f32_to_bf16);

extern "C" __global__ void cast_bf16_to_f32(float* out, const bf16* x, int64_t n) {
    bool aligned = aligned16(out) && aligned16(x);
#pragma unroll
    for (int p = 0; p < ELEMS_PER_THREAD / EW_PIECE; ++p) {
        int64_t i0 = ew_piece_start(p);
        if (aligned && i0 + EW_PIECE <= n) {
            float f[EW_PIECE];
            load_bf16<EW_PIECE>(f, x + i0);
            *reinterpret_cast<float4*>(out + i0) = make_float4(f[0], f[1], f[2], f[3]);
        } else {
            for (int64_t i = i0; i < n && i < i0 + EW_PIECE; ++i) out[i] = __bfloat162float(x[i]);
        }
    }
}
KERNEL_REGISTER("cast_bf16_to_f32", cast_bf16_to_f32);


extern "C" __global__ void add_bf16(bf16* out, const bf16* a, int64_t n) {
    bool vec;
    int64_t i0 = chunk_start(n, aligned16(out) && aligned16(a), &vec);
    if (vec) {
        float f[ELEMS_PER_THREAD], g[ELEMS_PER_THREAD];
        load_bf16<ELEMS_PER_THREAD>(f, out + i0);
        load_bf16<ELEMS_PER_THREAD>(g, a + i0);
#pragma unroll
        for (int k = 0; k < ELEMS_PER_THREAD; ++k) f[k] += g[k];
        store_bf16<ELEMS_PER_THREAD>(out + i0, f);
    } else {
        for (int64_t i = i0; i < n && i < i0 + ELEMS_PER_THREAD; ++i)
            out[i] = __float2bfloat16(__bfloat162float(out[i]) + __bfloat162float(a[i]));
    }
}
KERNEL_REGISTER("add_bf16", add_bf16);

extern "C" __global__ void add_f32_bf16(bf16* out, const float* a, const bf16* b, int64_t n) {
    bool aligned = aligned16(out) && aligned16(a) && aligned16(b);
#pragma unroll
    for (int p = 0; p < ELEMS_PER_THREAD / EW_PIECE; ++p) {
        int64_t i0 = ew_piece_start(p);
        if (aligned && i0 + EW_PIECE <= n) {
            float4 a0 = *reinterpret_cast<const float4*>(a + i0);
            float f[EW_PIECE];
            load_bf16<EW_PIECE>(f, b + i0);
            f[0] += a0.x, f[1] += a0.y, f[2] += a0.z, f[3] += a0.w;
            store_bf16<EW_PIECE>(out + i0, f);
        } else {
            for (int64_t i = i0; i < n && i < i0 + EW_PIECE; ++i) out[i] = __float2bfloat16(a[i] + __bfloat162float(b[i]));
        }
    }
}
KERNEL_REGISTER("add_f32_bf16", add_f32_bf16);
