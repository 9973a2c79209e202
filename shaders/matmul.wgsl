// Reads of raw GGUF weight blocks, and the kernels that use them: matmul
// `y[t][row0 + r] = W[r] · x[t]` for one part of a weight matrix (rows row0..row0+rows), one
// invocation per (row, token) here and 8×8 tiles in matmul_tiled.wgsl (which this file is
// also compiled with), and the embedding lookup. `QTYPE` (ggml's type id: 0 F32,
// 1 F16, 2 Q4_0, 3 Q4_1, 6 Q5_0, 8 Q8_0, 12 Q4_K, 14 Q6_K) is set per pipeline. Quantized
// weights multiply the 8-bit activation codes that quantize.wgsl makes (the CPU backend's:
// per 32 values for the 32-value formats, per 256 for the K-quants) with packed integer dot
// products and combine blocks in the CPU kernel's order.

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
    return f16_to_f32((wload(o >> 2u) >> ((o & 2u) * 8u)) & 0xffffu);
}

// 32 bits at even byte offset o of the weights (every block field starts at an even byte).
fn w_word(o: u32) -> u32 {
    let i = o >> 2u;
    if ((o & 2u) == 0u) {
        return wload(i);
    }
    return (wload(i) >> 16u) | (wload(i + 1u) << 16u);
}

fn w_byte(o: u32) -> u32 {
    return (wload(o >> 2u) >> ((o & 3u) * 8u)) & 0xffu;
}

fn w_i8(o: u32) -> i32 {
    return (i32(w_byte(o)) << 24u) >> 24u;
}

fn block_bytes() -> u32 {
    switch QTYPE {
        case 2u: { return 18u; }
        case 3u: { return 20u; }
        case 6u: { return 22u; }
        case 12u: { return 144u; }
        case 14u: { return 210u; }
        default: { return 34u; }
    }
}

fn block_elems() -> u32 {
    return select(32u, 256u, QTYPE == 12u || QTYPE == 14u);
}

// Q4_K's 6-bit scale (x) and min (y) of sub-block j, from the 12 bytes at offset o.
fn scale_min_k4(o: u32, j: u32) -> vec2<u32> {
    if (j < 4u) {
        return vec2<u32>(w_byte(o + j) & 63u, w_byte(o + j + 4u) & 63u);
    }
    let sc = (w_byte(o + j + 4u) & 0xfu) | ((w_byte(o + j - 4u) >> 6u) << 4u);
    let m = (w_byte(o + j + 4u) >> 4u) | ((w_byte(o + j) >> 6u) << 4u);
    return vec2<u32>(sc, m);
}

// Value i of row r, dequantized as the CPU backend does.
fn w_value(r: u32, i: u32) -> f32 {
    switch QTYPE {
        case 0u: { return bitcast<f32>(wload(r * p.n_in + i)); }
        case 1u: { return w_half(2u * (r * p.n_in + i)); }
        case 12u: {
            let o = (r * (p.n_in / 256u) + i / 256u) * 144u;
            let k = i % 256u;
            let j = k / 32u;
            let q = (w_byte(o + 16u + (j / 2u) * 32u + k % 32u) >> (4u * (j % 2u))) & 0xfu;
            let sm = scale_min_k4(o + 4u, j);
            return (w_half(o) * f32(sm.x)) * f32(q) - w_half(o + 2u) * f32(sm.y);
        }
        case 14u: {
            let o = (r * (p.n_in / 256u) + i / 256u) * 210u;
            let k = i % 256u;
            let h = k / 128u;
            let quad = (k % 128u) / 32u;
            let l = k % 32u;
            let lo = (w_byte(o + 64u * h + l + 32u * (quad % 2u)) >> (4u * (quad / 2u))) & 0xfu;
            let hi = (w_byte(o + 128u + 32u * h + l) >> (2u * quad)) & 3u;
            let q = i32(lo | (hi << 4u)) - 32;
            return (w_half(o + 208u) * f32(w_i8(o + 192u + k / 16u))) * f32(q);
        }
        default: {
            let o = (r * (p.n_in / 32u) + i / 32u) * block_bytes();
            let k = i % 32u;
            if (QTYPE == 6u) {
                let nib = (w_byte(o + 6u + k % 16u) >> (4u * (k / 16u))) & 0xfu;
                let hb = (w_word(o + 2u) >> k) & 1u;
                return f32(i32(nib | (hb << 4u)) - 16) * w_half(o);
            }
            if (QTYPE == 8u) {
                return f32(w_i8(o + 2u + k)) * w_half(o);
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

// F32 and F16 weights: f32 activations (rounded to f16 for f16 weights, as ggml does), in
// the CPU's order (`dot::dot16_by`, llama.cpp's tinyBLAS), for one token and for batches:
// 16 lanes, lane i % 16 one fused chain over the inputs below the last whole 16, the lanes
// summed by `_mm512_reduce_add_ps`'s tree, then the tail fused in, in order. `float_*` hold
// that order one value at a time, so that mm_float, mm_float_tokens and the staged
// mm_float_tiled run the same code.
struct FloatAcc {
    full: u32,
    s: f32,
    acc: array<f32, 16>,
}

// The running sums of one output (global row gr; every row sums alike).
fn float_start(gr: u32) -> FloatAcc {
    return FloatAcc(p.n_in / 16u * 16u, 0.0, array<f32, 16>());
}

// Value i of row r (of this part) times activation i of token t, into the sums.
fn float_step(r: u32, t: u32, i: u32, f: ptr<function, FloatAcc>) {
    float_add(w_value(r, i), act(t, i), i, f);
}

// Weight value wa times activation xa, both at input position i (in order), into the sums.
fn float_add(wa: f32, xa: f32, i: u32, f: ptr<function, FloatAcc>) {
    if (i < (*f).full) {
        (*f).acc[i % 16u] = float_fma(wa, xa, (*f).acc[i % 16u]);
    } else {
        if (i == (*f).full) {
            (*f).s = float_tree((*f).acc);
        }
        (*f).s = float_fma(wa, xa, (*f).s);
    }
}

// wa·xa + acc rounded once. F16 weights times f16-rounded activations: the product of two
// 11-bit significands fits f32's 24 bits (and f16's exponents f32's range), so it is exact
// and a multiply then an add rounds once, fused or not; no emulated fma needed (on
// llvmpipe `fma_soft` is about 3× a multiply and an add).
fn float_fma(wa: f32, xa: f32, acc: f32) -> f32 {
    if (QTYPE == 1u) {
        return wa * xa + acc;
    }
    return fma_exact(wa, xa, acc);
}

// `_mm512_reduce_add_ps`: halves, quarters, then (u0 + u2) + (u1 + u3).
fn float_tree(x: array<f32, 16>) -> f32 {
    var u: array<f32, 4>;
    for (var j = 0u; j < 4u; j++) {
        u[j] = (x[j] + x[j + 8u]) + (x[j + 4u] + x[j + 12u]);
    }
    return (u[0] + u[2]) + (u[1] + u[3]);
}

fn float_finish(f: FloatAcc) -> f32 {
    if (f.full == p.n_in) {
        return float_tree(f.acc);
    }
    return f.s;
}

@compute @workgroup_size(64)
fn mm_float(@builtin(global_invocation_id) id: vec3<u32>) {
    let r = id.x;
    let t = id.y;
    if (r >= p.rows || t >= p.n) {
        return;
    }
    var f = float_start(p.row0 + r);
    for (var i = 0u; i < p.n_in; i++) {
        float_step(r, t, i, &f);
    }
    y[t * p.n_out + p.row0 + r] = float_finish(f);
}

// Activation i of token t as a float weight's dot sees it.
fn act(t: u32, i: u32) -> f32 {
    let a = xload(t * p.n_in + i);
    if (QTYPE == 1u) {
        return f16_round(a);
    }
    return a;
}

// Activation codes of token t, block b, word k (4 codes).
fn a_word(t: u32, b: u32, k: u32) -> u32 {
    return xqload(t * (p.n_in / 4u) + b * 8u + k);
}

// Q4_K block at byte o against 256-block b of token t, the CPU's (llama.cpp's repacked)
// order: `acc += Σ scale·(codes · acts)·(d·d_a)` and `acc_min += Σ min·Σacts·(dmin·d_a)`,
// fused per pair of sub-blocks (`pairs`: a token its gemm takes) or per block (its gemv).
fn dot_q4_k(o: u32, t: u32, b: u32, a: u32, pairs: bool, acc: ptr<function, f32>, acc_min: ptr<function, f32>) {
    let yd = xdload(a);
    let dd = w_half(o) * yd;
    let dm = w_half(o + 2u) * yd;
    var sumi = 0;
    var mins = 0;
    for (var j = 0u; j < 8u; j++) {
        let sm = scale_min_k4(o + 4u, j);
        let qo = o + 16u + (j / 2u) * 32u;
        let shift = 4u * (j % 2u);
        var s = 0;
        for (var k = 0u; k < 8u; k++) {
            s += dot4I8Packed((w_word(qo + 4u * k) >> shift) & 0x0f0f0f0fu, a_word(t, 8u * b + j, k));
        }
        sumi += i32(sm.x) * s;
        mins += i32(sm.y) * i32(xdload(a + 1u + j));
        if (pairs && j % 2u == 1u) {
            *acc = fma_exact(f32(sumi), dd, *acc);
            *acc_min = fma_exact(f32(mins), dm, *acc_min);
            sumi = 0;
            mins = 0;
        }
    }
    if (!pairs) {
        *acc = fma_exact(f32(sumi), dd, *acc);
        *acc_min = fma_exact(f32(mins), dm, *acc_min);
    }
}

// The four unsigned 6-bit codes of Q6_K sub-block s (16 values), word k, of the block at o.
fn q6_word(o: u32, s: u32, k: u32) -> u32 {
    let h = s / 8u;
    let r = (s % 8u) * 16u;
    let quad = r / 32u;
    let lo = o + 64u * h + r % 32u + 32u * (quad % 2u);
    let hi = o + 128u + 32u * h + r % 32u;
    return ((w_word(lo + 4u * k) >> (4u * (quad / 2u))) & 0x0f0f0f0fu)
        | (((w_word(hi + 4u * k) >> (2u * quad)) & 0x03030303u) << 4u);
}

// Σ of token t's activation codes in Q6_K sub-block s (16 values) of 256-block b.
fn q6_asum(t: u32, b: u32, s: u32) -> i32 {
    var g = 0;
    for (var k = 0u; k < 4u; k++) {
        g += dot4I8Packed(0x01010101u, a_word(t, 8u * b + s / 2u, (s % 2u) * 4u + k));
    }
    return g;
}

// Q6_K block at byte o against 256-block b of token t: the exact integer
// Σ_s scale_s · Σ (u − 32)·a (llama.cpp's tiled K-quant matmul, batches of 8 or more).
fn dot_q6_k(o: u32, t: u32, b: u32) -> i32 {
    var sumi = 0;
    for (var s = 0u; s < 16u; s++) {
        var g = 0;
        for (var k = 0u; k < 4u; k++) {
            g += dot4I8Packed(q6_word(o, s, k), a_word(t, 8u * b + s / 2u, (s % 2u) * 4u + k));
        }
        sumi += w_i8(o + 192u + s) * (g - 32 * q6_asum(t, b, s));
    }
    return sumi;
}

// Q6_K's eight `vec_dot` lanes (smaller batches, the CPU's `BlockQ6K::dot`): lane L holds
// values 4L..4L+4 of every 32-value chunk times their scale, minus 32·(Σa·scale) of
// sub-blocks 2L and 2L + 1.
fn dot_q6_k_lanes(o: u32, t: u32, b: u32) -> array<i32, 8> {
    var lane = array<i32, 8>(0, 0, 0, 0, 0, 0, 0, 0);
    for (var s = 0u; s < 16u; s++) {
        let sc = w_i8(o + 192u + s);
        for (var k = 0u; k < 4u; k++) {
            let aw = a_word(t, 8u * b + s / 2u, (s % 2u) * 4u + k);
            lane[4u * (s % 2u) + k] += sc * dot4I8Packed(q6_word(o, s, k), aw);
        }
    }
    for (var l = 0u; l < 8u; l++) {
        lane[l] -= 32 * (w_i8(o + 192u + 2u * l) * q6_asum(t, b, 2u * l)
            + w_i8(o + 193u + 2u * l) * q6_asum(t, b, 2u * l + 1u));
    }
    return lane;
}

// Quantized weights: per block, exact integer sums of weight codes × activation codes
// (Q4_0's −8 and Q5_0's −16 offsets folded in as −8·Σa, −16·Σa), accumulated in the CPU
// kernel's order (below); K-quants per 256-value block. `quant_block` takes one block, so
// that mm_quant and the staged mm_quant_tiled run the same code.
struct QuantAcc {
    acc: f32,
    acc_min: f32,
    summs: f32,
    lacc: array<f32, 8>,
}

fn quant_start() -> QuantAcc {
    return QuantAcc(0.0, 0.0, 0.0, array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0));
}

// Block b (of `n_in / block_elems()`) of row r (of this part) against token t.
fn quant_block(r: u32, t: u32, b: u32, q: ptr<function, QuantAcc>) {
    if (QTYPE == 12u || QTYPE == 14u) {
        let nblk = p.n_in / 256u;
        // llama.cpp's kernel choice by batch size: Q4_K's gemm takes the tokens in fours
        // (the last n % 4 go through its gemv); Q6_K's tiled matmul takes batches of 8+.
        let pairs = t < p.n - p.n % 4u;
        let tiled = p.n >= 8u;
        let o = (r * nblk + b) * block_bytes();
        // The block's scale and sub-block sums sit where its eight 32-blocks' would.
        let a = 2u * (t * (p.n_in / 32u) + 8u * b);
        if (QTYPE == 12u) {
            // Locals: naga's SPIR-V writer cannot pass a pointer into *q.
            var acc = (*q).acc;
            var acc_min = (*q).acc_min;
            dot_q4_k(o, t, b, a, pairs, &acc, &acc_min);
            (*q).acc = acc;
            (*q).acc_min = acc_min;
        } else if (tiled) {
            (*q).acc = fma_exact(f32(dot_q6_k(o, t, b)) * w_half(o + 208u), xdload(a), (*q).acc);
        } else {
            let lane = dot_q6_k_lanes(o, t, b);
            let dd = w_half(o + 208u) * xdload(a);
            for (var k = 0u; k < 8u; k++) {
                (*q).lacc[k] = fma_exact(dd, f32(lane[k]), (*q).lacc[k]);
            }
        }
        return;
    }
    quant_block32(w_block32(r, b), t, b, q);
}

// One 32-value block's weight fields (Q4_0, Q4_1, Q5_0, Q8_0): its scale d, Q4_1's m, Q5_0's
// high bits and its code words (8 for Q8_0, else 4 of packed nibbles), read once so that
// mm_quant_tokens can use them for several tokens.
struct WBlock32 {
    d: f32,
    m: f32,
    qh: u32,
    qs: array<u32, 8>,
}

fn w_block32(r: u32, b: u32) -> WBlock32 {
    let o = (r * (p.n_in / 32u) + b) * block_bytes();
    var w = WBlock32(w_half(o), 0.0, 0u, array<u32, 8>(0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u));
    if (QTYPE == 8u) {
        for (var k = 0u; k < 8u; k++) {
            w.qs[k] = w_word(o + 2u + 4u * k);
        }
        return w;
    }
    let qs = select(select(2u, 4u, QTYPE == 3u), 6u, QTYPE == 6u);
    for (var k = 0u; k < 4u; k++) {
        w.qs[k] = w_word(o + qs + 4u * k);
    }
    if (QTYPE == 3u) {
        w.m = w_half(o + 2u);
    }
    if (QTYPE == 6u) {
        w.qh = w_word(o + 2u);
    }
    return w;
}

// Weight block w against block b of token t's activation codes, into q. Q4_1, Q5_0, Q8_0:
// llama.cpp's x86 `vec_dot` order (the CPU's `dot::lanes8`): lane k (products 4k..4k+4 of
// each block) accumulates fma(d_w·d_a, lane, acc_k); then `hsum_float_8`'s tree, plus Q4_1's
// fused Σ m·s. Q4_0: one sum per block.
fn quant_block32(w: WBlock32, t: u32, b: u32, q: ptr<function, QuantAcc>) {
    let nblk = p.n_in / 32u;
    var lane: array<i32, 8>;
    if (QTYPE == 8u) {
        for (var k = 0u; k < 8u; k++) {
            lane[k] = dot4I8Packed(w.qs[k], a_word(t, b, k));
        }
    } else {
        for (var k = 0u; k < 4u; k++) {
            let qw = w.qs[k];
            let lo = a_word(t, b, k);
            let hi = a_word(t, b, k + 4u);
            var ql = qw & 0x0f0f0f0fu;
            var qhi = (qw >> 4u) & 0x0f0f0f0fu;
            if (QTYPE == 6u) {
                ql |= spread_bits((w.qh >> (4u * k)) & 0xfu);
                qhi |= spread_bits((w.qh >> (16u + 4u * k)) & 0xfu);
            }
            lane[k] = dot4I8Packed(ql, lo);
            lane[k + 4u] = dot4I8Packed(qhi, hi);
            if (QTYPE == 2u || QTYPE == 6u) {
                let off = select(8, 16, QTYPE == 6u);
                lane[k] -= off * dot4I8Packed(0x01010101u, lo);
                lane[k + 4u] -= off * dot4I8Packed(0x01010101u, hi);
            }
        }
    }
    let a = 2u * (t * nblk + b);
    if (QTYPE != 2u) {
        let dd = w.d * xdload(a);
        for (var k = 0u; k < 8u; k++) {
            (*q).lacc[k] = fma_exact(dd, f32(lane[k]), (*q).lacc[k]);
        }
        if (QTYPE == 3u) {
            (*q).summs = fma_exact(w.m, xdload(a + 1u), (*q).summs);
        }
    } else {
        var isum = 0;
        for (var k = 0u; k < 8u; k++) {
            isum += lane[k];
        }
        (*q).acc = fma_exact(f32(isum), w.d * xdload(a), (*q).acc);
    }
}

fn quant_finish(q: QuantAcc) -> f32 {
    let l = q.lacc;
    let tree = ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
    switch QTYPE {
        case 2u: { return q.acc; }
        case 3u: { return tree + q.summs; }
        case 12u: { return q.acc - q.acc_min; }
        case 14u: { return select(tree, q.acc, p.n >= 8u); }
        default: { return tree; }
    }
}

@compute @workgroup_size(64)
fn mm_quant(@builtin(global_invocation_id) id: vec3<u32>) {
    let r = id.x;
    let t = id.y;
    if (r >= p.rows || t >= p.n) {
        return;
    }
    var q = quant_start();
    let nblk = p.n_in / block_elems();
    for (var b = 0u; b < nblk; b++) {
        quant_block(r, t, b, &q);
    }
    y[t * p.n_out + p.row0 + r] = quant_finish(q);
}

// Four bits as the fifth bit (16) of four bytes: Q5_0's high bits beside its nibbles.
fn spread_bits(b: u32) -> u32 {
    return ((b & 1u) << 4u) | ((b & 2u) << 11u) | ((b & 4u) << 18u) | ((b & 8u) << 25u);
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
