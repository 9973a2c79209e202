// Element-wise and row ops of the forward pass: RMSNorm, rope, gated activations, residual
// and bias adds, row gathers and the KV-cache store. Row ops run a block per row; the rest
// use grid-stride loops, so any launch size covers any length.
#include "common.cuh"

#define GRID_STRIDE(i, n) for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)gridDim.x * blockDim.x)

// Sum of `v` over a block of 256 threads (every thread gets it).
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float part[8];
    v = warp_sum(v);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
    __syncthreads();
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; i++) s += part[i];
    __syncthreads();
    return s;
}

// out[row] = x[row] / √(mean(x[row]²) + eps) · w; in place when out == x. One block of 256
// per row.
extern "C" __global__ void __launch_bounds__(256) rms_norm(const float* x, const float* __restrict__ w, float* out,
                                                           int width, float eps) {
    const float* xr = x + (u64)blockIdx.x * width;
    float* o = out + (u64)blockIdx.x * width;
    float s = 0.0f;
    for (int i = threadIdx.x; i < width; i += 256) s += xr[i] * xr[i];
    float scale = rsqrtf(block_sum(s) / (float)width + eps);
    for (int i = threadIdx.x; i < width; i += 256) o[i] = xr[i] * scale * w[i];
}

// Rotates pairs of each head: cs holds (cos, sin) per row and pair, computed on the host as
// the CPU backend does (YaRN included). NeoX pairs (i, i + half), else (2i, 2i + 1).
extern "C" __global__ void rope(float* x, const float2* __restrict__ cs, int n_rows, int n_heads, int head_dim,
                                int half, int neox) {
    GRID_STRIDE(l, (u64)n_rows * n_heads * half) {
        int i = (int)(l % half);
        u64 hr = l / half;
        u64 row = hr / n_heads;
        u64 base = hr * head_dim;
        u64 a = neox ? base + i : base + 2 * i;
        u64 b = neox ? base + i + half : a + 1;
        float2 c = cs[row * half + i];
        float x0 = x[a], x1 = x[b];
        // As ggml's compiled rope: the first product of each pair fused, the second rounded.
        x[a] = fmaf(x0, c.x, -__fmul_rn(x1, c.y));
        x[b] = fmaf(x0, c.y, __fmul_rn(x1, c.x));
    }
}

// e^x as llama.cpp's CPU SiLU computes it (ggml_v_expf; the CPU backend's exp_ggml).
__device__ __forceinline__ float exp_ggml(float x) {
    const float shift = 12582912.0f;
    float z = fmaf(x, __int_as_float(0x3fb8aa3b), shift);
    float n = __fsub_rn(z, shift);
    float b = fmaf(-n, __int_as_float(0x35bfbe8e), fmaf(-n, __int_as_float(0x3f317200), x));
    float u = __fmul_rn(b, b);
    float hi = fmaf(fmaf(__int_as_float(0x3c072010), b, __int_as_float(0x3d2b9f17)), u,
                    fmaf(__int_as_float(0x3e2aaf33), b, __int_as_float(0x3efffedb)));
    float j = fmaf(hi, u, fmaf(__int_as_float(0x3f7ffff6), b, 1.0f));
    if (fabsf(n) > 192.0f) return n <= 0.0f ? 0.0f : __int_as_float(0x7f800000);
    int ni = (int)n;
    int n1 = ni >> 1;
    return __fmul_rn(__fmul_rn(j, __int_as_float((n1 + 127) << 23)), __int_as_float((ni - n1 + 127) << 23));
}

// gate = act(gate) · up. act 0: SiLU; 1: GELU (tanh approximation).
extern "C" __global__ void gated_act(float* gate, const float* __restrict__ up, u64 len, int act) {
    GRID_STRIDE(i, len) {
        float g = gate[i];
        float v;
        if (act == 0) {
            v = __fdiv_rn(g, 1.0f + exp_ggml(-g));
        } else {
            v = 0.5f * g * (1.0f + tanhf(0.7978845608f * g * (1.0f + 0.044715f * g * g)));
        }
        gate[i] = v * up[i];
    }
}

extern "C" __global__ void add(float* x, const float* __restrict__ y, u64 len) {
    GRID_STRIDE(i, len) x[i] += y[i];
}

extern "C" __global__ void scale(float* x, float s, u64 len) {
    GRID_STRIDE(i, len) x[i] *= s;
}

extern "C" __global__ void add_bias(float* x, const float* __restrict__ bias, u64 len, int width) {
    GRID_STRIDE(i, len) x[i] += bias[i % width];
}

// out[j] = x[rows[j]], rows of `width`.
extern "C" __global__ void get_rows(const float* __restrict__ x, const u32* __restrict__ rows,
                                    float* __restrict__ out, u64 len, int width) {
    GRID_STRIDE(i, len) out[i] = x[(u64)rows[i / width] * width + i % width];
}

// Each row's keys and values into its slot, as f16 (the cache is `[slot][kv head · dim]`).
extern "C" __global__ void kv_store(u16* kc, u16* vc, const float* __restrict__ k, const float* __restrict__ v,
                                    const u32* __restrict__ slots, int n_rows, int kw, int vw) {
    int w = max(kw, vw);
    GRID_STRIDE(l, (u64)n_rows * w) {
        u64 row = l / w;
        int i = (int)(l % w);
        u64 slot = slots[row];
        if (i < kw) kc[slot * kw + i] = f2h(k[row * kw + i]);
        if (i < vw) vc[slot * vw + i] = f2h(v[row * vw + i]);
    }
}
