// The model's small gated ops, forward and backward: the value-embedding gate, smear, backout.
// bf16 activations, fp32 math; the scalar parameters (gate weights, lambdas) are fp32 read from device memory.
// Backward is deterministic: no float atomics. Each row writes its share of a parameter gradient into
// partials (m, n) (column-major by parameter: partials[p·n + row]), and column_sums_accumulate adds each
// parameter's n partials in a fixed order (the same tree whatever the schedule).
//   ve_gate_forward     per kv head h: gate = 3·sigmoid(wg[h] · xn[:k]) (saved), v[h] += gate · ve[h];
//                       v is a strided view (the v columns of the QKV GEMM output)
//   ve_gate_backward    dve = gate · dv (=), dxn[:k] += Σ_h dz_h · wg[h] (dz = d gate pre-activation),
//                       partials of dwg[h, j] = dz_h · xn[j]
//   smear_forward       out[t] = x[t] + g_t · x[t−1], g_t = λ·sigmoid(w · x[t, :k]) (g saved), out[0] = x[0]
//   smear_backward      dx += dout + g_{t+1}·dout[t+1] + dz_t·w (first k), partials of dλ and dw
//   backout_forward     out = x − λ·x_mid
//   backout_backward    dx += dout, dx_mid −= λ·dout, partials of dλ = −Σ dout·x_mid
// Launcher: src/device/kernels/model_ops.rs. CPU reference: src/cpu/ops.rs (ve_gate_*, smear_*, backout_*). Check: src/device/check/model_ops.rs.
#include "kernel_common.cuh"

__device__ __forceinline__ float mo_sigmoid(float z) { return 1.f / (1.f + __expf(-z)); }

// out[p] += Σ_i partials[p·n + i], one block per p, fixed order.
extern "C" __global__ void column_sums_accumulate(float* out, const float* partials, int m, int n) {
    __shared__ float scratch[32];
    const float* col = partials + (int64_t)blockIdx.x * n;
    float s = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += col[i];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) out[blockIdx.x] += s;
    (void)m;
}
KERNEL_REGISTER("column_sums_accumulate", column_sums_accumulate);

// ---------------------------------------------------------------------------------------------------------
// Value-embedding gate: one warp per row, kv heads in turn (k ≤ 32: one gate input per lane).

extern "C" __global__ void ve_gate_forward(bf16* v, float* gate, const bf16* xn, const bf16* ve, const float* wg,
                                           int n, int c, int hkv, int d, int k, int v_stride) {
    int lane = threadIdx.x % 32;
    int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row < n) {  // warp-uniform
        float xj = lane < k ? __bfloat162float(xn[row * c + lane]) : 0.f;
        for (int h = 0; h < hkv; ++h) {
            float z = warp_sum(lane < k ? wg[h * k + lane] * xj : 0.f);
            float g = 3.f * mo_sigmoid(z);
            bf16* vh = v + row * v_stride + (int64_t)h * d;
            const bf16* eh = ve + (row * hkv + h) * d;
            for (int j = lane; j < d; j += 32)
                vh[j] = __float2bfloat16(__bfloat162float(vh[j]) + g * __bfloat162float(eh[j]));
            if (lane == 0) gate[row * hkv + h] = g;
        }
    }
}
KERNEL_REGISTER("ve_gate_forward", ve_gate_forward);

extern "C" __global__ void ve_gate_backward(bf16* dve, bf16* dxn, float* partials, const bf16* dv, const float* gate,
                                            const bf16* xn, const bf16* ve, const float* wg, int n, int c, int hkv,
                                            int d, int k, int dv_stride) {
    int lane = threadIdx.x % 32;
    int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row < n) {
        float xj = lane < k ? __bfloat162float(xn[row * c + lane]) : 0.f;
        float dxj = 0.f;
        for (int h = 0; h < hkv; ++h) {
            float g = gate[row * hkv + h];
            const bf16* gh = dv + row * dv_stride + (int64_t)h * d;
            const bf16* eh = ve + (row * hkv + h) * d;
            bf16* dh = dve + (row * hkv + h) * d;
            float dg = 0.f;
            for (int j = lane; j < d; j += 32) {
                float gv = __bfloat162float(gh[j]);
                dh[j] = __float2bfloat16(g * gv);
                dg += gv * __bfloat162float(eh[j]);
            }
            dg = warp_sum(dg);
            float s = g / 3.f;
            float dz = dg * 3.f * s * (1.f - s);
            if (lane < k) {
                dxj += dz * wg[h * k + lane];
                partials[(int64_t)(h * k + lane) * n + row] = dz * xj;
            }
        }
        if (lane < k) dxn[row * c + lane] = __float2bfloat16(__bfloat162float(dxn[row * c + lane]) + dxj);
    }
}
KERNEL_REGISTER("ve_gate_backward", ve_gate_backward);

// ---------------------------------------------------------------------------------------------------------
// Smear: one block per row; every thread computes the k-long gate dot itself (k is small, the row is in L1),
// so the forward needs no reduction.

__device__ __forceinline__ float smear_sig(const bf16* xr, const float* w, int k) {
    float z = 0.f;
    for (int j = 0; j < k; ++j) z += w[j] * __bfloat162float(xr[j]);
    return mo_sigmoid(z);
}

extern "C" __global__ void smear_forward(bf16* out, float* g, const bf16* x, const float* w, const float* lambda,
                                         int n, int t, int c, int k) {
    int64_t row = blockIdx.x;
    const bf16* xr = x + row * c;
    bf16* o = out + row * c;
    if (row % t == 0) {
        for (int i = threadIdx.x; i < c; i += blockDim.x) o[i] = xr[i];
        if (threadIdx.x == 0) g[row] = 0.f;
    } else {
        float gt = lambda[0] * smear_sig(xr, w, k);
        const bf16* prev = xr - c;
        for (int i = threadIdx.x; i < c; i += blockDim.x)
            o[i] = __float2bfloat16(__bfloat162float(xr[i]) + gt * __bfloat162float(prev[i]));
        if (threadIdx.x == 0) g[row] = gt;
    }
    (void)n;
}
KERNEL_REGISTER("smear_forward", smear_forward);

// partials: [0, n) the dλ shares, [(1 + j)·n, (2 + j)·n) the dw[j] shares.
extern "C" __global__ void smear_backward(bf16* dx, float* partials, const bf16* dout, const bf16* x, const float* w,
                                          const float* lambda, int n, int t, int c, int k) {
    __shared__ float scratch[32];
    int64_t row = blockIdx.x;
    bool first = row % t == 0, last = row % t == t - 1;
    float lam = lambda[0];
    const bf16* xr = x + row * c;
    const bf16* dr = dout + row * c;
    // dg = dout[t] · x[t−1] (the block-uniform branch keeps every thread at the barrier inside block_sum).
    float dg = 0.f;
    if (!first)
        for (int i = threadIdx.x; i < c; i += blockDim.x) dg += __bfloat162float(dr[i]) * __bfloat162float(xr[i - c]);
    dg = block_sum(dg, scratch);
    float s = first ? 0.f : smear_sig(xr, w, k);
    float dz = dg * lam * s * (1.f - s);
    float gnext = last ? 0.f : lam * smear_sig(xr + c, w, k);
    bf16* o = dx + row * c;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        float v = __bfloat162float(o[i]) + __bfloat162float(dr[i]);
        if (!last) v += gnext * __bfloat162float(dr[i + c]);
        if (i < k) v += dz * w[i];
        o[i] = __float2bfloat16(v);
    }
    if (threadIdx.x == 0) partials[row] = dg * s;
    for (int j = threadIdx.x; j < k; j += blockDim.x) partials[(int64_t)(1 + j) * n + row] = dz * __bfloat162float(xr[j]);
}
KERNEL_REGISTER("smear_backward", smear_backward);

// ---------------------------------------------------------------------------------------------------------
// Backout

extern "C" __global__ void backout_forward(bf16* out, const bf16* x, const bf16* x_mid, const float* lambda, int64_t count) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) out[i] = __float2bfloat16(__bfloat162float(x[i]) - lambda[0] * __bfloat162float(x_mid[i]));
}
KERNEL_REGISTER("backout_forward", backout_forward);

// One block per row; partials[row] = −Σ dout·x_mid over the row.
extern "C" __global__ void backout_backward(bf16* dx, bf16* dx_mid, float* partials, const bf16* dout, const bf16* x_mid,
                                            const float* lambda, int n, int c) {
    __shared__ float scratch[32];
    int64_t off = (int64_t)blockIdx.x * c;
    float lam = lambda[0], dl = 0.f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        float g = __bfloat162float(dout[off + i]);
        dl -= g * __bfloat162float(x_mid[off + i]);
        dx[off + i] = __float2bfloat16(__bfloat162float(dx[off + i]) + g);
        dx_mid[off + i] = __float2bfloat16(__bfloat162float(dx_mid[off + i]) - lam * g);
    }
    dl = block_sum(dl, scratch);
    if (threadIdx.x == 0) partials[blockIdx.x] = dl;
    (void)n;
}
KERNEL_REGISTER("backout_backward", backout_backward);
