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

// Float weights for batches on adapters without the staged kernels: four tokens of one row
// per invocation, each weight value read once for the four. Software adapters (llvmpipe)
// pay per load instruction: a 53-token F32 prompt took 0.75× mm_float's time. Each output's
// sums are mm_float's, in its order; tokens past the end repeat the last and are not stored.
@compute @workgroup_size(64)
fn mm_float_tokens(@builtin(global_invocation_id) id: vec3<u32>) {
    let r = id.x;
    let t0 = id.y * 4u;
    if (r >= p.rows || t0 >= p.n) {
        return;
    }
    let t1 = min(t0 + 1u, p.n - 1u);
    let t2 = min(t0 + 2u, p.n - 1u);
    let t3 = min(t0 + 3u, p.n - 1u);
    var f0 = float_start(p.row0 + r);
    var f1 = f0;
    var f2 = f0;
    var f3 = f0;
    for (var i = 0u; i < p.n_in; i++) {
        let wa = w_value(r, i);
        float_add(wa, act(t0, i), i, &f0);
        float_add(wa, act(t1, i), i, &f1);
        float_add(wa, act(t2, i), i, &f2);
        float_add(wa, act(t3, i), i, &f3);
    }
    let at = p.row0 + r;
    y[t0 * p.n_out + at] = float_finish(f0);
    if (t0 + 1u < p.n) {
        y[t1 * p.n_out + at] = float_finish(f1);
    }
    if (t0 + 2u < p.n) {
        y[t2 * p.n_out + at] = float_finish(f2);
    }
    if (t0 + 3u < p.n) {
        y[t3 * p.n_out + at] = float_finish(f3);
    }
}

// Q4_0, Q4_1, Q5_0 and Q8_0 weights, likewise: four tokens of one row per invocation, each
// weight block read once for the four (a 53-token Q8_0 prompt: 0.8× mm_quant's time on
// llvmpipe). Each output's sums are mm_quant's, in its order.
@compute @workgroup_size(64)
fn mm_quant_tokens(@builtin(global_invocation_id) id: vec3<u32>) {
    let r = id.x;
    let t0 = id.y * 4u;
    if (r >= p.rows || t0 >= p.n) {
        return;
    }
    let t1 = min(t0 + 1u, p.n - 1u);
    let t2 = min(t0 + 2u, p.n - 1u);
    let t3 = min(t0 + 3u, p.n - 1u);
    var q0 = quant_start();
    var q1 = quant_start();
    var q2 = quant_start();
    var q3 = quant_start();
    for (var b = 0u; b < p.n_in / 32u; b++) {
        let w = w_block32(r, b);
        quant_block32(w, t0, b, &q0);
        quant_block32(w, t1, b, &q1);
        quant_block32(w, t2, b, &q2);
        quant_block32(w, t3, b, &q3);
    }
    let at = p.row0 + r;
    y[t0 * p.n_out + at] = quant_finish(q0);
    if (t0 + 1u < p.n) {
        y[t1 * p.n_out + at] = quant_finish(q1);
    }
    if (t0 + 2u < p.n) {
        y[t2 * p.n_out + at] = quant_finish(q2);
    }
    if (t0 + 3u < p.n) {
        y[t3 * p.n_out + at] = quant_finish(q3);
    }
}
