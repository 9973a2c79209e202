//! Property tests: quantize → dequantize stays within each format's error bound.
//!
//! For the 32-value formats the bound is derived per value from the format (half a step, the
//! clamped end of the asymmetric code range, and the f16 rounding of the stored scale and
//! offset), so a quantizer that rounds wrongly or picks a wrong scale fails. The K-quants pick
//! scales by search, so they get relative RMS bounds measured over 20k random super-blocks
//! (worst case plus ~15-20% margin); the exact-bytes golden tests pin their behaviour.

use bytemuck::Zeroable;
use ferrite_kernels::quant::{
    dequantize_row, quantize_row, quantize_row_into, BlockBF16, BlockF16, BlockF32, BlockQ4_0, BlockQ4_1,
    BlockQ5_0, BlockQ5_1, BlockQ8K, BlockQ8_0, BlockQ8_1, BlockTQ1_0, BlockTQ2_0, QuantBlock, QuantType,
    QuantizeBlock,
};
use half::{bf16, f16};
use proptest::prelude::*;

/// `n` blocks of values uniform in [-1, 1], plus an optional offset, times a scale
/// 10^[-3, 3].
fn data(block: usize, max_blocks: usize) -> impl Strategy<Value = (Vec<f32>, f32)> {
    (1..=max_blocks, -3.0f32..3.0, prop_oneof![Just(0.0f32), -1.0f32..1.0])
        .prop_flat_map(move |(n, exp, offset)| {
            let scale = 10f32.powf(exp);
            prop::collection::vec(-1.0f32..1.0, n * block).prop_map(move |v| {
                let x = v.iter().map(|&v| (v + offset) * scale).collect::<Vec<_>>();
                (x, scale)
            })
        })
        .prop_filter("non-zero data", |(x, _)| x.iter().any(|&v| v != 0.0))
}

fn round_trip<B: QuantizeBlock>(x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let mut bytes = Vec::new();
    quantize_row::<B>(x, &mut bytes).unwrap();
    let mut y = vec![0.0; x.len()];
    dequantize_row::<B>(&bytes, &mut y).unwrap();
    (bytes, y)
}

fn f16r(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

fn amax(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// The value of largest magnitude, keeping its sign (what Q4_0/Q5_0/Q8_K scale by).
fn signed_max(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m })
}

/// Asserts |x - y| ≤ bound(i) for every value, with slack for f32 rounding noise.
fn check(name: &str, x: &[f32], y: &[f32], bound: impl Fn(usize) -> f32) -> Result<(), TestCaseError> {
    let slack = 1e-5 * amax(x);
    for (i, (&a, &b)) in x.iter().zip(y).enumerate() {
        let err = (a - b).abs();
        prop_assert!(err <= bound(i) + slack, "{name}[{i}]: {a} -> {b}, err {err} > {}", bound(i));
    }
    Ok(())
}

/// Symmetric formats with `d = max / -half` and codes in [-half, half - 1]: half a step,
/// except values beyond +(half - 0.5) steps clamp to half - 1.
fn symmetric_bound(x: &[f32], half: f32) -> Vec<f32> {
    x.chunks_exact(32)
        .flat_map(|b| {
            let d = signed_max(b) / -half;
            let scale_err = half * (d - f16r(d)).abs();
            b.iter().map(move |&v| {
                let t = if d != 0.0 { v / d } else { 0.0 };
                (t - (half - 1.0)).max(0.5) * d.abs() + scale_err
            })
        })
        .collect()
}

/// Min/scale formats: half a step plus the f16 rounding of `d` (times the top code) and `m`.
fn affine_bound(x: &[f32], levels: f32) -> Vec<f32> {
    x.chunks_exact(32)
        .flat_map(|b| {
            let min = b.iter().fold(f32::MAX, |m, &v| m.min(v));
            let max = b.iter().fold(f32::MIN, |m, &v| m.max(v));
            let d = (max - min) / levels;
            let e = d / 2.0 + levels * (d - f16r(d)).abs() + (min - f16r(min)).abs();
            vec![e; 32]
        })
        .collect()
}

fn rel_rms(x: &[f32], y: &[f32]) -> f64 {
    let e2: f64 = x.iter().zip(y).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let x2: f64 = x.iter().map(|&a| (a as f64).powi(2)).sum();
    (e2 / x2).sqrt()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn q4_0((x, _) in data(32, 8)) {
        let (_, y) = round_trip::<BlockQ4_0>(&x);
        let b = symmetric_bound(&x, 8.0);
        check("Q4_0", &x, &y, |i| b[i])?;
    }

    #[test]
    fn q5_0((x, _) in data(32, 8)) {
        let (_, y) = round_trip::<BlockQ5_0>(&x);
        let b = symmetric_bound(&x, 16.0);
        check("Q5_0", &x, &y, |i| b[i])?;
    }

    #[test]
    fn q4_1((x, _) in data(32, 8)) {
        let (_, y) = round_trip::<BlockQ4_1>(&x);
        let b = affine_bound(&x, 15.0);
        check("Q4_1", &x, &y, |i| b[i])?;
    }

    #[test]
    fn q5_1((x, _) in data(32, 8)) {
        let (_, y) = round_trip::<BlockQ5_1>(&x);
        let b = affine_bound(&x, 31.0);
        check("Q5_1", &x, &y, |i| b[i])?;
    }

    #[test]
    fn q8_0_and_q8_1((x, _) in data(32, 8)) {
        let bound: Vec<f32> = x
            .chunks_exact(32)
            .flat_map(|b| {
                let d = amax(b) / 127.0;
                vec![d / 2.0 + 127.0 * (d - f16r(d)).abs(); 32]
            })
            .collect();
        let (_, y) = round_trip::<BlockQ8_0>(&x);
        check("Q8_0", &x, &y, |i| bound[i])?;

        let (bytes, y1) = round_trip::<BlockQ8_1>(&x);
        prop_assert_eq!(&y, &y1, "Q8_1 codes and scale equal Q8_0's");
        for (blk, xb) in bytemuck::cast_slice::<u8, BlockQ8_1>(&bytes).iter().zip(x.chunks_exact(32)) {
            let sum: i32 = blk.qs.iter().map(|&q| q as i32).sum();
            prop_assert_eq!(blk.s(), f16r(sum as f32 * (amax(xb) / 127.0)));
        }
    }

    #[test]
    fn q8_k((x, _) in data(256, 3)) {
        let mut blocks = vec![BlockQ8K::zeroed(); x.len() / 256];
        quantize_row_into(&x, &mut blocks).unwrap();
        let mut y = vec![0.0; x.len()];
        ferrite_kernels::quant::dequantize_blocks(&blocks, &mut y).unwrap();
        for (blk, xb) in blocks.iter().zip(x.chunks_exact(256)) {
            let sums: Vec<i16> = blk.qs.chunks_exact(16).map(|g| g.iter().map(|&q| q as i16).sum()).collect();
            prop_assert_eq!(&blk.bsums()[..], &sums[..]);
            prop_assert!(blk.qs.iter().all(|&q| q >= -127), "codes stay in [-127, 127]");
            let d = signed_max(xb) / -127.0;
            prop_assert!((blk.d() - d).abs() <= 1e-6 * d.abs(), "Q8_K scale {} vs max/-127 = {d}", blk.d());
        }
        let bound: Vec<f32> = x.chunks_exact(256).flat_map(|b| vec![amax(b) / 127.0 / 2.0; 256]).collect();
        check("Q8_K", &x, &y, |i| bound[i])?;
    }

    #[test]
    fn k_quants((x, scale) in data(256, 3)) {
        // Below scale 0.5 the f16 super-block scales of Q5_K/Q6_K become subnormal and lose
        // precision (a property of the format, identical in ggml), so those get a looser bound.
        let normal = scale >= 0.5;
        for (ty, tight, loose) in [
            (QuantType::Q2_K, 0.32, 0.32),
            (QuantType::Q3_K, 0.17, 0.17),
            (QuantType::Q4_K, 0.075, 0.075),
            (QuantType::Q5_K, 0.04, 0.045),
            (QuantType::Q6_K, 0.02, 0.07),
        ] {
            let mut bytes = Vec::new();
            ty.quantize_row(&x, &mut bytes).unwrap();
            prop_assert_eq!(bytes.len(), ty.row_bytes(x.len()).unwrap());
            let mut y = vec![0.0; x.len()];
            ty.dequantize_row(&bytes, &mut y).unwrap();
            let bound = if normal { tight } else { loose };
            for (xb, yb) in x.chunks_exact(256).zip(y.chunks_exact(256)) {
                let r = rel_rms(xb, yb);
                prop_assert!(r <= bound, "{ty}: relative RMS error {r:.4} > {bound} (scale {scale:e})");
            }
        }
    }

    #[test]
    fn ternary_values_round_trip_exactly(
        trits in prop::collection::vec(-1i8..=1, 256..=768),
        exp in -14i32..15,
    ) {
        let n = trits.len() / 256 * 256;
        let s = 2f32.powi(exp);
        let mut x: Vec<f32> = trits[..n].iter().map(|&t| t as f32 * s).collect();
        // Each block's scale is its absolute maximum: make sure every block contains ±s.
        for b in x.chunks_exact_mut(256) {
            b[255] = -s;
        }
        let (_, y1) = round_trip::<BlockTQ1_0>(&x);
        let (_, y2) = round_trip::<BlockTQ2_0>(&x);
        prop_assert_eq!(&y1, &x);
        prop_assert_eq!(&y2, &x);
    }

    #[test]
    fn float_types(x in prop::collection::vec(any::<f32>().prop_filter("not NaN", |v| !v.is_nan()), 1..100)) {
        let (_, y) = round_trip::<BlockF32>(&x);
        prop_assert_eq!(&y, &x);
        let (_, y) = round_trip::<BlockF16>(&x);
        prop_assert!(y.iter().zip(&x).all(|(&a, &b)| a.to_bits() == f16::from_f32(b).to_f32().to_bits()));
        let (_, y) = round_trip::<BlockBF16>(&x);
        prop_assert!(y.iter().zip(&x).all(|(&a, &b)| a.to_bits() == bf16::from_f32(b).to_f32().to_bits()));
    }
}

#[test]
fn zeros_dequantize_to_zeros() {
    let x = vec![0.0f32; 512];
    for ty in QuantType::ALL.into_iter().filter(|t| t.can_quantize()) {
        let mut bytes = Vec::new();
        ty.quantize_row(&x, &mut bytes).unwrap();
        let mut y = vec![1.0; 512];
        ty.dequantize_row(&bytes, &mut y).unwrap();
        assert!(y.iter().all(|&v| v == 0.0), "{ty}: zeros must survive");
    }
}

#[test]
fn block_traits_agree_with_type_table() {
    fn one<B: QuantBlock>() {
        assert_eq!(B::TYPE.name(), B::NAME);
        assert_eq!(B::TYPE.block_elems(), B::BLOCK_ELEMS);
        assert_eq!(B::TYPE.block_bytes(), std::mem::size_of::<B>());
        assert_eq!(std::mem::align_of::<B>(), 1);
    }
    one::<BlockQ4_0>();
    one::<BlockQ8K>();
    one::<BlockTQ1_0>();
    one::<ferrite_kernels::quant::BlockIQ4XS>();
    let sizes = QuantType::ALL.map(|t| (t.name(), t.block_elems(), t.block_bytes()));
    let expected = [
        ("F32", 1, 4),
        ("F16", 1, 2),
        ("BF16", 1, 2),
        ("Q4_0", 32, 18),
        ("Q4_1", 32, 20),
        ("Q5_0", 32, 22),
        ("Q5_1", 32, 24),
        ("Q8_0", 32, 34),
        ("Q8_1", 32, 36),
        ("Q2_K", 256, 84),
        ("Q3_K", 256, 110),
        ("Q4_K", 256, 144),
        ("Q5_K", 256, 176),
        ("Q6_K", 256, 210),
        ("Q8_K", 256, 292),
        ("IQ4_NL", 32, 18),
        ("IQ4_XS", 256, 136),
        ("TQ1_0", 256, 54),
        ("TQ2_0", 256, 66),
    ];
    assert_eq!(sizes, expected);
}
