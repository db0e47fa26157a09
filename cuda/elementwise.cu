// Elementwise ops on bf16 storage with fp32 math, one element per thread:
//   relu2_forward   out = relu(x)^2
//   relu2_backward  dx = (x > 0) * 2x * dout          (=, not +=: dx feeds the next GEMM backward directly)
//   cast_f32_to_bf16 / cast_bf16_to_f32              round to nearest even / exact widening
#include "kernel_common.cuh"

extern "C" __global__ void relu2_forward(bf16* out, const bf16* x, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = __bfloat162float(x[i]);
        out[i] = __float2bfloat16(v > 0.f ? v * v : 0.f);
    }
}
KERNEL_REGISTER("relu2_forward", relu2_forward);

extern "C" __global__ void relu2_backward(bf16* dx, const bf16* dout, const bf16* x, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = __bfloat162float(x[i]);
        dx[i] = __float2bfloat16(v > 0.f ? 2.f * v * __bfloat162float(dout[i]) : 0.f);
    }
}
KERNEL_REGISTER("relu2_backward", relu2_backward);

extern "C" __global__ void cast_f32_to_bf16(bf16* out, const float* x, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2bfloat16(x[i]);
}
KERNEL_REGISTER("cast_f32_to_bf16", cast_f32_to_bf16);

extern "C" __global__ void cast_bf16_to_f32(float* out, const bf16* x, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __bfloat162float(x[i]);
}
KERNEL_REGISTER("cast_bf16_to_f32", cast_bf16_to_f32);
