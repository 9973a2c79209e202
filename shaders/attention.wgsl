// Causal attention over the paged KV cache in two passes, mirroring the CPU backend's
// arithmetic. Keys and values are `[slot][kv head][dim]` in the cache's type `kv_t` (f16, or
// f32 holding f16-rounded values); position `t` of
// a sequence lives in slot `table[t / bs] · bs + t % bs` of its block table.
//
// `attention`: one workgroup per (row, query head, part of the row's key range). Two modes,
// as llama.cpp's CPU flash attention and ours:
//   - f16 (batches under 64 rows): keys in runs that end at cache-block boundaries, scores in
//     `ggml_vec_dot_f16`'s order with the query rounded to f16, then key by key: libm's exp,
//     the running `Σ e·v` rounded to f16 after every rescale and every multiply-add;
//   - tiled (64 rows or more): keys in tiles of 64 positions aligned at 0, each score one
//     fused chain, one rescale per tile, ggml's exponential and reduction tree for the sum
//     (see kernels/src/cpu/attn_tile.rs).
// The run's scores are computed in parallel (one key per invocation), then every invocation
// walks the run for the value dimensions it owns, holding the online-softmax state (max m,
// sum l) itself. Each part writes (acc, m, l) to `part_out`; `attention_merge` combines a
// row's parts as ggml's split-KV reduce does. Parts exist where the CPU splits (single-row
// f16 batches over 512 cells or more: two halves of the cells) and to keep every
// invocation's loop count small (software drivers cut loops at 65535 iterations).
//
// p: rows in this dispatch, n_head, n_head_kv, head_dim, head_dim_v, scale (bits), window
//    (0: none), block size, f16 mode, parts per row, first row of this dispatch, split-KV
//    (1: single-row f16 batch), keys per part at most, rows in the batch, the f16 mode's
//    score lanes (16 or 8: `score_ggml`).
// rows_info: positions[n], table_of_row[n], table offsets[n_seq + 1], then the tables,
//    offsets counted from the start of rows_info (n: all rows of the batch).

@group(0) @binding(0) var<storage, read> p: array<u32>;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> kc: array<kv_t>;
@group(0) @binding(3) var<storage, read> vc: array<kv_t>;
@group(0) @binding(4) var<storage, read> rows_info: array<u32>;
@group(0) @binding(5) var<storage, read_write> part_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> o: array<f32>;

const WG: u32 = 64u;
/// Keys per tile in the tiled (f32) mode; f16-mode runs (cache blocks) are shorter.
const TILE: u32 = 64u;
const MAX_DK: u32 = 256u;
/// Value dimensions one invocation owns: head_dim_v ≤ WG · DV_PER.
const DV_PER: u32 = 4u;
/// Below every real score: the online softmax's starting max.
const LOWEST: f32 = -3.4028235e38;

var<workgroup> qs: array<f32, MAX_DK>;
var<workgroup> sc: array<f32, TILE>;

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

// Where the CPU splits `row`'s keys (llama.cpp's split-KV decode, single-row f16 batches):
// it attends over max(256, pos + 1 rounded up to 256) cells and halves them once there are
// 512; 0 where it does not split.
fn split_at(row: u32) -> u32 {
    let cells = max(256u, (rows_info[row] + 256u) / 256u * 256u);
    if (p[11] == 0u || cells < 512u) {
        return 0u;
    }
    return cells / 2u;
}

// Pieces each of the CPU's parts of a range splits into so that none is longer than the cap.
fn pieces(len: u32) -> u32 {
    var k = 1u;
    while ((len + k - 1u) / k > p[12]) {
        k *= 2u;
    }
    return k;
}

// Keys [x, y) of `part` of `row`'s range: the CPU's parts (one, or two around `split_at`),
// each cut into `pieces` of equal length; parts past the row's own count are empty.
fn part_range(row: u32, part: u32) -> vec2<u32> {
    let kr = key_range(row);
    let first = kr.x;
    let end = kr.x + kr.y;
    let s = split_at(row);
    var mid = end;
    if (s != 0u) {
        mid = clamp(s, first, end);
    }
    let n = pieces(max(mid - first, end - mid));
    let half = part / n;
    if (half > select(0u, 1u, s != 0u)) {
        return vec2<u32>(end, end);
    }
    let a = select(mid, first, half == 0u);
    let b = select(end, mid, half == 0u);
    let len = (b - a + n - 1u) / n;
    let i = part % n;
    return vec2<u32>(min(a + i * len, b), min(a + (i + 1u) * len, b));
}

// `w` lanes (16 or 8) summed as ggml's reductions do: 16 (`_mm512_reduce_add_ps`) by halves,
// quarters, then (u0 + u2) + (u1 + u3); 8 (two `hadd`s) by halves, then (t0 + t1) + (t2 + t3).
fn tree_ggml(x: array<f32, 16>, w: u32) -> f32 {
    var u: array<f32, 4>;
    if (w == 16u) {
        var t: array<f32, 8>;
        for (var i = 0u; i < 8u; i++) {
            t[i] = x[i] + x[i + 8u];
        }
        for (var i = 0u; i < 4u; i++) {
            u[i] = t[i] + t[i + 4u];
        }
        return (u[0] + u[2]) + (u[1] + u[3]);
    }
    for (var i = 0u; i < 4u; i++) {
        u[i] = x[i] + x[i + 4u];
    }
    return (u[0] + u[1]) + (u[2] + u[3]);
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
                a[j][l] = fma_exact(qs[t], f32(kc[ko + t]), a[j][l]);
            }
        }
    }
    var x: array<f32, 16>;
    for (var l = 0u; l < w; l++) {
        x[l] = (a[0][l] + a[2][l]) + (a[1][l] + a[3][l]);
    }
    let r = tree_ggml(x, w);
    if (full == dk) {
        return r;
    }
    var wide = wide_add(wide_zero(), r);
    for (var i = full; i < dk; i++) {
        wide = wide_add(wide, qs[i] * f32(kc[ko + i]));
    }
    return wide_f32(wide);
}

// q·k of the key at `ko` as one fused multiply-add chain in dimension order, from 0 (the
// CPU's tiled mode: llama.cpp's GEMM over a transposed key tile).
fn score_seq(ko: u32, dk: u32) -> f32 {
    var x = 0.0;
    for (var d = 0u; d < dk; d++) {
        x = fma_exact(f32(kc[ko + d]), qs[d], x);
    }
    return x;
}

// The cache slot of position `t` of the sequence whose block table starts at `table`.
fn slot_of(table: u32, t: u32) -> u32 {
    let bs = p[7];
    return rows_info[table + t / bs] * bs + t % bs;
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

    let range = part_range(row, part);
    var t = range.x;
    let end = range.y;

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
    // Every invocation runs the same number of runs (uniform barriers): cache blocks in f16
    // mode, tiles of 64 positions aligned at 0 in the tiled mode.
    while (true) {
        workgroupBarrier();
        if (t >= end) {
            break;
        }
        var n = min(TILE - t % TILE, end - t);
        if (f16_mode) {
            n = min(bs - t % bs, end - t);
        }
        if (lid < n) {
            let ko = slot_of(table, t + lid) * kw + g * dk;
            if (f16_mode) {
                sc[lid] = score_ggml(ko, dk, p[14]) * scale;
            } else {
                sc[lid] = score_seq(ko, dk) * scale;
            }
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
                let vo = slot_of(table, t + j) * vw + g * dv;
                for (var c = 0u; c < DV_PER; c++) {
                    let d = lid + c * WG;
                    if (d < dv) {
                        acc[c] = f16_round(fma_exact(f32(vc[vo + d]), vs, acc[c]));
                    }
                }
                l = fma_exact(l, ms, vs);
            }
        } else {
            // As llama.cpp's tiled mode: the max moves to the tile's (libm's exp rescales);
            // weights by ggml's exponential, summed per 16 lanes of the tile by its tree and
            // across those in the wide type, added to l there; Σ w·v one key at a time.
            var mx = LOWEST;
            for (var j = 0u; j < n; j++) {
                mx = max(mx, sc[j]);
            }
            if (mx > m) {
                let c0 = exp_libm(m - mx);
                for (var c = 0u; c < DV_PER; c++) {
                    acc[c] *= c0;
                }
                l *= c0;
                m = mx;
            }
            let off = t % TILE;
            var w: array<f32, TILE>;
            for (var j = 0u; j < n; j++) {
                w[j] = exp_ggml(sc[j] - m);
            }
            var sum = wide_zero();
            for (var c = 0u; c < TILE / 16u; c++) {
                var x: array<f32, 16>;
                for (var i = 0u; i < 16u; i++) {
                    let lane = 16u * c + i;
                    if (lane >= off && lane < off + n) {
                        x[i] = w[lane - off];
                    }
                }
                sum = wide_add(sum, tree_ggml(x, 16u));
            }
            l = wide_f32(wide_add(sum, l));
            for (var j = 0u; j < n; j++) {
                let vo = slot_of(table, t + j) * vw + g * dv;
                for (var c = 0u; c < DV_PER; c++) {
                    let d = lid + c * WG;
                    if (d < dv) {
                        acc[c] = fma_exact(f32(vc[vo + d]), w[j], acc[c]);
                    }
                }
            }
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
    var l = 0.0;
    var x = 0.0;
    for (var k = 0u; k < n_parts; k++) {
        let b = base + k * (dv + 2u);
        let lk = part_out[b + dv + 1u];
        if (lk == 0.0) {
            continue;
        }
        // As ggml's reduce: libm's exp, x·c_old + (y·c_new) fused.
        let mk = part_out[b + dv];
        let mn = max(m, mk);
        let c_old = exp_libm(m - mn);
        let c_new = exp_libm(mk - mn);
        x = fma_exact(x, c_old, part_out[b + d] * c_new);
        l = fma_exact(l, c_old, lk * c_new);
        m = mn;
    }
    let inv = select(1.0 / l, 0.0, l == 0.0);
    o[(p[10] * n_head + rh) * dv + d] = x * inv;
}
