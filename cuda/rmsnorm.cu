// RMSNorm without weight over rows of width c: y = x * rstd, rstd = 1 / sqrt(mean(x^2) + eps).
// One block per row; the row is read once for the sum of squares and once more (from L1/L2) to scale.
// Rows move as 16-byte vectors (8 bf16 per thread per step) when the width is a multiple of 8 and the
// pointers are aligned (the block-uniform choice between the two instantiations), else element by element.
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
//   rmsnorm_mix_backward rmsnorm_backward and mix_backward in one pass, with the gradient of xmix kept in
//                        fp32 between them: the lambda gradients are dot products of that gradient with x
//                        and x0, and its norm part is orthogonal to xmix, so rounding it to bf16 first
//                        would leave a large relative error in the (small) dot products
//   rmsnorm_backout_backward  the final norm's backward fused with the backout's, for the same reason
//                        (xf = x - lambda * x_mid): dx = g, dx_mid = -lambda * g (=, not +=), partials[row] =
//                        -g.x_mid, with g = rstd * (dy - y * mean(dy * y)) in fp32
// Launcher: src/device/kernels/rmsnorm.rs. CPU reference: src/cpu/ops.rs (rmsnorm_*, lambda_mix_*, backout_backward). Check: src/device/check/rmsnorm.rs.
#include "kernel_common.cuh"

template <int W>
__device__ void rmsnorm_fwd(bf16* y, float* rstd, const bf16* x, int c) {
    __shared__ float scratch[32];
    size_t off = (size_t)blockIdx.x * c;
    float f[W];
    float ss = 0.f;
    for (int i = threadIdx.x * W; i < c; i += blockDim.x * W) {
        load_bf16<W>(f, x + off + i);
#pragma unroll
        for (int k = 0; k < W; ++k) ss += f[k] * f[k];
    }
    float r = rsqrtf(block_sum(ss, scratch) / c + RMS_EPS);
    for (int i = threadIdx.x * W; i < c; i += blockDim.x * W) {
        load_bf16<W>(f, x + off + i);
#pragma unroll
        for (int k = 0; k < W; ++k) f[k] *= r;
        store_bf16<W>(y + off + i, f);
    }
    if (threadIdx.x == 0) rstd[blockIdx.x] = r;
}

extern "C" __global__ void rmsnorm_forward(bf16* y, float* rstd, const bf16* x, int n, int c) {
    if (c % 8 == 0 && aligned16(x) && aligned16(y)) rmsnorm_fwd<8>(y, rstd, x, c);
    else rmsnorm_fwd<1>(y, rstd, x, c);
    (void)n;
}
KERNEL_REGISTER("rmsnorm_forward", rmsnorm_forward);

template <int W>
__device__ void mix_rmsnorm_fwd(bf16* xmix, bf16* y, float* rstd, const bf16* x, const bf16* x0, const float* lambdas, int c) {
    __shared__ float scratch[32];
    size_t off = (size_t)blockIdx.x * c;
    float lr = lambdas[0], l0 = lambdas[1];
    float a[W], b[W];
    float ss = 0.f;
    for (int i = threadIdx.x * W; i < c; i += blockDim.x * W) {
        load_bf16<W>(a, x + off + i);
        load_bf16<W>(b, x0 + off + i);
#pragma unroll
        for (int k = 0; k < W; ++k) {
            // Round the mix to bf16 first: the norm must see exactly the residual that is stored.
            a[k] = __bfloat162float(__float2bfloat16(lr * a[k] + l0 * b[k]));
            ss += a[k] * a[k];
        }
        store_bf16<W>(xmix + off + i, a);
    }
    float r = rsqrtf(block_sum(ss, scratch) / c + RMS_EPS);
    // Each thread rereads only the elements it wrote itself: no barrier needed.
    for (int i = threadIdx.x * W; i < c; i += blockDim.x * W) {
        load_bf16<W>(a, xmix + off + i);
#pragma unroll
        for (int k = 0; k < W; ++k) a[k] *= r;
        store_bf16<W>(y + off + i, a);
    }
    if (threadIdx.x == 0) rstd[blockIdx.x] = r;
}

extern "C" __global__ void mix_rmsnorm_forward(bf16* xmix, bf16* y, float* rstd, const bf16* x, const bf16* x0,
                                               const float* lambdas, int n, int c) {
    if (c % 8 == 0 && aligned16(xmix) && aligned16(y) && aligned16(x) && aligned16(x0))
        mix_rmsnorm_fwd<8>(xmix, y, rstd, x, x0, lambdas, c);
    else
        mix_rmsnorm_fwd<1>(xmix, y, rstd, x, x0, lambdas, c);
    (void)n;
}
KERNEL_REGISTER("mix_rmsnorm_forward", mix_rmsnorm_forward);

template <int W>
__device__ void rmsnorm_bwd(bf16* dx, const bf16* dy, const bf16* x, const float* rstd, int c) {
    __shared__ float scratch[32];
    size_t off = (size_t)blockIdx.x * c;
    float r = rstd[blockIdx.x];
    float xv[W], g[W], d[W];
    float dot = 0.f;
    for (int i = threadIdx.x * W; i < c; i += blockDim.x * W) {
        load_bf16<W>(xv, x + off + i);
        load_bf16<W>(g, dy + off + i);
#pragma unroll
        for (int k = 0; k < W; ++k) dot += xv[k] * r * g[k];
    }
    float mean = block_sum(dot, scratch) / c;
    for (int i = threadIdx.x * W; i < c; i += blockDim.x * W) {
        load_bf16<W>(xv, x + off + i);
        load_bf16<W>(g, dy + off + i);
        load_bf16<W>(d, dx + off + i);
#pragma unroll
        for (int k = 0; k < W; ++k) d[k] += r * (g[k] - xv[k] * r * mean);
        store_bf16<W>(dx + off + i, d);
    }
}

extern "C" __global__ void rmsnorm_backward(bf16* dx, const bf16* dy, const bf16* x, const float* rstd, int n, int c) {
    if (c % 8 == 0 && aligned16(dx) && aligned16(dy) && aligned16(x)) rmsnorm_bwd<8>(dx, dy, x, rstd, c);
    else rmsnorm_bwd<1>(dx, dy, x, rstd, c);
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

// Per row: mean(dy * y) with y = x * rstd, the first half of the RMSNorm backward.
__device__ __forceinline__ float rms_dot_mean(const bf16* dy, const bf16* x, float r, size_t off, int c, float* scratch) {
    float dot = 0.f;
    for (int i = threadIdx.x; i < c; i += blockDim.x)
        dot += __bfloat162float(x[off + i]) * r * __bfloat162float(dy[off + i]);
    return block_sum(dot, scratch) / c;
}

extern "C" __global__ void rmsnorm_mix_backward(bf16* dx, float* dx0, float* partials, const bf16* dres, const bf16* dy,
                                                const bf16* xmix, const float* rstd, const bf16* x, const bf16* x0,
                                                const float* lambdas, int n, int c) {
    __shared__ float scratch[32];
    size_t off = (size_t)blockIdx.x * c;
    float r = rstd[blockIdx.x];
    float mean = rms_dot_mean(dy, xmix, r, off, c, scratch);
    float lr = lambdas[0], l0 = lambdas[1];
    float dr = 0.f, d0 = 0.f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        float xm = __bfloat162float(xmix[off + i]);
        float g = __bfloat162float(dres[off + i]) + r * (__bfloat162float(dy[off + i]) - xm * r * mean);
        dr += g * __bfloat162float(x[off + i]);
        d0 += g * __bfloat162float(x0[off + i]);
        dx0[off + i] += l0 * g;
        dx[off + i] = __float2bfloat16(lr * g);  // after reading dres[off + i]: dx may alias dres
    }
    dr = block_sum(dr, scratch);
    d0 = block_sum(d0, scratch);
    if (threadIdx.x == 0) {
        partials[blockIdx.x] = dr;
        partials[n + blockIdx.x] = d0;
    }
}
KERNEL_REGISTER("rmsnorm_mix_backward", rmsnorm_mix_backward);

extern "C" __global__ void rmsnorm_backout_backward(bf16* dx, bf16* dx_mid, float* partials, const bf16* dy, const bf16* xf,
                                                    const float* rstd, const bf16* x_mid, const float* lambda, int n,
                                                    int c) {
    __shared__ float scratch[32];
    size_t off = (size_t)blockIdx.x * c;
    float r = rstd[blockIdx.x];
    float mean = rms_dot_mean(dy, xf, r, off, c, scratch);
    float lam = lambda[0];
    float dl = 0.f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        float g = r * (__bfloat162float(dy[off + i]) - __bfloat162float(xf[off + i]) * r * mean);
        dl -= g * __bfloat162float(x_mid[off + i]);
        dx[off + i] = __float2bfloat16(g);
        dx_mid[off + i] = __float2bfloat16(-lam * g);
    }
    dl = block_sum(dl, scratch);
    if (threadIdx.x == 0) partials[blockIdx.x] = dl;
    (void)n;
}
KERNEL_REGISTER("rmsnorm_backout_backward", rmsnorm_backout_backward);
