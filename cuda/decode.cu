// KV-cached inference: the kernels of a forward step over a bf16 KV cache whose rows hold sequences of
// different lengths. Cache layout per layer: k, v (rows, t_max, hkv, d) bf16. A step runs n new tokens,
// any number per row; token j goes to cache row tok_row[j] at position tok_pos[j] (i32 on the device).
// Query p of head hi sees the cached keys [p - window, p] of kv head hi / (h / hkv).
//   kv_rope_append     RoPE at the per-row positions + QK RMSNorm + 1.2 (as rope_qknorm_forward) of the
//                      step's q and k; q to (n, h, d), k into the cache; v copied into the cache
//   decode_attention   flash-decoding: a block owns (key split, query head, query); its 4 warps stream
//                      the split's keys, d/8 lanes per key (16-byte loads), 32·8/d keys per warp at a
//                      time, each key group keeping its own online softmax; the block merges its groups
//                      in shared memory. One split: the output directly; more: fp32 partials
//                      (unnormalised sum, max, sum of exponentials) for decode_combine
//   decode_combine     merges the splits of each (query, head): one warp each
//   decode_smear       smear of each token from the token before it in its chunk, or, for a one-token
//                      chunk, from its row's cached previous embedding; then each row's cached previous
//                      embedding becomes that of its chunk's last token
// Inference only: no backward. Launcher: src/device/kernels/decode.rs. CPU reference: src/cpu/decode.rs.
// Check: src/device/check/decode.rs.
#include "kernel_common.cuh"

#define DEC_PAIRS 4     // rotation pairs per lane: d / 2 <= 4 * 32
#define DEC_WARPS 4     // warps per block of every kernel here
#define DEC_SLOTS 1024  // floats of the block merge: (keys in flight) x d = 4 warps x 32 lanes x 8 dims
#define DEC_LOG2E 1.4426950408889634f

__device__ __forceinline__ float dec_neg_inf() { return -__uint_as_float(0x7f800000u); }

// RoPE (rotation by -theta, half split) + RMSNorm over d + QK_SCALE of one head, from x to y; one warp.
__device__ __forceinline__ void dec_rope_norm(bf16* y, const bf16* x, const float* cs, const float* sn, int d,
                                              int lane) {
    int half = d / 2;
    float a[DEC_PAIRS], b[DEC_PAIRS];
    float ss = 0.f;
#pragma unroll
    for (int k = 0; k < DEC_PAIRS; ++k) {
        int j = lane + 32 * k;
        a[k] = 0.f;
        b[k] = 0.f;
        if (j < half) {
            float x1 = __bfloat162float(x[j]), x2 = __bfloat162float(x[j + half]);
            a[k] = x1 * cs[j] + x2 * sn[j];
            b[k] = -x1 * sn[j] + x2 * cs[j];
        }
        ss += a[k] * a[k] + b[k] * b[k];
    }
    float r = rsqrtf(warp_sum(ss) / d + RMS_EPS);
#pragma unroll
    for (int k = 0; k < DEC_PAIRS; ++k) {
        int j = lane + 32 * k;
        if (j < half) {
            y[j] = __float2bfloat16(a[k] * r * QK_SCALE);
            y[j + half] = __float2bfloat16(b[k] * r * QK_SCALE);
        }
    }
}

// Grid ceil(n * (h + hkv) / 4), 128 threads: one warp per (token, head), q heads first, then kv heads.
// qk: rows of x_stride elements, q heads in columns [0, h d), k heads in [h d, (h + hkv) d); v (n, hkv d).
extern "C" __global__ void kv_rope_append(bf16* q_out, bf16* k_cache, bf16* v_cache, const bf16* qk, const bf16* v,
                                          const float* cos_t, const float* sin_t, const int* tok_row,
                                          const int* tok_pos, int n, int h, int hkv, int d, int t_max, int x_stride) {
    int lane = threadIdx.x % 32;
    int64_t unit = (int64_t)blockIdx.x * DEC_WARPS + threadIdx.x / 32;
    if (unit < (int64_t)n * (h + hkv)) {  // warp-uniform: no barriers here, whole warps shuffle
        int64_t row = unit / (h + hkv);
        int hh = (int)(unit % (h + hkv));
        int r = tok_row[row];
        int64_t p = tok_pos[row];
        const float* cs = cos_t + p * (d / 2);
        const float* sn = sin_t + p * (d / 2);
        if (hh < h) {
            dec_rope_norm(q_out + (row * h + hh) * d, qk + row * x_stride + (int64_t)hh * d, cs, sn, d, lane);
        } else {
            int kh = hh - h;
            int64_t dst = (((int64_t)r * t_max + p) * hkv + kh) * d;
            dec_rope_norm(k_cache + dst, qk + row * x_stride + (int64_t)(h + kh) * d, cs, sn, d, lane);
            const bf16* src = v + (row * hkv + kh) * d;
            for (int j = lane; j < d; j += 32) v_cache[dst + j] = src[j];
        }
    }
}
KERNEL_REGISTER("kv_rope_append", kv_rope_append);

// Grid (splits, h, m), 128 threads; d in {8, 16, 32, 64, 128, 256}. Block z takes query row = sel[z] (the
// m tokens of the step that need it); its head hi sees keys [lo, p], lo = max(0, p - window), of its cache
// row; split s takes the s-th of `splits` equal chunks of them.
// part_o (n, h, splits, d), part_ml (n, h, splits, 2) f32, scores in base 2 (scaled by log2 e).
extern "C" __global__ void __launch_bounds__(128)
    decode_attention(bf16* out, float* part_o, float* part_ml, const bf16* q, const bf16* k_cache,
                     const bf16* v_cache, const int* tok_row, const int* tok_pos, const int* sel, int m_sel, int h,
                     int hkv, int d, int t_max, int window, int splits) {
    __shared__ float s_o[DEC_SLOTS];
    __shared__ float s_m[DEC_WARPS * 32];
    __shared__ float s_l[DEC_WARPS * 32];
    const int s = blockIdx.x, hi = blockIdx.y, row = sel[blockIdx.z];
    (void)m_sel;
    const int lanes = d / 8, kpw = 32 / lanes;  // lanes per key, keys per warp
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int li = lane % lanes, grp = threadIdx.x / lanes, groups = DEC_WARPS * kpw;
    const int r = tok_row[row], kh = hi / (h / hkv);
    const int p = tok_pos[row], lo = p - window > 0 ? p - window : 0;
    const int len = p - lo + 1, chunk = (len + splits - 1) / splits;
    const int start = lo + s * chunk, end = start + chunk < p + 1 ? start + chunk : p + 1;

    float qv[8], kv[8], acc[8];
    load_bf16<8>(qv, q + ((int64_t)row * h + hi) * d + li * 8);
    const float sl2 = rsqrtf((float)d) * DEC_LOG2E;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
        qv[e] *= sl2;
        acc[e] = 0.f;
    }
    float m = dec_neg_inf(), l = 0.f;
    const bf16* kb = k_cache + ((int64_t)r * t_max * hkv + kh) * d + li * 8;
    const bf16* vb = v_cache + ((int64_t)r * t_max * hkv + kh) * d + li * 8;
    // Warp w takes keys j0 .. j0 + kpw - 1 per pass; the loop bound is warp-uniform, so every shuffle
    // sees the whole warp.
    for (int j0 = start + warp * kpw; j0 < end; j0 += DEC_WARPS * kpw) {
        const int j = j0 + lane / lanes;
        const bool ok = j < end;
        float sc = 0.f;
        if (ok) {
            load_bf16<8>(kv, kb + (int64_t)j * hkv * d);
#pragma unroll
            for (int e = 0; e < 8; ++e) sc += qv[e] * kv[e];
        }
        for (int o = lanes / 2; o > 0; o >>= 1) sc += __shfl_xor_sync(0xffffffffu, sc, o);
        if (ok) {
            float mn = fmaxf(m, sc);
            float alpha = exp2f(m - mn), pr = exp2f(sc - mn);
            l = l * alpha + pr;
            load_bf16<8>(kv, vb + (int64_t)j * hkv * d);
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[e] = acc[e] * alpha + pr * kv[e];
            m = mn;
        }
    }
    if (li == 0) {
        s_m[grp] = m;
        s_l[grp] = l;
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) s_o[grp * d + li * 8 + e] = acc[e];
    __syncthreads();
    float mx = dec_neg_inf();
    for (int g = 0; g < groups; ++g) mx = fmaxf(mx, s_m[g]);
    float lsum = 0.f;
    for (int g = 0; g < groups; ++g) lsum += s_m[g] == dec_neg_inf() ? 0.f : exp2f(s_m[g] - mx) * s_l[g];
    const int64_t unit = (int64_t)row * h + hi;
    for (int x = threadIdx.x; x < d; x += blockDim.x) {
        float o = 0.f;
        for (int g = 0; g < groups; ++g)
            if (s_m[g] != dec_neg_inf()) o += exp2f(s_m[g] - mx) * s_o[g * d + x];
        if (splits == 1)
            out[unit * d + x] = __float2bfloat16(o / lsum);
        else
            part_o[(unit * splits + s) * d + x] = o;
    }
    if (splits > 1 && threadIdx.x == 0) {
        part_ml[(unit * splits + s) * 2] = mx;
        part_ml[(unit * splits + s) * 2 + 1] = lsum;
    }
}
KERNEL_REGISTER("decode_attention", decode_attention);

// Grid ceil(m h / 4), 128 threads: one warp per (query sel[i], head); lane holds dims lane + 32 c.
extern "C" __global__ void decode_combine(bf16* out, const float* part_o, const float* part_ml, const int* sel, int m,
                                          int h, int d, int splits) {
    int lane = threadIdx.x % 32;
    int64_t w = (int64_t)blockIdx.x * DEC_WARPS + threadIdx.x / 32;
    if (w < (int64_t)m * h) {
        int64_t unit = (int64_t)sel[w / h] * h + w % h;
        const float* ml = part_ml + unit * splits * 2;
        float mx = dec_neg_inf();
        for (int s = 0; s < splits; ++s) mx = fmaxf(mx, ml[2 * s]);
        float lsum = 0.f;
        for (int s = 0; s < splits; ++s) lsum += ml[2 * s] == dec_neg_inf() ? 0.f : exp2f(ml[2 * s] - mx) * ml[2 * s + 1];
        for (int x = lane; x < d; x += 32) {
            float o = 0.f;
            for (int s = 0; s < splits; ++s)
                if (ml[2 * s] != dec_neg_inf()) o += exp2f(ml[2 * s] - mx) * part_o[(unit * splits + s) * d + x];
            out[unit * d + x] = __float2bfloat16(o / lsum);
        }
    }
}
KERNEL_REGISTER("decode_combine", decode_combine);

// Grid ceil(n / 4), 128 threads: one warp per token j of x (n, c) bf16. The smear source of token j is
// x[src_tok[j]] when src_tok[j] >= 0, else prev[src_row[j]] when src_row[j] >= 0, else none:
// out = x + lambda sigmoid(w . x[:k]) source (k <= 32), or out = x. Then prev[last_row[j]] = x[j] when
// last_row[j] >= 0. A row's prev is read only by the token that then replaces it (a one-token chunk), so
// no other thread races with it. prev (rows, c) bf16; w (k), lambda (1) f32.
extern "C" __global__ void decode_smear(bf16* out, bf16* prev, const bf16* x, const float* w, const float* lambda,
                                        const int* src_tok, const int* src_row, const int* last_row, int n, int c,
                                        int k) {
    int lane = threadIdx.x % 32;
    int64_t j = (int64_t)blockIdx.x * DEC_WARPS + threadIdx.x / 32;
    if (j < n) {
        const bf16* xr = x + j * c;
        const bf16* src = src_tok[j] >= 0 ? x + (int64_t)src_tok[j] * c
                                          : (src_row[j] >= 0 ? prev + (int64_t)src_row[j] * c : nullptr);
        float z = warp_sum(lane < k ? w[lane] * __bfloat162float(xr[lane]) : 0.f);
        float g = lambda[0] / (1.f + __expf(-z));
        bf16* orow = out + j * c;
        bf16* dst = last_row[j] >= 0 ? prev + (int64_t)last_row[j] * c : nullptr;
        for (int i = lane; i < c; i += 32) {
            float xv = __bfloat162float(xr[i]);
            orow[i] = src ? __float2bfloat16(xv + g * __bfloat162float(src[i])) : xr[i];
            if (dst) dst[i] = xr[i];
        }
    }
}
KERNEL_REGISTER("decode_smear", decode_smear);
