//! The SIMD attention run against its scalar body, both accumulation modes, random data,
//! odd head sizes and run lengths.

use ferrite_kernels::cpu::attn::{attend_run, attend_run_scalar, HeadKv, Online, MAX_RUN};
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn f16_bits(rng: &mut StdRng, n: usize) -> Vec<u16> {
    (0..n).map(|_| f16::from_f32(rng.random_range(-2.0f32..2.0)).to_bits()).collect()
}

#[test]
fn simd_run_matches_scalar() {
    let mut rng = StdRng::seed_from_u64(3);
    for &(dk, dv, heads) in &[(8usize, 8usize, 1usize), (64, 64, 2), (24, 40, 3), (256, 256, 1), (12, 20, 2)]
    {
        let slots = 3 * MAX_RUN;
        let (ks, vs) = (heads * dk + 5, heads * dv + 3); // padded slot strides
        let k = f16_bits(&mut rng, slots * ks);
        let v = f16_bits(&mut rng, slots * vs);
        for f16_accum in [false, true] {
            for h in 0..heads {
                let kv = HeadKv { k: &k, v: &v, k_stride: ks, v_stride: vs, k_off: h * dk, v_off: h * dv };
                let q: Vec<f32> = (0..dk).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                let (mut a, mut b) = (vec![0f32; dv], vec![0f32; dv]);
                let (mut sa, mut sb) = (Online::new(&mut a), Online::new(&mut b));
                // Several runs of odd lengths, continuing one state.
                let mut slot = 1;
                for n in [1usize, 17, MAX_RUN, 5, 33] {
                    attend_run(&q, &kv, slot, n, 0.37, f16_accum, &mut sa);
                    attend_run_scalar(&q, &kv, slot, n, 0.37, f16_accum, &mut sb);
                    slot += n;
                }
                assert!((sa.m - sb.m).abs() <= 1e-5 * sb.m.abs().max(1.0), "max {} vs {}", sa.m, sb.m);
                assert!((sa.l - sb.l).abs() <= 1e-4 * sb.l, "denominator {} vs {}", sa.l, sb.l);
                // f16 mode rounds after every step: a last-bit difference in a score can move
                // an accumulator by one f16 ulp (2^-10 relative).
                let tol = if f16_accum { 4e-3 } else { 1e-4 };
                for (x, y) in sa.acc.iter().zip(sb.acc.iter()) {
                    assert!(
                        (x - y).abs() <= tol * sb.l.max(1.0),
                        "dk={dk} dv={dv} f16={f16_accum}: {x} vs {y}"
                    );
                }
            }
        }
    }
}
