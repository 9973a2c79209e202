//! Reductions over a row of logits for sampling: max, argmax, log-sum-exp, and the
//! exponentiated weights a sampler draws from. Each has a
//! scalar reference and an AVX2 body chosen at run time (a 152k vocabulary is scanned once
//! or twice per generated token, so a scalar libm `exp` per logit cost ~0.5 ms a token).

/// The largest value (−∞ for an empty row; NaNs are skipped).
pub fn max(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::use_avx2() {
        // SAFETY: `use_avx2` detected avx2, fma and f16c.
        return unsafe { avx2::max(x) };
    }
    max_scalar(x)
}

/// Scalar reference of [`max`].
pub fn max_scalar(x: &[f32]) -> f32 {
    x.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Index of the largest value, lowest index on ties (0 for an empty row).
pub fn argmax(x: &[f32]) -> usize {
    let m = max(x);
    #[cfg(target_arch = "x86_64")]
    if super::use_avx2() {
        // SAFETY: `use_avx2` detected avx2, fma and f16c.
        return unsafe { avx2::position(x, m) }.unwrap_or(0);
    }
    x.iter().position(|&v| v == m).unwrap_or(0)
}

/// Scalar reference of [`argmax`].
pub fn argmax_scalar(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// `ln Σ e^x`, given `m = max(x)` (the shift that keeps every term ≤ 1).
pub fn log_sum_exp(x: &[f32], m: f32) -> f32 {
    if !m.is_finite() {
        return m;
    }
    #[cfg(target_arch = "x86_64")]
    if super::use_avx2() {
        // SAFETY: `use_avx2` detected avx2, fma and f16c.
        return m + unsafe { avx2::sum_exp(x, m) }.ln() as f32;
    }
    log_sum_exp_scalar(x, m)
}

/// Scalar reference of [`log_sum_exp`] (libm `exp`, f64 sum).
pub fn log_sum_exp_scalar(x: &[f32], m: f32) -> f32 {
    if !m.is_finite() {
        return m;
    }
    m + x.iter().map(|&v| ((v - m) as f64).exp()).sum::<f64>().ln() as f32
}

/// Replaces each `x` by its sampling weight `e^((x − m)·scale)` and returns their sum
/// (in f64). `m` is the row's max, `scale` the inverse temperature.
pub fn exp_scaled(x: &mut [f32], m: f32, scale: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if super::use_avx2() {
        // SAFETY: `use_avx2` detected avx2, fma and f16c.
        return unsafe { avx2::exp_scaled(x, m, scale) };
    }
    exp_scaled_scalar(x, m, scale)
}

/// Scalar reference of [`exp_scaled`] (libm `exp`).
pub fn exp_scaled_scalar(x: &mut [f32], m: f32, scale: f32) -> f64 {
    let mut sum = 0f64;
    for v in x.iter_mut() {
        *v = ((*v - m) * scale).exp();
        sum += *v as f64;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::math::avx2::exp;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn max(x: &[f32]) -> f32 {
        let chunks = x.chunks_exact(32);
        let tail = chunks.remainder();
        let mut acc = [_mm256_set1_ps(f32::NEG_INFINITY); 4];
        for c in chunks {
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: `c` holds 32 readable f32; the load is unaligned.
                let v = unsafe { _mm256_loadu_ps(c[8 * k..].as_ptr()) };
                // `max(v, a)` keeps `a` where `v` is NaN.
                *a = _mm256_max_ps(v, *a);
            }
        }
        let a = _mm256_max_ps(_mm256_max_ps(acc[0], acc[1]), _mm256_max_ps(acc[2], acc[3]));
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 writable f32.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), a) };
        lanes.iter().chain(tail).copied().fold(f32::NEG_INFINITY, f32::max)
    }

    /// `Σ e^(x - m)`: f32 terms in 4×8 lanes, moved into f64 every 256 values so a long
    /// row loses no precision.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn sum_exp(x: &[f32], m: f32) -> f64 {
        let chunks = x.chunks_exact(32);
        let tail = chunks.remainder();
        let mv = _mm256_set1_ps(m);
        let mut total = [_mm256_setzero_pd(); 2];
        let mut acc = [_mm256_setzero_ps(); 4];
        for (i, c) in chunks.enumerate() {
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: `c` holds 32 readable f32; the load is unaligned.
                let v = unsafe { _mm256_loadu_ps(c[8 * k..].as_ptr()) };
                *a = _mm256_add_ps(*a, exp(_mm256_sub_ps(v, mv)));
            }
            if i % 8 == 7 {
                flush(&mut acc, &mut total);
            }
        }
        flush(&mut acc, &mut total);
        let mut lanes = [0f64; 4];
        // SAFETY: `lanes` holds 4 writable f64.
        unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), _mm256_add_pd(total[0], total[1])) };
        lanes.iter().sum::<f64>() + tail.iter().map(|&v| ((v - m) as f64).exp()).sum::<f64>()
    }

    /// In place `x ← e^((x − m)·scale)`, summed as in [`sum_exp`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn exp_scaled(x: &mut [f32], m: f32, scale: f32) -> f64 {
        let mut chunks = x.chunks_exact_mut(32);
        let (mv, sv) = (_mm256_set1_ps(m), _mm256_set1_ps(scale));
        let mut total = [_mm256_setzero_pd(); 2];
        let mut acc = [_mm256_setzero_ps(); 4];
        for (i, c) in chunks.by_ref().enumerate() {
            for (k, a) in acc.iter_mut().enumerate() {
                let p = c[8 * k..].as_mut_ptr();
                // SAFETY: `c` holds 32 f32, so p..p+8 is in bounds; unaligned load and store.
                unsafe {
                    let t = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(p), mv), sv);
                    // Below e^-87 (masked logits at −∞ included) the weight is exactly 0.
                    let live = _mm256_cmp_ps::<_CMP_GE_OQ>(t, _mm256_set1_ps(-87.0));
                    let e = _mm256_and_ps(exp(t), live);
                    _mm256_storeu_ps(p, e);
                    *a = _mm256_add_ps(*a, e);
                }
            }
            if i % 8 == 7 {
                flush(&mut acc, &mut total);
            }
        }
        flush(&mut acc, &mut total);
        let mut lanes = [0f64; 4];
        // SAFETY: `lanes` holds 4 writable f64.
        unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), _mm256_add_pd(total[0], total[1])) };
        lanes.iter().sum::<f64>() + super::exp_scaled_scalar(chunks.into_remainder(), m, scale)
    }

    /// Adds the f32 lanes of `acc` into the f64 lanes of `total` and clears them.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn flush(acc: &mut [__m256; 4], total: &mut [__m256d; 2]) {
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        total[0] = _mm256_add_pd(total[0], _mm256_cvtps_pd(_mm256_castps256_ps128(s)));
        total[1] = _mm256_add_pd(total[1], _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(s)));
        *acc = [_mm256_setzero_ps(); 4];
    }

    /// Index of the first value equal to `m`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn position(x: &[f32], m: f32) -> Option<usize> {
        let mv = _mm256_set1_ps(m);
        let chunks = x.chunks_exact(8);
        let tail = chunks.remainder();
        for (i, c) in chunks.enumerate() {
            // SAFETY: `c` holds 8 readable f32; the load is unaligned.
            let v = unsafe { _mm256_loadu_ps(c.as_ptr()) };
            let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(v, mv));
            if hit != 0 {
                return Some(8 * i + hit.trailing_zeros() as usize);
            }
        }
        tail.iter().position(|&v| v == m).map(|p| x.len() - tail.len() + p)
    }
}
