// sample.wgsl's workgroup reduction with subgroup operations: each subgroup's best by
// integer max/min operations (exact, so the order the hardware combines lanes in does not
// matter, and no float flushing), then every invocation scans the subgroups' bests. Two
// barriers a round instead of the tree's ten.

struct GroupIds {
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_id) sub: u32,
    @builtin(num_subgroups) n_sub: u32,
}

var<workgroup> best_v: array<f32, 256>;
var<workgroup> best_i: array<u32, 256>;

// A value's place in `before`'s order as an unsigned integer: sign-magnitude bits mapped
// to increasing order, −0 taken as +0 (they are equal); 0 for no candidate, below −inf's.
fn order_key(c: Cand) -> u32 {
    var b = bitcast<u32>(c.v);
    if (b == 0x80000000u) {
        b = 0u;
    }
    let k = select(b | 0x80000000u, ~b, (b >> 31u) == 1u);
    return select(0u, k, c.i != NONE);
}

// The subgroup's best candidate: the largest value, the lowest index among its equals
// (−0 and +0 are equal, as in `before`), then that candidate's own value bits.
fn subgroup_best(c: Cand) -> Cand {
    let some = c.i != NONE;
    let key = order_key(c);
    let m = subgroupMax(key);
    let i = subgroupMin(select(NONE, c.i, some && key == m));
    let bits = subgroupMin(select(0xffffffffu, bitcast<u32>(c.v), some && c.i == i));
    return Cand(select(0.0, bitcast<f32>(bits), i != NONE), i);
}

// The workgroup's best candidate (in `before`'s order), returned to every invocation; the
// workgroup memory is free again when it returns.
fn group_best(ids: GroupIds, c: Cand) -> Cand {
    let s = subgroup_best(c);
    if (ids.lane == 0u) {
        best_v[ids.sub] = s.v;
        best_i[ids.sub] = s.i;
    }
    workgroupBarrier();
    var best = Cand(0.0, NONE);
    for (var j = 0u; j < ids.n_sub; j++) {
        if (before(best_v[j], best_i[j], best.v, best.i)) {
            best = Cand(best_v[j], best_i[j]);
        }
    }
    workgroupBarrier();
    return best;
}
