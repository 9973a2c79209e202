//! Elementwise math shared by the CPU kernels and mirrored by the GPU shaders, each with a
//! fixed evaluation order so that every backend computes the same bits (libm's `expf` does
//! not promise that): [`exp`], the attention softmax's exponential, and [`exp_ggml`], the
//! one llama.cpp's CPU backend uses for SiLU, so that ferrite's SiLU gives its bits. Each has
//! a scalar reference and an AVX2+FMA body that gives the same bits.

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

/// The bits of 2^(i/32), glibc `expf`'s table (its `tab` with the exponent steps put back).
const EXP2_32: [u64; 32] = [
    0x3ff0000000000000,
    0x3ff059b0d3158574,
    0x3ff0b5586cf9890f,
    0x3ff11301d0125b51,
    0x3ff172b83c7d517b,
    0x3ff1d4873168b9aa,
    0x3ff2387a6e756238,
    0x3ff29e9df51fdee1,
    0x3ff306fe0a31b715,
    0x3ff371a7373aa9cb,
    0x3ff3dea64c123422,
    0x3ff44e086061892d,
    0x3ff4bfdad5362a27,
    0x3ff5342b569d4f82,
    0x3ff5ab07dd485429,
    0x3ff6247eb03a5585,
    0x3ff6a09e667f3bcd,
    0x3ff71f75e8ec5f74,
    0x3ff7a11473eb0187,
    0x3ff82589994cce13,
    0x3ff8ace5422aa0db,
    0x3ff93737b0cdc5e5,
    0x3ff9c49182a3f090,
    0x3ffa5503b23e255d,
    0x3ffae89f995ad3ad,
    0x3ffb7f76f2fb5e47,
    0x3ffc199bdd85529c,
    0x3ffcb720dcef9069,
    0x3ffd5818dcfba487,
    0x3ffdfc97337b9b5f,
    0x3ffea4afa2a490da,
    0x3fff50765b6e4540,
];

/// `e^x` for `x ≤ 0` exactly as glibc's `expf` computes it (the libm that llama.cpp's flash
/// attention calls, and whose bits the CPU backend's f16-mode attention reproduces on every
/// platform):
/// `k = round(x·32/ln2)` and `r = x·32/ln2 − k` rounded once (the constant split so that
/// both products are exact), `2^(r/32)` by glibc's cubic in f64, times `2^(k/32)`, rounded
/// once to f32. The attention's softmax factors run its AVX2 body ([`avx2::exp_glibc`], eight
/// at a time); shaders/exact_f64.wgsl's `exp_libm` mirrors it; tested here against glibc.
pub fn exp_glibc(x: f32) -> f32 {
    if x < GL_UNDERFLOW {
        return 0.0;
    }
    let xd = f64::from(x);
    let (p1, p2) = (GL_INV_LN2_HI * xd, GL_INV_LN2_LO * xd);
    let kd = (p1 + p2).round_ties_even();
    let r = (p1 - kd) + p2;
    let k = kd as i32;
    let z = GL_C[0] * r + GL_C[1];
    let y = z * (r * r) + (GL_C[2] * r + 1.0);
    let s = f64::from_bits(EXP2_32[(k & 31) as usize]) * f64::from_bits(((1023 + (k >> 5)) as u64) << 52);
    (y * s) as f32
}

/// Constants of [`exp_glibc`]: below `GL_UNDERFLOW` the result is 0; 32/ln2 in two parts
/// (each product with an f32 exact); the cubic's coefficients (highest first, times 32⁻ᵏ).
const GL_UNDERFLOW: f32 = -103.972_08;
const GL_INV_LN2_HI: f64 = 46.166_241_168_975_83;
const GL_INV_LN2_LO: f64 = 1.394_709_983_060_238_3e-7;
const GL_C: [f64; 3] = [1.693_835_925_092_021_2e-6, 2.345_980_978_950_900_4e-4, 2.166_084_939_661_313_4e-2];

/// Constants of [`exp_ggml`]: the rounding shift 1.5·2²³, log2(e), ln2 in two parts, and the
/// polynomial's coefficients (highest first).
const GG_SHIFT: f32 = 12_582_912.0;
const GG_LOG2E: f32 = f32::from_bits(0x3fb8_aa3b);
const GG_LN2_HI: f32 = f32::from_bits(0x3f31_7200);
const GG_LN2_LO: f32 = f32::from_bits(0x35bf_be8e);
const GG_C: [f32; 5] = [
    f32::from_bits(0x3c07_2010),
    f32::from_bits(0x3d2b_9f17),
    f32::from_bits(0x3e2a_af33),
    f32::from_bits(0x3eff_fedb),
    f32::from_bits(0x3f7f_fff6),
];

/// `e^x` exactly as llama.cpp's CPU backend computes it on AVX-512 machines (ggml's
/// `ggml_v_expf`, the vector SiLU's exponential, which the reference outputs were made
/// with): `n = round(x·log2 e)` by the 1.5·2²³ shift, `b = x − n·ln2` in two fused steps, a
/// degree-5 polynomial in `b` and `b²`, then `j·2ⁿ` rounded once; `|n| > 192` gives 0 or ∞.
#[inline]
pub fn exp_ggml(x: f32) -> f32 {
    let z = x.mul_add(GG_LOG2E, GG_SHIFT);
    let n = z - GG_SHIFT;
    let b = (-n).mul_add(GG_LN2_LO, (-n).mul_add(GG_LN2_HI, x));
    let u = b * b;
    let j = GG_C[0]
        .mul_add(b, GG_C[1])
        .mul_add(u, GG_C[2].mul_add(b, GG_C[3]))
        .mul_add(u, GG_C[4].mul_add(b, 1.0));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    scale_pow2(j, n as i32)
}

/// `j·2ⁿ` rounded once (AVX-512's `vscalefps`) for `|n| ≤ 192`: two exact power-of-two
/// factors, the first product exact, the second the only rounding.
#[inline]
fn scale_pow2(j: f32, n: i32) -> f32 {
    let n1 = n.div_euclid(2);
    let p = |k: i32| f32::from_bits(((k + 127) as u32) << 23);
    (j * p(n1)) * p(n - n1)
}

/// SiLU, `x / (1 + e^−x)`, with [`exp_ggml`], as llama.cpp's vector SiLU computes it.
/// (ggml evaluates the last `width mod 16` values of a row with libm's `expf` instead; no
/// supported model has such a width.)
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp_ggml(-x))
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

    /// Eight lanes of [`super::exp_ggml`], the same operations in the same order.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(crate) fn exp_ggml(x: __m256) -> __m256 {
        let shift = _mm256_set1_ps(super::GG_SHIFT);
        let z = _mm256_fmadd_ps(x, _mm256_set1_ps(super::GG_LOG2E), shift);
        let n = _mm256_sub_ps(z, shift);
        let b = _mm256_fnmadd_ps(
            n,
            _mm256_set1_ps(super::GG_LN2_LO),
            _mm256_fnmadd_ps(n, _mm256_set1_ps(super::GG_LN2_HI), x),
        );
        let u = _mm256_mul_ps(b, b);
        let c = |i: usize| _mm256_set1_ps(super::GG_C[i]);
        let j = _mm256_fmadd_ps(
            _mm256_fmadd_ps(_mm256_fmadd_ps(c(0), b, c(1)), u, _mm256_fmadd_ps(c(2), b, c(3))),
            u,
            _mm256_fmadd_ps(c(4), b, _mm256_set1_ps(1.0)),
        );
        // j·2ⁿ as two exact power-of-two factors (n clamped to ±192; beyond, 0 or ∞ below).
        let ni = _mm256_cvtps_epi32(_mm256_max_ps(
            _mm256_min_ps(n, _mm256_set1_ps(192.0)),
            _mm256_set1_ps(-192.0),
        ));
        let n1 = _mm256_srai_epi32::<1>(ni);
        let p = |k: __m256i| {
            _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(k, _mm256_set1_epi32(127))))
        };
        let res = _mm256_mul_ps(_mm256_mul_ps(j, p(n1)), p(_mm256_sub_epi32(ni, n1)));
        let abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
        let big = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(192.0));
        let alt = _mm256_blendv_ps(
            _mm256_set1_ps(f32::INFINITY),
            _mm256_setzero_ps(),
            _mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps()),
        );
        _mm256_blendv_ps(res, alt, big)
    }

    /// Eight lanes of [`super::exp_glibc`] (glibc's `expf` to the bit, for `x ≤ 0`), the same
    /// f64 operations in the same order, four lanes at a time.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(crate) fn exp_glibc(x: __m256) -> __m256 {
        let half = |x: __m128| {
            let xd = _mm256_cvtps_pd(x);
            let p1 = _mm256_mul_pd(_mm256_set1_pd(super::GL_INV_LN2_HI), xd);
            let p2 = _mm256_mul_pd(_mm256_set1_pd(super::GL_INV_LN2_LO), xd);
            let kd =
                _mm256_round_pd::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_add_pd(p1, p2));
            let r = _mm256_add_pd(_mm256_sub_pd(p1, kd), p2);
            // Integral already; NaN gives i32::MIN, whose index bits are 0 (the result stays NaN).
            let k = _mm256_cvtpd_epi32(kd);
            let c = |v: f64| _mm256_set1_pd(v);
            let z = _mm256_add_pd(_mm256_mul_pd(c(super::GL_C[0]), r), c(super::GL_C[1]));
            let y = _mm256_add_pd(
                _mm256_mul_pd(z, _mm256_mul_pd(r, r)),
                _mm256_add_pd(_mm256_mul_pd(c(super::GL_C[2]), r), c(1.0)),
            );
            let idx = _mm_and_si128(k, _mm_set1_epi32(31));
            // SAFETY: every index is in 0..32, the table's length; the gather reads 8-byte lanes.
            let t = unsafe { _mm256_i32gather_pd::<8>(super::EXP2_32.as_ptr().cast(), idx) };
            let e = _mm_add_epi32(_mm_srai_epi32::<5>(k), _mm_set1_epi32(1023));
            let p = _mm256_castsi256_pd(_mm256_slli_epi64::<52>(_mm256_cvtepi32_epi64(e)));
            _mm256_cvtpd_ps(_mm256_mul_pd(y, _mm256_mul_pd(t, p)))
        };
        let res = _mm256_set_m128(half(_mm256_extractf128_ps::<1>(x)), half(_mm256_castps256_ps128(x)));
        let tiny = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(super::GL_UNDERFLOW));
        _mm256_blendv_ps(res, _mm256_setzero_ps(), tiny)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn silu_mul(g: &mut [f32], u: &[f32]) {
        let mut gc = g.chunks_exact_mut(8);
        let mut uc = u.chunks_exact(8);
        for (g8, u8) in (&mut gc).zip(&mut uc) {
            // SAFETY: both chunks hold 8 f32; loads and stores are unaligned.
            unsafe {
                let x = _mm256_loadu_ps(g8.as_ptr());
                let e = exp_ggml(_mm256_sub_ps(_mm256_setzero_ps(), x));
                let s = _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e));
                _mm256_storeu_ps(g8.as_mut_ptr(), _mm256_mul_ps(s, _mm256_loadu_ps(u8.as_ptr())));
            }
        }
        super::silu_mul_scalar(gc.into_remainder(), uc.remainder());
    }
}

/// [`EXP2_32`] as f64 values (for the AVX-512 table permutes).
#[cfg(target_arch = "x86_64")]
const EXP2_32_F64: [f64; 32] = {
    let mut t = [0f64; 32];
    let mut i = 0;
    while i < 32 {
        t[i] = f64::from_bits(EXP2_32[i]);
        i += 1;
    }
    t
};

/// AVX-512 F bodies.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    /// Eight lanes of [`super::exp_glibc`] (glibc's `expf` to the bit, for `x ≤ 0`): the
    /// AVX2 body's f64 operations in the same order on one 512-bit vector, the table read by
    /// two two-source permutes instead of gathers.
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
    #[inline]
    pub(crate) fn exp_glibc(x: __m256) -> __m256 {
        let c = |v: f64| _mm512_set1_pd(v);
        let xd = _mm512_cvtps_pd(x);
        let p1 = _mm512_mul_pd(c(super::GL_INV_LN2_HI), xd);
        let p2 = _mm512_mul_pd(c(super::GL_INV_LN2_LO), xd);
        let kd =
            _mm512_roundscale_pd::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_add_pd(p1, p2));
        let r = _mm512_add_pd(_mm512_sub_pd(p1, kd), p2);
        // Integral already; NaN gives i32::MIN, whose index bits are 0 (the result stays NaN).
        let k = _mm512_cvtpd_epi32(kd);
        let z = _mm512_add_pd(_mm512_mul_pd(c(super::GL_C[0]), r), c(super::GL_C[1]));
        let y = _mm512_add_pd(
            _mm512_mul_pd(z, _mm512_mul_pd(r, r)),
            _mm512_add_pd(_mm512_mul_pd(c(super::GL_C[2]), r), c(1.0)),
        );
        let idx = _mm512_cvtepi32_epi64(_mm256_and_si256(k, _mm256_set1_epi32(31)));
        let tab = &super::EXP2_32_F64;
        // SAFETY: each load reads 8 f64 of the 32-entry table (offsets 0, 8, 16, 24).
        let part = |i: usize| unsafe { _mm512_loadu_pd(tab[8 * i..8 * i + 8].as_ptr()) };
        let lo = _mm512_permutex2var_pd(part(0), idx, part(1));
        let hi = _mm512_permutex2var_pd(part(2), idx, part(3));
        let t = _mm512_mask_blend_pd(_mm512_test_epi64_mask(idx, _mm512_set1_epi64(16)), lo, hi);
        let e = _mm256_add_epi32(_mm256_srai_epi32::<5>(k), _mm256_set1_epi32(1023));
        let p = _mm512_castsi512_pd(_mm512_slli_epi64::<52>(_mm512_cvtepi32_epi64(e)));
        let res = _mm512_cvtpd_ps(_mm512_mul_pd(y, _mm512_mul_pd(t, p)));
        let tiny = _mm256_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm256_set1_ps(super::GL_UNDERFLOW));
        _mm256_mask_blend_ps(tiny, res, _mm256_setzero_ps())
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

    /// [`exp_glibc`] (the algorithm shaders/exact_f64.wgsl mirrors) is glibc's `expf` to the
    /// bit: every 61st float in [-110, 0] and the edges (exhaustively checked once, all 1.1e9).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn exp_glibc_is_libm() {
        let mut b = (-110f32).to_bits();
        while b > 0x8000_0000 {
            let x = f32::from_bits(b);
            assert_eq!(exp_glibc(x).to_bits(), x.exp().to_bits(), "x = {x}");
            b -= 61;
        }
        for x in [0.0f32, -0.0, -1e-30, -103.97, -103.972_08, -103.98, -1e30, f32::NEG_INFINITY] {
            assert_eq!(exp_glibc(x).to_bits(), x.exp().to_bits(), "x = {x}");
        }
    }

    /// The AVX2 and AVX-512 bodies of [`exp_glibc`] give the scalar's bits: every 61st float
    /// in [-110, 0], random arguments, and the edges (NaN, −∞, −0, the underflow threshold).
    #[test]
    fn exp_glibc_simd_matches_scalar() {
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::use_avx2() {
            use std::arch::x86_64::*;
            let mut x: Vec<f32> =
                ((0x8000_0000u32..=(-110f32).to_bits()).step_by(61)).map(f32::from_bits).collect();
            x.extend(inputs().into_iter().map(|v| -v.abs()));
            x.extend([f32::NAN, f32::NEG_INFINITY, -0.0, 0.0, -103.972_08, -103.98, -87.5, -1e-40]);
            x.resize(x.len().next_multiple_of(8), -1.5);
            let wide = is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl");
            for c in x.chunks_exact(8) {
                let mut out = [[0f32; 8]; 2];
                // SAFETY: avx2/fma/f16c detected above (and AVX-512 F/VL for the second body);
                // `c` and `out` hold 8 f32.
                unsafe {
                    let v = _mm256_loadu_ps(c.as_ptr());
                    _mm256_storeu_ps(out[0].as_mut_ptr(), avx2::exp_glibc(v));
                    _mm256_storeu_ps(
                        out[1].as_mut_ptr(),
                        if wide { avx512::exp_glibc(v) } else { avx2::exp_glibc(v) },
                    );
                }
                for out in &out {
                    for (o, v) in out.iter().zip(c) {
                        let want = exp_glibc(*v);
                        assert!(
                            o.to_bits() == want.to_bits() || (o.is_nan() && want.is_nan()),
                            "exp_glibc({v})"
                        );
                    }
                }
            }
        }
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
                let (mut out, mut out_g) = ([0f32; 8], [0f32; 8]);
                // SAFETY: avx2/fma/f16c detected above; `c` and `out` hold 8 f32.
                unsafe {
                    let v = _mm256_loadu_ps(c.as_ptr());
                    _mm256_storeu_ps(out.as_mut_ptr(), avx2::exp(_mm256_min_ps(v, _mm256_set1_ps(88.0))));
                    _mm256_storeu_ps(out_g.as_mut_ptr(), avx2::exp_ggml(v));
                }
                for ((o, g), v) in out.iter().zip(&out_g).zip(c) {
                    assert_eq!(o.to_bits(), exp(v.min(88.0)).to_bits(), "exp({v})");
                    assert_eq!(g.to_bits(), exp_ggml(*v).to_bits(), "exp_ggml({v})");
                }
            }
        }
    }

    /// ggml's exponential: within 2 ulp of libm where the result is normal, exact powers of
    /// two at integers, 0 and ∞ beyond its range, subnormal results rounded once.
    #[test]
    fn exp_ggml_is_accurate_and_saturates() {
        for &v in &inputs() {
            let (a, b) = (exp_ggml(v), v.exp());
            if (-87.0..=88.0).contains(&v) {
                let ulp = (a.to_bits() as i64 - b.to_bits() as i64).abs();
                assert!(ulp <= 2, "exp_ggml({v}) = {a}, libm {b}");
            }
        }
        assert_eq!(exp_ggml(0.0), 1.0);
        assert_eq!(exp_ggml(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_ggml(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_ggml(-200.0), 0.0);
        assert_eq!(exp_ggml(100.0), f32::INFINITY);
        // Subnormal range: one rounding of the exact j·2ⁿ.
        for v in [-90.0f32, -95.5, -100.25, -103.0] {
            let (a, b) = (exp_ggml(v), v.exp());
            assert!(
                a > 0.0 && (a - b).abs() <= b * 1e-2 + f32::from_bits(1),
                "exp_ggml({v}) = {a}, libm {b}"
            );
        }
    }
}
