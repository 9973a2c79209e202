//! Tiled prompt attention: the SIMD body against the scalar reference (the same bits), and
//! both against attention in f64, on random data with odd head sizes and lane ranges.

use ferrite_kernels::cpu::attn::HeadKv;
use ferrite_kernels::cpu::attn_tile::{finish, update, update_scalar, State, Tile, TILE};
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[test]
fn simd_tile_matches_scalar_and_f64() {
    let mut rng = StdRng::seed_from_u64(5);
    // (key dim, value dim)
    for &(dk, dv) in &[(64usize, 64usize), (128, 128), (256, 256), (24, 40), (12, 20), (8, 13), (80, 72)] {
        let keys = 5 * TILE;
        let (ks, vs) = (2 * dk + 3, 2 * dv + 1); // two KV heads, padded slot strides
        let k: Vec<u16> =
            (0..keys * ks).map(|_| f16::from_f32(rng.random_range(-2.0f32..2.0)).to_bits()).collect();
        let v: Vec<u16> =
            (0..keys * vs).map(|_| f16::from_f32(rng.random_range(-2.0f32..2.0)).to_bits()).collect();
        let kv = HeadKv { k: &k, v: &v, k_stride: ks, v_stride: vs, k_off: dk, v_off: dv };
        // Keys scattered over the cache: position t in slot (7t + 3) mod keys.
        let slot = |t: usize| (7 * t + 3) % keys;
        let q: Vec<f32> = (0..dk).map(|_| rng.random_range(-1.5f32..1.5)).collect();
        let scale = 1.0 / (dk as f32).sqrt();
        // Key ranges [first, end): a window starting inside a tile, a range ending inside one,
        // a single key, whole tiles.
        for &(first, end) in
            &[(0usize, 1usize), (0, 64), (5, 200), (70, 71), (63, 65), (100, 5 * TILE), (0, 130)]
        {
            let (mut a, mut b) = (vec![0f32; dv], vec![0f32; dv]);
            let (mut sa, mut sb) = (State::new(&mut a), State::new(&mut b));
            let mut tile = Tile::default();
            for t0 in (first / TILE * TILE..end).step_by(TILE) {
                let lanes = first.max(t0) - t0..end.min(t0 + TILE) - t0;
                tile.load(&kv, dk, dv, lanes.clone(), |j| slot(t0 + j));
                update(&q, &tile, lanes.clone(), scale, &mut sa);
                update_scalar(&q, &tile, lanes, scale, &mut sb);
            }
            let what = format!("dk={dk} dv={dv} keys {first}..{end}");
            assert_eq!(sa.m.to_bits(), sb.m.to_bits(), "{what}: max");
            assert_eq!(sa.s.to_bits(), sb.s.to_bits(), "{what}: sum");
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(sa.acc), bits(sb.acc), "{what}: accumulators");
            let mut out = vec![0f32; dv];
            finish(&sa, &mut out);
            // Attention in f64 over the same f16 keys and values.
            let h = |x: u16| f64::from(f16::from_bits(x).to_f32());
            let key = |t: usize| &k[slot(t) * ks + dk..][..dk];
            let val = |t: usize| &v[slot(t) * vs + dv..][..dv];
            let s: Vec<f64> = (first..end)
                .map(|t| {
                    key(t).iter().zip(&q).map(|(&k, &q)| h(k) * f64::from(q)).sum::<f64>() * f64::from(scale)
                })
                .collect();
            let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = s.iter().map(|s| (s - mx).exp()).collect();
            let z: f64 = w.iter().sum();
            for (d, &o) in out.iter().enumerate() {
                let want = (first..end).zip(&w).map(|(t, w)| w * h(val(t)[d])).sum::<f64>() / z;
                assert!((f64::from(o) - want).abs() < 1e-5, "{what}: output {d}: {o} vs {want}");
            }
        }
    }
}
