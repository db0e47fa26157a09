// AdamW step with fp32 master weights and the bf16 copy the forward pass reads, one element per thread:
//   p *= decay; m += (1-b1)(g - m); v += (1-b2)(g^2 - v); p -= step_size * m / (sqrt(v / bias2) + eps)
//   p_bf16 = bf16(p)  (skipped when p_bf16 is null)
// decay = 1 - lr*wd, step_size = lr / (1 - b1^t), bias2 = 1 - b2^t are computed once on the host.
// Launcher: src/device/kernels/adamw.rs. CPU reference: src/optim/adamw.rs (adamw_update). Check: src/device/check/adamw.rs.
#include "kernel_common.cuh"

extern "C" __global__ void adamw_step(float* p, bf16* p_bf16, const float* g, float* m, float* v, int64_t n, float decay,
                                      float one_minus_b1, float one_minus_b2, float step_size, float bias2, float eps) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float gi = g[i];
        float pi = p[i] * decay;
        float mi = m[i] + one_minus_b1 * (gi - m[i]);
        float vi = v[i] + one_minus_b2 * (gi * gi - v[i]);
        pi -= step_size * (mi / (sqrtf(vi / bias2) + eps));
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
        if (p_bf16) p_bf16[i] = __float2bfloat16(pi);
    }
}
KERNEL_REGISTER("adamw_step", adamw_step);
