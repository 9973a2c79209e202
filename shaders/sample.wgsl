// Sampling reductions over rows of logits: each row's best k values (larger first, lower
// index first on ties, NaN skipped) and its log-sum-exp, so that only these go back to the
// host instead of the whole vocabulary. One workgroup per row.
// Binds `p` (n_rows, width, k) at 0, the logits at 1 and the output words at 2: per row
// 2 + 2k words, the log-sum-exp's bits, a spare word, then k (index, value bits) pairs,
// index 0xffffffff where the row has fewer than k values that are not NaN.

@group(0) @binding(0) var<storage, read> p: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

const TK: u32 = 256u;
const NONE: u32 = 0xffffffffu;

var<workgroup> sums: array<f32, 256>;

// A candidate: a value and its index (NONE: no candidate).
struct Cand {
    v: f32,
    i: u32,
}

// Whether (v, i) comes before (w, j) in the order the host sorts by; no index comes last.
fn before(v: f32, i: u32, w: f32, j: u32) -> bool {
    if (i == NONE) {
        return false;
    }
    if (j == NONE) {
        return true;
    }
    return v > w || (v == w && i < j);
}

// A bit test: a compiler that assumes no NaN may fold `y != y` away.
fn is_nan(y: f32) -> bool {
    return (bitcast<u32>(y) & 0x7fffffffu) > 0x7f800000u;
}

// Round r finds the best value that comes after round r - 1's: k rounds of a strided scan
// and a reduction over the workgroup (`group_best`: a tree in workgroup memory, or
// subgroup operations where the adapter has them; both exact, so both give the same
// result), at k reads of the row.
@compute @workgroup_size(256)
fn top_k(@builtin(workgroup_id) wg: vec3<u32>, ids: GroupIds) {
    let lid = ids.lid;
    let row = wg.x + wg.y * 65535u;
    let width = p[1];
    let k = p[2];
    if (row >= p[0]) {
        return;
    }
    let base = row * width;
    let o = row * (2u + 2u * k);
    var prev_v = 0.0;
    var prev_i = NONE;
    for (var r = 0u; r < k; r++) {
        var v = 0.0;
        var bi = NONE;
        for (var e = lid; e < width; e += TK) {
            let y = x[base + e];
            if (is_nan(y) || (r > 0u && !before(prev_v, prev_i, y, e))) {
                continue;
            }
            if (before(y, e, v, bi)) {
                v = y;
                bi = e;
            }
        }
        let best = group_best(ids, Cand(v, bi));
        prev_v = best.v;
        prev_i = best.i;
        if (lid == 0u) {
            out[o + 2u + 2u * r] = prev_i;
            out[o + 3u + 2u * r] = bitcast<u32>(prev_v);
        }
        if (r == 0u) {
            // Round 0 found the max: the row's Σ e^(y − max) now, in a tree.
            var acc = 0.0;
            let m = prev_v;
            let finite = prev_i != NONE && abs(m) <= 3.4028235e38;
            if (finite) {
                for (var e = lid; e < width; e += TK) {
                    let y = x[base + e];
                    if (!is_nan(y)) {
                        acc += exp(y - m);
                    }
                }
            }
            sums[lid] = acc;
            workgroupBarrier();
            for (var s = TK / 2u; s > 0u; s >>= 1u) {
                if (lid < s) {
                    sums[lid] += sums[lid + s];
                }
                workgroupBarrier();
            }
            if (lid == 0u) {
                var lse = m;
                if (finite) {
                    lse = m + log(sums[0]);
                }
                if (prev_i == NONE) {
                    lse = bitcast<f32>(0xff800000u);
                }
                out[o] = bitcast<u32>(lse);
                out[o + 1u] = 0u;
            }
            workgroupBarrier();
        }
    }
}
