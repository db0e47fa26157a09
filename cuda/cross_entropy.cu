// Fused softcapped cross-entropy (llm.c's fused classifier, plus the softcap):
//   z = 15 * tanh(logit / 15) over the first v of vp padded columns, loss = logsumexp(z) - z[target],
//   and, when dloss != 0, the gradient of the raw logits written IN PLACE over the logits:
//   dlogit = dloss * (softmax(z) - onehot(target)) * (1 - (z / 15)^2); padding columns get 0.
// One block per row (token). Pass 1 keeps a running (max, sum of exp) per thread, merged across the
// block; pass 2 recomputes z from the untouched raw logit of the same element before overwriting it.
// Targets < 0 are ignored: loss 0 and a zero gradient row. `dloss` is the same for every token (1 / the
// number of valid targets for a mean loss).
// Launcher: src/device/kernels/cross_entropy.rs. CPU reference: src/cpu/ops.rs (softcap_ce_*). Check: src/device/check/cross_entropy.rs.
#include "kernel_common.cuh"


// Merges two (max, sum of exp relative to max) pairs.
__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2) {
    float mm = fmaxf(m, m2);
    s = s * __expf(m - mm) + s2 * __expf(m2 - mm);
    m = mm;
}

extern "C" __global__ void softcap_ce(bf16* logits, float* losses, const int* targets, float dloss, int n, int v, int vp) {
    __shared__ float sm[32], ss[32];
    __shared__ float z_target;
    bf16* row = logits + (size_t)blockIdx.x * vp;
    int y = targets[blockIdx.x];
    float m = -3.0e38f, s = 0.f;  // finite start: exp(-inf - -inf) would be NaN
    for (int j = threadIdx.x; j < v; j += blockDim.x) {
        float z = SOFTCAP * tanhf(__bfloat162float(row[j]) / SOFTCAP);
        // Online softmax with one exponential per element.
        if (z > m) {
            s = s * __expf(m - z) + 1.f;
            m = z;
        } else {
            s += __expf(z - m);
        }
        if (j == y) z_target = z;
    }
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        lse_merge(m, s, m2, s2);
    }
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
    if (lane == 0) {
        sm[warp] = m;
        ss[warp] = s;
    }
    __syncthreads();
    m = lane < nwarps ? sm[lane] : -3.0e38f;
    s = lane < nwarps ? ss[lane] : 0.f;
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        lse_merge(m, s, m2, s2);
    }
    bool valid = y >= 0 && y < v;
    if (threadIdx.x == 0) losses[blockIdx.x] = valid ? m + logf(s) - z_target : 0.f;
    if (dloss == 0.f) return;  // uniform across the block, and no barrier follows
    float inv_s = 1.f / s;
    for (int j = threadIdx.x; j < vp; j += blockDim.x) {
        float d = 0.f;
        if (valid && j < v) {
            float z = SOFTCAP * tanhf(__bfloat162float(row[j]) / SOFTCAP);
            float p = __expf(z - m) * inv_s;
            float th = z / SOFTCAP;
            d = dloss * (p - (j == y ? 1.f : 0.f)) * (1.f - th * th);
        }
        row[j] = __float2bfloat16(d);
    }
}
KERNEL_REGISTER("softcap_ce", softcap_ce);
