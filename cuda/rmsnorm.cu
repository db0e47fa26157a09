// RMSNorm without weight over rows of width c: y = x * rstd, rstd = 1 / sqrt(mean(x^2) + eps).
// One block per row; the row is read once for the sum of squares and once more (from L1/L2) to scale.
//   rmsnorm_forward      y (n, c) bf16, rstd (n) fp32 saved for backward, x (n, c) bf16
//   mix_rmsnorm_forward  the residual mix before each block fused in front:
//                        xmix = lambdas[0] * x + lambdas[1] * x0 (written, it is the new residual),
//                        y = rmsnorm(xmix); the lambdas are read from device memory (they are parameters)
//   rmsnorm_backward     dx += rstd * (dy - y * mean(dy * y)), y = x * rstd   (+=: dx is the residual
//                        stream's gradient, which collects every branch)
//   mix_backward         backward of the mix: dx = lambdas[0] * dxmix (=, so dx may be dxmix itself),
//                        dx0 += lambdas[1] * dxmix (fp32: x0 collects a gradient from every layer), and
//                        per-row dot products dxmix.x, dxmix.x0 into partials[row], partials[n + row], which
//                        the launcher reduces deterministically into the two lambda gradients
#include "kernel_common.cuh"

#define RMS_EPS 1.1920928955078125e-07f  // fp32 machine epsilon, PyTorch's default for fp32/bf16 inputs

extern "C" __global__ void rmsnorm_forward(bf16* y, float* rstd, const bf16* x, int n, int c) {
    __shared__ float scratch[32];
    const bf16* xr = x + (size_t)blockIdx.x * c;
    float ss = 0.f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        float v = __bfloat162float(xr[i]);
        ss += v * v;
    }
    float r = rsqrtf(block_sum(ss, scratch) / c + RMS_EPS);
    bf16* yr = y + (size_t)blockIdx.x * c;
    for (int i = threadIdx.x; i < c; i += blockDim.x) yr[i] = __float2bfloat16(__bfloat162float(xr[i]) * r);
    if (threadIdx.x == 0) rstd[blockIdx.x] = r;
    (void)n;
}
KERNEL_REGISTER("rmsnorm_forward", rmsnorm_forward);

extern "C" __global__ void mix_rmsnorm_forward(bf16* xmix, bf16* y, float* rstd, const bf16* x, const bf16* x0,
                                               const float* lambdas, int n, int c) {
    __shared__ float scratch[32];
    size_t off = (size_t)blockIdx.x * c;
    float lr = lambdas[0], l0 = lambdas[1];
    float ss = 0.f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        // Round the mix to bf16 first: the norm must see exactly the residual that is stored.
        bf16 m = __float2bfloat16(lr * __bfloat162float(x[off + i]) + l0 * __bfloat162float(x0[off + i]));
        xmix[off + i] = m;
        float v = __bfloat162float(m);
        ss += v * v;
    }
    float r = rsqrtf(block_sum(ss, scratch) / c + RMS_EPS);
    // Each thread rereads only the elements it wrote itself: no barrier needed.
    for (int i = threadIdx.x; i < c; i += blockDim.x) y[off + i] = __float2bfloat16(__bfloat162float(xmix[off + i]) * r);
    if (threadIdx.x == 0) rstd[blockIdx.x] = r;
    (void)n;
}
KERNEL_REGISTER("mix_rmsnorm_forward", mix_rmsnorm_forward);

extern "C" __global__ void rmsnorm_backward(bf16* dx, const bf16* dy, const bf16* x, const float* rstd, int n, int c) {
    __shared__ float scratch[32];
    size_t off = (size_t)blockIdx.x * c;
    float r = rstd[blockIdx.x];
    float dot = 0.f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) dot += __bfloat162float(x[off + i]) * r * __bfloat162float(dy[off + i]);
    float mean = block_sum(dot, scratch) / c;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        float g = __bfloat162float(dy[off + i]), xv = __bfloat162float(x[off + i]);
        dx[off + i] = __float2bfloat16(__bfloat162float(dx[off + i]) + r * (g - xv * r * mean));
    }
    (void)n;
}
KERNEL_REGISTER("rmsnorm_backward", rmsnorm_backward);

extern "C" __global__ void mix_backward(bf16* dx, float* dx0, float* partials, const bf16* dxmix, const bf16* x, const bf16* x0,
                                        const float* lambdas, int n, int c) {
    __shared__ float scratch[32];
    size_t off = (size_t)blockIdx.x * c;
    float lr = lambdas[0], l0 = lambdas[1];
    float dr = 0.f, d0 = 0.f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        float g = __bfloat162float(dxmix[off + i]);
        dr += g * __bfloat162float(x[off + i]);
        d0 += g * __bfloat162float(x0[off + i]);
        dx0[off + i] += l0 * g;
        dx[off + i] = __float2bfloat16(lr * g);  // after reading dxmix[off + i]: dx may alias dxmix
    }
    dr = block_sum(dr, scratch);
    d0 = block_sum(d0, scratch);
    if (threadIdx.x == 0) {
        partials[blockIdx.x] = dr;
        partials[n + blockIdx.x] = d0;
    }
}
KERNEL_REGISTER("mix_backward", mix_backward);
