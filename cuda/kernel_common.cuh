// The only header kernel files include. Under nvcc it pulls in the CUDA headers; under the host C++
// compiler (the emulator build, see build.rs) it pulls in the emulation header instead. Either way a
// kernel file sees the same names, plus:
//   DYNAMIC_SMEM(T, name)       the block's dynamic shared memory as a `T*` (use once per kernel)
//   KERNEL_REGISTER("name", fn) makes an `extern "C" __global__` kernel launchable by name in the emulator
#pragma once

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#if defined(__CUDACC_RTC__)
// NVRTC (the CUDA 12 build, tools/build_fatbin12.py) has no C library headers.
typedef signed char int8_t;
typedef unsigned char uint8_t;
typedef short int16_t;
typedef unsigned short uint16_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
typedef unsigned long long uintptr_t;
#else
#include <stdint.h>
#endif
// One file-scope declaration: block-scope ones in templates and plain functions conflict in linkage.
extern __shared__ __align__(16) unsigned char dyn_smem_raw_[];
#define DYNAMIC_SMEM(T, name) T* name = reinterpret_cast<T*>(dyn_smem_raw_)
#define KERNEL_REGISTER(name, fn)
#else
#include "emu/cuda_emu.h"

#define DYNAMIC_SMEM(T, name) T* name = reinterpret_cast<T*>(::emu::dynamic_smem())
#endif

#include "ptx_helpers.cuh"

typedef __nv_bfloat16 bf16;

// Constants the CPU reference shares (src/config.rs, src/cpu/ops.rs; tests/kernel_constants.rs checks
// that both sides agree).
#define RMS_EPS 1.1920928955078125e-07f  // RMSNorm's epsilon: fp32 machine epsilon, PyTorch's default
#define SOFTCAP 15.0f                    // logits softcap: z = SOFTCAP · tanh(z / SOFTCAP)
#define QK_SCALE 1.2f                    // q and k are scaled by this after QK-norm

// Sum of `v` over the 32 lanes of a warp, returned to every lane, in a fixed (butterfly) order. Every
// lane must call it.
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum of `v` over the block, returned to every thread, in a fixed order (deterministic). `scratch` is
// 32 floats of shared memory; blockDim.x must be a multiple of 32. Every thread must call it.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    v = warp_sum(v);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = warp_sum(lane < nwarps ? scratch[lane] : 0.f);
    __syncthreads();  // scratch may be reused right after
    return t;
}

// W bf16 values at p as floats, and back: W = 8 is one 16-byte vector access (p 16-byte aligned), W = 4 one
// 8-byte access (p 8-byte aligned), W = 1 one element.
template <int W>
__device__ __forceinline__ void load_bf16(float* f, const bf16* p) {
    if (W == 8) {
        uint4 v = *reinterpret_cast<const uint4*>(p);
        const bf16* s = reinterpret_cast<const bf16*>(&v);
#pragma unroll
        for (int k = 0; k < 8; ++k) f[k] = __bfloat162float(s[k]);
    } else if (W == 4) {
        uint2 v = *reinterpret_cast<const uint2*>(p);
        const bf16* s = reinterpret_cast<const bf16*>(&v);
#pragma unroll
        for (int k = 0; k < 4; ++k) f[k] = __bfloat162float(s[k]);
    } else {
        f[0] = __bfloat162float(p[0]);
    }
}
template <int W>
__device__ __forceinline__ void store_bf16(bf16* p, const float* f) {
    if (W == 8) {
        uint4 v;
        bf16* s = reinterpret_cast<bf16*>(&v);
#pragma unroll
        for (int k = 0; k < 8; ++k) s[k] = __float2bfloat16(f[k]);
        *reinterpret_cast<uint4*>(p) = v;
    } else if (W == 4) {
        uint2 v;
        bf16* s = reinterpret_cast<bf16*>(&v);
#pragma unroll
        for (int k = 0; k < 4; ++k) s[k] = __float2bfloat16(f[k]);
        *reinterpret_cast<uint2*>(p) = v;
    } else {
        p[0] = __float2bfloat16(f[0]);
    }
}

// Whether a pointer allows 16-byte vector loads and stores.
__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }
