// sample.wgsl's workgroup reduction without subgroups: a tree in workgroup memory.

struct GroupIds {
    @builtin(local_invocation_index) lid: u32,
}

var<workgroup> best_v: array<f32, 256>;
var<workgroup> best_i: array<u32, 256>;

// The workgroup's best candidate (in `before`'s order), returned to every invocation; the
// workgroup memory is free again when it returns.
fn group_best(ids: GroupIds, c: Cand) -> Cand {
    let lid = ids.lid;
    best_v[lid] = c.v;
    best_i[lid] = c.i;
    workgroupBarrier();
    for (var s = TK / 2u; s > 0u; s >>= 1u) {
        if (lid < s && before(best_v[lid + s], best_i[lid + s], best_v[lid], best_i[lid])) {
            best_v[lid] = best_v[lid + s];
            best_i[lid] = best_i[lid + s];
        }
        workgroupBarrier();
    }
    let best = Cand(best_v[0], best_i[0]);
    workgroupBarrier();
    return best;
}
