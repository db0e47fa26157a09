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
