//! Elementwise math shared by the CPU kernels and mirrored by the GPU shaders: an
//! exponential with a fixed evaluation order (so every backend computes the same bits, which
//! libm's `expf` does not promise) and SiLU built on it. Each has a scalar reference and an
//! AVX2+FMA body that gives the same bits.

/// `e^x` for `x ≤ 88` (Cephes-style: `x = n·ln2 + r` in two steps, a degree-6 polynomial for
/// `e^r` by fused multiply-adds, then `2^n` through the exponent bits); within about 1 ulp,
/// exactly 1 at 0; clamped below at −87 (so `e^−∞` is about 1.6e-38, not 0).
#[inline]
pub fn exp(x: f32) -> f32 {
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = (-n).mul_add(0.693_359_4, x);
    let r = (-n).mul_add(-2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4f32;
    for c in EXP_POLY {
        p = p.mul_add(r, c);
    }
    let p = p.mul_add(r * r, r + 1.0);
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

const EXP_POLY: [f32; 5] = [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];

/// SiLU, `x / (1 + e^−x)`, with [`exp`] (its argument capped at 88: below x = −88 the
/// result is a tiny negative number instead of −0).
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp((-x).min(88.0)))
}

/// `g[i] = silu(g[i]) · u[i]`, the SiLU-gated FFN activation.
pub fn silu_mul(g: &mut [f32], u: &[f32]) {
    assert_eq!(g.len(), u.len(), "gate and up lengths");
    #[cfg(target_arch = "x86_64")]
    if super::use_avx2() {
        // SAFETY: `use_avx2` detected avx2, fma and f16c.
        return unsafe { avx2::silu_mul(g, u) };
    }
    silu_mul_scalar(g, u)
}

/// The scalar reference of [`silu_mul`].
pub fn silu_mul_scalar(g: &mut [f32], u: &[f32]) {
    g.iter_mut().zip(u).for_each(|(g, u)| *g = silu(*g) * u);
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    /// Eight lanes of [`super::exp`], the same operations in the same order.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(crate) fn exp(x: __m256) -> __m256 {
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in super::EXP_POLY {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let r2 = _mm256_mul_ps(r, r);
        let p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
        _mm256_mul_ps(p, _mm256_castsi256_ps(pow2))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn silu_mul(g: &mut [f32], u: &[f32]) {
        let mut gc = g.chunks_exact_mut(8);
        let mut uc = u.chunks_exact(8);
        for (g8, u8) in (&mut gc).zip(&mut uc) {
            // SAFETY: both chunks hold 8 f32; loads and stores are unaligned.
            unsafe {
                let x = _mm256_loadu_ps(g8.as_ptr());
                let neg = _mm256_min_ps(_mm256_sub_ps(_mm256_setzero_ps(), x), _mm256_set1_ps(88.0));
                let s = _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), exp(neg)));
                _mm256_storeu_ps(g8.as_mut_ptr(), _mm256_mul_ps(s, _mm256_loadu_ps(u8.as_ptr())));
            }
        }
        super::silu_mul_scalar(gc.into_remainder(), uc.remainder());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn inputs() -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut v: Vec<f32> = (0..20_000).map(|_| rng.random_range(-100.0f32..100.0)).collect();
        v.extend((0..20_000).map(|_| rng.random_range(-1.0f32..1.0) * 10f32.powi(rng.random_range(-8..2))));
        v.extend([0.0, -0.0, 1.0, -1.0, 88.0, -87.0, -88.5, -1e30, f32::NEG_INFINITY, 87.99]);
        v
    }

    /// The SIMD exponential and SiLU give the scalar reference's bits; the exponential is
    /// within 2 ulp of libm's over its range.
    #[test]
    fn exp_and_silu_simd_match_scalar() {
        let x = inputs();
        for &v in &x {
            if (-87.0..=88.0).contains(&v) {
                let (a, b) = (exp(v), v.exp());
                let ulp = (a.to_bits() as i64 - b.to_bits() as i64).abs();
                assert!(ulp <= 2, "exp({v}) = {a}, libm {b}");
            }
        }
        assert_eq!(exp(0.0), 1.0);
        let u: Vec<f32> = x.iter().map(|v| 0.5 + v.abs().min(3.0)).collect();
        let (mut a, mut b) = (x.clone(), x.clone());
        silu_mul(&mut a, &u);
        silu_mul_scalar(&mut b, &u);
        for ((a, b), v) in a.iter().zip(&b).zip(&x) {
            assert_eq!(a.to_bits(), b.to_bits(), "silu({v})");
        }
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::use_avx2() {
            use std::arch::x86_64::*;
            for c in x.chunks_exact(8) {
                let mut out = [0f32; 8];
                // SAFETY: avx2/fma/f16c detected above; `c` and `out` hold 8 f32.
                unsafe {
                    let v = _mm256_loadu_ps(c.as_ptr());
                    _mm256_storeu_ps(out.as_mut_ptr(), avx2::exp(_mm256_min_ps(v, _mm256_set1_ps(88.0))));
                }
                for (o, v) in out.iter().zip(c) {
                    assert_eq!(o.to_bits(), exp(v.min(88.0)).to_bits(), "exp({v})");
                }
            }
        }
    }
}
