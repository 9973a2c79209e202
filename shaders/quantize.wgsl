// 8-bit activation codes as the CPU backend makes them, one block per invocation.
// `quantize_q8` (32 values, for Q4_0, Q4_1, Q5_0, Q8_0 weights): d = max|x| / 127, codes =
// round-half-even(x · 127 / max); `xd` gets d and d · Σcodes, each rounded to f16 (the block
// formats store them so). `quantize_q8k` (256 values, for K-quant weights, ggml's Q8_K):
// iscale = −127 / (the value of largest magnitude), codes = min(round(x · iscale), 127);
// `xd` gets 1 / iscale and the code sums of the eight 32-value sub-blocks, in the 16 slots
// the eight 32-blocks would use.
struct QParams {
    n_in: u32,
    n: u32,
}

@group(0) @binding(0) var<storage, read> qp: QParams;
@group(0) @binding(1) var<storage, read> qx: array<f32>;
@group(0) @binding(2) var<storage, read_write> qout: array<u32>;
@group(0) @binding(3) var<storage, read_write> qd: array<f32>;

@compute @workgroup_size(64)
fn quantize_q8(@builtin(global_invocation_id) id: vec3<u32>) {
    let nblk = qp.n_in / 32u;
    let b = id.x;
    let t = id.y;
    if (b >= nblk || t >= qp.n) {
        return;
    }
    let base = t * qp.n_in + b * 32u;
    var mx = 0.0;
    for (var i = 0u; i < 32u; i++) {
        mx = max(mx, abs(qx[base + i]));
    }
    let d = mx / 127.0;
    let inv = select(0.0, 127.0 / mx, mx != 0.0);
    var sum = 0;
    for (var k = 0u; k < 8u; k++) {
        var word = 0u;
        for (var j = 0u; j < 4u; j++) {
            let q = i32(clamp(round(qx[base + 4u * k + j] * inv), -128.0, 127.0));
            sum += q;
            word |= (u32(q) & 0xffu) << (8u * j);
        }
        qout[t * (qp.n_in / 4u) + b * 8u + k] = word;
    }
    qd[2u * (t * nblk + b)] = f16_round(d);
    qd[2u * (t * nblk + b) + 1u] = f16_round(d * f32(sum));
}

@compute @workgroup_size(64)
fn quantize_q8k(@builtin(global_invocation_id) id: vec3<u32>) {
    let nblk = qp.n_in / 256u;
    let b = id.x;
    let t = id.y;
    if (b >= nblk || t >= qp.n) {
        return;
    }
    let base = t * qp.n_in + b * 256u;
    var amax = 0.0;
    var mx = 0.0;
    for (var i = 0u; i < 256u; i++) {
        let v = qx[base + i];
        if (abs(v) > amax) {
            amax = abs(v);
            mx = v;
        }
    }
    let iscale = select(0.0, -127.0 / mx, amax != 0.0);
    let xo = 2u * (t * (qp.n_in / 32u) + 8u * b);
    for (var j = 0u; j < 8u; j++) {
        var sum = 0;
        for (var k = 0u; k < 8u; k++) {
            var word = 0u;
            for (var c = 0u; c < 4u; c++) {
                let q = min(i32(round(qx[base + 32u * j + 4u * k + c] * iscale)), 127);
                sum += q;
                word |= (u32(q) & 0xffu) << (8u * c);
            }
            qout[t * (qp.n_in / 4u) + b * 64u + 8u * j + k] = word;
        }
        qd[xo + 1u + j] = f32(sum);
    }
    qd[xo] = select(0.0, 1.0 / iscale, amax != 0.0);
}
