// The elementwise and per-matrix stages of the Muon update (spec §2.3) over a stack of K same-shaped
// (m, n) fp32 matrices stored back to back (matrix k at x + k*m*n). Polar Express itself is GEMMs
// (Device::gemm); everything around it is here:
//   muon_nesterov          M += (1-mu)(G - M); U = G + mu(M - G)                 one element per thread
//   muon_eq                rows rescaled to ||X||_F / sqrt(m)                    one block per matrix
//   muon_frobenius_norm    X /= ||X||_F * 1.01 + 1e-6                            one block per matrix
//   muon_plus              O *= sqrt(min(m, n)) / max(||O||_F, 1e-6)             one block per matrix
//   muon_normuon           factored second moment EMA and per-neuron rescale     one block per matrix
//   muon_cautious_update   P -= lr*O + lr*wd*P*[O*P >= 0]                        one element per thread
// and the wide forms of the four per-matrix stages (what muon_step runs; grids of many blocks, see below):
//   muon_rows_sumsq, muon_cols_sumsq    row / column sums of squares over the stack   one warp per row / thread per column
//   muon_stack_sums, muon_normuon_stats per-matrix sums of those statistics         one block per matrix (max(m, n) floats)
//   muon_*_apply                        the rescales                                 one element per thread
// Per-matrix reductions run in one block with a fixed summation order (warp shuffles, block_sum), so the
// results are bitwise reproducible: no float atomics. The per-row / per-column statistics of muon_eq and
// muon_normuon live in dynamic shared memory (one float per row or column; the launcher checks the size).
// `round_bf16` flags mirror the bf16 compute dtype of the orthogonalisation (see optim::muon::MuonHyper).
// Launcher: src/device/kernels/muon.rs. CPU reference: src/optim/muon.rs (muon_update, cautious_update). Check: src/device/check/muon.rs.
#include "kernel_common.cuh"

__device__ __forceinline__ float muon_round_bf16(float v) { return __bfloat162float(__float2bfloat16(v)); }

// Sum of squares of x[0..len) over the block, returned to every thread. Every thread must call it.
__device__ float muon_block_sumsq(const float* x, int64_t len, float* scratch) {
    float s = 0.f;
    for (int64_t i = threadIdx.x; i < len; i += blockDim.x) s += x[i] * x[i];
    return block_sum(s, scratch);
}

// Sum of squares of every row of the (m, n) matrix x into out[0..m), one warp per row. Every thread must
// call it (the row loop is warp-uniform, so every lane of a warp reaches the same shuffles).
__device__ void muon_row_sumsq(float* out, const float* x, int m, int n) {
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
    for (int r = warp; r < m; r += nwarps) {
        const float* row = x + (int64_t)r * n;
        float s = 0.f;
        for (int c = lane; c < n; c += 32) s += row[c] * row[c];
        s = warp_sum(s);
        if (lane == 0) out[r] = s;
    }
}

extern "C" __global__ void muon_nesterov(float* u, float* mom, const float* g, int64_t total, float mu, int round_bf16) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) {
        float gi = g[i];
        float mi = mom[i] + (1.f - mu) * (gi - mom[i]);
        float ui = gi + mu * (mi - gi);
        mom[i] = mi;
        u[i] = round_bf16 ? muon_round_bf16(ui) : ui;
    }
}
KERNEL_REGISTER("muon_nesterov", muon_nesterov);

// Grid K, dynamic shared memory m floats (the row sums of squares).
extern "C" __global__ void muon_eq(float* x, int m, int n, int round_bf16) {
    __shared__ float scratch[32];
    DYNAMIC_SMEM(float, rows);
    float* xm = x + (int64_t)blockIdx.x * m * n;
    muon_row_sumsq(rows, xm, m, n);
    __syncthreads();
    float s = 0.f;
    for (int r = threadIdx.x; r < m; r += blockDim.x) s += rows[r];
    float target = sqrtf(block_sum(s, scratch) / (float)m);
    int64_t len = (int64_t)m * n;
    for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
        float scale = target / fmaxf(sqrtf(rows[i / n]), 1e-6f);
        float v = xm[i] * scale;
        xm[i] = round_bf16 ? muon_round_bf16(v) : v;
    }
}
KERNEL_REGISTER("muon_eq", muon_eq);

// Grid K; `len` = m*n elements per matrix.
extern "C" __global__ void muon_frobenius_norm(float* x, int64_t len, int round_bf16) {
    __shared__ float scratch[32];
    float* xm = x + (int64_t)blockIdx.x * len;
    float norm = sqrtf(muon_block_sumsq(xm, len, scratch));
    if (round_bf16) norm = muon_round_bf16(norm);
    float denom = norm * 1.01f + 1e-6f;
    for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
        float v = xm[i] / denom;
        xm[i] = round_bf16 ? muon_round_bf16(v) : v;
    }
}
KERNEL_REGISTER("muon_frobenius_norm", muon_frobenius_norm);

// Grid K.
extern "C" __global__ void muon_plus(float* o, int m, int n) {
    __shared__ float scratch[32];
    int64_t len = (int64_t)m * n;
    float* om = o + (int64_t)blockIdx.x * len;
    float norm = fmaxf(sqrtf(muon_block_sumsq(om, len, scratch)), 1e-6f);
    float scale = sqrtf((float)(m < n ? m : n)) / norm;
    for (int64_t i = threadIdx.x; i < len; i += blockDim.x) om[i] *= scale;
}
KERNEL_REGISTER("muon_plus", muon_plus);

// Grid K; `second` holds K vectors of N floats, N = m if m >= n (per row) else n (per column); dynamic
// shared memory N floats: first the mean squares v, then (same thread, same index) the step 1/sqrt(S).
extern "C" __global__ void muon_normuon(float* o, float* second, int m, int n, float beta2) {
    __shared__ float scratch[32];
    DYNAMIC_SMEM(float, st);
    bool per_row = m >= n;
    int nlen = per_row ? m : n;
    float red = (float)(per_row ? n : m);
    float* om = o + (int64_t)blockIdx.x * m * n;
    float* sm = second + (int64_t)blockIdx.x * nlen;
    if (per_row) {
        muon_row_sumsq(st, om, m, n);
    } else {
        // One thread per column, rows in order: consecutive threads read consecutive addresses.
        for (int c = threadIdx.x; c < n; c += blockDim.x) {
            float s = 0.f;
            for (int r = 0; r < m; r++) s += om[(int64_t)r * n + c] * om[(int64_t)r * n + c];
            st[c] = s;
        }
    }
    __syncthreads();
    float vsum = 0.f, new_sq = 0.f;
    for (int i = threadIdx.x; i < nlen; i += blockDim.x) {
        float vi = st[i] / red;
        float s = sm[i] + (1.f - beta2) * (vi - sm[i]);
        sm[i] = s;
        float step = 1.f / sqrtf(fmaxf(s, 1e-10f));
        vsum += vi;
        new_sq += vi * red * step * step;
        st[i] = step;
    }
    float vnorm = sqrtf(block_sum(vsum, scratch) * red);
    float ratio = vnorm / fmaxf(sqrtf(block_sum(new_sq, scratch)), 1e-10f);
    int64_t len = (int64_t)m * n;
    for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
        float scale = st[per_row ? i / n : i % n] * ratio;
        om[i] *= scale;
    }
}
KERNEL_REGISTER("muon_normuon", muon_normuon);

// P -= lr*O + lr_wd*P*[O*P >= 0]; p_bf16 (the copy the forward pass reads) rewritten unless null.
extern "C" __global__ void muon_cautious_update(float* p, bf16* p_bf16, const float* o, int64_t total, float lr,
                                                float lr_wd) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) {
        float pi = p[i], oi = o[i];
        float mask = oi * pi >= 0.f ? 1.f : 0.f;
        pi -= lr * oi + lr_wd * pi * mask;
        p[i] = pi;
        if (p_bf16) p_bf16[i] = __float2bfloat16(pi);
    }
}
KERNEL_REGISTER("muon_cautious_update", muon_cautious_update);

// The wide forms of the per-matrix stages: the same statistics and the same summation order as the one-block
// kernels above (muon_eq and muon_normuon give the same bits), with the matrix-sized passes spread over
// grids of many blocks instead of one block per matrix. A stage is three launches: statistics (one warp per
// row, or one thread per column, over the whole stack), per-matrix sums of the statistics (one block per
// matrix over at most max(m, n) floats: small), and an elementwise pass over the stack.

// out[r] = Σ_j x[r, j]² for the `rows` rows of n floats of the whole stack; grid ceil(rows / warps per block).
extern "C" __global__ void muon_rows_sumsq(float* out, const float* x, int64_t rows, int n) {
    int lane = threadIdx.x % 32;
    int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r < rows) {  // warp-uniform
        const float* row = x + r * n;
        float s = 0.f;
        for (int c = lane; c < n; c += 32) s += row[c] * row[c];
        s = warp_sum(s);
        if (lane == 0) out[r] = s;
    }
}
KERNEL_REGISTER("muon_rows_sumsq", muon_rows_sumsq);

// out[k * n + c] = Σ_r x_k[r, c]², rows in order; grid (ceil(n / blockDim), K).
extern "C" __global__ void muon_cols_sumsq(float* out, const float* x, int m, int n) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    const float* xm = x + (int64_t)blockIdx.y * m * n;
    if (c < n) {
        float s = 0.f;
        for (int r = 0; r < m; r++) s += xm[(int64_t)r * n + c] * xm[(int64_t)r * n + c];
        out[(int64_t)blockIdx.y * n + c] = s;
    }
}
KERNEL_REGISTER("muon_cols_sumsq", muon_cols_sumsq);

// out[k] = Σ_i v[k * len + i] (thread-strided, then block_sum: muon_eq's order); grid K.
extern "C" __global__ void muon_stack_sums(float* out, const float* v, int len) {
    __shared__ float scratch[32];
    const float* vk = v + (int64_t)blockIdx.x * len;
    float s = 0.f;
    for (int i = threadIdx.x; i < len; i += blockDim.x) s += vk[i];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) out[blockIdx.x] = s;
}
KERNEL_REGISTER("muon_stack_sums", muon_stack_sums);

// MuonEq's rescale over the stack: rows (K*m) row sums of squares, totals (K) their per-matrix sums.
extern "C" __global__ void muon_eq_apply(float* x, const float* rows, const float* totals, int m, int n,
                                         int64_t total, int round_bf16) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) {
        int64_t r = i / n;
        float target = sqrtf(totals[r / m] / (float)m);
        float scale = target / fmaxf(sqrtf(rows[r]), 1e-6f);
        float v = x[i] * scale;
        x[i] = round_bf16 ? muon_round_bf16(v) : v;
    }
}
KERNEL_REGISTER("muon_eq_apply", muon_eq_apply);

// Frobenius normalisation over the stack; totals (K) the matrices' sums of squares, len = m*n.
extern "C" __global__ void muon_frobenius_apply(float* x, const float* totals, int64_t len, int64_t total,
                                                int round_bf16) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) {
        float norm = sqrtf(totals[i / len]);
        if (round_bf16) norm = muon_round_bf16(norm);
        float v = x[i] / (norm * 1.01f + 1e-6f);
        x[i] = round_bf16 ? muon_round_bf16(v) : v;
    }
}
KERNEL_REGISTER("muon_frobenius_apply", muon_frobenius_apply);

// Muon+ over the stack: o *= target / max(||o||_F, 1e-6), target = sqrt(min(m, n)).
extern "C" __global__ void muon_plus_apply(float* o, const float* totals, int64_t len, int64_t total, float target) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) o[i] *= target / fmaxf(sqrtf(totals[i / len]), 1e-6f);
}
KERNEL_REGISTER("muon_plus_apply", muon_plus_apply);

// NorMuon's per-matrix statistics, grid K: st (K*N) the row or column sums of squares (muon_rows_sumsq or
// muon_cols_sumsq), replaced in place by the steps 1/sqrt(S); second (K*N) updated; ratio (K) written.
extern "C" __global__ void muon_normuon_stats(float* st, float* ratio, float* second, int m, int n, float beta2) {
    __shared__ float scratch[32];
    bool per_row = m >= n;
    int nlen = per_row ? m : n;
    float red = (float)(per_row ? n : m);
    float* sk = st + (int64_t)blockIdx.x * nlen;
    float* sm = second + (int64_t)blockIdx.x * nlen;
    float vsum = 0.f, new_sq = 0.f;
    for (int i = threadIdx.x; i < nlen; i += blockDim.x) {
        float vi = sk[i] / red;
        float s = sm[i] + (1.f - beta2) * (vi - sm[i]);
        sm[i] = s;
        float step = 1.f / sqrtf(fmaxf(s, 1e-10f));
        vsum += vi;
        new_sq += vi * red * step * step;
        sk[i] = step;
    }
    float vnorm = sqrtf(block_sum(vsum, scratch) * red);
    float r = vnorm / fmaxf(sqrtf(block_sum(new_sq, scratch)), 1e-10f);
    if (threadIdx.x == 0) ratio[blockIdx.x] = r;
}
KERNEL_REGISTER("muon_normuon_stats", muon_normuon_stats);

// NorMuon's rescale over the stack: o *= step[row or column] * ratio.
extern "C" __global__ void muon_normuon_apply(float* o, const float* step, const float* ratio, int m, int n,
                                              int64_t total) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) {
        int64_t len = (int64_t)m * n, k = i / len, j = i % len;
        bool per_row = m >= n;
        int64_t nlen = per_row ? m : n;
        float scale = step[k * nlen + (per_row ? j / n : j % n)] * ratio[k];
        o[i] *= scale;
    }
}
KERNEL_REGISTER("muon_normuon_apply", muon_normuon_apply);
