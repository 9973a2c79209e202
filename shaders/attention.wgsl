// Causal attention over the paged KV cache in two passes, mirroring the CPU backend's
// arithmetic. Keys and values are `[slot][kv head][dim]` (f16-rounded f32); position `t` of
// a sequence lives in slot `table[t / bs] · bs + t % bs` of its block table.
//
// `attention`: one workgroup per (row, query head, part of the row's key range). The part's
// keys go in runs that end at cache-block boundaries, as on the CPU: the run's scores are
// computed in parallel (one key per invocation), then every invocation walks the run for
// the value dimensions it owns, holding the online-softmax state (max m, sum l) itself.
// Two modes, as llama.cpp's CPU flash attention and ours:
//   - f32: one rescale per run, `acc += e·v` in f32;
//   - f16 (small batches): the query rounded to f16, the running `Σ e·v` rounded to f16
//     after every rescale and every multiply-add, key by key.
// Each part writes (acc, m, l) to `part_out`; `attention_merge` combines a row's parts.
// Parts exist where the CPU splits (a long single-row f16 batch: two halves) and to keep
// every invocation's loop count small (software drivers cut loops at 65535 iterations).
//
// p: rows in this dispatch, n_head, n_head_kv, head_dim, head_dim_v, scale (bits), window
//    (0: none), block size, f16 mode, parts per row, first row of this dispatch, split-KV
//    minimum (0: no split; set for single-row f16 batches), keys per part at most, rows in
//    the batch, score order (see `score`), scale again (bits).
// rows_info: positions[n], table_of_row[n], table offsets[n_seq + 1], then the tables,
//    offsets counted from the start of rows_info (n: all rows of the batch).

@group(0) @binding(0) var<storage, read> p: array<u32>;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> kc: array<f32>;
@group(0) @binding(3) var<storage, read> vc: array<f32>;
@group(0) @binding(4) var<storage, read> rows_info: array<u32>;
@group(0) @binding(5) var<storage, read_write> part_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> o: array<f32>;

const WG: u32 = 64u;
const MAX_RUN: u32 = 32u;
const MAX_DK: u32 = 256u;
/// Value dimensions one invocation owns: head_dim_v ≤ WG · DV_PER.
const DV_PER: u32 = 4u;
/// Below every real score: the online softmax's starting max.
const LOWEST: f32 = -3.4028235e38;

var<workgroup> qs: array<f32, MAX_DK>;
var<workgroup> sc: array<f32, MAX_RUN>;

// The number of keys of `row`'s range and where it starts.
fn key_range(row: u32) -> vec2<u32> {
    let pos = rows_info[row];
    let window = p[6];
    var first = 0u;
    if (window != 0u && pos + 1u > window) {
        first = pos + 1u - window;
    }
    return vec2<u32>(first, pos + 1u - first);
}

// How many parts `row`'s keys split into: two halves where the CPU splits, then halved
// again until no part is longer than the cap.
fn parts_of(len: u32) -> u32 {
    var k = 1u;
    if (p[11] != 0u && len >= p[11]) {
        k = 2u;
    }
    while ((len + k - 1u) / k > p[12]) {
        k *= 2u;
    }
    return k;
}

// Sum of 16 lanes as the AVX-512 kernel's horizontal sum: per group of four lanes
// (x0 + x2) + (x1 + x3), then (g0 + g1) + (g2 + g3).
fn tree16(a: array<f32, 16>) -> f32 {
    var g: array<f32, 4>;
    for (var k = 0u; k < 4u; k++) {
        g[k] = (a[4u * k] + a[4u * k + 2u]) + (a[4u * k + 1u] + a[4u * k + 3u]);
    }
    return (g[0] + g[1]) + (g[2] + g[3]);
}

// q·k of the key at `ko` as llama.cpp's `ggml_vec_dot_f16` sums it with `w`-lane vectors (the
// CPU's f16 mode, `dot_ggml` in kernels/src/cpu/attn.rs): four accumulators take the w-chunks
// of each 4w step in turn; (a0 + a2) + (a1 + a3); the lanes by halves (16: then quarters),
// then (u0 + u2) + (u1 + u3); the values past the last full step added in the wide type.
fn score_ggml(ko: u32, dk: u32, w: u32) -> f32 {
    let step = 4u * w;
    let full = dk / step * step;
    var a: array<array<f32, 16>, 4>;
    for (var i = 0u; i < full; i += step) {
        for (var j = 0u; j < 4u; j++) {
            for (var l = 0u; l < w; l++) {
                let t = i + j * w + l;
                a[j][l] = fma_exact(qs[t], kc[ko + t], a[j][l]);
            }
        }
    }
    var x: array<f32, 16>;
    for (var l = 0u; l < w; l++) {
        x[l] = (a[0][l] + a[2][l]) + (a[1][l] + a[3][l]);
    }
    var u: array<f32, 4>;
    if (w == 16u) {
        var t: array<f32, 8>;
        for (var i = 0u; i < 8u; i++) {
            t[i] = x[i] + x[i + 8u];
        }
        for (var i = 0u; i < 4u; i++) {
            u[i] = t[i] + t[i + 4u];
        }
    } else {
        for (var i = 0u; i < 4u; i++) {
            u[i] = x[i] + x[i + 4u];
        }
    }
    var r: f32;
    if (w == 16u) {
        r = (u[0] + u[2]) + (u[1] + u[3]);
    } else {
        r = (u[0] + u[1]) + (u[2] + u[3]);
    }
    if (full == dk) {
        return r;
    }
    var wide = wide_add(wide_zero(), r);
    for (var i = full; i < dk; i++) {
        wide = wide_add(wide, qs[i] * kc[ko + i]);
    }
    return wide_f32(wide);
}

// q·k of the key at `ko`, times `scale`, summed in the order of the CPU attention kernel
// that the host runs, so that scores agree bit for bit: `order` 0 scalar (8 lanes, summed in
// turn, then the tail), 1 AVX2 (8 lanes, a pairwise tree), 2 AVX-512 (16 lanes), 3 AVX-512
// with even and odd 16-value chunks in separate lanes (four heads or fewer per KV head),
// 4 and 5 llama.cpp's f16-mode order with 16 and 8 lanes (`score_ggml`).
fn score(ko: u32, dk: u32, scale: f32, order: u32) -> f32 {
    if (order >= 4u) {
        return score_ggml(ko, dk, select(8u, 16u, order == 4u)) * scale;
    }
    if (order >= 2u) {
        var even: array<f32, 16>;
        var odd: array<f32, 16>;
        for (var c = 0u; c < dk / 16u; c++) {
            let to_odd = order == 3u && c % 2u == 1u;
            for (var l = 0u; l < 16u; l++) {
                let i = 16u * c + l;
                if (to_odd) {
                    odd[l] = fma_exact(qs[i], kc[ko + i], odd[l]);
                } else {
                    even[l] = fma_exact(qs[i], kc[ko + i], even[l]);
                }
            }
        }
        let s = tree16(even) * scale;
        if (order == 3u) {
            // The same scale from a second parameter word: with one value, the compiler may
            // rewrite a·x + b·x as (a + b)·x, which rounds differently.
            return s + tree16(odd) * bitcast<f32>(p[15]);
        }
        return s;
    }
    var acc = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let lanes = select(dk, dk / 8u * 8u, order == 0u);
    for (var i = 0u; i < lanes; i++) {
        acc[i % 8u] = fma_exact(qs[i], kc[ko + i], acc[i % 8u]);
    }
    if (order == 1u) {
        return (((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))) * scale;
    }
    var s = 0.0;
    for (var j = 0u; j < 8u; j++) {
        s += acc[j];
    }
    var tail = 0.0;
    for (var i = lanes; i < dk; i++) {
        tail += qs[i] * kc[ko + i];
    }
    return (s + tail) * scale;
}

@compute @workgroup_size(64)
fn attention(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let n_head = p[1];
    let n_parts = p[9];
    let job = wg.x + wg.y * 65535u;
    let nr = p[0];
    if (job >= nr * n_head * n_parts) {
        return;
    }
    let part = job % n_parts;
    let h = (job / n_parts) % n_head;
    let r = job / (n_parts * n_head);
    let row = p[10] + r;
    let dk = p[3];
    let dv = p[4];
    let scale = bitcast<f32>(p[5]);
    let bs = p[7];
    let f16_mode = p[8] != 0u;
    let g = h / (n_head / p[2]);
    let kw = p[2] * dk;
    let vw = p[2] * dv;
    let n_batch = p[13];
    let seq = rows_info[n_batch + row];
    let table = rows_info[2u * n_batch + seq];

    let kr = key_range(row);
    let k_parts = parts_of(kr.y);
    let part_len = (kr.y + k_parts - 1u) / k_parts;
    var t = kr.x + min(part * part_len, kr.y);
    let end = kr.x + min((part + 1u) * part_len, kr.y);

    let qo = (row * n_head + h) * dk;
    for (var i = lid; i < dk; i += WG) {
        var x = q[qo + i];
        if (f16_mode) {
            x = f16_round(x);
        }
        qs[i] = x;
    }
    var acc = array<f32, DV_PER>(0.0, 0.0, 0.0, 0.0);
    var m = LOWEST;
    var l = 0.0;
    // Every invocation runs the same number of runs (uniform barriers).
    while (true) {
        workgroupBarrier();
        if (t >= end) {
            break;
        }
        let n = min(bs - t % bs, end - t);
        let slot0 = rows_info[table + t / bs] * bs + t % bs;
        if (lid < n) {
            let ko = (slot0 + lid) * kw + g * dk;
            sc[lid] = score(ko, dk, scale, p[14]);
        }
        workgroupBarrier();
        if (f16_mode) {
            for (var j = 0u; j < n; j++) {
                let s = sc[j];
                var ms = 1.0;
                var vs = 1.0;
                if (s > m) {
                    ms = exp_libm(m - s);
                    m = s;
                    for (var c = 0u; c < DV_PER; c++) {
                        acc[c] = f16_round(acc[c] * ms);
                    }
                } else {
                    vs = exp_libm(s - m);
                }
                let vo = (slot0 + j) * vw + g * dv;
                for (var c = 0u; c < DV_PER; c++) {
                    let d = lid + c * WG;
                    if (d < dv) {
                        acc[c] = f16_round(fma_exact(vc[vo + d], vs, acc[c]));
                    }
                }
                l = fma_exact(l, ms, vs);
            }
        } else {
            // As the CPU: the run's weights summed apart, then l·c + Σe in one rounding.
            var mx = m;
            for (var j = 0u; j < n; j++) {
                mx = max(mx, sc[j]);
            }
            let c0 = exp_cpu(m - mx);
            for (var c = 0u; c < DV_PER; c++) {
                acc[c] *= c0;
            }
            m = mx;
            var sum = 0.0;
            for (var j = 0u; j < n; j++) {
                let e = exp_cpu(sc[j] - m);
                sum += e;
                let vo = (slot0 + j) * vw + g * dv;
                for (var c = 0u; c < DV_PER; c++) {
                    let d = lid + c * WG;
                    if (d < dv) {
                        acc[c] = fma_exact(vc[vo + d], e, acc[c]);
                    }
                }
            }
            l = fma_exact(l, c0, sum);
        }
        t += n;
    }
    // Partial state of this (row, head, part): dv sums, then m and l.
    let po = job * (dv + 2u);
    for (var c = 0u; c < DV_PER; c++) {
        let d = lid + c * WG;
        if (d < dv) {
            part_out[po + d] = acc[c];
        }
    }
    if (lid == 0u) {
        part_out[po + dv] = m;
        part_out[po + dv + 1u] = l;
    }
}

// One invocation per (row, head, value dimension): the parts' states rescaled to their
// common max and summed in order, then divided by the summed weights.
@compute @workgroup_size(64)
fn attention_merge(@builtin(global_invocation_id) id: vec3<u32>) {
    let n_head = p[1];
    let dv = p[4];
    let n_parts = p[9];
    let i = id.x + id.y * 65535u * WG;
    if (i >= p[0] * n_head * dv) {
        return;
    }
    let d = i % dv;
    let rh = i / dv;
    let base = rh * n_parts * (dv + 2u);
    var m = LOWEST;
    for (var k = 0u; k < n_parts; k++) {
        m = max(m, part_out[base + k * (dv + 2u) + dv]);
    }
    var l = 0.0;
    var x = 0.0;
    for (var k = 0u; k < n_parts; k++) {
        let b = base + k * (dv + 2u);
        let lk = part_out[b + dv + 1u];
        if (lk > 0.0) {
            let c = exp_cpu(part_out[b + dv] - m);
            l += lk * c;
            x += part_out[b + d] * c;
        }
    }
    let inv = select(0.0, 1.0 / l, l > 0.0);
    o[(p[10] * n_head + rh) * dv + d] = x * inv;
}
