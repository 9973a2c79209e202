//! The SIMD reductions over logits against their scalar references: random rows of odd
//! lengths, ties, a maximum at either end, and rows with −∞ entries.

use ferrite_kernels::cpu::softmax::{
    argmax, argmax_scalar, log_sum_exp, log_sum_exp_scalar, max, max_scalar,
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
