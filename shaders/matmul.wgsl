// Reads of raw GGUF weight blocks, and the kernels that use them: matmul
// `y[t][row0 + r] = W[r] · x[t]` for one part of a weight matrix (rows row0..row0+rows), one
// invocation per (row, token), and the embedding lookup. `QTYPE` (ggml's type id: 0 F32,
// 1 F16, 2 Q4_0, 3 Q4_1, 8 Q8_0) is set per pipeline. Quantized weights multiply the 8-bit
// activation codes `quantize_q8` makes (the CPU backend's) with packed integer dot
// products and combine blocks in the CPU kernel's order with the same fmas.

override QTYPE: u32 = 0u;

struct Params {
    n_in: u32,
    n: u32,
    row0: u32,
    rows: u32,
    n_out: u32,
    scale: f32,
}

@group(0) @binding(0) var<storage, read> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> xq: array<u32>;
@group(0) @binding(4) var<storage, read> xd: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<storage, read> ids: array<u32>;

// 16 bits at even byte offset o of the weights.
fn w_half(o: u32) -> f32 {
    return f16_to_f32((w[o >> 2u] >> ((o & 2u) * 8u)) & 0xffffu);
}

// 32 bits at even byte offset o of the weights (every block field starts at an even byte).
fn w_word(o: u32) -> u32 {
    let i = o >> 2u;
    if ((o & 2u) == 0u) {
        return w[i];
    }
    return (w[i] >> 16u) | (w[i + 1u] << 16u);
}

fn w_byte(o: u32) -> u32 {
    return (w[o >> 2u] >> ((o & 3u) * 8u)) & 0xffu;
}

fn block_bytes() -> u32 {
    switch QTYPE {
        case 2u: { return 18u; }
        case 3u: { return 20u; }
        default: { return 34u; }
    }
}

// Value i of row r, dequantized as the CPU backend does.
fn w_value(r: u32, i: u32) -> f32 {
    switch QTYPE {
        case 0u: { return bitcast<f32>(w[r * p.n_in + i]); }
        case 1u: { return w_half(2u * (r * p.n_in + i)); }
        default: {
            let o = (r * (p.n_in / 32u) + i / 32u) * block_bytes();
            let k = i % 32u;
            if (QTYPE == 8u) {
                return f32((i32(w_byte(o + 2u + k)) << 24u) >> 24u) * w_half(o);
            }
            let qs = select(2u, 4u, QTYPE == 3u);
            let q = (w_byte(o + qs + k % 16u) >> (4u * (k / 16u))) & 0xfu;
            if (QTYPE == 2u) {
                return f32(i32(q) - 8) * w_half(o);
            }
            return f32(q) * w_half(o) + w_half(o + 2u);
        }
    }
}

// F32 and F16 weights: f32 activations (rounded to f16 for f16 weights, as ggml does), a dot
// in 8 lanes summed in order, as the CPU's row kernel.
@compute @workgroup_size(64)
fn mm_float(@builtin(global_invocation_id) id: vec3<u32>) {
    let r = id.x;
    let t = id.y;
    if (r >= p.rows || t >= p.n) {
        return;
    }
    var acc = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for (var i = 0u; i < p.n_in; i++) {
        var a = x[t * p.n_in + i];
        if (QTYPE == 1u) {
            a = f16_round(a);
        }
        acc[i % 8u] += w_value(r, i) * a;
    }
    var s = 0.0;
    for (var j = 0u; j < 8u; j++) {
        s += acc[j];
    }
    y[t * p.n_out + p.row0 + r] = s;
}

// Activation codes of token t, block b, word k (4 codes).
fn a_word(t: u32, b: u32, k: u32) -> u32 {
    return xq[t * (p.n_in / 4u) + b * 8u + k];
}

// Quantized weights: per block, the exact integer sum of weight codes × activation codes
// (Q4_0's −8 offset folded in as −8·Σa), then `acc += isum · d_w · d_a` (Q4_1: `+ m · s`).
@compute @workgroup_size(64)
fn mm_quant(@builtin(global_invocation_id) id: vec3<u32>) {
    let r = id.x;
    let t = id.y;
    if (r >= p.rows || t >= p.n) {
        return;
    }
    let nblk = p.n_in / 32u;
    var acc = 0.0;
    for (var b = 0u; b < nblk; b++) {
        let o = (r * nblk + b) * block_bytes();
        var isum = 0;
        if (QTYPE == 8u) {
            for (var k = 0u; k < 8u; k++) {
                isum += dot4I8Packed(w_word(o + 2u + 4u * k), a_word(t, b, k));
            }
        } else {
            let qs = select(2u, 4u, QTYPE == 3u);
            for (var k = 0u; k < 4u; k++) {
                let q = w_word(o + qs + 4u * k);
                let lo = a_word(t, b, k);
                let hi = a_word(t, b, k + 4u);
                isum += dot4I8Packed(q & 0x0f0f0f0fu, lo) + dot4I8Packed((q >> 4u) & 0x0f0f0f0fu, hi);
                if (QTYPE == 2u) {
                    isum -= 8 * (dot4I8Packed(0x01010101u, lo) + dot4I8Packed(0x01010101u, hi));
                }
            }
        }
        let a = 2u * (t * nblk + b);
        acc = fma(f32(isum), w_half(o) * xd[a], acc);
        if (QTYPE == 3u) {
            acc = fma(w_half(o + 2u), xd[a + 1u], acc);
        }
    }
    y[t * p.n_out + p.row0 + r] = acc;
}

// Embedding rows from a table part: y[j] = W[ids[j] − row0] · scale for the ids in this part
// (p.n: ids, p.n_in: width).
@compute @workgroup_size(64)
fn embed(@builtin(global_invocation_id) id: vec3<u32>) {
    let width = p.n_in;
    let l = id.x + id.y * 65535u * 64u;
    let i = l % width;
    let j = l / width;
    if (j >= p.n) {
        return;
    }
    let tok = ids[j];
    if (tok < p.row0 || tok >= p.row0 + p.rows) {
        return;
    }
    var v = w_value(tok - p.row0, i);
    if (p.scale != 1.0) {
        v *= p.scale;
    }
    y[j * width + i] = v;
}
