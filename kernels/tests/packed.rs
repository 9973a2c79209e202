//! The packed SIMD matmul, every instruction set this CPU has, against the scalar reference
//! dot products (`VecDot::dot` on the original blocks) on random data and odd shapes.

use ferrite_kernels::cpu::dot::{self, VecDot};
use ferrite_kernels::cpu::packed::{Isa, PackScratch, PackedMatrix};
use ferrite_kernels::quant::*;
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn rand_f32(rng: &mut StdRng, n: usize) -> Vec<f32> {
    let scale = 10f32.powf(rng.random_range(-2.0..2.0));
    (0..n).map(|_| rng.random_range(-1.0f32..1.0) * scale).collect()
}

/// Weights quantized from random floats (`quantized`), or random bytes with sane f16
/// scales, which reach every code, Q8_0's −128 included.
fn rand_weights(rng: &mut StdRng, ty: QuantType, n_in: usize, n_out: usize, quantized: bool) -> Vec<u8> {
    if quantized {
        let mut out = Vec::new();
        for _ in 0..n_out {
            ty.quantize_row(&rand_f32(rng, n_in), &mut out).unwrap();
        }
        return out;
    }
    let mut bytes: Vec<u8> = (0..ty.row_bytes(n_in).unwrap() * n_out).map(|_| rng.random()).collect();
    let d = |rng: &mut StdRng| f16::from_f32(rng.random_range(-0.05f32..0.05)).to_le_bytes();
    let bb = ty.block_bytes();
    for blk in bytes.chunks_exact_mut(bb) {
        match ty {
            QuantType::Q4_0 | QuantType::Q5_0 | QuantType::Q8_0 => blk[..2].copy_from_slice(&d(rng)),
            QuantType::Q4_1 | QuantType::Q4_K => {
                blk[..2].copy_from_slice(&d(rng));
                blk[2..4].copy_from_slice(&d(rng));
            }
            QuantType::Q6_K => blk[bb - 2..].copy_from_slice(&d(rng)),
            other => panic!("no generator for {other:?}"),
        }
    }
    bytes
}

fn reference<W: VecDot>(w: &[u8], n_in: usize, n_out: usize, x: &[f32], n: usize) -> Vec<f32> {
    reference_with::<W>(w, n_in, n_out, x, n, |_| W::dot)
}

/// The reference with the dot product that `pick` gives for token `t`.
fn reference_with<W: VecDot>(
    w: &[u8],
    n_in: usize,
    n_out: usize,
    x: &[f32],
    n: usize,
    pick: impl Fn(usize) -> fn(&[W], &[W::Act]) -> f32,
) -> Vec<f32> {
    let w: &[W] = cast_blocks(w).unwrap();
    let wpr = n_in / W::BLOCK_ELEMS;
    let mut out = vec![0f32; n * n_out];
    for t in 0..n {
        let mut acts = vec![bytemuck::Zeroable::zeroed(); n_in / W::ACT_ELEMS];
        W::quantize_act(&x[t * n_in..(t + 1) * n_in], &mut acts);
        let dot = pick(t);
        for r in 0..n_out {
            out[t * n_out + r] = dot(&w[r * wpr..(r + 1) * wpr], &acts);
        }
    }
    out
}

/// The reference in the order llama.cpp's x86 build uses for a batch of `n` tokens.
fn reference_for(ty: QuantType, w: &[u8], n_in: usize, n_out: usize, x: &[f32], n: usize) -> Vec<f32> {
    match ty {
        QuantType::Q4_0 => reference::<BlockQ4_0>(w, n_in, n_out, x, n),
        QuantType::Q4_1 => reference::<BlockQ4_1>(w, n_in, n_out, x, n),
        QuantType::Q5_0 => reference::<BlockQ5_0>(w, n_in, n_out, x, n),
        QuantType::Q8_0 => reference::<BlockQ8_0>(w, n_in, n_out, x, n),
        // Repacked gemm for the tokens in fours, gemv for the last n % 4.
        QuantType::Q4_K => reference_with::<BlockQ4K>(w, n_in, n_out, x, n, |t| {
            if t < n - n % 4 {
                dot::dot_q4k_gemm
            } else {
                BlockQ4K::dot
            }
        }),
        // The tiled K-quant matmul from 8 tokens on, `vec_dot` below.
        QuantType::Q6_K => reference_with::<BlockQ6K>(w, n_in, n_out, x, n, |_| {
            if n >= 8 {
                dot::dot_q6k_tiled
            } else {
                BlockQ6K::dot
            }
        }),
        other => panic!("no reference for {other:?}"),
    }
}

const PACKED: [QuantType; 6] =
    [QuantType::Q4_0, QuantType::Q4_1, QuantType::Q5_0, QuantType::Q8_0, QuantType::Q4_K, QuantType::Q6_K];

/// Two threads whatever the machine: a matmul's tasks then hold several groups each, so the
/// AVX-512 kernels for pairs of groups run (with one group per task they never would).
fn two_threads(f: impl FnOnce() + Send) {
    rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("thread pool").install(f)
}

#[test]
fn packed_matches_scalar_reference() {
    two_threads(packed_matches_scalar_reference_body)
}

fn packed_matches_scalar_reference_body() {
    let isas = Isa::available();
    if isas.is_empty() {
        eprintln!("no packed kernels on this CPU: nothing to test");
        return;
    }
    let mut rng = StdRng::seed_from_u64(7);
    let mut scratch = PackScratch::default();
    for ty in PACKED {
        let be = ty.block_elems();
        // Odd row counts (a partial last group), one to several blocks, 1..9 tokens and a
        // batch that spans several token tiles; enough groups per task for the 16-row kernels
        // (pairs of groups, an odd one left over), with one tile or several (codes unpacked
        // once per pair), every partial last tile, a batch past one 64-token block, and rows
        // too long for the unpacked codes; decode batches at the edge of asking for the next
        // pair's bytes while multiplying (16 tokens do, 17 do not).
        for &(blocks, n_out, n) in &[
            (1, 8, 1),
            (3, 13, 2),
            (2, 40, 5),
            (5, 7, 9),
            (4, 33, 70),
            (2, 300, 3),
            (1, 136, 1),
            (1, 200, 11),
            (1, 200, 2),
            (70, 136, 3),
            (1, 200, 9),
            (1, 200, 10),
            (1, 136, 70),
            (2, 136, 16),
            (3, 72, 17),
        ] {
            let n_in = blocks * be;
            for quantized in [true, false] {
                let w = rand_weights(&mut rng, ty, n_in, n_out, quantized);
                let x = rand_f32(&mut rng, n * n_in);
                let want = reference_for(ty, &w, n_in, n_out, &x, n);
                for &isa in &isas {
                    let p = PackedMatrix::pack_for(isa, ty, &w, n_in, n_out).expect("packable");
                    let mut got = vec![f32::NAN; n * n_out];
                    p.matmul(&x, n, &mut got, &mut scratch);
                    for t in 0..n {
                        // Every packed format sums in the scalar reference's order (llama.cpp's
                        // x86 one): the same bits.
                        for r in 0..n_out {
                            let (g, e) = (got[t * n_out + r], want[t * n_out + r]);
                            assert_eq!(
                                g.to_bits(),
                                e.to_bits(),
                                "{ty:?} {isa:?} quantized={quantized} n_in={n_in} n_out={n_out} n={n} \
                                 t={t} r={r}: {g} vs {e} (same order: same bits)"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn repacking_keeps_the_size() {
    let Some(isa) = Isa::best() else { return };
    let mut rng = StdRng::seed_from_u64(1);
    for ty in PACKED {
        let (n_in, n_out) = (512, 64);
        let w = rand_weights(&mut rng, ty, n_in, n_out, true);
        let p = PackedMatrix::pack_for(isa, ty, &w, n_in, n_out).unwrap();
        let extra = p.bytes() as f64 / w.len() as f64 - 1.0;
        // K-quant scales are unpacked to bytes: +2.8% for Q4_K; everything else is exact.
        let allowed = if ty == QuantType::Q4_K { 0.03 } else { 0.0 };
        assert!(extra <= allowed, "{ty:?} repacked {} bytes from {}", p.bytes(), w.len());
    }
}

#[test]
fn unsupported_formats_and_shapes_are_refused() {
    let Some(isa) = Isa::best() else { return };
    let w = vec![0u8; QuantType::Q5_1.row_bytes(64).unwrap() * 8];
    assert!(PackedMatrix::pack_for(isa, QuantType::Q5_1, &w, 64, 8).is_none());
    let w = vec![0u8; QuantType::Q4_0.row_bytes(64).unwrap() * 8];
    assert!(PackedMatrix::pack_for(isa, QuantType::Q4_0, &w[1..], 64, 8).is_none());
    assert!(PackedMatrix::pack_for(isa, QuantType::Q4_0, &w, 64, 0).is_none());
}

/// Several matrices over one input (Q/K/V, gate/up) in one pass give each matrix's own
/// `matmul` bits: odd row counts, one token and batches, every instruction set and format.
#[test]
fn matmul_many_equals_separate_matmuls() {
    let mut rng = StdRng::seed_from_u64(23);
    for isa in Isa::available() {
        for ty in [
            QuantType::Q4_0,
            QuantType::Q4_1,
            QuantType::Q5_0,
            QuantType::Q8_0,
            QuantType::Q4_K,
            QuantType::Q6_K,
        ] {
            let n_in = ty.block_elems() * rng.random_range(1..=3);
            for n in [1, 3, 9] {
                let rows = [rng.random_range(1..=40), rng.random_range(1..=40), rng.random_range(1..=40)];
                let mats: Vec<PackedMatrix> = rows
                    .iter()
                    .map(|&r| {
                        let w = rand_weights(&mut rng, ty, n_in, r, true);
                        PackedMatrix::pack_for(isa, ty, &w, n_in, r).expect("packable")
                    })
                    .collect();
                let x = rand_f32(&mut rng, n * n_in);
                let mut scratch = PackScratch::default();
                let want: Vec<Vec<f32>> = mats
                    .iter()
                    .map(|m| {
                        let mut o = vec![0f32; n * m.n_out()];
                        m.matmul(&x, n, &mut o, &mut scratch);
                        o
                    })
                    .collect();
                let mut got: Vec<Vec<f32>> = rows.iter().map(|&r| vec![f32::NAN; n * r]).collect();
                let [a, b, c] = &mut got[..] else { unreachable!() };
                PackedMatrix::matmul_many([&mats[0], &mats[1], &mats[2]], &x, n, [a, b, c], &mut scratch);
                for (g, w) in got.iter().zip(&want) {
                    let (g, w): (Vec<u32>, Vec<u32>) =
                        (g.iter().map(|v| v.to_bits()).collect(), w.iter().map(|v| v.to_bits()).collect());
                    assert_eq!(g, w, "{isa:?} {ty:?} n_in {n_in}, {n} tokens, rows {rows:?}");
                }
            }
        }
    }
}
