//! The SIMD attention run against its scalar body (the same bits), random data, odd head
//! sizes and run lengths.

use ferrite_kernels::cpu::attn::{
    attend_run_scalar, attend_run_with, AttnKernel, HeadKv, Online, Run, MAX_HEADS, MAX_RUN,
};
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn f16_bits(rng: &mut StdRng, n: usize) -> Vec<u16> {
    (0..n).map(|_| f16::from_f32(rng.random_range(-2.0f32..2.0)).to_bits()).collect()
}

#[test]
fn simd_run_matches_scalar() {
    let mut rng = StdRng::seed_from_u64(3);
    // (key dim, value dim, query heads sharing the KV head)
    let kernels = AttnKernel::available();
    eprintln!("kernels: {kernels:?}");
    for (kernel, &(dk, dv, heads)) in kernels.iter().flat_map(|k| {
        [
            (8usize, 8usize, 1usize),
            (64, 64, 7),
            (24, 40, 3),
            (256, 256, 2),
            (12, 20, 2),
            (64, 64, MAX_HEADS),
            (32, 48, 4),
            (128, 128, 6),
            (16, 80, 5),
            (64, 64, 3),
        ]
        .iter()
        .map(move |s| (*k, s))
    }) {
        let slots = 4 * MAX_RUN;
        let (ks, vs) = (2 * dk + 5, 2 * dv + 3); // two KV heads, padded slot strides
        let k = f16_bits(&mut rng, slots * ks);
        let v = f16_bits(&mut rng, slots * vs);
        for g in 0..2 {
            let kv = HeadKv { k: &k, v: &v, k_stride: ks, v_stride: vs, k_off: g * dk, v_off: g * dv };
            // f16-rounded queries, as the backend passes them.
            let q: Vec<f32> =
                (0..heads * dk).map(|_| f16::from_f32(rng.random_range(-1.0f32..1.0)).to_f32()).collect();
            let (mut a, mut b) = (vec![0f32; heads * dv], vec![0f32; heads * dv]);
            let (mut sa, mut sb) = (Online::new(heads, &mut a), Online::new(heads, &mut b));
            // Several runs of odd lengths, continuing one state.
            let mut slot = 1;
            for n in [1usize, 17, MAX_RUN, 5, MAX_RUN - 1, 8] {
                // The following slots asked ahead (odd lengths too): no effect on the results.
                let (nk, nv) = (&k[(slot + n) * ks..][..3 * ks + 1], &v[(slot + n) * vs..][..3 * vs + 1]);
                let ahead = [bytemuck::cast_slice(nk), bytemuck::cast_slice(nv)];
                let run = Run { q: &q, dk, kv: &kv, slot0: slot, n, scale: 0.37, ahead };
                attend_run_with(kernel, &run, &mut sa);
                attend_run_scalar(&run, &mut sb, kernel.lanes());
                slot += n;
            }
            // llama.cpp's order and libm's exp on both sides: the same bits.
            let what = format!("{kernel:?} dk={dk} dv={dv} heads={heads}");
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            for h in 0..heads {
                assert_eq!(sa.m[h].to_bits(), sb.m[h].to_bits(), "{what}: max");
                assert_eq!(sa.l[h].to_bits(), sb.l[h].to_bits(), "{what}: denominator");
                let (x, y) = (&sa.acc[h * dv..(h + 1) * dv], &sb.acc[h * dv..(h + 1) * dv]);
                assert_eq!(bits(x), bits(y), "{what}: sums");
            }
        }
    }
}

/// Runs that leave every head's max where it was (the common case at depth, which the SIMD
/// bodies take a shorter path for) and one that moves it, continuing one state: the same bits
/// as the scalar body.
#[test]
fn runs_keeping_their_max_match_scalar() {
    let mut rng = StdRng::seed_from_u64(11);
    let (dk, dv, heads, slots) = (64usize, 64usize, 7usize, 8 * MAX_RUN);
    // Small keys and values, except slot 0 (every head's max from the first run on) and slot
    // 150 (a new max in the fifth run), whose keys point along the all-positive queries.
    let small = |rng: &mut StdRng| f16::from_f32(rng.random_range(-0.25f32..0.25)).to_bits();
    let mut k: Vec<u16> = (0..slots * dk).map(|_| small(&mut rng)).collect();
    let v: Vec<u16> = (0..slots * dv).map(|_| small(&mut rng)).collect();
    k[..dk].fill(f16::from_f32(2.0).to_bits());
    k[150 * dk..151 * dk].fill(f16::from_f32(6.0).to_bits());
    let q: Vec<f32> = (0..heads * dk)
        .map(|_| f16::from_f32(rng.random_range(0.5f32..1.0)).to_bits())
        .map(|b| f16::from_bits(b).to_f32())
        .collect();
    let kv = HeadKv { k: &k, v: &v, k_stride: dk, v_stride: dv, k_off: 0, v_off: 0 };
    for kernel in AttnKernel::available() {
        let (mut a, mut b) = (vec![0f32; heads * dv], vec![0f32; heads * dv]);
        let (mut sa, mut sb) = (Online::new(heads, &mut a), Online::new(heads, &mut b));
        for r in 0..slots / MAX_RUN {
            let run =
                Run { q: &q, dk, kv: &kv, slot0: r * MAX_RUN, n: MAX_RUN, scale: 0.125, ahead: [&[]; 2] };
            attend_run_with(kernel, &run, &mut sa);
            attend_run_scalar(&run, &mut sb, kernel.lanes());
            for h in 0..heads {
                assert_eq!(sa.m[h].to_bits(), sb.m[h].to_bits(), "{kernel:?} run {r}: max");
                assert_eq!(sa.l[h].to_bits(), sb.l[h].to_bits(), "{kernel:?} run {r}: denominator");
            }
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(sa.acc), bits(sb.acc), "{kernel:?} run {r}: sums");
        }
        // Scores: slot 0 in [8, 16], slot 150 in [24, 48], the rest within ±2: the max moved
        // in runs 0 and 4 only.
        assert!((24.0..=48.0).contains(&sa.m[0]), "slot 150 holds the max: {}", sa.m[0]);
    }
}
