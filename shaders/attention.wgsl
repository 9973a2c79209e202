// Causal attention over the paged KV cache, one invocation per (row, query head): online
// softmax over the row's keys (no score matrix), GQA by head index, an optional sliding
// window. Keys and values are `[slot][kv head][dim]`; a row's position `t` lives in slot
// `table[t / 32] · 32 + t % 32` of its sequence's block table.
//
// p: n_rows, n_head, n_head_kv, head_dim, head_dim_v, scale (bits), window (0: none),
//    block size. rows_info: positions[n_rows], table_of_row[n_rows], table offsets[n_seq + 1],
//    then the tables, offsets counted from the start of rows_info.

@group(0) @binding(0) var<storage, read> p: array<u32>;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> kc: array<f32>;
@group(0) @binding(3) var<storage, read> vc: array<f32>;
@group(0) @binding(4) var<storage, read> rows_info: array<u32>;
@group(0) @binding(5) var<storage, read_write> o: array<f32>;

const MAX_DV: u32 = 256u;

@compute @workgroup_size(64)
fn attention(@builtin(global_invocation_id) id: vec3<u32>) {
    let n_rows = p[0];
    let n_head = p[1];
    let dk = p[3];
    let dv = p[4];
    let scale = bitcast<f32>(p[5]);
    let window = p[6];
    let bs = p[7];
    let row = id.x / n_head;
    let h = id.x % n_head;
    if (row >= n_rows) {
        return;
    }
    let g = h / (n_head / p[2]);
    let kw = p[2] * dk;
    let vw = p[2] * dv;
    let pos = rows_info[row];
    let seq = rows_info[n_rows + row];
    let table = rows_info[2u * n_rows + seq];
    var first = 0u;
    if (window != 0u && pos + 1u > window) {
        first = pos + 1u - window;
    }
    var acc: array<f32, MAX_DV>;
    for (var j = 0u; j < dv; j++) {
        acc[j] = 0.0;
    }
    var m = -3.4028235e38;
    var l = 0.0;
    let qo = (row * n_head + h) * dk;
    for (var t = first; t <= pos; t++) {
        let slot = rows_info[table + t / bs] * bs + t % bs;
        let ko = slot * kw + g * dk;
        var s = 0.0;
        for (var j = 0u; j < dk; j++) {
            s += q[qo + j] * kc[ko + j];
        }
        s *= scale;
        let m_new = max(m, s);
        let c = exp(m - m_new);
        let e = exp(s - m_new);
        l = l * c + e;
        let vo = slot * vw + g * dv;
        for (var j = 0u; j < dv; j++) {
            acc[j] = acc[j] * c + e * vc[vo + j];
        }
        m = m_new;
    }
    let inv = select(0.0, 1.0 / l, l > 0.0);
    let oo = (row * n_head + h) * dv;
    for (var j = 0u; j < dv; j++) {
        o[oo + j] = acc[j] * inv;
    }
}
