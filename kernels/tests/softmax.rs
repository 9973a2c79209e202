//! The SIMD reductions over logits against their scalar references: random rows of odd
//! lengths, ties, a maximum at either end, and rows with −∞ entries.

use ferrite_kernels::cpu::softmax::{
    argmax, argmax_scalar, exp_scaled, exp_scaled_scalar, log_sum_exp, log_sum_exp_scalar, max, max_scalar,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[test]
fn simd_reductions_match_scalar() {
    let mut rng = StdRng::seed_from_u64(9);
    for len in [1usize, 7, 8, 31, 32, 33, 255, 256, 257, 1000, 49_152, 151_936] {
        for case in 0..4 {
            let mut x: Vec<f32> = (0..len).map(|_| rng.random_range(-30.0f32..30.0)).collect();
            match case {
                1 => x[len - 1] = 100.0,
                2 => {
                    // A tie: the lower index wins.
                    x[len / 3] = 100.0;
                    x[len - 1] = 100.0;
                }
                3 => x.iter_mut().step_by(3).for_each(|v| *v = f32::NEG_INFINITY),
                _ => {}
            }
            let m = max_scalar(&x);
            assert_eq!(max(&x), m, "len {len} case {case}");
            assert_eq!(argmax(&x), argmax_scalar(&x), "len {len} case {case}");
            let (a, b) = (log_sum_exp(&x, m), log_sum_exp_scalar(&x, m));
            assert!(a == b || (a - b).abs() <= 1e-5 * b.abs().max(1.0), "len {len} case {case}: {a} vs {b}");
        }
    }
    assert_eq!(max(&[]), f32::NEG_INFINITY);
    assert_eq!(argmax(&[]), 0);
    assert_eq!(log_sum_exp(&[f32::NEG_INFINITY; 9], f32::NEG_INFINITY), f32::NEG_INFINITY);
}

/// Sampling weights: every element within a few ulps of libm's, −∞ logits weigh 0, and the
/// sums agree.
#[test]
fn exp_scaled_matches_scalar() {
    let mut rng = StdRng::seed_from_u64(10);
    for len in [1usize, 7, 31, 32, 33, 257, 1000, 49_152] {
        for scale in [1.0f32, 1.25, 0.3] {
            let mut x: Vec<f32> = (0..len).map(|_| rng.random_range(-40.0f32..25.0)).collect();
            x.iter_mut().skip(1).step_by(5).for_each(|v| *v = f32::NEG_INFINITY);
            let m = max_scalar(&x);
            let (mut a, mut b) = (x.clone(), x.clone());
            let (sa, sb) = (exp_scaled(&mut a, m, scale), exp_scaled_scalar(&mut b, m, scale));
            for (i, (&p, &q)) in a.iter().zip(&b).enumerate() {
                assert!((p - q).abs() <= 4.0 * f32::EPSILON * q + 1e-37, "len {len} [{i}]: {p} vs {q}");
                if x[i] == f32::NEG_INFINITY {
                    assert_eq!(p, 0.0);
                }
            }
            assert!((sa - sb).abs() <= 1e-6 * sb, "len {len}: {sa} vs {sb}");
        }
    }
}
