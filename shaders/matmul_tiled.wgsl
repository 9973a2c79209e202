// Staged matmul for batches (prefill): a workgroup computes a tile of TR rows × TT tokens.
// Per step it copies, with coalesced loads, the weight blocks of its rows and the
// activations of its tokens for the next stretch of input values into workgroup memory;
// each invocation then runs matmul.wgsl's own per-block (`quant_block`) or per-value
// (`float_step`) code on its output, with the loads below reading the staged copies. Each
// weight byte is read from device memory once per TT tokens instead of once per token,
// each activation once per TR rows, and every output's sums keep the CPU's order: the
// bits equal mm_quant's and mm_float's. (This module also holds matmul.wgsl's other entry
// points, which no pipeline uses from here: their loads would read the stage.)

const TR: u32 = 8u;
const TT: u32 = 8u;
// Input values per step: quantized weights (8 of the 32-value blocks, or one K-quant
// block), float weights.
const QCHUNK: u32 = 256u;
const FCHUNK: u32 = 128u;
// Words of one row's weights per step at most: F32 128; Q8_0 8 × 34 bytes = 68, plus one
// for a start in the middle of a word.
const WT_ROW: u32 = 128u;
// Words of one token's activations per step: f32 values (float) or codes (quantized: 64).
const XT_TOK: u32 = 128u;
// Activation scales and sums of one token per step: two per 32-value block.
const XD_TOK: u32 = 16u;

var<workgroup> wt: array<u32, 1024>; // TR × WT_ROW
var<workgroup> xt: array<u32, 1024>; // TT × XT_TOK
var<workgroup> xdt: array<f32, 128>; // TT × XD_TOK

// Where this invocation's row and token sit in the stage: stage index = binding index +
// shift (wrapping u32 arithmetic), set before each step's compute.
var<private> wshift: u32;
var<private> xshift: u32;
var<private> dshift: u32;

fn wload(i: u32) -> u32 {
    return wt[i + wshift];
}

fn xload(i: u32) -> f32 {
    return bitcast<f32>(xt[i + xshift]);
}

fn xqload(i: u32) -> u32 {
    return xt[i + xshift];
}

fn xdload(i: u32) -> f32 {
    return xdt[i + dshift];
}

// This invocation's place: its workgroup's first row and token, its own row and token
// (of this part), and whether that output exists.
struct Place {
    r0: u32,
    t0: u32,
    r: u32,
    t: u32,
    live: bool,
}

fn place(wg: vec3<u32>, lid: u32) -> Place {
    let r0 = wg.x * TR;
    let t0 = wg.y * TT;
    let r = r0 + lid % TR;
    let t = t0 + lid / TR;
    return Place(r0, t0, r, t, r < p.rows && t < p.n);
}

// Stages bytes [lo, hi) of each of the tile's rows (a row: `row_bytes` bytes) as the
// whole words that hold them, WT_ROW words apart, invocation lid taking every 64th word;
// then points this invocation's weight loads at its row's copy.
fn stage_weights(lid: u32, at: Place, row_bytes: u32, lo: u32, hi: u32) {
    for (var k = lid; k < TR * WT_ROW; k += 64u) {
        let rr = at.r0 + k / WT_ROW;
        let word = ((rr * row_bytes + lo) >> 2u) + k % WT_ROW;
        let end = (rr * row_bytes + hi + 3u) >> 2u;
        if (rr < p.rows && word < end) {
            wt[k] = w[word];
        }
    }
    wshift = (at.r - at.r0) * WT_ROW - ((at.r * row_bytes + lo) >> 2u);
}

@compute @workgroup_size(64)
fn mm_quant_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let at = place(wg, lid);
    let r = at.r;
    let t = at.t;
    let per = QCHUNK / block_elems();
    let nblk = p.n_in / block_elems();
    let bb = block_bytes();
    let n32 = p.n_in / 32u;
    var q = quant_start();
    for (var b0 = 0u; b0 < nblk; b0 += per) {
        let b1 = min(b0 + per, nblk);
        stage_weights(lid, at, nblk * bb, b0 * bb, b1 * bb);
        // Codes and scales of 32-value blocks [e0, e1) of each token.
        let e0 = b0 * block_elems() / 32u;
        let e1 = b1 * block_elems() / 32u;
        for (var k = lid; k < TT * XT_TOK; k += 64u) {
            let tt = at.t0 + k / XT_TOK;
            if (tt < p.n && k % XT_TOK < (e1 - e0) * 8u) {
                xt[k] = xq[tt * (p.n_in / 4u) + e0 * 8u + k % XT_TOK];
            }
        }
        for (var k = lid; k < TT * XD_TOK; k += 64u) {
            let tt = at.t0 + k / XD_TOK;
            if (tt < p.n && k % XD_TOK < (e1 - e0) * 2u) {
                xdt[k] = xd[2u * (tt * n32 + e0) + k % XD_TOK];
            }
        }
        workgroupBarrier();
        if (at.live) {
            xshift = (t - at.t0) * XT_TOK - (t * (p.n_in / 4u) + e0 * 8u);
            dshift = (t - at.t0) * XD_TOK - 2u * (t * n32 + e0);
            for (var b = b0; b < b1; b++) {
                quant_block(r, t, b, &q);
            }
        }
        workgroupBarrier();
    }
    if (at.live) {
        y[t * p.n_out + p.row0 + r] = quant_finish(q);
    }
}

@compute @workgroup_size(64)
fn mm_float_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let at = place(wg, lid);
    let r = at.r;
    let t = at.t;
    // Bytes per weight value: F16 2, F32 4.
    let eb = select(4u, 2u, QTYPE == 1u);
    var f = float_start(p.row0 + r);
    for (var i0 = 0u; i0 < p.n_in; i0 += FCHUNK) {
        let i1 = min(i0 + FCHUNK, p.n_in);
        stage_weights(lid, at, p.n_in * eb, i0 * eb, i1 * eb);
        for (var k = lid; k < TT * XT_TOK; k += 64u) {
            let tt = at.t0 + k / XT_TOK;
            if (tt < p.n && k % XT_TOK < i1 - i0) {
                xt[k] = bitcast<u32>(x[tt * p.n_in + i0 + k % XT_TOK]);
            }
        }
        workgroupBarrier();
        if (at.live) {
            xshift = (t - at.t0) * XT_TOK - (t * p.n_in + i0);
            for (var i = i0; i < i1; i++) {
                float_step(r, t, i, &f);
            }
        }
        workgroupBarrier();
    }
    if (at.live) {
        y[t * p.n_out + p.row0 + r] = float_finish(f);
    }
}
