// 8-bit activation codes of one 32-value block per invocation, as the CPU backend makes
// them: d = max|x| / 127, codes = round-half-even(x · 127 / max); `xd` gets d and d · Σcodes,
// each rounded to f16 (the block formats store them so).
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
