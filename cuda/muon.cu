// The elementwise and per-matrix stages of the Muon update (spec §2.3) over a stack of K same-shaped
// (m, n) fp32 matrices stored back to back (matrix k at x + k*m*n). Polar Express itself is GEMMs
// (Device::gemm); everything around it is here:
//   muon_nesterov          M += (1-mu)(G - M); U = G + mu(M - G)                 one element per thread
//   muon_eq                rows rescaled to ||X||_F / sqrt(m)                    one block per matrix
//   muon_frobenius_norm    X /= ||X||_F * 1.01 + 1e-6                            one block per matrix
//   muon_plus              O *= sqrt(min(m, n)) / max(||O||_F, 1e-6)             one block per matrix
//   muon_normuon           factored second moment EMA and per-neuron rescale     one block per matrix
//   muon_cautious_update   P -= lr*O + lr*wd*P*[O*P >= 0]                        one element per thread
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
