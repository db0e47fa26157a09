// Token embedding.
//   embedding_forward   out (n, c) bf16 = table[ids] (bf16 rows); one block per token
//   embedding_backward  dtable (vocab, c) fp32 += sum of dout rows per token id, deterministic without
//                       atomics: the token positions are bucketed by id on the host once per micro-batch
//                       (stable, in token order; `upload_ids`) and each block owns one id and a slice of
//                       channels, summing its bucket in order (llm.c's approach).
// Launcher: src/device/kernels/embedding.rs. CPU reference: src/cpu/ops.rs (embedding_*). Check: src/device/check/embedding.rs.
#include "kernel_common.cuh"

extern "C" __global__ void embedding_forward(bf16* out, const int* ids, const bf16* table, int n, int c) {
    const bf16* src = table + (size_t)ids[blockIdx.x] * c;
    bf16* dst = out + (size_t)blockIdx.x * c;
    for (int i = threadIdx.x; i < c; i += blockDim.x) dst[i] = src[i];
    (void)n;
}
KERNEL_REGISTER("embedding_forward", embedding_forward);

// order: token positions sorted by id (stable); bucket_start (nbuckets + 1) offsets into order;
// bucket_id (nbuckets) the id of each bucket. Grid (nbuckets, ceil(c / blockDim.x)).
extern "C" __global__ void embedding_backward(float* dtable, const bf16* dout, const int* order, const int* bucket_start,
                                              const int* bucket_id, int nbuckets, int c) {
    int b = blockIdx.x;
    int ch = blockIdx.y * blockDim.x + threadIdx.x;
    if (ch < c) {
        float acc = 0.f;
        for (int k = bucket_start[b]; k < bucket_start[b + 1]; ++k) acc += __bfloat162float(dout[(size_t)order[k] * c + ch]);
        dtable[(size_t)bucket_id[b] * c + ch] += acc;
    }
    (void)nbuckets;
}
KERNEL_REGISTER("embedding_backward", embedding_backward);
