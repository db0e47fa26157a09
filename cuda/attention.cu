// Causal sliding-window attention with GQA, forward and backward. Layouts: q, out, dout (b, t, h, d) bf16;
// k, v (b, t, hkv, d) bf16; lse, delta (b, h, t) fp32. Query p of head hi sees the keys [p - window, p] of kv
// head hi / (h / hkv); scores are scaled by 1 / sqrt(d); lse is the natural-log sum-exp of the scaled scores.
//
// Two families:
//   attention_naive_*   one warp per query (or key) row, plain loads, warp-shuffle dot products. Simple
//                       enough to trust by reading; the second oracle for the flash kernels.
//   attention_flash_*   FlashAttention-2: a block owns a tile of 64 queries (16 per warp), K/V tiles stream
//                       through shared memory by cp.async, QK^T and PV run on mma.sync m16n8k16 (bf16 in,
//                       fp32 out) with the online softmax in fp32 registers; key tiles entirely outside the
//                       causal window are never visited. The score accumulators are reused as the A
//                       operand of PV (the C fragment of two n-tiles is the A fragment of one k-chunk).
// Backward (both families) is deterministic, with no atomics: attention_delta computes
// delta = rowsum(dout * out); dK/dV come from a kernel whose block owns a tile of keys and loops over every
// query (of every query head of its GQA group) that sees it; dQ from a second kernel whose block owns a
// tile of queries and loops over the keys it sees. Probabilities are recomputed from lse.
// Launcher: src/device/kernels/attention.rs. CPU reference: src/cpu/ops.rs (attention_*). Check: src/device/check/attention.rs.
#include "kernel_common.cuh"

#define ATT_LOG2E 1.4426950408889634f
#define ATT_LN2 0.6931471805599453f

__device__ __forceinline__ float att_neg_inf() { return -__uint_as_float(0x7f800000u); }

// ------------------------------------------------------------------------------------------------------
// Naive kernels: blocks of NAIVE_WARPS warps, one row per warp; d <= 128, lane owns dims lane + 32c.
// ------------------------------------------------------------------------------------------------------
#define NAIVE_C 4  // dims per lane: d <= 32 * NAIVE_C

__device__ __forceinline__ void load_row(float* f, const bf16* p, int d, int lane) {
#pragma unroll
    for (int c = 0; c < NAIVE_C; ++c) {
        int x = lane + 32 * c;
        f[c] = x < d ? __bfloat162float(p[x]) : 0.f;
    }
}
__device__ __forceinline__ void store_row(bf16* p, const float* f, int d, int lane) {
#pragma unroll
    for (int c = 0; c < NAIVE_C; ++c) {
        int x = lane + 32 * c;
        if (x < d) p[x] = __float2bfloat16(f[c]);
    }
}
__device__ __forceinline__ float dot_row(const float* a, const float* b) {
    float s = 0.f;
#pragma unroll
    for (int c = 0; c < NAIVE_C; ++c) s += a[c] * b[c];
    return warp_sum(s);
}

// Grid: (ceil(b*h*t / warps)); row r = (bi, hi, p) with p fastest.
extern "C" __global__ void attention_naive_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                                                   int b, int t, int h, int hkv, int d, int window) {
    int lane = threadIdx.x & 31;
    int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= (int64_t)b * h * t) return;  // warp-uniform; no barriers in this kernel
    int p = (int)(row % t), hi = (int)(row / t % h), bi = (int)(row / ((int64_t)t * h));
    int kh = hi / (h / hkv);
    float scale = rsqrtf((float)d);
    float qv[NAIVE_C], kv[NAIVE_C], o[NAIVE_C] = {0.f, 0.f, 0.f, 0.f};
    load_row(qv, q + (((int64_t)bi * t + p) * h + hi) * d, d, lane);
    float m = att_neg_inf(), l = 0.f;
    for (int j = max(0, p - window); j <= p; ++j) {
        const int64_t ko = (((int64_t)bi * t + j) * hkv + kh) * d;
        load_row(kv, k + ko, d, lane);
        float s = dot_row(qv, kv) * scale;
        float mn = fmaxf(m, s);
        float alpha = __expf(m - mn), pr = __expf(s - mn);
        l = l * alpha + pr;
        load_row(kv, v + ko, d, lane);
#pragma unroll
        for (int c = 0; c < NAIVE_C; ++c) o[c] = o[c] * alpha + pr * kv[c];
        m = mn;
    }
#pragma unroll
    for (int c = 0; c < NAIVE_C; ++c) o[c] /= l;
    store_row(out + (((int64_t)bi * t + p) * h + hi) * d, o, d, lane);
    if (lane == 0) lse[((int64_t)bi * h + hi) * t + p] = m + __logf(l);
}
KERNEL_REGISTER("attention_naive_forward", attention_naive_forward);

// delta (b, h, t) = rowsum(dout * out), one warp per row; shared by both backward families.
extern "C" __global__ void attention_delta(float* delta, const bf16* dout, const bf16* out, int b, int t, int h, int d) {
    int lane = threadIdx.x & 31;
    int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= (int64_t)b * h * t) return;
    int p = (int)(row % t), hi = (int)(row / t % h), bi = (int)(row / ((int64_t)t * h));
    const int64_t off = (((int64_t)bi * t + p) * h + hi) * d;
    float s = 0.f;
    for (int x = lane; x < d; x += 32) s += __bfloat162float(dout[off + x]) * __bfloat162float(out[off + x]);
    s = warp_sum(s);
    if (lane == 0) delta[row] = s;
}
KERNEL_REGISTER("attention_delta", attention_delta);

// dq (b, t, h, d) = scale * sum_j P_pj (dP_pj - delta_p) k_j, one warp per query row (rows as in forward).
extern "C" __global__ void attention_naive_backward_dq(bf16* dq, const bf16* dout, const float* lse, const float* delta,
                                                       const bf16* q, const bf16* k, const bf16* v, int b, int t, int h,
                                                       int hkv, int d, int window) {
    int lane = threadIdx.x & 31;
    int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= (int64_t)b * h * t) return;
    int p = (int)(row % t), hi = (int)(row / t % h), bi = (int)(row / ((int64_t)t * h));
    int kh = hi / (h / hkv);
    float scale = rsqrtf((float)d);
    const int64_t qo = (((int64_t)bi * t + p) * h + hi) * d;
    float qv[NAIVE_C], go[NAIVE_C], kv[NAIVE_C], vv[NAIVE_C], g[NAIVE_C] = {0.f, 0.f, 0.f, 0.f};
    load_row(qv, q + qo, d, lane);
    load_row(go, dout + qo, d, lane);
    float L = lse[row], D = delta[row];
    for (int j = max(0, p - window); j <= p; ++j) {
        const int64_t ko = (((int64_t)bi * t + j) * hkv + kh) * d;
        load_row(kv, k + ko, d, lane);
        load_row(vv, v + ko, d, lane);
        float pr = __expf(dot_row(qv, kv) * scale - L);
        float ds = pr * (dot_row(go, vv) - D) * scale;
#pragma unroll
        for (int c = 0; c < NAIVE_C; ++c) g[c] += ds * kv[c];
    }
    store_row(dq + qo, g, d, lane);
}
KERNEL_REGISTER("attention_naive_backward_dq", attention_naive_backward_dq);

// dk, dv (b, t, hkv, d), one warp per key row (bi, kh, j), looping over the queries p in [j, j + window]
// of the h / hkv query heads that share the kv head.
extern "C" __global__ void attention_naive_backward_dkdv(bf16* dk, bf16* dv, const bf16* dout, const float* lse,
                                                         const float* delta, const bf16* q, const bf16* k, const bf16* v,
                                                         int b, int t, int h, int hkv, int d, int window) {
    int lane = threadIdx.x & 31;
    int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= (int64_t)b * hkv * t) return;
    int j = (int)(row % t), kh = (int)(row / t % hkv), bi = (int)(row / ((int64_t)t * hkv));
    int group = h / hkv;
    float scale = rsqrtf((float)d);
    const int64_t ko = (((int64_t)bi * t + j) * hkv + kh) * d;
    float kv[NAIVE_C], vv[NAIVE_C], qv[NAIVE_C], go[NAIVE_C];
    float gk[NAIVE_C] = {0.f, 0.f, 0.f, 0.f}, gv[NAIVE_C] = {0.f, 0.f, 0.f, 0.f};
    load_row(kv, k + ko, d, lane);
    load_row(vv, v + ko, d, lane);
    int last = j + window < t - 1 ? j + window : t - 1;  // window <= t (launcher), no overflow
    for (int gi = 0; gi < group; ++gi) {
        int hi = kh * group + gi;
        for (int p = j; p <= last; ++p) {
            const int64_t qo = (((int64_t)bi * t + p) * h + hi) * d;
            const int64_t r = ((int64_t)bi * h + hi) * t + p;
            load_row(qv, q + qo, d, lane);
            load_row(go, dout + qo, d, lane);
            float pr = __expf(dot_row(qv, kv) * scale - lse[r]);
            float ds = pr * (dot_row(go, vv) - delta[r]) * scale;
#pragma unroll
            for (int c = 0; c < NAIVE_C; ++c) {
                gv[c] += pr * go[c];
                gk[c] += ds * qv[c];
            }
        }
    }
    store_row(dk + ko, gk, d, lane);
    store_row(dv + ko, gv, d, lane);
}
KERNEL_REGISTER("attention_naive_backward_dkdv", attention_naive_backward_dkdv);

// ------------------------------------------------------------------------------------------------------
// Flash kernels. Every tile in shared memory is FB rows of D bf16 with rows padded to D + 8 elements (the
// 16-byte pad staggers ldmatrix's row addresses across banks). 4 warps; warp w owns rows 16w..16w+15 of
// the block's own tile (queries in forward and dQ, keys in dK/dV).
// ------------------------------------------------------------------------------------------------------
#define FB 64

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    return (uint32_t)__bfloat16_as_ushort(__float2bfloat16(lo)) |
           ((uint32_t)__bfloat16_as_ushort(__float2bfloat16(hi)) << 16);
}

// cp.async rows [r0, r0 + ROWS) of head hh of a (b, t, heads, D) tensor into s; rows >= t are zero-filled
// (zeros, not poison: a zero probability times a NaN value would still be NaN).
template <int D, int ROWS = FB>
__device__ __forceinline__ void load_tile(bf16* s, const bf16* g, int bi, int r0, int hh, int t, int heads) {
    constexpr int CH = D / 8, LD = D + 8;
    for (int i = threadIdx.x; i < ROWS * CH; i += blockDim.x) {
        int r = i / CH, c = i % CH, row = r0 + r;
        bool ok = row < t;
        const bf16* src = ok ? g + (((int64_t)bi * t + row) * heads + hh) * D + c * 8 : g;
        cp_async_16(s + r * LD + c * 8, src, ok ? 16 : 0);
    }
}

// C (16 x N) += A (16 x K) * Bs^T, A = rows ra.. of sa, Bs = rows 0..N-1 of sb (both row-major [row][k]).
// A fragments: matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15).
// B = Bs^T is "column-major", so a plain ldmatrix of Bs rows gives its fragments: matrix i of the x4 is
// k 8i..8i+7, i.e. b of k-chunk k0 in registers 0-1 and of k-chunk k0 + 16 in registers 2-3.
template <int K, int N, int LDA, int LDB>
__device__ __forceinline__ void mm_abt(float c[N / 8][4], const bf16* sa, int ra, const bf16* sb) {
    int l = lane_id();
#pragma unroll
    for (int k0 = 0; k0 < K; k0 += 32) {
        uint32_t a0[4], a1[4];
        ldmatrix_x4(a0, sa + (ra + (l & 7) + ((l >> 3) & 1) * 8) * LDA + k0 + (l >> 4) * 8);
        ldmatrix_x4(a1, sa + (ra + (l & 7) + ((l >> 3) & 1) * 8) * LDA + k0 + 16 + (l >> 4) * 8);
#pragma unroll
        for (int nt = 0; nt < N / 8; ++nt) {
            uint32_t r[4];
            ldmatrix_x4(r, sb + (nt * 8 + (l & 7)) * LDB + k0 + (l >> 3) * 8);
            mma_m16n8k16_bf16(c[nt], a0, r, c[nt]);
            mma_m16n8k16_bf16(c[nt], a1, r + 2, c[nt]);
        }
    }
}

// C (16 x N) += P (16 x K, fp32 accumulators of K/8 n-tiles, rounded to bf16) * Bs, Bs = rows 0..K-1 of
// sb (row-major [k][n]). The C fragment of n-tiles 2j, 2j+1 is the A fragment of k-chunk j. B needs
// pairs along k, so Bs comes through ldmatrix.trans: matrices (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7,
// n 8-15), (k 8-15, n 8-15) give n-tile n0 in registers 0-1 and n0 + 8 in registers 2-3.
template <int K, int N, int LDB>
__device__ __forceinline__ void mm_pb(float c[N / 8][4], const float p[K / 8][4], const bf16* sb) {
    int l = lane_id();
#pragma unroll
    for (int kc = 0; kc < K / 16; ++kc) {
        uint32_t a[4] = {pack_bf16(p[2 * kc][0], p[2 * kc][1]), pack_bf16(p[2 * kc][2], p[2 * kc][3]),
                         pack_bf16(p[2 * kc + 1][0], p[2 * kc + 1][1]),
                         pack_bf16(p[2 * kc + 1][2], p[2 * kc + 1][3])};
#pragma unroll
        for (int nt = 0; nt < N / 8; nt += 2) {
            uint32_t r[4];
            ldmatrix_x4_trans(r, sb + (kc * 16 + (l & 7) + ((l >> 3) & 1) * 8) * LDB + nt * 8 + (l >> 4) * 8);
            mma_m16n8k16_bf16(c[nt], a, r, c[nt]);
            mma_m16n8k16_bf16(c[nt + 1], a, r + 2, c[nt + 1]);
        }
    }
}

template <int N>
__device__ __forceinline__ void zero(float c[N / 8][4]) {
#pragma unroll
    for (int i = 0; i < N / 8; ++i) c[i][0] = c[i][1] = c[i][2] = c[i][3] = 0.f;
}

// Stores rows r0 + g and r0 + g + 8 (those < t) of a 16 x D accumulator times `mul` into head hh of a
// (b, t, heads, D) bf16 tensor. mul[0] applies to row g, mul[1] to row g + 8.
// The mma layout leaves each lane two columns of every 8-column tile; a 4 x 4 transpose of the packed pairs
// within each quad (the 4 lanes of a row, by shuffles) gives each lane one whole tile row, stored as one
// 16-byte vector, so that a warp's store covers 64-byte row segments instead of 16-byte ones (half the
// sectors per byte).
template <int D>
__device__ __forceinline__ void store_rows(bf16* dst, const float c[D / 8][4], const float mul[2], int bi, int r0,
                                           int hh, int t, int heads) {
    int l = lane_id(), g = l >> 2, tq = l & 3;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        int row = r0 + g + 8 * r;
        bf16* p = dst + (((int64_t)bi * t + row) * heads + hh) * D;
#pragma unroll
        for (int j = 0; j < D / 32; ++j) {
            // v[q]: this lane's two columns of tile 4j + q; w[s]: lane s's two columns of tile 4j + tq.
            uint32_t v[4], w[4] = {0u, 0u, 0u, 0u};
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                __nv_bfloat162 h2 = __floats2bfloat162_rn(c[4 * j + q][2 * r] * mul[r], c[4 * j + q][2 * r + 1] * mul[r]);
                v[q] = *reinterpret_cast<const uint32_t*>(&h2);
            }
            // Round k: send v[tq - k] to lane tq - k, receive w[tq + k] from lane tq + k (mod 4, in the quad).
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                int send = (tq + 4 - k) & 3, from = (tq + k) & 3;
                uint32_t x = send == 0 ? v[0] : send == 1 ? v[1] : send == 2 ? v[2] : v[3];
                uint32_t y = __shfl_sync(0xffffffffu, x, (l & ~3) | from);
                w[0] = from == 0 ? y : w[0];
                w[1] = from == 1 ? y : w[1];
                w[2] = from == 2 ? y : w[2];
                w[3] = from == 3 ? y : w[3];
            }
            if (row < t) *reinterpret_cast<uint4*>(p + (4 * j + tq) * 8) = make_uint4(w[0], w[1], w[2], w[3]);
        }
    }
}

// Key tiles a query tile [q0, q0 + FB) visits: those holding any key in [q0 - window, q0 + FB - 1].
__device__ __forceinline__ int first_key_tile(int q0, int window) { return (q0 - window > 0 ? q0 - window : 0) / FB * FB; }
__device__ __forceinline__ int last_key(int q0, int t) { return q0 + FB - 1 < t - 1 ? q0 + FB - 1 : t - 1; }

template <int D>
__device__ void flash_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int t, int h, int hkv,
                              int window) {
    constexpr int LD = D + 8;
    DYNAMIC_SMEM(bf16, sm);
    // Q, then two K/V buffers: tile i + 1 is fetched while tile i is computed.
    // (Pointers computed, not picked from an array: a dynamically indexed array lives in local memory.)
    bf16* sQ = sm;
    auto sK_of = [&](int b) { return sm + (1 + 2 * b) * FB * LD; };
    auto sV_of = [&](int b) { return sm + (2 + 2 * b) * FB * LD; };
    const int q0 = blockIdx.x * FB, hi = blockIdx.y, bi = blockIdx.z, kh = hi / (h / hkv);
    const int warp = threadIdx.x / 32, l = threadIdx.x & 31, g = l >> 2, tq = l & 3;
    const float sl2 = rsqrtf((float)D) * ATT_LOG2E;  // exponentials in base 2: exp(x) = exp2(x log2 e)
    const int pr[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};

    float o[D / 8][4];
    zero<D>(o);
    float m[2] = {att_neg_inf(), att_neg_inf()}, lsum[2] = {0.f, 0.f};
    const int k_first = first_key_tile(q0, window), k_last = last_key(q0, t);
    // cp.async groups, in order: (Q, K_0), V_0, then per iteration i: K_{i+1}, V_{i+1} (empty groups
    // after the last tile, so the wait counts stay fixed).
    load_tile<D>(sQ, q, bi, q0, hi, t, h);
    load_tile<D>(sK_of(0), k, bi, k_first, kh, t, hkv);
    cp_async_commit();
    load_tile<D>(sV_of(0), v, bi, k_first, kh, t, hkv);
    cp_async_commit();
    for (int k0 = k_first, buf = 0; k0 <= k_last; k0 += FB, buf ^= 1) {
        const bf16 *sK = sK_of(buf), *sV = sV_of(buf);
        cp_async_wait<1>();  // K_i landed (V_i may still be in flight)
        __syncthreads();     // ... for every thread; and every warp is done with tile i - 1's buffers
        if (k0 + FB <= k_last) {
            load_tile<D>(sK_of(buf ^ 1), k, bi, k0 + FB, kh, t, hkv);
            cp_async_commit();
            load_tile<D>(sV_of(buf ^ 1), v, bi, k0 + FB, kh, t, hkv);
            cp_async_commit();
        } else {
            cp_async_commit();
            cp_async_commit();
        }
        // Tiles strictly inside the window and below the diagonal need no mask (block-uniform).
        const bool mask = k0 + FB - 1 > q0 || k0 < q0 + FB - 1 - window || k0 + FB > t;
        float s[FB / 8][4];
        zero<FB>(s);
        mm_abt<D, FB, LD, LD>(s, sQ, warp * 16, sK);
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float mx = att_neg_inf();
#pragma unroll
            for (int nt = 0; nt < FB / 8; ++nt)
#pragma unroll
                for (int e = 2 * r; e < 2 * r + 2; ++e) {
                    int j = k0 + nt * 8 + 2 * tq + (e & 1);
                    bool ok = !mask || (j <= pr[r] && j >= pr[r] - window && j < t);
                    s[nt][e] = ok ? s[nt][e] * sl2 : att_neg_inf();
                    mx = fmaxf(mx, s[nt][e]);
                }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            float mn = fmaxf(m[r], mx);
            float mu = mn == att_neg_inf() ? 0.f : mn;  // nothing visible yet: keep exp2 of -inf at 0
            float alpha = exp2f(m[r] - mu);
            m[r] = mn;
            float rs = 0.f;
#pragma unroll
            for (int nt = 0; nt < FB / 8; ++nt) {
#pragma unroll
                for (int e = 2 * r; e < 2 * r + 2; ++e) {
                    s[nt][e] = exp2f(s[nt][e] - mu);
                    rs += s[nt][e];
                }
            }
#pragma unroll
            for (int nt = 0; nt < D / 8; ++nt) {
                o[nt][2 * r] *= alpha;
                o[nt][2 * r + 1] *= alpha;
            }
            lsum[r] = lsum[r] * alpha + rs;
        }
        cp_async_wait<2>();  // V_i landed (K_{i+1}, V_{i+1} may be in flight)
        __syncthreads();
        mm_pb<FB, D, LD>(o, s, sV);
    }
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float ls = lsum[r];
        ls += __shfl_xor_sync(0xffffffffu, ls, 1);
        ls += __shfl_xor_sync(0xffffffffu, ls, 2);
        inv[r] = 1.f / ls;
        if (tq == 0 && pr[r] < t) lse[((int64_t)bi * h + hi) * t + pr[r]] = (m[r] + log2f(ls)) * ATT_LN2;
    }
    store_rows<D>(out, o, inv, bi, q0 + warp * 16, hi, t, h);
}

// Grid (ceil(t / 64), h, b), 128 threads, dynamic shared memory 5 * 64 * (D + 8) bf16.
extern "C" __global__ void __launch_bounds__(128) attention_flash_forward_d64(bf16* out, float* lse, const bf16* q,
                                                                             const bf16* k, const bf16* v, int b, int t,
                                                                             int h, int hkv, int d, int window) {
    flash_forward<64>(out, lse, q, k, v, t, h, hkv, window);
    (void)b, (void)d;
}
KERNEL_REGISTER("attention_flash_forward_d64", attention_flash_forward_d64);
extern "C" __global__ void __launch_bounds__(128) attention_flash_forward_d128(bf16* out, float* lse, const bf16* q,
                                                                              const bf16* k, const bf16* v, int b, int t,
                                                                              int h, int hkv, int d, int window) {
    flash_forward<128>(out, lse, q, k, v, t, h, hkv, window);
    (void)b, (void)d;
}
KERNEL_REGISTER("attention_flash_forward_d128", attention_flash_forward_d128);

// dQ: grid (ceil(t / 64), h, b). The block holds its Q and dO tiles and streams the K/V tiles the
// queries see: S = Q K^T, P = exp(S - lse), dP = dO V^T, dS = P (dP - delta), dQ += dS K; dQ * scale.
// Shared memory: Q, dO, K, V tiles.
template <int D>
__device__ void flash_backward_dq(bf16* dq, const bf16* dout, const float* lse, const float* delta, const bf16* q,
                                  const bf16* k, const bf16* v, int t, int h, int hkv, int window) {
    constexpr int LD = D + 8;
    DYNAMIC_SMEM(bf16, sm);
    // Q, dO, then two K/V buffers: tile i + 1 is fetched while tile i is computed.
    bf16 *sQ = sm, *sO = sm + FB * LD;
    auto sK_of = [&](int b) { return sm + (2 + 2 * b) * FB * LD; };
    auto sV_of = [&](int b) { return sm + (3 + 2 * b) * FB * LD; };
    const int q0 = blockIdx.x * FB, hi = blockIdx.y, bi = blockIdx.z, kh = hi / (h / hkv);
    const int warp = threadIdx.x / 32, l = threadIdx.x & 31, g = l >> 2, tq = l & 3;
    const float scale = rsqrtf((float)D);
    const int pr[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
    float L2[2], Dl[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        int64_t i = ((int64_t)bi * h + hi) * t + pr[r];
        L2[r] = pr[r] < t ? lse[i] * ATT_LOG2E : 0.f;
        Dl[r] = pr[r] < t ? delta[i] : 0.f;
    }
    float acc[D / 8][4];
    zero<D>(acc);
    const int k_first = first_key_tile(q0, window), k_last = last_key(q0, t);
    load_tile<D>(sQ, q, bi, q0, hi, t, h);
    load_tile<D>(sO, dout, bi, q0, hi, t, h);
    load_tile<D>(sK_of(0), k, bi, k_first, kh, t, hkv);
    load_tile<D>(sV_of(0), v, bi, k_first, kh, t, hkv);
    cp_async_commit();
    for (int k0 = k_first, buf = 0; k0 <= k_last; k0 += FB, buf ^= 1) {
        const bf16 *sK = sK_of(buf), *sV = sV_of(buf);
        cp_async_wait<0>();  // tile i (the only group in flight)
        __syncthreads();     // ... for every thread; and every warp is done with tile i - 1's buffer
        if (k0 + FB <= k_last) {
            load_tile<D>(sK_of(buf ^ 1), k, bi, k0 + FB, kh, t, hkv);
            load_tile<D>(sV_of(buf ^ 1), v, bi, k0 + FB, kh, t, hkv);
            cp_async_commit();
        }
        const bool mask = k0 + FB - 1 > q0 || k0 < q0 + FB - 1 - window || k0 + FB > t;  // as in forward
        float s[FB / 8][4], dp[FB / 8][4];
        zero<FB>(s);
        zero<FB>(dp);
        mm_abt<D, FB, LD, LD>(s, sQ, warp * 16, sK);
        mm_abt<D, FB, LD, LD>(dp, sO, warp * 16, sV);
#pragma unroll
        for (int nt = 0; nt < FB / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                int r = e >> 1, j = k0 + nt * 8 + 2 * tq + (e & 1);
                bool ok = !mask || (j <= pr[r] && j >= pr[r] - window && j < t);
                float p = ok ? exp2f(s[nt][e] * scale * ATT_LOG2E - L2[r]) : 0.f;
                s[nt][e] = p * (dp[nt][e] - Dl[r]);
            }
        mm_pb<FB, D, LD>(acc, s, sK);
    }
    const float mul[2] = {scale, scale};
    store_rows<D>(dq, acc, mul, bi, q0 + warp * 16, hi, t, h);
}

// dK, dV: grid (ceil(t / 64), hkv, b). The block holds its K and V tiles (warp w: keys 16w..16w+15) and
// streams, for each query head of the group, the Q/dO tiles that see them: S^T = K Q^T, P^T, dV += P^T dO,
// dP^T = V dO^T, dS^T = P^T (dP^T - delta), dK += dS^T Q; dK * scale. The per-query lse and delta are
// columns here, so they are staged in shared memory behind the tiles. Q/dO/lse/delta are double-buffered:
// step i + 1's are fetched while step i is computed. Queries come BQ at a time:
// 32 at head_dim 128 keeps the two D-wide accumulators plus the score tiles within the register file.
template <int D, int BQ>
__device__ void flash_backward_dkdv(bf16* dk, bf16* dv, const bf16* dout, const float* lse, const float* delta,
                                    const bf16* q, const bf16* k, const bf16* v, int t, int h, int hkv, int window) {
    constexpr int LD = D + 8;
    DYNAMIC_SMEM(bf16, sm);
    // K, V, then per buffer b: Q, dO (BQ rows each), and after all tiles lse, delta (BQ f32 each).
    bf16 *sK = sm, *sV = sm + FB * LD;
    auto sQ_of = [&](int b) { return sm + (2 * FB + 2 * b * BQ) * LD; };
    auto sO_of = [&](int b) { return sm + (2 * FB + (2 * b + 1) * BQ) * LD; };
    auto sL_of = [&](int b) { return reinterpret_cast<float*>(sm + (2 * FB + 4 * BQ) * LD) + 2 * b * BQ; };
    const int k0 = blockIdx.x * FB, kh = blockIdx.y, bi = blockIdx.z, group = h / hkv;
    const int warp = threadIdx.x / 32, l = threadIdx.x & 31, g = l >> 2, tq = l & 3;
    const float scale = rsqrtf((float)D);
    const int kj[2] = {k0 + warp * 16 + g, k0 + warp * 16 + g + 8};
    load_tile<D>(sK, k, bi, k0, kh, t, hkv);
    load_tile<D>(sV, v, bi, k0, kh, t, hkv);
    cp_async_commit();
    float gk[D / 8][4], gv[D / 8][4];
    zero<D>(gk);
    zero<D>(gv);
    // Queries that see a key of the tile: [k0, k0 + FB - 1 + window]; query tiles start at k0.
    const int q_last = k0 + FB - 1 + window < t - 1 ? k0 + FB - 1 + window : t - 1;
    // One step per (query head of the group, query tile); step i's inputs land in buffer i % 2.
    const int tiles = (q_last - k0) / BQ + 1, steps = group * tiles;
    auto fetch = [&](int i, int b) {
        const int hi = kh * group + i / tiles, q0 = k0 + (i % tiles) * BQ;
        load_tile<D, BQ>(sQ_of(b), q, bi, q0, hi, t, h);
        load_tile<D, BQ>(sO_of(b), dout, bi, q0, hi, t, h);
        cp_async_commit();
        if (threadIdx.x < BQ) {
            int p = q0 + threadIdx.x;
            int64_t r = ((int64_t)bi * h + hi) * t + p;
            sL_of(b)[threadIdx.x] = p < t ? lse[r] * ATT_LOG2E : 0.f;
            sL_of(b)[BQ + threadIdx.x] = p < t ? delta[r] : 0.f;
        }
    };
    fetch(0, 0);
    for (int i = 0; i < steps; ++i) {
        const int buf = i & 1, q0 = k0 + (i % tiles) * BQ;
        const bf16 *sQ = sQ_of(buf), *sO = sO_of(buf);
        const float *sL = sL_of(buf), *sD = sL + BQ;
        cp_async_wait<0>();  // step i's tiles (the only group in flight)
        __syncthreads();     // ... for every thread; and every warp is done with step i - 1's buffer
        if (i + 1 < steps) fetch(i + 1, buf ^ 1);
        // Keys [k0, k0 + FB) against queries [q0, q0 + BQ): no mask when every pair is visible.
        const bool mask = k0 + FB - 1 > q0 || k0 < q0 + BQ - 1 - window || q0 + BQ > t;
        float s[BQ / 8][4];
        zero<BQ>(s);
        mm_abt<D, BQ, LD, LD>(s, sK, warp * 16, sQ);
#pragma unroll
        for (int nt = 0; nt < BQ / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                int c = nt * 8 + 2 * tq + (e & 1), p = q0 + c, j = kj[e >> 1];
                bool ok = !mask || (j <= p && j >= p - window && p < t);
                s[nt][e] = ok ? exp2f(s[nt][e] * scale * ATT_LOG2E - sL[c]) : 0.f;
            }
        mm_pb<BQ, D, LD>(gv, s, sO);
        float dp[BQ / 8][4];
        zero<BQ>(dp);
        mm_abt<D, BQ, LD, LD>(dp, sV, warp * 16, sO);
#pragma unroll
        for (int nt = 0; nt < BQ / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[nt][e] *= dp[nt][e] - sD[nt * 8 + 2 * tq + (e & 1)];
        mm_pb<BQ, D, LD>(gk, s, sQ);
    }
    const float one[2] = {1.f, 1.f}, mul[2] = {scale, scale};
    store_rows<D>(dk, gk, mul, bi, k0 + warp * 16, kh, t, hkv);
    store_rows<D>(dv, gv, one, bi, k0 + warp * 16, kh, t, hkv);
}

#define FLASH_BWD(D, BQ)                                                                                          \
    extern "C" __global__ void __launch_bounds__(128)                                                            \
        attention_flash_backward_dq_d##D(bf16* dq, const bf16* dout, const float* lse, const float* delta,       \
                                         const bf16* q, const bf16* k, const bf16* v, int b, int t, int h,       \
                                         int hkv, int d, int window) {                                           \
        flash_backward_dq<D>(dq, dout, lse, delta, q, k, v, t, h, hkv, window);                                  \
        (void)b, (void)d;                                                                                        \
    }                                                                                                            \
    KERNEL_REGISTER("attention_flash_backward_dq_d" #D, attention_flash_backward_dq_d##D);                      \
    extern "C" __global__ void __launch_bounds__(128)                                                            \
        attention_flash_backward_dkdv_d##D(bf16* dk, bf16* dv, const bf16* dout, const float* lse,               \
                                           const float* delta, const bf16* q, const bf16* k, const bf16* v,      \
                                           int b, int t, int h, int hkv, int d, int window) {                    \
        flash_backward_dkdv<D, BQ>(dk, dv, dout, lse, delta, q, k, v, t, h, hkv, window);                        \
        (void)b, (void)d;                                                                                        \
    }                                                                                                            \
    KERNEL_REGISTER("attention_flash_backward_dkdv_d" #D, attention_flash_backward_dkdv_d##D);

// Grids as in the comments above, 128 threads. Dynamic shared memory: dQ 6 * 64 * (D + 8) bf16; dK/dV
// (2 * 64 + 4 * BQ) * (D + 8) bf16 + 4 * BQ fp32.
FLASH_BWD(64, 64)
FLASH_BWD(128, 32)
