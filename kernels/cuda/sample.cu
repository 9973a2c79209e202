// Sampling reductions on the device, so that a decode step sends back a few values per row
// instead of the whole vocabulary: each row's best k logits (best first, lower id first on
// ties, NaN skipped) and its log-sum-exp. One block of 256 threads per row: k rounds, each
// a strided scan for the best entry ranked after the previous round's, then a tree
// reduction.
#include "common.cuh"

#define NT 256

// Whether (v, i) ranks before (bv, bi): larger value first, then lower id.
__device__ __forceinline__ bool before(float v, u32 i, float bv, u32 bi) {
    return v > bv || (v == bv && i < bi);
}

extern "C" __global__ void __launch_bounds__(NT) top_k(const float* __restrict__ x, int width, int k,
                                                       u32* __restrict__ ids, float* __restrict__ vals,
                                                       u32* __restrict__ counts, float* __restrict__ lse) {
    __shared__ float sv[NT];
    __shared__ u32 si[NT];
    __shared__ float red[NT];
    const float* r = x + (u64)blockIdx.x * width;
    int t = threadIdx.x;

    // log-sum-exp: the max, then Σ e^(x − max), NaN skipped.
    float mx = -INFINITY;
    for (int i = t; i < width; i += NT)
        if (!isnan(r[i])) mx = fmaxf(mx, r[i]);
    red[t] = mx;
    __syncthreads();
    for (int s = NT / 2; s > 0; s >>= 1) {
        if (t < s) red[t] = fmaxf(red[t], red[t + s]);
        __syncthreads();
    }
    mx = red[0];
    __syncthreads();
    float sum = 0.0f;
    if (mx != -INFINITY)
        for (int i = t; i < width; i += NT)
            if (!isnan(r[i])) sum += expf(r[i] - mx);
    red[t] = sum;
    __syncthreads();
    for (int s = NT / 2; s > 0; s >>= 1) {
        if (t < s) red[t] += red[t + s];
        __syncthreads();
    }
    if (t == 0) lse[blockIdx.x] = mx == -INFINITY ? -INFINITY : mx + logf(red[0]);

    float pv = INFINITY;
    u32 pi = 0xffffffffu;
    bool first = true;
    int found = 0;
    for (int round = 0; round < k; round++) {
        float bv = -INFINITY;
        u32 bi = 0xffffffffu;
        for (int i = t; i < width; i += NT) {
            float v = r[i];
            if (isnan(v)) continue;
            bool after = first || v < pv || (v == pv && (u32)i > pi);
            if (after && (bi == 0xffffffffu || before(v, (u32)i, bv, bi))) {
                bv = v;
                bi = (u32)i;
            }
        }
        sv[t] = bv;
        si[t] = bi;
        __syncthreads();
        for (int s = NT / 2; s > 0; s >>= 1) {
            if (t < s && si[t + s] != 0xffffffffu && (si[t] == 0xffffffffu || before(sv[t + s], si[t + s], sv[t], si[t]))) {
                sv[t] = sv[t + s];
                si[t] = si[t + s];
            }
            __syncthreads();
        }
        bv = sv[0];
        bi = si[0];
        __syncthreads();
        if (bi == 0xffffffffu) break;
        if (t == 0) {
            ids[(u64)blockIdx.x * k + round] = bi;
            vals[(u64)blockIdx.x * k + round] = bv;
        }
        pv = bv;
        pi = bi;
        first = false;
        found++;
    }
    if (t == 0) counts[blockIdx.x] = found;
}
