// Matmul `y[t][row0 + r] = W[r] · x[t]` for one part of a weight matrix (rows row0..row0+rows),
// one invocation per (row, token), dequantizing in registers. Quantized weights multiply
// 8-bit activation codes (made by `quantize_q8`, the CPU backend's codes) with packed
// integer dot products, and combine blocks in the CPU kernel's order, so results follow it.

struct Params {
    n_in: u32,
    n: u32,
    row0: u32,
    rows: u32,
    n_out: u32,
}

@group(0) @binding(0) var<storage, read> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> xq: array<u32>;
@group(0) @binding(4) var<storage, read> xd: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

// 16 bits at even byte offset o of the weights.
fn w_half(o: u32) -> f32 {
    return f16_to_f32((w[o >> 2u] >> ((o & 2u) * 8u)) & 0xffffu);
}

// 32 bits at even byte offset o of the weights.
fn w_word(o: u32) -> u32 {
    let i = o >> 2u;
    if ((o & 2u) == 0u) {
        return w[i];
    }
    return (w[i] >> 16u) | (w[i + 1u] << 16u);
}

fn store(r: u32, t: u32, v: f32) {
    y[t * p.n_out + p.row0 + r] = v;
}

@compute @workgroup_size(64)
fn mm_f32(@builtin(global_invocation_id) id: vec3<u32>) {
    let r = id.x;
    let t = id.y;
    if (r >= p.rows || t >= p.n) {
        return;
    }
    var acc = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for (var i = 0u; i < p.n_in; i++) {
        acc[i % 8u] += bitcast<f32>(w[r * p.n_in + i]) * x[t * p.n_in + i];
    }
    var s = 0.0;
    for (var j = 0u; j < 8u; j++) {
        s += acc[j];
    }
    store(r, t, s);
}

@compute @workgroup_size(64)
fn mm_f16(@builtin(global_invocation_id) id: vec3<u32>) {
    let r = id.x;
    let t = id.y;
    if (r >= p.rows || t >= p.n) {
        return;
    }
    var acc = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for (var i = 0u; i < p.n_in; i++) {
        // Activations rounded to f16 for f16 weights, as ggml and the CPU backend do.
        acc[i % 8u] += w_half(2u * (r * p.n_in + i)) * f16_round(x[t * p.n_in + i]);
    }
    var s = 0.0;
    for (var j = 0u; j < 8u; j++) {
        s += acc[j];
    }
    store(r, t, s);
}

// Activation codes of token t, block b, word k (4 codes).
fn a_word(t: u32, b: u32, k: u32) -> u32 {
    return xq[t * (p.n_in / 4u) + b * 8u + k];
}

@compute @workgroup_size(64)
fn mm_q8_0(@builtin(global_invocation_id) id: vec3<u32>) {
    let r = id.x;
    let t = id.y;
    if (r >= p.rows || t >= p.n) {
        return;
    }
    let nblk = p.n_in / 32u;
    var acc = 0.0;
    for (var b = 0u; b < nblk; b++) {
        let o = (r * nblk + b) * 34u;
        var isum = 0;
        for (var k = 0u; k < 8u; k++) {
            isum += dot4I8Packed(w_word(o + 2u + 4u * k), a_word(t, b, k));
        }
        acc = fma(f32(isum), w_half(o) * xd[2u * (t * nblk + b)], acc);
    }
    store(r, t, acc);
}

@compute @workgroup_size(64)
fn mm_q4_0(@builtin(global_invocation_id) id: vec3<u32>) {
    let r = id.x;
    let t = id.y;
    if (r >= p.rows || t >= p.n) {
        return;
    }
    let nblk = p.n_in / 32u;
    var acc = 0.0;
    for (var b = 0u; b < nblk; b++) {
        let o = (r * nblk + b) * 18u;
        var isum = 0;
        var asum = 0;
        for (var k = 0u; k < 4u; k++) {
            let q = w_word(o + 2u + 4u * k);
            let lo = a_word(t, b, k);
            let hi = a_word(t, b, k + 4u);
            isum += dot4I8Packed(q & 0x0f0f0f0fu, lo) + dot4I8Packed((q >> 4u) & 0x0f0f0f0fu, hi);
            asum += dot4I8Packed(0x01010101u, lo) + dot4I8Packed(0x01010101u, hi);
        }
        acc = fma(f32(isum - 8 * asum), w_half(o) * xd[2u * (t * nblk + b)], acc);
    }
    store(r, t, acc);
}

@compute @workgroup_size(64)
fn mm_q4_1(@builtin(global_invocation_id) id: vec3<u32>) {
    let r = id.x;
    let t = id.y;
    if (r >= p.rows || t >= p.n) {
        return;
    }
    let nblk = p.n_in / 32u;
    var acc = 0.0;
    for (var b = 0u; b < nblk; b++) {
        let o = (r * nblk + b) * 20u;
        var isum = 0;
        for (var k = 0u; k < 4u; k++) {
            let q = w_word(o + 4u + 4u * k);
            isum += dot4I8Packed(q & 0x0f0f0f0fu, a_word(t, b, k));
            isum += dot4I8Packed((q >> 4u) & 0x0f0f0f0fu, a_word(t, b, k + 4u));
        }
        let a = 2u * (t * nblk + b);
        acc = fma(f32(isum), w_half(o) * xd[a], acc);
        acc = fma(w_half(o + 2u), xd[a + 1u], acc);
    }
    store(r, t, acc);
}
