// The only place with inline PTX. Each helper is one instruction form with two bodies: the asm for the
// GPU (`__CUDA_ARCH__`) and an emulation for the kernel emulator, which implements the instruction's
// documented register layout (PTX ISA, "Matrix fragments for mma.m16n8k16" and "ldmatrix").
// The `_ref` versions use only shuffles and plain loads and compile for both: on a GPU the self-check
// compares asm with them, on the CPU the tests compare them with the emulation and with plain loops.
// That closes the loop on the fragment layouts, which are otherwise only as right as our reading of the ISA.
//
// Fragment layouts of mma.m16n8k16 (g = lane / 4, t = lane % 4; a .b32 register holds two bf16, the
// lower-indexed element in the low half):
//   A (16x16, row-major): a[0] = A[g][2t..2t+1]   a[1] = A[g+8][2t..2t+1]
//                         a[2] = A[g][2t+8..+9]   a[3] = A[g+8][2t+8..+9]
//   B (16x8, k-major):    b[0] = B[2t..2t+1][g]   b[1] = B[2t+8..+9][g]
//   C, D (16x8, fp32):    c[0..1] = C[g][2t..2t+1]   c[2..3] = C[g+8][2t..2t+1]
#pragma once

__device__ __forceinline__ unsigned lane_id() {
#if defined(__CUDA_ARCH__)
    unsigned l;
    asm volatile("mov.u32 %0, %%laneid;" : "=r"(l));
    return l;
#else
    return unsigned(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) & 31u;
#endif
}

__device__ __forceinline__ float bf16_lo(uint32_t r) { return __uint_as_float(r << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t r) { return __uint_as_float(r & 0xffff0000u); }

#if !defined(__CUDA_ARCH__)
namespace emu {
enum PtxKind : int { kMma = kUser + 1, kLdm1, kLdm2, kLdm4, kLdm1T, kLdm2T, kLdm4T };

struct MmaIn {
    uint32_t a[4], b[2];
    float c[4];
};

inline void combine_mma(Fiber* const* lanes, unsigned) {
    float A[16][16], B[16][8];
    for (int l = 0; l < 32; ++l) {
        const MmaIn* in = reinterpret_cast<const MmaIn*>(lanes[l]->in);
        int g = l >> 2, t = l & 3;
        for (int h = 0; h < 2; ++h) {
            auto e = [&](uint32_t r) { return h ? bf16_hi(r) : bf16_lo(r); };
            A[g][2 * t + h] = e(in->a[0]);
            A[g + 8][2 * t + h] = e(in->a[1]);
            A[g][2 * t + 8 + h] = e(in->a[2]);
            A[g + 8][2 * t + 8 + h] = e(in->a[3]);
            B[2 * t + h][g] = e(in->b[0]);
            B[2 * t + 8 + h][g] = e(in->b[1]);
        }
    }
    for (int l = 0; l < 32; ++l) {
        const MmaIn* in = reinterpret_cast<const MmaIn*>(lanes[l]->in);
        int g = l >> 2, t = l & 3;
        float d[4];
        for (int i = 0; i < 4; ++i) {
            int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
            float acc = in->c[i];
            for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
            d[i] = acc;
        }
        std::memcpy(lanes[l]->out, d, sizeof d);
    }
}

// ldmatrix: lane 8*i + r gives the address of row r of matrix i; every lane receives, from each matrix,
// two consecutive b16 of row lane/4 (or, transposed, of column lane/4).
template <int N, bool Trans>
EMU_NOPROF void combine_ldmatrix(Fiber* const* lanes, unsigned) {
    for (int l = 0; l < 32; ++l) {
        uint32_t r[4];
        for (int i = 0; i < N; ++i) {
            if (!Trans) {
                const unsigned char* row = static_cast<const unsigned char*>(lanes[8 * i + (l >> 2)]->aux);
                std::memcpy(&r[i], row + (l & 3) * 4, 4);
            } else {
                const uint16_t* r0 = static_cast<const uint16_t*>(lanes[8 * i + 2 * (l & 3)]->aux);
                const uint16_t* r1 = static_cast<const uint16_t*>(lanes[8 * i + 2 * (l & 3) + 1]->aux);
                r[i] = uint32_t(r0[l >> 2]) | (uint32_t(r1[l >> 2]) << 16);
            }
        }
        std::memcpy(lanes[l]->out, r, sizeof(uint32_t) * N);
    }
}

inline void check_aligned(const void* p, const char* what) {
    if (reinterpret_cast<uintptr_t>(p) & 15) {
        char buf[96];
        snprintf(buf, sizeof buf, "%s: address %p is not 16-byte aligned", what, p);
        fail(buf);
    }
}

template <int N, bool Trans>
void ldmatrix_emu(Site site, uint32_t* r, const void* row) {
    static const char* names[2][5] = {{"", "ldmatrix.x1", "ldmatrix.x2", "", "ldmatrix.x4"},
                                      {"", "ldmatrix.x1.trans", "ldmatrix.x2.trans", "", "ldmatrix.x4.trans"}};
    int lane = tl_cur->linear & 31;
    if (lane < 8 * N) {
        check_aligned(row, names[Trans][N]);
        prof::access(site, row, 16, kProfLdmatrix);
    }
    tl_cur->aux = row;
    int kind = (N == 1 ? kLdm1 : N == 2 ? kLdm2 : kLdm4) + (Trans ? 3 : 0);
    warp_collective(site, 0xffffffffu, kind, names[Trans][N], combine_ldmatrix<N, Trans>);
    std::memcpy(r, tl_cur->out, sizeof(uint32_t) * N);
}
}  // namespace emu
#endif

// D = A * B + C for one warp: m16n8k16, bf16 inputs, fp32 accumulation. All 32 lanes must call it.
#if defined(__CUDA_ARCH__)
__device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                  const float c[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
}
#else
#define mma_m16n8k16_bf16(d, a, b, c) ::emu::mma_emu(EMU_SITE, d, a, b, c)
namespace emu {
inline void mma_emu(Site site, float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    MmaIn in;
    std::memcpy(in.a, a, sizeof in.a);
    std::memcpy(in.b, b, sizeof in.b);
    std::memcpy(in.c, c, sizeof in.c);
    std::memcpy(tl_cur->in, &in, sizeof in);
    warp_collective(site, 0xffffffffu, kMma, "mma.m16n8k16", combine_mma);
    std::memcpy(d, tl_cur->out, sizeof(float) * 4);
}
}  // namespace emu
#endif

// ldmatrix.x{1,2,4}[.trans] from shared memory: `row` is this lane's row address (16-byte aligned);
// lanes 0-7 address matrix 0, 8-15 matrix 1, ... (lanes beyond 8*N are ignored). All 32 lanes call it.
#if defined(__CUDA_ARCH__)
__device__ __forceinline__ void ldmatrix_x1(uint32_t r[1], const void* row) {
    unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t r[2], const void* row) {
    unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* row) {
    unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t r[1], const void* row) {
    unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t r[2], const void* row) {
    unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* row) {
    unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
#else
#define ldmatrix_x1(r, row) ::emu::ldmatrix_emu<1, false>(EMU_SITE, r, row)
#define ldmatrix_x2(r, row) ::emu::ldmatrix_emu<2, false>(EMU_SITE, r, row)
#define ldmatrix_x4(r, row) ::emu::ldmatrix_emu<4, false>(EMU_SITE, r, row)
#define ldmatrix_x1_trans(r, row) ::emu::ldmatrix_emu<1, true>(EMU_SITE, r, row)
#define ldmatrix_x2_trans(r, row) ::emu::ldmatrix_emu<2, true>(EMU_SITE, r, row)
#define ldmatrix_x4_trans(r, row) ::emu::ldmatrix_emu<4, true>(EMU_SITE, r, row)
#endif

// cp.async: copy 16 bytes global -> shared without going through registers. `src_bytes` < 16 copies that
// many and zero-fills the rest (ragged tile edges; 0 means "fill with zeros, read nothing").
// Copies are grouped by cp_async_commit(); cp_async_wait<N>() waits until at most N groups are pending.
// The emulation reads the source at issue and writes shared memory only at the wait, so reading shared
// memory before waiting sees the poison, as it may on a GPU.
#if defined(__CUDA_ARCH__)
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, int src_bytes = 16) {
    unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
#else
#define cp_async_16(...) ::emu::cp_async_emu(EMU_SITE, __VA_ARGS__)
namespace emu {
EMU_NOPROF inline void cp_async_emu(Site site, void* smem, const void* gmem, int src_bytes = 16) {
    if (src_bytes > 0) prof::access(site, gmem, src_bytes, kProfCpAsync);
    prof::access(site, smem, 16, kProfCpAsync | kProfStore);
    emu::check_aligned(smem, "cp.async (shared address)");
    if (src_bytes > 0) emu::check_aligned(gmem, "cp.async (global address)");
    if (src_bytes < 0 || src_bytes > 16) emu::fail("cp.async: src_bytes must be in 0..16");
    emu::PendingCopy c;
    c.dst = smem;
    c.size = 16;
    c.group = emu::tl_cur->cp_group;
    std::memset(c.bytes, 0, 16);
    if (src_bytes > 0) std::memcpy(c.bytes, gmem, src_bytes);
    emu::tl_cur->copies.push_back(c);
}
}  // namespace emu
inline void cp_async_commit() { emu::tl_cur->cp_group++; }
template <int N>
EMU_NOPROF inline void cp_async_wait() {
    emu::Fiber* f = emu::tl_cur;
    auto& q = f->copies;
    size_t keep = 0;
    for (size_t i = 0; i < q.size(); ++i) {
        if (q[i].group < f->cp_group - N) std::memcpy(q[i].dst, q[i].bytes, q[i].size);
        else q[keep++] = q[i];
    }
    q.resize(keep);
}
#endif

// ---------------------------------------------------------------------------------------------------
// Portable references (shuffles and plain loads only): the yardstick for the asm on a GPU.
// ---------------------------------------------------------------------------------------------------
__device__ __forceinline__ void mma_m16n8k16_bf16_ref(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                      const float c[4]) {
    unsigned lane = lane_id();
    unsigned g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 4; ++i) {
        int hi_row = i >= 2 ? 1 : 0;
        unsigned col = 2 * t + (i & 1);
        float acc = c[i];
        for (int k = 0; k < 16; ++k) {
            int khi = k >= 8 ? 1 : 0;
            // A[row][k] sits in lane (row % 8) * 4 + (k % 8) / 2, register hi_row + 2 * khi.
            uint32_t av = __shfl_sync(0xffffffffu, a[hi_row + 2 * khi], g * 4 + (k & 7) / 2);
            // B[k][col] sits in lane col * 4 + (k % 8) / 2, register khi.
            uint32_t bv = __shfl_sync(0xffffffffu, b[khi], col * 4 + (k & 7) / 2);
            float x = (k & 1) ? bf16_hi(av) : bf16_lo(av);
            float y = (k & 1) ? bf16_hi(bv) : bf16_lo(bv);
            acc += x * y;
        }
        d[i] = acc;
    }
}

template <int N, bool Trans>
__device__ __forceinline__ void ldmatrix_ref(uint32_t r[N], const void* row) {
    unsigned lane = lane_id();
    unsigned long long p = reinterpret_cast<unsigned long long>(row);
    for (int i = 0; i < N; ++i) {
        if (!Trans) {
            unsigned long long rp = __shfl_sync(0xffffffffu, p, 8 * i + (lane >> 2));
            r[i] = *reinterpret_cast<const uint32_t*>(reinterpret_cast<const unsigned char*>(rp) + (lane & 3) * 4);
        } else {
            unsigned long long r0 = __shfl_sync(0xffffffffu, p, 8 * i + 2 * (lane & 3));
            unsigned long long r1 = __shfl_sync(0xffffffffu, p, 8 * i + 2 * (lane & 3) + 1);
            uint16_t lo = reinterpret_cast<const uint16_t*>(r0)[lane >> 2];
            uint16_t hi = reinterpret_cast<const uint16_t*>(r1)[lane >> 2];
            r[i] = uint32_t(lo) | (uint32_t(hi) << 16);
        }
    }
}
