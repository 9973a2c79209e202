// Element-wise and row ops of the forward pass: RMSNorm, rope, gated activations,
// residual add, bias add and row gather (the KV-cache store is kv.wgsl). Every entry point
// binds `p` (its parameters, u32 words; floats as bits) at 0 and its buffers from 1.

@group(0) @binding(0) var<storage, read> p: array<u32>;
@group(0) @binding(1) var<storage, read_write> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> c: array<f32>;
@group(0) @binding(4) var<storage, read> ids: array<u32>;
@group(0) @binding(5) var<storage, read_write> a2: array<f32>;

fn pf(i: u32) -> f32 {
    return bitcast<f32>(p[i]);
}

// 1/√(mean(x²) + eps) of row `row` of `src`, the squares summed wide (f64 where the adapter
// has it, as the CPU sums).
fn rms_scale_a(row: u32, width: u32, eps: f32) -> f32 {
    var s = wide_zero();
    for (var i = 0u; i < width; i++) {
        let v = a[row * width + i];
        s = wide_add(s, v * v);
    }
    return 1.0 / sqrt(wide_mean(s, width) + eps);
}

fn rms_scale_b(row: u32, width: u32, eps: f32) -> f32 {
    var s = wide_zero();
    for (var i = 0u; i < width; i++) {
        let v = b[row * width + i];
        s = wide_add(s, v * v);
    }
    return 1.0 / sqrt(wide_mean(s, width) + eps);
}

// p: n_rows, width, eps. a: rows (in place), c: weight.
@compute @workgroup_size(64)
fn rms_norm(@builtin(global_invocation_id) id: vec3<u32>) {
    let row = id.x;
    let width = p[1];
    if (row >= p[0]) {
        return;
    }
    let s = rms_scale_a(row, width, pf(2));
    for (var i = 0u; i < width; i++) {
        a[row * width + i] = (a[row * width + i] * s) * c[i];
    }
}

// p: n_rows, width, eps. b: input rows, c: weight, a: output.
@compute @workgroup_size(64)
fn rms_norm_to(@builtin(global_invocation_id) id: vec3<u32>) {
    let row = id.x;
    let width = p[1];
    if (row >= p[0]) {
        return;
    }
    let s = rms_scale_b(row, width, pf(2));
    for (var i = 0u; i < width; i++) {
        a[row * width + i] = (b[row * width + i] * s) * c[i];
    }
}

// p: n_rows, n_heads, head_dim, half (rotated pairs), neox. a: rows in place; b: cos and sin
// per row and pair (computed on the host exactly as the CPU backend does).
@compute @workgroup_size(64)
fn rope(@builtin(global_invocation_id) id: vec3<u32>) {
    let half = p[3];
    let l = id.x + id.y * 65535u * 64u;
    let i = l % half;
    let hr = l / half;
    let n_heads = p[1];
    let head = hr % n_heads;
    let row = hr / n_heads;
    if (row >= p[0]) {
        return;
    }
    let base = (row * n_heads + head) * p[2];
    var ia = base + 2u * i;
    var ib = ia + 1u;
    if (p[4] != 0u) {
        ia = base + i;
        ib = base + i + half;
    }
    let cs = b[2u * (row * half + i)];
    let sn = b[2u * (row * half + i) + 1u];
    let x0 = a[ia];
    let x1 = a[ib];
    // As ggml's compiled rope: the first product of each pair fused, the second rounded.
    a[ia] = fma_exact(x0, cs, -(x1 * sn));
    a[ib] = fma_exact(x0, sn, x1 * cs);
}

fn gelu_exact(x: f32) -> f32 {
    return 0.5 * x * (1.0 + tanh(0.7978846 * x * (1.0 + 0.044715 * x * x)));
}

// p: len, act (0 SiLU, 1 GELU-tanh). a: gate (in place), b: up.
@compute @workgroup_size(64)
fn gated_act(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x + id.y * 65535u * 64u;
    if (i >= p[0]) {
        return;
    }
    let g = a[i];
    var v: f32;
    if (p[1] == 0u) {
        v = g / (1.0 + exp_ggml(-g));
    } else if (g <= -10.0) {
        v = 0.0;
    } else if (g >= 10.0) {
        v = g;
    } else {
        // ggml's table: f16 input, f16 result.
        v = f16_round(gelu_exact(f16_round(g)));
    }
    a[i] = v * b[i];
}

// p: len. a += b.
@compute @workgroup_size(64)
fn add(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x + id.y * 65535u * 64u;
    if (i < p[0]) {
        a[i] += b[i];
    }
}

// p: len, s (f32 bits). a *= s (ggml's scale).
@compute @workgroup_size(64)
fn scale(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x + id.y * 65535u * 64u;
    if (i < p[0]) {
        a[i] *= pf(1u);
    }
}

// p: n_rows, width. a[row] += c.
@compute @workgroup_size(64)
fn add_bias(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x + id.y * 65535u * 64u;
    if (i < p[0] * p[1]) {
        a[i] += c[i % p[1]];
    }
}

// p: n_rows, width. a[j] = b[ids[j]].
@compute @workgroup_size(64)
fn get_rows(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x + id.y * 65535u * 64u;
    let width = p[1];
    if (i < p[0] * width) {
        a[i] = b[ids[i / width] * width + i % width];
    }
}
