// The only header kernel files include. Under nvcc it pulls in the CUDA headers; under the host C++
// compiler (the emulator build, see build.rs) it pulls in the emulation header instead. Either way a
// kernel file sees the same names, plus:
//   DYNAMIC_SMEM(T, name)       the block's dynamic shared memory as a `T*` (use once per kernel)
//   KERNEL_REGISTER("name", fn) makes an `extern "C" __global__` kernel launchable by name in the emulator
#pragma once

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <stdint.h>
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

// Sum of `v` over the block, returned to every thread, in a fixed order (deterministic). `scratch` is
// 32 floats of shared memory; blockDim.x must be a multiple of 32. Every thread must call it.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < nwarps ? scratch[lane] : 0.f;
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
    __syncthreads();  // scratch may be reused right after
    return t;
}

// Whether a pointer allows 16-byte vector loads and stores.
__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }
