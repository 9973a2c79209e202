// matmul.wgsl's loads for its one-output-per-invocation kernels: straight from the
// bindings; and the kernels that only run with them.

fn wload(i: u32) -> u32 {
    return w[i];
}

fn xload(i: u32) -> f32 {
    return x[i];
}

fn xqload(i: u32) -> u32 {
    return xq[i];
}

fn xdload(i: u32) -> f32 {
    return xd[i];
}

// The four tokens of grid row g of the *_tokens kernels; past the end, the last again.
fn four_tokens(g: u32) -> vec4<u32> {
    let t0 = g * 4u;
    let last = max(p.n, 1u) - 1u;
    return vec4<u32>(t0, min(t0 + 1u, last), min(t0 + 2u, last), min(t0 + 3u, last));
}

// Outputs v of row `at` (global) for tokens t0..t0 + 4, those before the end.
fn store_four(at: u32, t0: u32, v: vec4<f32>) {
    for (var j = 0u; j < 4u; j++) {
        if (t0 + j < p.n) {
            y[(t0 + j) * p.n_out + at] = v[j];
        }
    }
}

// Float weights for batches on adapters without the staged kernels: four tokens of one row
// per invocation, each weight value read once for the four. Software adapters (llvmpipe)
// pay per load instruction: a 53-token F32 prompt took 0.75× mm_float's time. Each output's
// sums are mm_float's, in its order; tokens past the end repeat the last and are not stored.
@compute @workgroup_size(64)
fn mm_float_tokens(@builtin(global_invocation_id) id: vec3<u32>) {
    let r = id.x;
    let ts = four_tokens(id.y);
    if (r >= p.rows || ts.x >= p.n) {
        return;
    }
    var f0 = float_start(p.row0 + r);
    var f1 = f0;
    var f2 = f0;
    var f3 = f0;
    for (var i = 0u; i < p.n_in; i++) {
        let wa = w_value(r, i);
        float_add(wa, act(ts.x, i), i, &f0);
        float_add(wa, act(ts.y, i), i, &f1);
        float_add(wa, act(ts.z, i), i, &f2);
        float_add(wa, act(ts.w, i), i, &f3);
    }
    store_four(p.row0 + r, ts.x, vec4<f32>(float_finish(f0), float_finish(f1), float_finish(f2), float_finish(f3)));
}

// Q4_0, Q4_1, Q5_0 and Q8_0 weights, likewise: four tokens of one row per invocation, each
// weight block read once for the four (a 53-token Q8_0 prompt: 0.8× mm_quant's time on
// llvmpipe). Each output's sums are mm_quant's, in its order.
@compute @workgroup_size(64)
fn mm_quant_tokens(@builtin(global_invocation_id) id: vec3<u32>) {
    let r = id.x;
    let ts = four_tokens(id.y);
    if (r >= p.rows || ts.x >= p.n) {
        return;
    }
    var q0 = quant_start();
    var q1 = quant_start();
    var q2 = quant_start();
    var q3 = quant_start();
    for (var b = 0u; b < p.n_in / 32u; b++) {
        let w = w_block32(r, b);
        quant_block32(w, ts.x, b, &q0);
        quant_block32(w, ts.y, b, &q1);
        quant_block32(w, ts.z, b, &q2);
        quant_block32(w, ts.w, b, &q3);
    }
    store_four(p.row0 + r, ts.x, vec4<f32>(quant_finish(q0), quant_finish(q1), quant_finish(q2), quant_finish(q3)));
}
