// RoPE + QK RMSNorm + the 1.2 scale, fused after the QKV GEMM, forward and backward.
// The input is a view into the GEMM output: rows of `x_stride` elements whose first heads·d columns are the
// heads of q (or k); the output is the contiguous (n, heads, d) layout the attention kernels read. Rows are
// tokens of sequences of length t at positions pos0 + (row % t). Half-split RoPE, rotation by −θ as
// upstream: y1 = x1·cos + x2·sin, y2 = −x1·sin + x2·cos, then y = rmsnorm(y over d) · 1.2.
// One warp per (row, head): lane l holds the pairs (j, j + d/2) for j = l, l + 32, ... (d ≤ 256), so the
// rotated head stays in registers between the sum of squares and the scaling.
//   rope_qknorm_forward   y (n, heads, d) bf16, rstd (n·heads) f32 saved, x strided bf16
//   rope_qknorm_backward  dx (strided, = or += by `accumulate`) from dy (n, heads, d): the RMSNorm backward
//                         on the recomputed rotation, then the transposed rotation
// Launcher: src/device/kernels/rope_qknorm.rs. CPU reference: src/cpu/ops.rs (rope_*, qk_norm_*). Check: src/device/check/rope_qknorm.rs.
#include "kernel_common.cuh"

#define QKN_PAIRS 4                       // pairs per lane: d/2 ≤ 4·32

// Loads the head's pairs of lane `lane` and rotates them: a = first half, b = second half.
__device__ __forceinline__ void load_rotated(float* a, float* b, const bf16* xh, const float* cs, const float* sn,
                                             int half, int lane) {
#pragma unroll
    for (int k = 0; k < QKN_PAIRS; ++k) {
        int j = lane + 32 * k;
        a[k] = 0.f;
        b[k] = 0.f;
        if (j < half) {
            float x1 = __bfloat162float(xh[j]), x2 = __bfloat162float(xh[j + half]);
            a[k] = x1 * cs[j] + x2 * sn[j];
            b[k] = -x1 * sn[j] + x2 * cs[j];
        }
    }
}

extern "C" __global__ void rope_qknorm_forward(bf16* y, float* rstd, const bf16* x, const float* cos_t,
                                               const float* sin_t, int n, int t, int heads, int d, int pos0,
                                               int x_stride) {
    int lane = threadIdx.x % 32;
    int64_t unit = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (unit < (int64_t)n * heads) {  // warp-uniform: the shuffles below see whole warps
        int64_t row = unit / heads;
        int h = (int)(unit % heads), half = d / 2;
        int64_t p = pos0 + row % t;
        const bf16* xh = x + row * x_stride + (int64_t)h * d;
        const float* cs = cos_t + p * half;
        const float* sn = sin_t + p * half;
        float a[QKN_PAIRS], b[QKN_PAIRS];
        load_rotated(a, b, xh, cs, sn, half, lane);
        float ss = 0.f;
#pragma unroll
        for (int k = 0; k < QKN_PAIRS; ++k) ss += a[k] * a[k] + b[k] * b[k];
        float r = rsqrtf(warp_sum(ss) / d + RMS_EPS);
        bf16* yh = y + unit * d;
#pragma unroll
        for (int k = 0; k < QKN_PAIRS; ++k) {
            int j = lane + 32 * k;
            if (j < half) {
                yh[j] = __float2bfloat16(a[k] * r * QK_SCALE);
                yh[j + half] = __float2bfloat16(b[k] * r * QK_SCALE);
            }
        }
        if (lane == 0) rstd[unit] = r;
    }
}
KERNEL_REGISTER("rope_qknorm_forward", rope_qknorm_forward);

extern "C" __global__ void rope_qknorm_backward(bf16* dx, const bf16* dy, const bf16* x, const float* rstd,
                                                const float* cos_t, const float* sin_t, int n, int t, int heads,
                                                int d, int pos0, int x_stride, int dx_stride, int accumulate) {
    int lane = threadIdx.x % 32;
    int64_t unit = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (unit < (int64_t)n * heads) {
        int64_t row = unit / heads;
        int h = (int)(unit % heads), half = d / 2;
        int64_t p = pos0 + row % t;
        const float* cs = cos_t + p * half;
        const float* sn = sin_t + p * half;
        float a[QKN_PAIRS], b[QKN_PAIRS];  // the rotated input, recomputed rather than saved
        load_rotated(a, b, x + row * x_stride + (int64_t)h * d, cs, sn, half, lane);
        const bf16* gh = dy + unit * d;
        float ga[QKN_PAIRS], gb[QKN_PAIRS];
        float r = rstd[unit];
        float dot = 0.f;
#pragma unroll
        for (int k = 0; k < QKN_PAIRS; ++k) {
            int j = lane + 32 * k;
            ga[k] = 0.f;
            gb[k] = 0.f;
            if (j < half) {
                ga[k] = QK_SCALE * __bfloat162float(gh[j]);
                gb[k] = QK_SCALE * __bfloat162float(gh[j + half]);
            }
            dot += ga[k] * a[k] * r + gb[k] * b[k] * r;
        }
        float mean = warp_sum(dot) / d;
        bf16* dh = dx + row * dx_stride + (int64_t)h * d;
#pragma unroll
        for (int k = 0; k < QKN_PAIRS; ++k) {
            int j = lane + 32 * k;
            if (j < half) {
                // RMSNorm backward on the rotated values, then the transposed rotation.
                float d1 = r * (ga[k] - a[k] * r * mean), d2 = r * (gb[k] - b[k] * r * mean);
                float o1 = d1 * cs[j] - d2 * sn[j], o2 = d1 * sn[j] + d2 * cs[j];
                if (accumulate) {
                    o1 += __bfloat162float(dh[j]);
                    o2 += __bfloat162float(dh[j + half]);
                }
                dh[j] = __float2bfloat16(o1);
                dh[j + half] = __float2bfloat16(o2);
            }
        }
    }
}
KERNEL_REGISTER("rope_qknorm_backward", rope_qknorm_backward);
