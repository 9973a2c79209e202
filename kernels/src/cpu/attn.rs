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

/// Running online-softmax states of up to [`MAX_HEADS`] heads: max score and denominator
/// per head, and `Σ e·v` as `heads × dv` values.
#[derive(Debug)]
pub struct Online<'a> {
    pub heads: usize,
    pub m: [f32; MAX_HEADS],
    pub l: [f32; MAX_HEADS],
    pub acc: &'a mut [f32],
}

impl<'a> Online<'a> {
    /// Empty states for `heads` heads over `acc` (`heads × dv`, zeroed here).
    pub fn new(heads: usize, acc: &'a mut [f32]) -> Self {
        assert!((1..=MAX_HEADS).contains(&heads) && acc.len().is_multiple_of(heads), "state shape");
        acc.fill(0.0);
        Self { heads, m: [f32::NEG_INFINITY; MAX_HEADS], l: [0.0; MAX_HEADS], acc }
    }

    /// Values per head.
    pub fn dv(&self) -> usize {
        self.acc.len() / self.heads
    }
}

/// Most slots in one run (a KV cache block).
pub const MAX_RUN: usize = 64;
/// Most query heads per call (heads sharing one KV head are taken in chunks of this).
pub const MAX_HEADS: usize = 8;

/// Adds slots `slot0..slot0 + n` (`n <= MAX_RUN`) to the states of `st.heads` query heads
/// (`q`: `heads × dk`, contiguous) that share one KV head: scores `q·k · scale`. Each key
/// and value is loaded and converted once for all of them.
#[allow(clippy::too_many_arguments)]
pub fn attend_run(
    q: &[f32],
    dk: usize,
    kv: &HeadKv,
    slot0: usize,
    n: usize,
    scale: f32,
    f16_accum: bool,
    st: &mut Online,
) {
    assert!(n <= MAX_RUN && q.len() == st.heads * dk, "run shape");
    let dv = st.dv();
    if n == 0 {
        return;
    }
    assert!((slot0 + n - 1) * kv.k_stride + kv.k_off + dk <= kv.k.len(), "keys out of range");
    assert!((slot0 + n - 1) * kv.v_stride + kv.v_off + dv <= kv.v.len(), "values out of range");
    #[cfg(target_arch = "x86_64")]
    if super::use_avx2() && dk.is_multiple_of(8) && dv.is_multiple_of(8) {
        // SAFETY: `use_avx2` detected avx2, fma and f16c.
        return unsafe { avx2::run(q, dk, kv, slot0, n, scale, f16_accum, st) };
    }
    attend_run_scalar(q, dk, kv, slot0, n, scale, f16_accum, st)
}

/// The scalar reference of [`attend_run`]: head by head, key by key, libm `exp`.
#[allow(clippy::too_many_arguments)]
pub fn attend_run_scalar(
    q: &[f32],
    dk: usize,
    kv: &HeadKv,
    slot0: usize,
    n: usize,
    scale: f32,
    f16_accum: bool,
    st: &mut Online,
) {
    let dv = st.dv();
    for h in 0..st.heads {
        let acc = &mut st.acc[h * dv..(h + 1) * dv];
        run_body(&q[h * dk..(h + 1) * dk], kv, slot0, n, scale, f16_accum, &mut st.m[h], &mut st.l[h], acc)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{HeadKv, Online, MAX_HEADS, MAX_RUN};
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

    /// `e^x` for x ≤ 0 (Cephes-style: `x = n·ln2 + r`, a degree-6 polynomial for `e^r`,
    /// then `2^n` through the exponent bits); about 1 ulp, exactly 1 at 0, ~0 at −∞.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn exp(x: __m256) -> __m256 {
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let r2 = _mm256_mul_ps(r, r);
        let p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
        _mm256_mul_ps(p, _mm256_castsi256_ps(pow2))
    }

    /// `e^x` for each of `xs[..n]` (rounded up to a multiple of 8), in place.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn exp_slice(xs: &mut [f32], n: usize) {
        let mut i = 0;
        while i < n {
            st(xs, i, exp(ld(xs, i)));
            i += 8;
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run(
        q: &[f32],
        dk: usize,
        kv: &HeadKv,
        slot0: usize,
        n: usize,
        scale: f32,
        f16_accum: bool,
        o: &mut Online,
    ) {
        match o.heads {
            1 => heads::<1>(q, dk, kv, slot0, n, scale, f16_accum, o),
            2 => heads::<2>(q, dk, kv, slot0, n, scale, f16_accum, o),
            3 => heads::<3>(q, dk, kv, slot0, n, scale, f16_accum, o),
            4 => heads::<4>(q, dk, kv, slot0, n, scale, f16_accum, o),
            5 => heads::<5>(q, dk, kv, slot0, n, scale, f16_accum, o),
            6 => heads::<6>(q, dk, kv, slot0, n, scale, f16_accum, o),
            7 => heads::<7>(q, dk, kv, slot0, n, scale, f16_accum, o),
            _ => heads::<8>(q, dk, kv, slot0, n, scale, f16_accum, o),
        }
    }

    /// Per-head, per-key factors: `[head][key]`.
    type Rows = [[f32; MAX_RUN]; MAX_HEADS];

    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    fn heads<const NH: usize>(
        q: &[f32],
        dk: usize,
        kv: &HeadKv,
        slot0: usize,
        n: usize,
        scale: f32,
        f16_accum: bool,
        o: &mut Online,
    ) {
        let dv = o.dv();
        let key = |j: usize| &kv.k[(slot0 + j) * kv.k_stride + kv.k_off..][..dk];
        let val = |j: usize| &kv.v[(slot0 + j) * kv.v_stride + kv.v_off..][..dv];
        // 1. Scores: each key converted once for every head.
        let mut s: Rows = [[0f32; MAX_RUN]; MAX_HEADS];
        #[allow(clippy::needless_range_loop)] // `j` indexes the rows of every head
        for j in 0..n {
            let k = key(j);
            let mut acc = [_mm256_setzero_ps(); NH];
            for i in (0..dk).step_by(8) {
                let k8 = ld16(k, i);
                for (h, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(ld(q, h * dk + i), k8, *acc);
                }
            }
            for (h, acc) in acc.iter().enumerate() {
                s[h][j] = hsum(*acc) * scale;
            }
        }
        // 2. Softmax factors: `vs` weights the value, `ms` rescales the running sum first.
        let mut vs: Rows = [[0f32; MAX_RUN]; MAX_HEADS];
        let mut ms: Rows = [[0f32; MAX_RUN]; MAX_HEADS];
        let mut rescale = [false; MAX_RUN];
        for h in 0..NH {
            let (m, l) = (&mut o.m[h], &mut o.l[h]);
            if f16_accum {
                // Key by key as llama.cpp: a new max rescales the (rounded) sum, otherwise
                // the value is weighted by e^(s - m).
                for j in 0..n {
                    if s[h][j] > *m {
                        (ms[h][j], vs[h][j]) = (*m - s[h][j], 0.0);
                        *m = s[h][j];
                        rescale[j] = true;
                    } else {
                        (ms[h][j], vs[h][j]) = (0.0, s[h][j] - *m);
                    }
                }
                exp_slice(&mut ms[h], n);
                exp_slice(&mut vs[h], n);
                for j in 0..n {
                    *l = *l * ms[h][j] + vs[h][j];
                }
            } else {
                // One rescale for the whole run.
                let mx = s[h][..n].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let c = if mx > *m { (*m - mx).exp() } else { 1.0 };
                *m = m.max(mx);
                *l *= c;
                ms[h][0] = c;
                for j in 0..n {
                    vs[h][j] = s[h][j] - *m;
                }
                exp_slice(&mut vs[h], n);
                *l += vs[h][..n].iter().sum::<f32>();
            }
        }
        // 3. Σ e·v, eight outputs at a time held in registers across the keys; each value
        // converted once for every head.
        for i in (0..dv).step_by(8) {
            let mut acc = [_mm256_setzero_ps(); NH];
            for (h, acc) in acc.iter_mut().enumerate() {
                *acc = ld(&o.acc[h * dv..], i);
                if !f16_accum {
                    *acc = _mm256_mul_ps(*acc, _mm256_set1_ps(ms[h][0]));
                }
            }
            for j in 0..n {
                let v8 = ld16(val(j), i);
                for (h, acc) in acc.iter_mut().enumerate() {
                    if f16_accum {
                        if rescale[j] {
                            *acc = round16(_mm256_mul_ps(*acc, _mm256_set1_ps(ms[h][j])));
                        }
                        *acc = round16(_mm256_fmadd_ps(v8, _mm256_set1_ps(vs[h][j]), *acc));
                    } else {
                        *acc = _mm256_fmadd_ps(v8, _mm256_set1_ps(vs[h][j]), *acc);
                    }
                }
            }
            for (h, acc) in acc.iter().enumerate() {
                st(&mut o.acc[h * dv..], i, *acc);
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
#[allow(clippy::too_many_arguments)]
fn run_body(
    q: &[f32],
    kv: &HeadKv,
    slot0: usize,
    n: usize,
    scale: f32,
    f16_accum: bool,
    m: &mut f32,
    l: &mut f32,
    acc: &mut [f32],
) {
    let dk = q.len();
    let dv = acc.len();
    let key = |j: usize| &kv.k[(slot0 + j) * kv.k_stride + kv.k_off..][..dk];
    let val = |j: usize| &kv.v[(slot0 + j) * kv.v_stride + kv.v_off..][..dv];
    if f16_accum {
        for j in 0..n {
            let s = dot(q, key(j)) * scale;
            let (mut ms, mut vs) = (1f32, 1f32);
            if s > *m {
                ms = (*m - s).exp();
                *m = s;
                acc.iter_mut().for_each(|a| *a = round16(*a * ms));
            } else {
                vs = (s - *m).exp();
            }
            acc.iter_mut().zip(val(j)).for_each(|(a, &v)| *a = round16(h2f(v).mul_add(vs, *a)));
            *l = *l * ms + vs;
        }
        return;
    }
    let mut s = [0f32; MAX_RUN];
    for (j, s) in s[..n].iter_mut().enumerate() {
        *s = dot(q, key(j)) * scale;
    }
    let mx = s[..n].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    if mx > *m {
        let c = (*m - mx).exp();
        *l *= c;
        acc.iter_mut().for_each(|a| *a *= c);
        *m = mx;
    }
    for (j, &s) in s[..n].iter().enumerate() {
        let e = (s - *m).exp();
        *l += e;
        acc.iter_mut().zip(val(j)).for_each(|(a, &v)| *a = h2f(v).mul_add(e, *a));
    }
}
