//! Attention inner loops over an f16 KV cache: one head's query against a run of consecutive
//! cache slots, with an online softmax (no score matrix). Compiled twice, plain and with
//! AVX2+FMA+F16C (f16 loads become `vcvtph2ps`), the copy chosen once per run.
//!
//! Two accumulation modes, matching llama.cpp's CPU flash attention:
//! - f32: scores of the run first, one rescale per run, `acc += e·v` in f32;
//! - f16 (its path for batches under 64 rows): the query is pre-rounded to f16 by the
//!   caller and the running `Σ e·v` is rounded to f16 after every rescale and every
//!   multiply-add, key by key.

use half::f16;

/// Where one head's keys and values live in the cache: f16 bits, `*_stride` values per slot,
/// the head's first value at `*_off` within a slot.
#[derive(Clone, Copy, Debug)]
pub struct HeadKv<'a> {
    pub k: &'a [u16],
    pub v: &'a [u16],
    pub k_stride: usize,
    pub v_stride: usize,
    pub k_off: usize,
    pub v_off: usize,
}

/// Running online-softmax state of one head: max score, denominator, `Σ e·v`.
#[derive(Debug)]
pub struct Online<'a> {
    pub m: f32,
    pub l: f32,
    pub acc: &'a mut [f32],
}

impl<'a> Online<'a> {
    /// An empty state over `acc` (zeroed here).
    pub fn new(acc: &'a mut [f32]) -> Self {
        acc.fill(0.0);
        Self { m: f32::NEG_INFINITY, l: 0.0, acc }
    }
}

/// Most slots in one run (a KV cache block).
pub const MAX_RUN: usize = 64;

/// Adds slots `slot0..slot0 + n` (`n <= MAX_RUN`) to `st`: scores `q·k · scale`.
pub fn attend_run(
    q: &[f32],
    kv: &HeadKv,
    slot0: usize,
    n: usize,
    scale: f32,
    f16_accum: bool,
    st: &mut Online,
) {
    assert!(n <= MAX_RUN, "run of {n} slots");
    let dk = q.len();
    let dv = st.acc.len();
    assert!((slot0 + n).saturating_sub(1) * kv.k_stride + kv.k_off + dk <= kv.k.len() || n == 0, "keys");
    assert!((slot0 + n).saturating_sub(1) * kv.v_stride + kv.v_off + dv <= kv.v.len() || n == 0, "values");
    #[cfg(target_arch = "x86_64")]
    if super::use_avx2() && dk.is_multiple_of(8) && dv.is_multiple_of(8) {
        // SAFETY: `use_avx2` detected avx2, fma and f16c.
        return unsafe { avx2::run(q, kv, slot0, n, scale, f16_accum, st) };
    }
    run_body(q, kv, slot0, n, scale, f16_accum, st)
}

/// Force the scalar body (tests compare it with the SIMD one).
pub fn attend_run_scalar(
    q: &[f32],
    kv: &HeadKv,
    slot0: usize,
    n: usize,
    scale: f32,
    f16_accum: bool,
    st: &mut Online,
) {
    run_body(q, kv, slot0, n, scale, f16_accum, st)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{HeadKv, Online, MAX_RUN};
    use std::arch::x86_64::*;

    /// Eight f16 values at `p[i..]` as f32.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn ld16(p: &[u16], i: usize) -> __m256 {
        let s = &p[i..i + 8];
        // SAFETY: `s` holds 8 readable u16; the load is unaligned.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(s.as_ptr().cast()) })
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn ld(p: &[f32], i: usize) -> __m256 {
        let s = &p[i..i + 8];
        // SAFETY: `s` holds 8 readable f32; the load is unaligned.
        unsafe { _mm256_loadu_ps(s.as_ptr()) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn st(p: &mut [f32], i: usize, v: __m256) {
        let s = &mut p[i..i + 8];
        // SAFETY: `s` holds 8 writable f32; the store is unaligned.
        unsafe { _mm256_storeu_ps(s.as_mut_ptr(), v) }
    }

    /// f32 → f16 → f32 (round to nearest even), as a f16 store and reload would.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn round16(v: __m256) -> __m256 {
        _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn dot(q: &[f32], k: &[u16]) -> f32 {
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= q.len() {
            a0 = _mm256_fmadd_ps(ld(q, i), ld16(k, i), a0);
            a1 = _mm256_fmadd_ps(ld(q, i + 8), ld16(k, i + 8), a1);
            i += 16;
        }
        if i < q.len() {
            a0 = _mm256_fmadd_ps(ld(q, i), ld16(k, i), a0);
        }
        hsum(_mm256_add_ps(a0, a1))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn run(
        q: &[f32],
        kv: &HeadKv,
        slot0: usize,
        n: usize,
        scale: f32,
        f16_accum: bool,
        o: &mut Online,
    ) {
        let dk = q.len();
        let dv = o.acc.len();
        let key = |j: usize| &kv.k[(slot0 + j) * kv.k_stride + kv.k_off..][..dk];
        let val = |j: usize| &kv.v[(slot0 + j) * kv.v_stride + kv.v_off..][..dv];
        if f16_accum {
            for j in 0..n {
                let s = dot(q, key(j)) * scale;
                let (mut ms, mut vs) = (1f32, 1f32);
                if s > o.m {
                    ms = (o.m - s).exp();
                    o.m = s;
                    let c = _mm256_set1_ps(ms);
                    for i in (0..dv).step_by(8) {
                        st(o.acc, i, round16(_mm256_mul_ps(ld(o.acc, i), c)));
                    }
                } else {
                    vs = (s - o.m).exp();
                }
                let e = _mm256_set1_ps(vs);
                let v = val(j);
                for i in (0..dv).step_by(8) {
                    st(o.acc, i, round16(_mm256_fmadd_ps(ld16(v, i), e, ld(o.acc, i))));
                }
                o.l = o.l * ms + vs;
            }
            return;
        }
        let mut s = [0f32; MAX_RUN];
        for (j, s) in s[..n].iter_mut().enumerate() {
            *s = dot(q, key(j)) * scale;
        }
        let mx = s[..n].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        if mx > o.m {
            let c = (o.m - mx).exp();
            o.l *= c;
            let cv = _mm256_set1_ps(c);
            for i in (0..dv).step_by(8) {
                st(o.acc, i, _mm256_mul_ps(ld(o.acc, i), cv));
            }
            o.m = mx;
        }
        for (j, &s) in s[..n].iter().enumerate() {
            let e = (s - o.m).exp();
            o.l += e;
            let (ev, v) = (_mm256_set1_ps(e), val(j));
            for i in (0..dv).step_by(8) {
                st(o.acc, i, _mm256_fmadd_ps(ld16(v, i), ev, ld(o.acc, i)));
            }
        }
    }
}

#[inline(always)]
fn h2f(x: u16) -> f32 {
    f16::from_bits(x).to_f32()
}

#[inline(always)]
fn round16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// `Σ q·k` in 8 lanes (vectorizes without reassociation flags).
#[inline(always)]
fn dot(q: &[f32], k: &[u16]) -> f32 {
    let mut acc = [0f32; 8];
    let (qc, kc) = (q.chunks_exact(8), k.chunks_exact(8));
    let (qt, kt) = (qc.remainder(), kc.remainder());
    for (q8, k8) in qc.zip(kc) {
        for l in 0..8 {
            acc[l] = q8[l].mul_add(h2f(k8[l]), acc[l]);
        }
    }
    let tail: f32 = qt.iter().zip(kt).map(|(a, b)| a * h2f(*b)).sum();
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn run_body(q: &[f32], kv: &HeadKv, slot0: usize, n: usize, scale: f32, f16_accum: bool, st: &mut Online) {
    let dk = q.len();
    let dv = st.acc.len();
    let key = |j: usize| &kv.k[(slot0 + j) * kv.k_stride + kv.k_off..][..dk];
    let val = |j: usize| &kv.v[(slot0 + j) * kv.v_stride + kv.v_off..][..dv];
    if f16_accum {
        for j in 0..n {
            let s = dot(q, key(j)) * scale;
            let (mut ms, mut vs) = (1f32, 1f32);
            if s > st.m {
                ms = (st.m - s).exp();
                st.m = s;
                st.acc.iter_mut().for_each(|a| *a = round16(*a * ms));
            } else {
                vs = (s - st.m).exp();
            }
            st.acc.iter_mut().zip(val(j)).for_each(|(a, &v)| *a = round16(h2f(v).mul_add(vs, *a)));
            st.l = st.l * ms + vs;
        }
        return;
    }
    let mut s = [0f32; MAX_RUN];
    for (j, s) in s[..n].iter_mut().enumerate() {
        *s = dot(q, key(j)) * scale;
    }
    let mx = s[..n].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    if mx > st.m {
        let c = (st.m - mx).exp();
        st.l *= c;
        st.acc.iter_mut().for_each(|a| *a *= c);
        st.m = mx;
    }
    for (j, &s) in s[..n].iter().enumerate() {
        let e = (s - st.m).exp();
        st.l += e;
        st.acc.iter_mut().zip(val(j)).for_each(|(a, &v)| *a = h2f(v).mul_add(e, *a));
    }
}
