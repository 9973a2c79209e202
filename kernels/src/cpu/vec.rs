//! f32 vector primitives for the non-matmul ops (attention, norms): dot, axpy, scale.
//! Written with 8 independent lanes so they vectorize without reassociation, compiled
//! twice (plain and AVX2+FMA) and dispatched once per process.

use std::sync::OnceLock;

#[inline(always)]
fn dot_generic(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let lanes = n / 8 * 8;
    let mut acc = [0f32; 8];
    for i in (0..lanes).step_by(8) {
        for l in 0..8 {
            acc[l] = a[i + l].mul_add(b[i + l], acc[l]);
        }
    }
    let tail: f32 = (lanes..n).map(|i| a[i] * b[i]).sum();
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn axpy_generic(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y = x.mul_add(a, *y);
    }
}

#[inline(always)]
fn scale_generic(y: &mut [f32], s: f32) {
    for y in y.iter_mut() {
        *y *= s;
    }
}

struct Kernels {
    dot: fn(&[f32], &[f32]) -> f32,
    axpy: fn(&mut [f32], f32, &[f32]),
    scale: fn(&mut [f32], f32),
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    #[target_feature(enable = "avx2,fma")]
    fn dot_impl(a: &[f32], b: &[f32]) -> f32 {
        super::dot_generic(a, b)
    }
    #[target_feature(enable = "avx2,fma")]
    fn axpy_impl(y: &mut [f32], a: f32, x: &[f32]) {
        super::axpy_generic(y, a, x)
    }
    #[target_feature(enable = "avx2,fma")]
    fn scale_impl(y: &mut [f32], s: f32) {
        super::scale_generic(y, s)
    }
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: selected only after detecting avx2 and fma (see `kernels`).
        unsafe { dot_impl(a, b) }
    }
    pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        // SAFETY: selected only after detecting avx2 and fma (see `kernels`).
        unsafe { axpy_impl(y, a, x) }
    }
    pub fn scale(y: &mut [f32], s: f32) {
        // SAFETY: selected only after detecting avx2 and fma (see `kernels`).
        unsafe { scale_impl(y, s) }
    }
}

fn kernels() -> &'static Kernels {
    static K: OnceLock<Kernels> = OnceLock::new();
    K.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Kernels { dot: avx2::dot, axpy: avx2::axpy, scale: avx2::scale };
        }
        Kernels { dot: dot_generic, axpy: axpy_generic, scale: scale_generic }
    })
}

/// Σ a[i]·b[i] over the shorter length.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    (kernels().dot)(a, b)
}

/// y += a·x.
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    (kernels().axpy)(y, a, x)
}

/// y *= s.
pub fn scale(y: &mut [f32], s: f32) {
    (kernels().scale)(y, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_scalar_on_odd_lengths() {
        for n in [1usize, 7, 8, 9, 63, 64, 65, 257] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 17) as f32 - 8.0) * 0.37).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 11 % 13) as f32 - 6.0) * 1.3).collect();
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - exact).abs() < 1e-4 * (1.0 + exact.abs()), "dot n={n}");
            let mut y = b.clone();
            axpy(&mut y, 0.5, &a);
            for i in 0..n {
                assert!((y[i] - (b[i] + 0.5 * a[i])).abs() < 1e-5);
            }
            scale(&mut y, 2.0);
            assert!((y[0] - 2.0 * (b[0] + 0.5 * a[0])).abs() < 1e-5);
        }
    }
}
