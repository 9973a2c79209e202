// The KV cache store: rows of keys and values written to their cache slots, rounded to
// f16 (the cache's precision on every backend), in the cache's element type `kv_t`.
// Binds `p` (rows, key width, value width) at 0, the key cache at 1, the rows' keys at 2
// and values at 3, their slots at 4 and the value cache at 5.

@group(0) @binding(0) var<storage, read> p: array<u32>;
@group(0) @binding(1) var<storage, read_write> kc: array<kv_t>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> slots: array<u32>;
@group(0) @binding(5) var<storage, read_write> vc: array<kv_t>;

@compute @workgroup_size(64)
fn kv_store(@builtin(global_invocation_id) id: vec3<u32>) {
    let l = id.x + id.y * 65535u * 64u;
    let i = l % max(p[1], p[2]);
    let row = l / max(p[1], p[2]);
    if (row >= p[0]) {
        return;
    }
    let slot = slots[row];
    if (i < p[1]) {
        kc[slot * p[1] + i] = kv_t(f16_round(k[row * p[1] + i]));
    }
    if (i < p[2]) {
        vc[slot * p[2] + i] = kv_t(f16_round(v[row * p[2] + i]));
    }
}
