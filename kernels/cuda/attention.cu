// Flash-style causal attention over the paged f16 KV cache: one block of 8 warps per
// (query row, query head). Each warp walks every 8th key of the row's range with an online
// softmax (running max, sum and value accumulator; lanes hold 8 of up to 256 dimensions),
// then the warps' states merge in shared memory. GQA: query head h reads KV head
// h / (n_head / n_head_kv). Sliding-window layers skip keys older than `window`.
#include "common.cuh"

#define NW 8
#define MAXD 256
#define DPL (MAXD / 32)

// q: rows × n_head × dk; cache `[slot][n_head_kv × d]`; tables: the sequences' block tables
// back to back, `table_off[s]` where sequence s's starts; out: rows × n_head × dv.
extern "C" __global__ void __launch_bounds__(NW * 32)
    attention(const float* __restrict__ q, const u16* __restrict__ kc, const u16* __restrict__ vc,
              const u32* __restrict__ positions, const u32* __restrict__ table_of_row,
              const u32* __restrict__ tables, const u32* __restrict__ table_off, float* __restrict__ out,
              int n_head, int n_head_kv, int dk, int dv, float scale, int window, int f16q, int block_size) {
    __shared__ float sm[NW], sl[NW];
    __shared__ float sacc[NW][MAXD];
    int h = blockIdx.x;
    u64 row = blockIdx.y;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int g = h / (n_head / n_head_kv);
    int pos = (int)positions[row];
    int first = window > 0 ? max(0, pos + 1 - window) : 0;
    const u32* table = tables + table_off[table_of_row[row]];
    int kw = n_head_kv * dk, vw = n_head_kv * dv;

    float qr[DPL], acc[DPL];
    const float* qh = q + (row * n_head + h) * dk;
#pragma unroll
    for (int u = 0; u < DPL; u++) {
        int d = lane + 32 * u;
        float v = d < dk ? qh[d] : 0.0f;
        if (f16q) v = h2f(f2h(v));
        qr[u] = v;
        acc[u] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int j = first + warp; j <= pos; j += NW) {
        u64 slot = (u64)table[j / block_size] * block_size + j % block_size;
        const u16* kp = kc + slot * kw + (u64)g * dk;
        const u16* vp = vc + slot * vw + (u64)g * dv;
        float s = 0.0f;
#pragma unroll
        for (int u = 0; u < DPL; u++) {
            int d = lane + 32 * u;
            if (d < dk) s += qr[u] * h2f(kp[d]);
        }
        s = warp_sum(s) * scale;
        float mn = fmaxf(m, s);
        float c = __expf(m - mn), p = __expf(s - mn);
        l = l * c + p;
#pragma unroll
        for (int u = 0; u < DPL; u++) {
            int d = lane + 32 * u;
            acc[u] = acc[u] * c + (d < dv ? p * h2f(vp[d]) : 0.0f);
        }
        m = mn;
    }
    if (lane == 0) {
        sm[warp] = m;
        sl[warp] = l;
    }
#pragma unroll
    for (int u = 0; u < DPL; u++) sacc[warp][lane + 32 * u] = acc[u];
    __syncthreads();
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < NW; w++) mx = fmaxf(mx, sm[w]);
    float lsum = 0.0f;
#pragma unroll
    for (int w = 0; w < NW; w++) lsum += sm[w] == -INFINITY ? 0.0f : sl[w] * __expf(sm[w] - mx);
    float inv = lsum > 0.0f ? 1.0f / lsum : 0.0f;
    for (int d = threadIdx.x; d < dv; d += NW * 32) {
        float o = 0.0f;
#pragma unroll
        for (int w = 0; w < NW; w++)
            if (sm[w] != -INFINITY) o += sacc[w][d] * __expf(sm[w] - mx);
        out[(row * n_head + h) * dv + d] = o * inv;
    }
}
