// The kernel emulator: the CUDA surface our kernels use, implemented for the host C++ compiler.
//
// Every CUDA thread of a block is a fiber (its own small mmap'd stack) and one OS thread runs a launch's
// blocks one after another. Fibers switch only at synchronisation points (__syncthreads, warp collectives,
// the warp-level PTX helpers, __nanosleep), so between two such points a thread runs like plain C++ and
// the kernel source is what you step through in gdb. The point is diagnostics, not speed: divergent or
// post-exit barriers, warp collectives naming exited lanes, deadlocks grouped by wait site, out-of-bounds
// accesses (guard pages around device buffers, dynamic shared memory and fiber stacks) and argument
// mismatches from the Rust side are reported as launch errors with kernel, block, thread and file:line.
//
// Three schedules (forward, reverse, random) change the order in which runnable threads are resumed, so
// a missing __syncthreads shows up as a wrong result in at least one of them.
//
// Kernel files never include this header directly: they include kernel_common.cuh.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <math.h>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ---------------------------------------------------------------------------------------------------
// Qualifiers and launch-geometry variables
// ---------------------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// At block scope `thread_local` implies `static`: one array per OS thread, shared by the fibers (CUDA
// threads) of the block that thread is running. Static shared arrays keep the previous block's data.
#define __shared__ thread_local
#define __constant__ static const

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
};

namespace emu {

struct Site {
    const char* file;
    int line;
};
#define EMU_SITE (::emu::Site{__FILE__, __LINE__})

// What a parked fiber waits for; used by the scheduler and the deadlock report.
enum class Wait : int { None, Barrier, Warp, Sleep };

constexpr int kSlotBytes = 64;  // per-lane payload of a warp collective (an mma fragment fits)

struct PendingCopy {  // one cp.async: the source was read at issue, shared memory is written at wait
    void* dst;
    unsigned char bytes[16];
    int size;
    int group;
};

struct Fiber {
    uint3 tid;
    int linear;  // threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)
    void* sp = nullptr;
    void* stack = nullptr;  // base of the mapping (guard page first), nullptr until started
    bool started = false;
    bool done = false;
    bool runnable = true;
    Wait wait = Wait::None;
    Site site{nullptr, 0};
    const char* wait_name = "";
    // barrier
    int bar_result = 0;
    // warp collective
    unsigned mask = 0;
    int kind = 0;
    alignas(16) unsigned char in[kSlotBytes];
    alignas(16) unsigned char out[kSlotBytes];
    const void* aux = nullptr;  // a per-lane pointer (ldmatrix row address)
    // cp.async
    std::vector<PendingCopy> copies;
    int cp_group = 0;  // number of the group being built (committed groups are < cp_group)
};

// Combines the inputs of the lanes of `mask` (all arrived) and writes each lane's `out`.
using Combine = void (*)(Fiber* const* lanes, unsigned mask);

struct WarpGroup {  // one collective in progress within a warp
    unsigned mask = 0;
    unsigned arrived = 0;
    int kind = 0;
    Site site{nullptr, 0};
    Combine combine = nullptr;
};

struct WarpState {
    unsigned exited = 0;  // lanes that returned, or do not exist (partial last warp)
    WarpGroup groups[8];
};

struct Launch;
inline thread_local Fiber* tl_cur = nullptr;
inline thread_local Launch* tl_launch = nullptr;
inline thread_local uint3 tl_block_idx;
inline thread_local dim3 tl_block_dim;
inline thread_local dim3 tl_grid_dim;

// Profiler (the `emu-profile` build, emu_profile.cpp): the PTX helpers report their accesses, the runtime
// its launches, blocks, barriers and warp collectives. Without EMU_PROFILE these are empty.
enum ProfFlags : int { kProfStore = 1, kProfLdmatrix = 2, kProfCpAsync = 4 };
namespace prof {
#if defined(EMU_PROFILE)
void access(Site site, const void* p, int size, int flags);
bool launch_begin(const char* kernel, dim3 grid, dim3 block, unsigned smem, const void* smem_ptr,
                  const uintptr_t* allocs, const size_t* sizes, size_t nallocs);
bool run_block(unsigned long linear, unsigned long total);
void block_begin();
void block_sync();
void collective(const char* name);
void barrier_done(int nthreads);
void launch_end();
#else
inline void access(Site, const void*, int, int) {}
#endif
}  // namespace prof
// Emulator code that runs in a fiber and touches device or shared memory on behalf of a warp-level
// instruction (which reports its own accesses) is kept out of the profiler's load/store hooks.
#if defined(EMU_PROFILE)
#define EMU_NOPROF __attribute__((no_sanitize_address, noinline))
#else
#define EMU_NOPROF
#endif

[[noreturn]] void fail(const std::string& msg);
void barrier(Site site, int kind, int pred);
void warp_collective(Site site, unsigned mask, int kind, const char* name, Combine combine);
void nanosleep_yield();
unsigned exited_lanes();
unsigned char* dynamic_smem();

}  // namespace emu

#define threadIdx (::emu::tl_cur->tid)
#define blockIdx (::emu::tl_block_idx)
#define blockDim (::emu::tl_block_dim)
#define gridDim (::emu::tl_grid_dim)
#define warpSize 32

// ---------------------------------------------------------------------------------------------------
// Vector types
// ---------------------------------------------------------------------------------------------------
#define EMU_VEC2(T, N, A)                      \
    struct alignas(A) N##2 {                   \
        T x, y;                                \
    };                                         \
    inline N##2 make_##N##2(T x, T y) {        \
        return N##2{x, y};                     \
    }
#define EMU_VEC4(T, N, A)                                \
    struct alignas(A) N##4 {                             \
        T x, y, z, w;                                    \
    };                                                   \
    inline N##4 make_##N##4(T x, T y, T z, T w) {        \
        return N##4{x, y, z, w};                         \
    }
EMU_VEC2(float, float, 8)
EMU_VEC4(float, float, 16)
EMU_VEC2(int, int, 8)
EMU_VEC4(int, int, 16)
EMU_VEC2(unsigned int, uint, 8)
EMU_VEC4(unsigned int, uint, 16)
EMU_VEC2(unsigned short, ushort, 4)
EMU_VEC4(unsigned short, ushort, 8)
EMU_VEC2(double, double, 16)
EMU_VEC2(long long, longlong, 16)
struct float3 {
    float x, y, z;
};
inline float3 make_float3(float x, float y, float z) { return float3{x, y, z}; }
inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }

// ---------------------------------------------------------------------------------------------------
// Block barrier
// ---------------------------------------------------------------------------------------------------
#define __syncthreads() ::emu::barrier(EMU_SITE, 0, 0)
#define __syncthreads_count(p) (::emu::barrier(EMU_SITE, 1, (p) ? 1 : 0), ::emu::tl_cur->bar_result)
#define __syncthreads_and(p) (::emu::barrier(EMU_SITE, 2, (p) ? 1 : 0), ::emu::tl_cur->bar_result)
#define __syncthreads_or(p) (::emu::barrier(EMU_SITE, 3, (p) ? 1 : 0), ::emu::tl_cur->bar_result)
#define __trap() ::emu::fail("__trap() called")
#define __nanosleep(ns) ::emu::nanosleep_yield()
#define __threadfence() ((void)0)
#define __threadfence_block() ((void)0)

// ---------------------------------------------------------------------------------------------------
// Warp collectives: shuffles, votes, __syncwarp, integer reductions
// ---------------------------------------------------------------------------------------------------
namespace emu {

enum Kind : int { kShflIdx = 1, kShflUp, kShflDown, kShflXor, kBallot, kSyncWarp, kReduce, kUser = 100 };

struct ShflIn {
    uint64_t bits;
    int b;  // source lane, delta or lane mask
    int width;
};

constexpr uint64_t kPoison = ~uint64_t(0);  // what an inactive source lane yields: NaN / -1

// Shuffle source lane as the PTX ISA defines shfl.sync (minLane/maxLane clamping per segment).
inline void combine_shfl(Fiber* const* lanes, unsigned mask, int kind) {
    for (int l = 0; l < 32; ++l) {
        if (!(mask >> l & 1)) continue;
        const ShflIn* in = reinterpret_cast<const ShflIn*>(lanes[l]->in);
        int width = in->width;
        int seg = 32 - width;  // segmask
        int min_lane = l & seg;
        int j = 0;
        bool ok = false;
        switch (kind) {
            case kShflIdx: {
                int max_lane = min_lane | (31 & ~seg);
                j = min_lane | (in->b & ~seg & 31);
                ok = j <= max_lane;
                break;
            }
            case kShflUp:
                j = l - in->b;
                ok = j >= min_lane;
                break;
            case kShflDown: {
                int max_lane = min_lane | (31 & ~seg);
                j = l + in->b;
                ok = j <= max_lane;
                break;
            }
            default: {
                int max_lane = min_lane | (31 & ~seg);
                j = l ^ (in->b & 31);
                ok = j <= max_lane;
                break;
            }
        }
        uint64_t v = in->bits;
        if (ok) v = (mask >> j & 1) ? reinterpret_cast<const ShflIn*>(lanes[j]->in)->bits : kPoison;
        std::memcpy(lanes[l]->out, &v, 8);
    }
}

template <int K>
void combine_shfl_k(Fiber* const* lanes, unsigned mask) {
    combine_shfl(lanes, mask, K);
}

inline const char* shfl_name(int k) {
    switch (k) {
        case kShflIdx: return "__shfl_sync";
        case kShflUp: return "__shfl_up_sync";
        case kShflDown: return "__shfl_down_sync";
        default: return "__shfl_xor_sync";
    }
}

template <int K, typename T>
T shfl(Site site, unsigned mask, T var, int b, int width) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type over 8 bytes");
    if (width <= 0 || width > 32 || (width & (width - 1)))
        fail("shuffle width " + std::to_string(width) + " is not a power of two in 1..32");
    ShflIn in{0, b, width};
    std::memcpy(&in.bits, &var, sizeof(T));
    std::memcpy(tl_cur->in, &in, sizeof in);
    warp_collective(site, mask, K, shfl_name(K), combine_shfl_k<K>);
    T out;
    std::memcpy(&out, tl_cur->out, sizeof(T));
    return out;
}

inline void combine_ballot(Fiber* const* lanes, unsigned mask) {
    unsigned bits = 0;
    for (int l = 0; l < 32; ++l)
        if ((mask >> l & 1) && lanes[l]->in[0]) bits |= 1u << l;
    for (int l = 0; l < 32; ++l)
        if (mask >> l & 1) std::memcpy(lanes[l]->out, &bits, 4);
}

inline unsigned ballot(Site site, unsigned mask, int pred, const char* name) {
    tl_cur->in[0] = pred != 0;
    warp_collective(site, mask, kBallot, name, combine_ballot);
    unsigned bits;
    std::memcpy(&bits, tl_cur->out, 4);
    return bits;
}

inline void combine_nothing(Fiber* const*, unsigned) {}

template <int Op>  // 0 add, 1 min, 2 max; on unsigned bit patterns or signed ints (Signed)
void combine_reduce(Fiber* const* lanes, unsigned mask) {
    long long acc = Op == 1 ? INT64_MAX : (Op == 2 ? INT64_MIN : 0);
    for (int l = 0; l < 32; ++l) {
        if (!(mask >> l & 1)) continue;
        long long v;
        std::memcpy(&v, lanes[l]->in, 8);
        acc = Op == 0 ? acc + v : (Op == 1 ? (v < acc ? v : acc) : (v > acc ? v : acc));
    }
    for (int l = 0; l < 32; ++l)
        if (mask >> l & 1) std::memcpy(lanes[l]->out, &acc, 8);
}

template <int Op>
long long reduce(Site site, unsigned mask, long long v, const char* name) {
    std::memcpy(tl_cur->in, &v, 8);
    warp_collective(site, mask, kReduce + Op * 1000, name, combine_reduce<Op>);
    long long out;
    std::memcpy(&out, tl_cur->out, 8);
    return out;
}

}  // namespace emu

#define __shfl_sync(mask, var, ...) ::emu::shfl<::emu::kShflIdx>(EMU_SITE, mask, var, __VA_ARGS__, 32)
#define __shfl_up_sync(mask, var, ...) ::emu::shfl<::emu::kShflUp>(EMU_SITE, mask, var, __VA_ARGS__, 32)
#define __shfl_down_sync(mask, var, ...) ::emu::shfl<::emu::kShflDown>(EMU_SITE, mask, var, __VA_ARGS__, 32)
#define __shfl_xor_sync(mask, var, ...) ::emu::shfl<::emu::kShflXor>(EMU_SITE, mask, var, __VA_ARGS__, 32)
#define __ballot_sync(mask, p) ::emu::ballot(EMU_SITE, mask, (p) ? 1 : 0, "__ballot_sync")
#define __any_sync(mask, p) (::emu::ballot(EMU_SITE, mask, (p) ? 1 : 0, "__any_sync") != 0)
#define __all_sync(mask, p) (::emu::ballot(EMU_SITE, mask, (p) ? 1 : 0, "__all_sync") == (mask))
#define __syncwarp(...) ::emu::warp_collective(EMU_SITE, ::emu::syncwarp_mask(__VA_ARGS__ + 0), ::emu::kSyncWarp, "__syncwarp", ::emu::combine_nothing)
#define __reduce_add_sync(mask, v) ((unsigned)::emu::reduce<0>(EMU_SITE, mask, (long long)(v), "__reduce_add_sync"))
#define __reduce_min_sync(mask, v) ((decltype(v))::emu::reduce<1>(EMU_SITE, mask, (long long)(v), "__reduce_min_sync"))
#define __reduce_max_sync(mask, v) ((decltype(v))::emu::reduce<2>(EMU_SITE, mask, (long long)(v), "__reduce_max_sync"))
// Non-exited lanes of the warp: an approximation of convergence; avoid in kernels.
#define __activemask() (~::emu::exited_lanes())

namespace emu {
// `__syncwarp()` means the full warp; `__syncwarp(m)` expands to `m + 0`, and a literal 0 mask is not useful.
inline unsigned syncwarp_mask(unsigned m) { return m == 0 ? 0xffffffffu : m; }
}  // namespace emu

// The shuffle macros append a default width of 32; a call that names a width ends up with two trailing
// width arguments, so the templates take an extra ignored parameter in that case.
namespace emu {
template <int K, typename T>
T shfl(Site site, unsigned mask, T var, int b, int width, int /*default*/) {
    return shfl<K, T>(site, mask, var, b, width);
}
template <int K, typename T>
T shfl(Site site, unsigned mask, T var, int b) {
    return shfl<K, T>(site, mask, var, b, 32);
}
}  // namespace emu

// ---------------------------------------------------------------------------------------------------
// Atomics. Fibers switch only at synchronisation points and a launch runs on one OS thread, so a plain
// read-modify-write is atomic with respect to every other CUDA thread of the launch.
// ---------------------------------------------------------------------------------------------------
template <typename T>
inline T atomicAdd(T* p, T v) {
    T old = *p;
    *p = old + v;
    return old;
}
template <typename T>
inline T atomicSub(T* p, T v) {
    T old = *p;
    *p = old - v;
    return old;
}
template <typename T>
inline T atomicMax(T* p, T v) {
    T old = *p;
    *p = old > v ? old : v;
    return old;
}
template <typename T>
inline T atomicMin(T* p, T v) {
    T old = *p;
    *p = old < v ? old : v;
    return old;
}
template <typename T>
inline T atomicExch(T* p, T v) {
    T old = *p;
    *p = v;
    return old;
}
template <typename T>
inline T atomicCAS(T* p, T cmp, T v) {
    T old = *p;
    if (old == cmp) *p = v;
    return old;
}
template <typename T>
inline T atomicOr(T* p, T v) {
    T old = *p;
    *p = old | v;
    return old;
}
template <typename T>
inline T atomicAnd(T* p, T v) {
    T old = *p;
    *p = old & v;
    return old;
}

// ---------------------------------------------------------------------------------------------------
// Math and bit intrinsics (libm: the GPU's approximate versions differ in the last bits; use tolerances)
// ---------------------------------------------------------------------------------------------------
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanhf(float x) { return tanhf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline int __float2int_rn(float x) { return (int)rintf(x); }
inline int __float2int_rz(float x) { return (int)x; }
inline float __int2float_rn(int x) { return (float)x; }
inline int __float_as_int(float x) {
    int i;
    std::memcpy(&i, &x, 4);
    return i;
}
inline unsigned __float_as_uint(float x) {
    unsigned i;
    std::memcpy(&i, &x, 4);
    return i;
}
inline float __int_as_float(int i) {
    float x;
    std::memcpy(&x, &i, 4);
    return x;
}
inline float __uint_as_float(unsigned i) {
    float x;
    std::memcpy(&x, &i, 4);
    return x;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
template <typename T>
inline T __ldg(const T* p) {
    return *p;
}
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }

#include "emu_bf16.h"
#include "emu_registry.h"
