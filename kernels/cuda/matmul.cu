// Matrix kernels over raw GGUF weight blocks: `y[t][r] = W[r] · x[t]` and the embedding
// lookup. Three shapes of work:
// - `mmv1_*` / `mmv8_*`: a warp per weight row for 1 or up to 8 tokens (decode and small
//   batches). Quantized weights multiply 8-bit activation codes (`quantize_q8`: per 32
//   values a scale d and d·Σcodes) with dp4a integer dot products, weight words loaded once
//   for all tokens; float weights multiply f32 activations. Lanes stride over 32-value
//   blocks, partial sums meet in a warp-shuffle reduction.
// - `mm_*`: prefill, a 64-row × 64-token output tile per block of 256 threads, 4×4 outputs
//   each; weights dequantized to f32 into shared memory 32 values deep, activations beside.
// - `embed_*`: rows of a table, dequantized and scaled.
#include "common.cuh"

// Bytes and values of one block of a format.
template <int T> struct Fmt;
template <> struct Fmt<T_F32> { static const int bytes = 4, elems = 1; };
template <> struct Fmt<T_F16> { static const int bytes = 2, elems = 1; };
template <> struct Fmt<T_BF16> { static const int bytes = 2, elems = 1; };
template <> struct Fmt<T_Q4_0> { static const int bytes = 18, elems = 32; };
template <> struct Fmt<T_Q4_1> { static const int bytes = 20, elems = 32; };
template <> struct Fmt<T_Q5_0> { static const int bytes = 22, elems = 32; };
template <> struct Fmt<T_Q8_0> { static const int bytes = 34, elems = 32; };
template <> struct Fmt<T_Q4_K> { static const int bytes = 144, elems = 256; };
template <> struct Fmt<T_Q6_K> { static const int bytes = 210, elems = 256; };

// Q4_K's 6-bit scale and min of sub-block j from the 12 packed bytes at p.
__device__ __forceinline__ void scale_min_k4(const u8* p, int j, int* sc, int* m) {
    if (j < 4) {
        *sc = p[j] & 63;
        *m = p[j + 4] & 63;
    } else {
        *sc = (p[j + 4] & 0xf) | ((p[j - 4] >> 6) << 4);
        *m = (p[j + 4] >> 4) | ((p[j] >> 6) << 4);
    }
}

// Value i of a row (the CPU backend's dequantization).
template <int T> __device__ __forceinline__ float wval(const u8* row, int i) {
    if (T == T_F32) return ((const float*)row)[i];
    if (T == T_F16) return ldh(row + 2 * i);
    if (T == T_BF16) return bf2f(ld16(row + 2 * i));
    if (T == T_Q4_K) {
        const u8* b = row + (i / 256) * 144;
        int k = i % 256, j = k / 32, sc, m;
        scale_min_k4(b + 4, j, &sc, &m);
        int q = (b[16 + (j / 2) * 32 + k % 32] >> (4 * (j % 2))) & 0xf;
        return (ldh(b) * (float)sc) * (float)q - ldh(b + 2) * (float)m;
    }
    if (T == T_Q6_K) {
        const u8* b = row + (i / 256) * 210;
        int k = i % 256, h = k / 128, quad = (k % 128) / 32, l = k % 32;
        int lo = (b[64 * h + l + 32 * (quad % 2)] >> (4 * (quad / 2))) & 0xf;
        int hi = (b[128 + 32 * h + l] >> (2 * quad)) & 3;
        return (ldh(b + 208) * (float)(signed char)b[192 + k / 16]) * (float)((lo | (hi << 4)) - 32);
    }
    const u8* b = row + (i / 32) * Fmt<T>::bytes;
    int k = i % 32;
    if (T == T_Q8_0) return (float)(signed char)b[2 + k] * ldh(b);
    if (T == T_Q5_0) {
        int nib = (b[6 + k % 16] >> (4 * (k / 16))) & 0xf;
        int hb = (ld32(b + 2) >> k) & 1;
        return (float)((nib | (hb << 4)) - 16) * ldh(b);
    }
    int q = (b[(T == T_Q4_1 ? 4 : 2) + k % 16] >> (4 * (k / 16))) & 0xf;
    if (T == T_Q4_0) return (float)(q - 8) * ldh(b);
    return (float)q * ldh(b) + ldh(b + 2);
}

// Four bits as bit 4 of four bytes (Q5_0's high bits beside its nibbles).
__device__ __forceinline__ int spread_bits(u32 b) {
    return (int)(((b & 1u) << 4) | ((b & 2u) << 11) | ((b & 4u) << 18) | ((b & 8u) << 25));
}

// 32-value block b of a quantized row against activation codes `a` (8 words) with
// ds = (d_a, d_a·Σcodes).
template <int T> __device__ __forceinline__ float qdot(const u8* row, int b, const int* a, float2 ds) {
    if (T == T_Q4_K) {
        const u8* p = row + (b / 8) * 144;
        int j = b % 8, sc, m;
        scale_min_k4(p + 4, j, &sc, &m);
        const u8* qs = p + 16 + (j / 2) * 32;
        int shift = 4 * (j % 2), s = 0, c = 0;
#pragma unroll
        for (int w = 0; w < 8; w++) {
            s = __dp4a((int)((ld32(qs + 4 * w) >> shift) & 0x0f0f0f0fu), a[w], s);
            c = __dp4a(0x01010101, a[w], c);
        }
        // The min term from the exact code sum (as ggml's Q8_K block sums give it).
        return ds.x * (ldh(p) * (float)(sc * s) - ldh(p + 2) * (float)(m * c));
    }
    if (T == T_Q6_K) {
        const u8* p = row + (b / 8) * 210;
        int j = b % 8, h = j / 4, quad = j % 4;
        const u8* ql = p + 64 * h + 32 * (quad % 2);
        const u8* qh = p + 128 + 32 * h;
        int s[2];
#pragma unroll
        for (int half = 0; half < 2; half++) {
            int dot = 0, sum = 0;
#pragma unroll
            for (int w = 4 * half; w < 4 * half + 4; w++) {
                int v = (int)(((ld32(ql + 4 * w) >> (4 * (quad / 2))) & 0x0f0f0f0fu) |
                              (((ld32(qh + 4 * w) >> (2 * quad)) & 0x03030303u) << 4));
                dot = __dp4a(v, a[w], dot);
                sum = __dp4a(0x01010101, a[w], sum);
            }
            s[half] = (int)(signed char)p[192 + 2 * j + half] * (dot - 32 * sum);
        }
        return ldh(p + 208) * ds.x * (float)(s[0] + s[1]);
    }
    const u8* p = row + b * Fmt<T>::bytes;
    int s = 0;
    if (T == T_Q8_0) {
#pragma unroll
        for (int w = 0; w < 8; w++) s = __dp4a((int)ld32(p + 2 + 4 * w), a[w], s);
        return ldh(p) * ds.x * (float)s;
    }
    const u8* qs = p + (T == T_Q4_1 ? 4 : (T == T_Q5_0 ? 6 : 2));
    u32 qh = T == T_Q5_0 ? ld32(p + 2) : 0;
#pragma unroll
    for (int w = 0; w < 4; w++) {
        u32 q = ld32(qs + 4 * w);
        int lo = (int)(q & 0x0f0f0f0fu), hi = (int)((q >> 4) & 0x0f0f0f0fu);
        if (T == T_Q5_0) {
            lo |= spread_bits((qh >> (4 * w)) & 0xfu);
            hi |= spread_bits((qh >> (16 + 4 * w)) & 0xfu);
        }
        s = __dp4a(lo, a[w], s);
        s = __dp4a(hi, a[w + 4], s);
        if (T != T_Q4_1) {
            // Q4_0's −8 and Q5_0's −16 offsets on the exact code sum, as the CPU folds them.
            const int off = T == T_Q5_0 ? (int)0xf0f0f0f0u : (int)0xf8f8f8f8u;  // bytes −16 / −8
            s = __dp4a(off, a[w], s);
            s = __dp4a(off, a[w + 4], s);
        }
    }
    if (T == T_Q4_1) return ldh(p) * ds.x * (float)s + ldh(p + 2) * ds.y;
    return ldh(p) * ds.x * (float)s;
}

// 8-bit codes of activations, one warp per 32 values, as the CPU backend (and ggml's
// Q8_0/Q8_1) makes them: d = max|x| / 127, codes = round-half-even(x · 127 / max|x|); ds
// gets d and d·Σcodes, each rounded to f16 as the block formats store them.
extern "C" __global__ void quantize_q8(const float* __restrict__ x, signed char* __restrict__ q,
                                       float2* __restrict__ ds, u64 n_blocks) {
    u64 blk = (u64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (blk >= n_blocks) return;
    float v = x[blk * 32 + lane];
    float amax = warp_max(fabsf(v));
    float d = amax / 127.0f;
    int c = amax == 0.0f ? 0 : (int)rintf(v * (127.0f / amax));
    q[blk * 32 + lane] = (signed char)c;
    int sum = warp_sum_i(c);
    if (lane == 0) ds[blk] = make_float2(h2f(f2h(d)), h2f(f2h(d * (float)sum)));
}

template <int T, int NT>
__device__ __forceinline__ void mmv_q(const u8* __restrict__ w, u64 row_bytes, const int* __restrict__ aq,
                                      const float2* __restrict__ ads, float* __restrict__ y, int n_in,
                                      int n_out, int n) {
    int r = blockIdx.x * blockDim.y + threadIdx.y;
    int lane = threadIdx.x;
    int t0 = blockIdx.y * NT;
    if (r >= n_out) return;
    const u8* row = w + (u64)r * row_bytes;
    int nb = n_in / 32;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    for (int b = lane; b < nb; b += 32) {
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (t0 + t < n) {
                u64 tt = (u64)(t0 + t);
                acc[t] += qdot<T>(row, b, aq + tt * (n_in / 4) + 8 * b, ads[tt * nb + b]);
            }
        }
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float s = warp_sum(acc[t]);
        if (lane == 0 && t0 + t < n) y[(u64)(t0 + t) * n_out + r] = s;
    }
}

template <int T, int NT>
__device__ __forceinline__ void mmv_f(const u8* __restrict__ w, u64 row_bytes, const float* __restrict__ x,
                                      float* __restrict__ y, int n_in, int n_out, int n) {
    int r = blockIdx.x * blockDim.y + threadIdx.y;
    int lane = threadIdx.x;
    int t0 = blockIdx.y * NT;
    if (r >= n_out) return;
    const u8* row = w + (u64)r * row_bytes;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    for (int i = lane; i < n_in; i += 32) {
        float wv = wval<T>(row, i);
#pragma unroll
        for (int t = 0; t < NT; t++)
            if (t0 + t < n) acc[t] += wv * x[(u64)(t0 + t) * n_in + i];
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float s = warp_sum(acc[t]);
        if (lane == 0 && t0 + t < n) y[(u64)(t0 + t) * n_out + r] = s;
    }
}

#define TILE 64
#define TK 32

template <int T>
__device__ __forceinline__ void mm_tiled(const u8* __restrict__ w, u64 row_bytes, const float* __restrict__ x,
                                         float* __restrict__ y, int n_in, int n_out, int n) {
    __shared__ float ws[TK][TILE + 4];
    __shared__ float xs[TK][TILE + 4];
    int tid = threadIdx.x;
    int tx = tid % 16, ty = tid / 16;
    int r0 = blockIdx.x * TILE, t0 = blockIdx.y * TILE;
    int lr = tid / 4, lk = (tid % 4) * 8;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;
    const u8* row = w + (u64)min(r0 + lr, n_out - 1) * row_bytes;
    const float* xr = x + (u64)min(t0 + lr, n - 1) * n_in;
    bool row_ok = r0 + lr < n_out, tok_ok = t0 + lr < n;
    for (int k0 = 0; k0 < n_in; k0 += TK) {
#pragma unroll
        for (int u = 0; u < 8; u++) {
            int k = k0 + lk + u;
            bool in = k < n_in;
            ws[lk + u][lr] = row_ok && in ? wval<T>(row, k) : 0.0f;
            xs[lk + u][lr] = tok_ok && in ? xr[k] : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < TK; kk++) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; i++) a[i] = ws[kk][tx * 4 + i];
#pragma unroll
            for (int j = 0; j < 4; j++) b[j] = xs[kk][ty * 4 + j];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < 4; j++) {
        int t = t0 + ty * 4 + j;
        if (t >= n) continue;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int r = r0 + tx * 4 + i;
            if (r < n_out) y[(u64)t * n_out + r] = acc[i][j];
        }
    }
}

template <int T>
__device__ __forceinline__ void embed_rows(const u8* __restrict__ w, u64 row_bytes, const u32* __restrict__ ids,
                                           float* __restrict__ y, int width, int n, float scale) {
    u64 total = (u64)width * n;
    for (u64 l = (u64)blockIdx.x * blockDim.x + threadIdx.x; l < total; l += (u64)gridDim.x * blockDim.x) {
        u64 j = l / width;
        int i = (int)(l % width);
        y[l] = wval<T>(w + (u64)ids[j] * row_bytes, i) * scale;
    }
}

#define COMMON_KERNELS(T, S)                                                                              \
    extern "C" __global__ void __launch_bounds__(256) mm_##S(const u8* w, u64 rb, const float* x, float* y, \
                                                             int n_in, int n_out, int n) {                \
        mm_tiled<T>(w, rb, x, y, n_in, n_out, n);                                                         \
    }                                                                                                     \
    extern "C" __global__ void embed_##S(const u8* w, u64 rb, const u32* ids, float* y, int width, int n,  \
                                         float scale) {                                                   \
        embed_rows<T>(w, rb, ids, y, width, n, scale);                                                    \
    }

#define FLOAT_KERNELS(T, S)                                                                                \
    COMMON_KERNELS(T, S)                                                                                   \
    extern "C" __global__ void mmv1_##S(const u8* w, u64 rb, const float* x, float* y, int n_in, int n_out, \
                                        int n) {                                                          \
        mmv_f<T, 1>(w, rb, x, y, n_in, n_out, n);                                                         \
    }                                                                                                     \
    extern "C" __global__ void mmv8_##S(const u8* w, u64 rb, const float* x, float* y, int n_in, int n_out, \
                                        int n) {                                                          \
        mmv_f<T, 8>(w, rb, x, y, n_in, n_out, n);                                                         \
    }

#define QUANT_KERNELS(T, S)                                                                                \
    COMMON_KERNELS(T, S)                                                                                   \
    extern "C" __global__ void mmv1_##S(const u8* w, u64 rb, const int* aq, const float2* ads, float* y,   \
                                        int n_in, int n_out, int n) {                                     \
        mmv_q<T, 1>(w, rb, aq, ads, y, n_in, n_out, n);                                                   \
    }                                                                                                     \
    extern "C" __global__ void mmv8_##S(const u8* w, u64 rb, const int* aq, const float2* ads, float* y,   \
                                        int n_in, int n_out, int n) {                                     \
        mmv_q<T, 8>(w, rb, aq, ads, y, n_in, n_out, n);                                                   \
    }

FLOAT_KERNELS(T_F32, f32)
FLOAT_KERNELS(T_F16, f16)
FLOAT_KERNELS(T_BF16, bf16)
QUANT_KERNELS(T_Q4_0, q4_0)
QUANT_KERNELS(T_Q4_1, q4_1)
QUANT_KERNELS(T_Q5_0, q5_0)
QUANT_KERNELS(T_Q8_0, q8_0)
QUANT_KERNELS(T_Q4_K, q4_k)
QUANT_KERNELS(T_Q6_K, q6_k)
