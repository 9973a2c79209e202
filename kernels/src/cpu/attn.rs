//! Attention of small batches (under 64 rows, token generation included) over an f16 KV
//! cache, as llama.cpp's CPU flash attention computes them
//! (`ggml_compute_forward_flash_attn_ext_f16_one_chunk`), to the bit: one head's query
//! against a run of consecutive cache slots, with an online softmax (no score matrix), for
//! all query heads that share the KV head at once. The query is pre-rounded to f16 by the
//! caller; each score is summed in the order of llama.cpp's `ggml_vec_dot_f16` in the
//! reference build (16 lanes, [`SCORE_LANES`], on every CPU; [`dot_ggml`]); weights are
//! glibc's `expf` bits ([`exp_glibc`], on every platform); the running `Σ e·v` is rounded to
//! f16 after every rescale and every multiply-add, key by key. Three bodies ([`AttnKernel`]):
//! scalar (the reference), AVX2+FMA+F16C and AVX-512 (f16 loads become `vcvtph2ps`), the best
//! one the CPU has chosen per run. Larger batches go through [`super::attn_tile`].

use super::math::exp_glibc;
use half::f16;

/// One call's work: the queries of the heads sharing a KV head (`heads × dk`, contiguous,
/// f16-rounded), the run of `n` slots from `slot0` in that head's cache, the score scale.
#[derive(Clone, Copy, Debug)]
pub struct Run<'a> {
    pub q: &'a [f32],
    pub dk: usize,
    pub kv: &'a HeadKv<'a>,
    pub slot0: usize,
    pub n: usize,
    pub scale: f32,
    /// Bytes the caller reads next — the next run's keys and values — asked into L2 spread
    /// over this run's keys (empty: none; only the SIMD bodies ask). A decode's cache
    /// comes from memory, and the hardware prefetchers start over at every cache block.
    pub ahead: [&'a [u8]; 2],
}

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

/// The vector width of `ggml_vec_dot_f16` in the llama.cpp build the references came from
/// (AVX-512: 16 lanes). Every kernel sums scores in that order, whatever this CPU's own width,
/// so that ferrite gives the same bits on every machine (llama.cpp itself sums in 8 lanes on
/// an AVX2-only CPU, and its outputs there differ from the reference's).
pub const SCORE_LANES: usize = 16;

/// Most slots in one run (a KV cache block: the engine's blocks hold 32 slots).
pub const MAX_RUN: usize = 32;
/// Most query heads per call (heads sharing one KV head are taken in chunks of this).
pub const MAX_HEADS: usize = 8;

/// Adds the run's slots `slot0..slot0 + n` (`n <= MAX_RUN`) to the states of `st.heads`
/// query heads (`q`: `heads × dk`, contiguous) that share one KV head: scores `q·k · scale`. Each key
/// and value is loaded and converted once for all of them.
pub fn attend_run(r: &Run, st: &mut Online) {
    let kernel = AttnKernel::best();
    // A shape the SIMD body does not take runs the scalar body, which keeps the summation
    // order of the CPU's own vector width.
    let kernel = if kernel.fits(r.dk, st.dv()) { kernel } else { AttnKernel::Scalar };
    attend_run_with(kernel, r, st)
}

/// The instruction sets [`attend_run`] has a body for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnKernel {
    Scalar,
    /// AVX2 + FMA + F16C, 8 lanes; head sizes that are multiples of 8.
    Avx2,
    /// AVX-512F, 16 lanes, more independent accumulators; head sizes that are multiples of 16.
    Avx512,
}

impl AttnKernel {
    /// Every kernel this CPU runs, scalar first (tests compare them all).
    pub fn available() -> Vec<AttnKernel> {
        [AttnKernel::Scalar, AttnKernel::Avx2, AttnKernel::Avx512]
            .into_iter()
            .filter(|k| k.supported())
            .collect()
    }

    /// Whether this CPU runs the kernel (and scalar is not forced).
    pub fn supported(self) -> bool {
        match self {
            AttnKernel::Scalar => true,
            AttnKernel::Avx2 => super::use_avx2(),
            #[cfg(target_arch = "x86_64")]
            AttnKernel::Avx512 => {
                super::use_avx2()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512vl")
            }
            #[cfg(not(target_arch = "x86_64"))]
            AttnKernel::Avx512 => false,
        }
    }

    /// The fastest kernel this CPU runs.
    pub fn best() -> AttnKernel {
        [AttnKernel::Avx512, AttnKernel::Avx2]
            .into_iter()
            .find(|k| k.supported())
            .unwrap_or(AttnKernel::Scalar)
    }

    /// Whether this kernel takes key/value head sizes `dk`/`dv` (else the caller falls back).
    pub fn fits(self, dk: usize, dv: usize) -> bool {
        match self {
            AttnKernel::Scalar => true,
            AttnKernel::Avx2 => dk.is_multiple_of(8) && dv.is_multiple_of(8),
            AttnKernel::Avx512 => dk.is_multiple_of(16) && dv.is_multiple_of(16),
        }
    }

    /// The vector width whose `ggml_vec_dot_f16` summation order the scores follow:
    /// [`SCORE_LANES`] for every kernel.
    pub fn lanes(self) -> usize {
        SCORE_LANES
    }

    /// Name for logs and benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            AttnKernel::Scalar => "scalar",
            AttnKernel::Avx2 => "avx2",
            AttnKernel::Avx512 => "avx512",
        }
    }
}

/// [`attend_run`] with a chosen kernel; one this CPU lacks, or that does not fit the head
/// sizes, runs the scalar body.
pub fn attend_run_with(kernel: AttnKernel, r: &Run, st: &mut Online) {
    let Run { q, dk, kv, slot0, n, .. } = *r;
    assert!(n <= MAX_RUN && q.len() == st.heads * dk, "run shape");
    let dv = st.dv();
    if n == 0 {
        return;
    }
    assert!((slot0 + n - 1) * kv.k_stride + kv.k_off + dk <= kv.k.len(), "keys out of range");
    assert!((slot0 + n - 1) * kv.v_stride + kv.v_off + dv <= kv.v.len(), "values out of range");
    let ok = kernel.fits(dk, dv) && kernel.supported();
    #[cfg(target_arch = "x86_64")]
    match kernel {
        AttnKernel::Avx2 if ok => {
            // SAFETY: `available` detected avx2, fma and f16c.
            return unsafe { avx2::run(r, st) };
        }
        AttnKernel::Avx512 if ok => {
            // SAFETY: `available` detected avx512f/vl (and avx2, fma, f16c); the ranges of
            // every key and value were asserted above.
            return unsafe { avx512::run(r, st) };
        }
        _ => {}
    }
    let _ = ok;
    attend_run_scalar(r, st, kernel.lanes())
}

/// The scalar reference of [`attend_run`]: head by head, key by key, [`exp_glibc`]; scores
/// summed as `ggml_vec_dot_f16` with `lanes`-wide vectors (8 or 16).
pub fn attend_run_scalar(r: &Run, st: &mut Online, lanes: usize) {
    let Run { q, dk, kv, slot0, n, scale, .. } = *r;
    assert!(lanes == 8 || lanes == 16, "ggml vector width");
    let dv = st.dv();
    for h in 0..st.heads {
        let acc = &mut st.acc[h * dv..(h + 1) * dv];
        let (m, l) = (&mut st.m[h], &mut st.l[h]);
        run_body(&q[h * dk..(h + 1) * dk], kv, slot0, n, scale, lanes, m, l, acc)
    }
}

/// `q·k` as llama.cpp's `ggml_vec_dot_f16` sums it with `lanes`-wide vectors (16 with
/// AVX-512, 8 with AVX2): four accumulators take the `lanes`-chunks of each `4·lanes` step in
/// turn (fused multiply-adds); then `(a0 + a2) + (a1 + a3)`, the lanes summed as a halving
/// tree ([`tree_ggml`]), and the values past the last full step added one by one in f64.
pub fn dot_ggml(q: &[f32], k: &[u16], lanes: usize) -> f32 {
    let step = 4 * lanes;
    let full = q.len() / step * step;
    let mut acc = [[0f32; 16]; 4];
    for i in (0..full).step_by(step) {
        for (j, a) in acc.iter_mut().enumerate() {
            for (l, a) in a[..lanes].iter_mut().enumerate() {
                let t = i + j * lanes + l;
                *a = q[t].mul_add(h2f(k[t]), *a);
            }
        }
    }
    let x: [f32; 16] = std::array::from_fn(|l| (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]));
    let mut sum = f64::from(tree_ggml(&x[..lanes]));
    for t in full..q.len() {
        sum += f64::from(q[t] * h2f(k[t]));
    }
    sum as f32
}

/// A vector's lanes summed as ggml's reductions do: 16 lanes (`_mm512_reduce_add_ps`) by
/// halves, quarters, then `(u0 + u2) + (u1 + u3)`; 8 lanes (two `hadd`s) by halves, then
/// `(t0 + t1) + (t2 + t3)`.
pub fn tree_ggml(x: &[f32]) -> f32 {
    if x.len() == 16 {
        let t: [f32; 8] = std::array::from_fn(|i| x[i] + x[i + 8]);
        let u: [f32; 4] = std::array::from_fn(|i| t[i] + t[i + 4]);
        (u[0] + u[2]) + (u[1] + u[3])
    } else {
        let t: [f32; 4] = std::array::from_fn(|i| x[i] + x[i + 4]);
        (t[0] + t[1]) + (t[2] + t[3])
    }
}

/// `factors` for an instruction set: its target features and `exp_glibc` body.
macro_rules! factors {
    ($feat:literal, $exp:path) => {
        /// Softmax factors of a run, key by key as llama.cpp, with glibc's `expf` bits: a new max
        /// rescales the sum by e^(m_old - s) and the key weighs 1; otherwise the rescale is 1 and
        /// the key weighs e^(s - m); `l = fma(l, rescale, weight)`. `s` holds the scores on entry
        /// and the value weights on return; `ms[j]` rescales the running sum before key `j` (1
        /// where the max did not move; the returned mask has bit `j` set where it moved for one
        /// of `o.heads`). The heads of a key are the eight lanes of one register, so each step is
        /// the scalar recurrence lane by lane, its exponential `exp_glibc` eight at a time (the
        /// instruction set's body: AVX-512 reads the table with permutes, AVX2 gathers).
        #[target_feature(enable = $feat)]
        pub(super) fn factors(s: &mut Cols, n: usize, o: &mut Online, ms: &mut Cols) -> u64 {
            let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let live = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(o.heads as i32), lane));
            let one = _mm256_set1_ps(1.0);
            let ld = |a: &[f32; MAX_HEADS]| {
                // SAFETY: `a` holds 8 readable f32; the load is unaligned.
                unsafe { _mm256_loadu_ps(a.as_ptr()) }
            };
            let (mut m, mut l) = (ld(&o.m), ld(&o.l));
            // Most runs past the first few do not move any head's max: then every weight is
            // e^(s - m) and the sum only adds them (`fma(l, 1, w)` is `l + w`), key by key
            // independent of the comparisons.
            let mut any = _mm256_setzero_ps();
            for s in s.iter().take(n) {
                any = _mm256_or_ps(any, _mm256_cmp_ps::<_CMP_GT_OQ>(ld(s), m));
            }
            if _mm256_movemask_ps(_mm256_and_ps(any, live)) == 0 {
                for s in s.iter_mut().take(n) {
                    let w = $exp(_mm256_and_ps(_mm256_sub_ps(ld(s), m), live));
                    l = _mm256_add_ps(l, w);
                    // SAFETY: `s` holds 8 writable f32; the store is unaligned.
                    unsafe { _mm256_storeu_ps(s.as_mut_ptr(), w) };
                }
                let l = _mm256_blendv_ps(ld(&o.l), l, live);
                // SAFETY: `o.l` holds 8 writable f32; the store is unaligned.
                unsafe { _mm256_storeu_ps(o.l.as_mut_ptr(), l) };
                return 0;
            }
            let mut rescale = 0u64;
            for (j, (s, ms)) in s.iter_mut().zip(ms.iter_mut()).take(n).enumerate() {
                let sj = ld(s);
                // `s > m` is false for NaN, as the scalar comparison; lanes past the heads stay at
                // e^0 and are never stored.
                let moved = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(sj, m), live);
                let arg = _mm256_blendv_ps(_mm256_sub_ps(sj, m), _mm256_sub_ps(m, sj), moved);
                let e = $exp(_mm256_and_ps(arg, live));
                let c = _mm256_blendv_ps(one, e, moved);
                let w = _mm256_blendv_ps(e, one, moved);
                m = _mm256_blendv_ps(m, sj, moved);
                l = _mm256_fmadd_ps(l, c, w);
                // SAFETY: `s` and `ms` hold 8 writable f32; the stores are unaligned.
                unsafe { _mm256_storeu_ps(s.as_mut_ptr(), w) };
                if _mm256_movemask_ps(moved) != 0 {
                    rescale |= 1 << j;
                    // SAFETY: as above.
                    unsafe { _mm256_storeu_ps(ms.as_mut_ptr(), c) };
                }
            }
            let keep = |old: &[f32; MAX_HEADS], new| _mm256_blendv_ps(ld(old), new, live);
            let (m, l) = (keep(&o.m, m), keep(&o.l, l));
            // SAFETY: `o.m` and `o.l` hold 8 writable f32; the stores are unaligned.
            unsafe {
                _mm256_storeu_ps(o.m.as_mut_ptr(), m);
                _mm256_storeu_ps(o.l.as_mut_ptr(), l);
            }
            rescale
        }
    };
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use super::{Online, Run, MAX_HEADS, MAX_RUN};
    use crate::cpu::math::avx2::exp_glibc;
    use crate::cpu::x86::prefetch_share;
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
    pub(super) fn run(r: &Run, o: &mut Online) {
        match o.heads {
            // Chunks per pass: up to 14 sums in registers (16 on AVX2, one for the weight
            // and one for the rounding).
            1 => heads::<1, 4>(r, o),
            2 => heads::<2, 4>(r, o),
            3 => heads::<3, 4>(r, o),
            4 => heads::<4, 3>(r, o),
            5 => heads::<5, 2>(r, o),
            6 => heads::<6, 2>(r, o),
            7 => heads::<7, 2>(r, o),
            _ => heads::<8, 1>(r, o),
        }
    }

    /// Per-key, per-head values: `[key][head]`, the heads of a key in one 8-lane register.
    pub(super) type Cols = [[f32; MAX_HEADS]; MAX_RUN];

    factors!("avx2,fma,f16c", exp_glibc);

    /// Scores `q·k · scale` of one key for `NH` heads into `out[head]`, each summed as
    /// [`super::dot_ggml`] with 16 lanes (two registers per lane vector): per head four
    /// accumulators and `(a0 + a2) + (a1 + a3)`, halves added; then the eight heads' lane trees
    /// side by side ([`tree16x8`]); a tail past the last 64-value step in f64, head by head.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn scores16<const NH: usize>(q: &[f32], k: &[u16], scale: f32, out: &mut [f32; MAX_HEADS]) {
        let dk = k.len();
        let full = dk / 64 * 64;
        // Per head: lane i of the 16-lane sum plus lane i + 8, i < 8.
        let mut t = [_mm256_setzero_ps(); MAX_HEADS];
        for (h, t) in t.iter_mut().enumerate().take(NH) {
            let qh = &q[h * dk..(h + 1) * dk];
            let mut a = [[_mm256_setzero_ps(); 2]; 4];
            for i in (0..full).step_by(64) {
                for (c, a) in a.iter_mut().enumerate() {
                    for (half, a) in a.iter_mut().enumerate() {
                        let at = i + 16 * c + 8 * half;
                        *a = _mm256_fmadd_ps(ld(qh, at), ld16(k, at), *a);
                    }
                }
            }
            let x = |half: usize| {
                _mm256_add_ps(_mm256_add_ps(a[0][half], a[2][half]), _mm256_add_ps(a[1][half], a[3][half]))
            };
            *t = _mm256_add_ps(x(0), x(1));
        }
        let sums = _mm256_mul_ps(tree16x8(&t), _mm256_set1_ps(scale));
        // SAFETY: `out` holds 8 writable f32; the store is unaligned.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sums) };
        if full < dk {
            for (h, out) in out.iter_mut().enumerate().take(NH) {
                let qh = &q[h * dk..(h + 1) * dk];
                let mut wide = f64::from(_mm256_cvtss_f32(tree16x8(&[t[h]; MAX_HEADS])));
                for i in full..dk {
                    wide += f64::from(qh[i] * super::h2f(k[i]));
                }
                *out = wide as f32 * scale;
            }
        }
    }

    /// Lane `h` of the result: the rest of [`super::tree_ggml`]'s 16-lane tree for `t[h]` (its
    /// halves already added): quarters, then `(u0 + u2) + (u1 + u3)`, for eight heads at once.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn tree16x8(t: &[__m256; MAX_HEADS]) -> __m256 {
        // [quarters of t_a | quarters of t_b], each reordered to u0, u2, u1, u3.
        let quarter = |a, b| {
            let u = _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(a, b), _mm256_permute2f128_ps::<0x31>(a, b));
            _mm256_permute_ps::<0b11_01_10_00>(u)
        };
        let (u01, u23, u45, u67) =
            (quarter(t[0], t[1]), quarter(t[2], t[3]), quarter(t[4], t[5]), quarter(t[6], t[7]));
        // Pairs (u0 + u2, u1 + u3), then their sum: [h0, h2, h4, h6 | h1, h3, h5, h7].
        let r = _mm256_hadd_ps(_mm256_hadd_ps(u01, u23), _mm256_hadd_ps(u45, u67));
        _mm256_permutevar8x32_ps(r, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn heads<const NH: usize, const G: usize>(r: &Run, o: &mut Online) {
        let Run { q, dk, kv, slot0, n, scale, ahead } = *r;
        let dv = o.dv();
        let key = |j: usize| &kv.k[(slot0 + j) * kv.k_stride + kv.k_off..][..dk];
        // 1. Scores, per head in `ggml_vec_dot_f16`'s order.
        let mut s: Cols = [[0f32; MAX_HEADS]; MAX_RUN];
        for (j, s) in s.iter_mut().enumerate().take(n) {
            ahead.iter().for_each(|a| prefetch_share(a, j, n));
            scores16::<NH>(q, key(j), scale, s);
        }
        let mut ms: Cols = [[0f32; MAX_HEADS]; MAX_RUN];
        let rescale = factors(&mut s, n, o, &mut ms);
        let vs = &s;
        // 2. Σ e·v: `G` chunks of 8 outputs per head in registers across the keys.
        let mut i = 0;
        while i < dv {
            let g = if i + 8 * G <= dv { G } else { 1 };
            let vals = |j: usize| &kv.v[(slot0 + j) * kv.v_stride + kv.v_off + i..][..8 * g];
            match g == G {
                true => pass::<NH, G>(vals, n, o.acc, dv, i, vs, &ms, rescale),
                false => pass::<NH, 1>(vals, n, o.acc, dv, i, vs, &ms, rescale),
            }
            i += 8 * g;
        }
    }

    /// Outputs `i..i + 8·G` of every head over keys `0..n` (`vals(j)`: key `j`'s values
    /// there). Each step of the sum is a multiply-add, an f16 rounding and a reload, which
    /// depend on the step before, so `NH × G` independent sums keep the pipeline full; the
    /// run's values are converted to f32 once first, to leave the registers to the sums.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn pass<'v, const NH: usize, const G: usize>(
        vals: impl Fn(usize) -> &'v [u16],
        n: usize,
        out: &mut [f32],
        dv: usize,
        i: usize,
        vs: &Cols,
        ms: &Cols,
        rescale: u64,
    ) {
        let mut v = [[_mm256_setzero_ps(); G]; MAX_RUN];
        for (j, v) in v.iter_mut().enumerate().take(n) {
            let vj = vals(j);
            for (g, v) in v.iter_mut().enumerate() {
                *v = ld16(vj, 8 * g);
            }
        }
        let mut acc = [[_mm256_setzero_ps(); G]; NH];
        for (h, acc) in acc.iter_mut().enumerate() {
            for (g, a) in acc.iter_mut().enumerate() {
                *a = ld(&out[h * dv..], i + 8 * g);
            }
        }
        for (j, v) in v.iter().enumerate().take(n) {
            if rescale >> j & 1 != 0 {
                for (h, acc) in acc.iter_mut().enumerate() {
                    let c = _mm256_set1_ps(ms[j][h]);
                    for a in acc.iter_mut() {
                        *a = round16(_mm256_mul_ps(*a, c));
                    }
                }
            }
            for (h, acc) in acc.iter_mut().enumerate() {
                let e = _mm256_set1_ps(vs[j][h]);
                for (a, v) in acc.iter_mut().zip(v) {
                    *a = round16(_mm256_fmadd_ps(*v, e, *a));
                }
            }
        }
        for (h, acc) in acc.iter().enumerate() {
            for (g, a) in acc.iter().enumerate() {
                st(&mut out[h * dv..], i + 8 * g, *a);
            }
        }
    }
}

/// The AVX-512 body: 16 lanes; each key converted once for all heads and their scores summed
/// horizontally together; `Σ e·v` kept as f16 in memory in up to `NH × G` independent rows of
/// 16, so the f16 mode's widen → multiply-add → narrow chains of different heads overlap.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::avx2::Cols;
    use super::{HeadKv, Online, Run, MAX_HEADS, MAX_RUN};
    use crate::cpu::math::avx512::exp_glibc;
    use crate::cpu::x86::prefetch_share;
    use std::arch::x86_64::*;

    factors!("avx512f,avx512vl,avx2,fma,f16c", exp_glibc);

    #[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
    /// # Safety
    /// Every key `slot0..slot0 + n` (`dk` values) and value (`o.dv()` values) lies inside
    /// `kv`; `dk` and `o.dv()` are multiples of 16; `n <= MAX_RUN`.
    pub(super) unsafe fn run(r: &Run, o: &mut Online) {
        // SAFETY: the caller's contract, passed on.
        unsafe {
            match o.heads {
                1 => heads::<1, 4>(r, o),
                2 => heads::<2, 4>(r, o),
                3 => heads::<3, 4>(r, o),
                4 => heads::<4, 4>(r, o),
                5 => heads::<5, 4>(r, o),
                6 => heads::<6, 4>(r, o),
                7 => heads::<7, 4>(r, o),
                _ => heads::<8, 2>(r, o),
            }
        }
    }

    /// Sixteen f16 values at `p` as f32.
    ///
    /// # Safety
    /// `p..p + 16` is readable.
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
    #[inline]
    unsafe fn ld16(p: *const u16) -> __m512 {
        // SAFETY: the caller's contract; the load is unaligned.
        _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(p.cast()) })
    }

    /// `NH` heads; `G` 16-value chunks of the output per pass over the keys.
    ///
    /// # Safety
    /// As [`run`].
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
    unsafe fn heads<const NH: usize, const G: usize>(r: &Run, o: &mut Online) {
        let Run { q, dk, kv, slot0, n, scale, ahead } = *r;
        debug_assert!(n <= MAX_RUN && NH <= MAX_HEADS && q.len() == NH * dk);
        let dv = o.dv();
        let key = |j: usize| kv.k[(slot0 + j) * kv.k_stride + kv.k_off..].as_ptr();
        // 1. Scores, per head in `ggml_vec_dot_f16`'s order.
        let mut s: Cols = [[0f32; MAX_HEADS]; MAX_RUN];
        for (j, s) in s.iter_mut().enumerate().take(n) {
            ahead.iter().for_each(|a| prefetch_share(a, j, n));
            // SAFETY: key `j` is in range (the caller's contract).
            unsafe { scores_ggml::<NH>(q, dk, key(j), scale, s) };
        }
        let mut ms: Cols = [[0f32; MAX_HEADS]; MAX_RUN];
        let rescale = factors(&mut s, n, o, &mut ms);
        let vs = &s;
        // 2. Σ e·v: `G` chunks of 16 outputs per head in registers across the keys.
        let mut i = 0;
        while i < dv {
            let g = if i + 16 * G <= dv { G } else { 1 };
            // SAFETY: values `i..i + 16·g` of every value row are in range (the caller's
            // contract; `dv` is a multiple of 16).
            unsafe {
                match g == G {
                    true => pass::<NH, G>(kv, slot0, n, i, vs, &ms, rescale, o),
                    false => pass::<NH, 1>(kv, slot0, n, i, vs, &ms, rescale, o),
                }
            }
            i += 16 * g;
        }
    }

    /// Scores `q·k · scale` of one key for `NH` heads into `out[head]`, each summed as
    /// [`super::dot_ggml`] with 16 lanes. Each 64-value step of the key is converted once for
    /// all heads (four registers), then every head's four accumulators take it.
    ///
    /// # Safety
    /// The key pointer has `dk` readable values; `q` holds `NH × dk`; `dk % 16 == 0`.
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
    #[inline]
    unsafe fn scores_ggml<const NH: usize>(
        q: &[f32],
        dk: usize,
        key: *const u16,
        scale: f32,
        out: &mut [f32; MAX_HEADS],
    ) {
        let full = dk / 64 * 64;
        let mut a = [[_mm512_setzero_ps(); 4]; MAX_HEADS];
        let step = |i: usize, a: &mut [[__m512; 4]; MAX_HEADS]| {
            // SAFETY: the caller's contract (`i + 64 <= full <= dk`).
            let kc: [__m512; 4] = std::array::from_fn(|c| unsafe { ld16(key.add(i + 16 * c)) });
            for (h, a) in a.iter_mut().enumerate().take(NH) {
                for (c, a) in a.iter_mut().enumerate() {
                    // SAFETY: `h * dk + i + 16c + 16 <= NH * dk = q.len()`.
                    let qc = unsafe { _mm512_loadu_ps(q.as_ptr().add(h * dk + i + 16 * c)) };
                    *a = _mm512_fmadd_ps(qc, kc[c], *a);
                }
            }
        };
        // The first step apart: at the common 64-value head size it is the only one, and the
        // accumulators need not rotate through a loop.
        if full > 0 {
            step(0, &mut a);
        }
        for i in (64..full).step_by(64) {
            step(i, &mut a);
        }
        let mut x = [_mm512_setzero_ps(); 8];
        for (x, a) in x.iter_mut().zip(&a).take(NH) {
            *x = _mm512_add_ps(_mm512_add_ps(a[0], a[2]), _mm512_add_ps(a[1], a[3]));
        }
        let sums = tree16x8(&x);
        if full == dk {
            // SAFETY: `out` is 8 writable f32; the store is unaligned.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), _mm256_mul_ps(sums, _mm256_set1_ps(scale))) };
            return;
        }
        let mut lanes = [0f32; MAX_HEADS];
        // SAFETY: `lanes` is 8 writable f32; the store is unaligned.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sums) };
        for (h, out) in out.iter_mut().enumerate().take(NH) {
            let mut wide = f64::from(lanes[h]);
            for i in full..dk {
                // SAFETY: the caller's contract.
                let k = super::h2f(unsafe { *key.add(i) });
                wide += f64::from(q[h * dk + i] * k);
            }
            *out = wide as f32 * scale;
        }
    }

    /// Lane `h` of the result: [`super::tree_ggml`] of `x[h]` (16 lanes: halves, quarters,
    /// then `(u0 + u2) + (u1 + u3)`), for eight vectors at once.
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
    #[inline]
    fn tree16x8(x: &[__m512; 8]) -> __m256 {
        // Halves: [x_a lanes i + x_a lanes i+8 (8), x_b likewise (8)].
        let half = |a, b| {
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
                _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
            )
        };
        let (h01, h23, h45, h67) = (half(x[0], x[1]), half(x[2], x[3]), half(x[4], x[5]), half(x[6], x[7]));
        // Quarters: 128-bit lane k holds u_k (of vectors 0..4, then 4..8).
        let quarter = |a, b| {
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
                _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
            )
        };
        let (u0, u1) = (quarter(h01, h23), quarter(h45, h67));
        // Per 128-bit lane k: [u_k0 + u_k2, u_k1 + u_k3, the same for vector k + 4].
        let t = _mm512_add_ps(
            _mm512_shuffle_ps::<0b01_00_01_00>(u0, u1),
            _mm512_shuffle_ps::<0b11_10_11_10>(u0, u1),
        );
        // Per 128-bit lane k: [r_k, r_(k+4), r_k, r_(k+4)].
        let r =
            _mm512_add_ps(_mm512_shuffle_ps::<0b10_00_10_00>(t, t), _mm512_shuffle_ps::<0b11_01_11_01>(t, t));
        let idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
        _mm512_castps512_ps256(_mm512_permutexvar_ps(idx, r))
    }

    /// Outputs `i..i + 16·G` of every head over keys `0..n`. The sums live in memory as f16,
    /// as llama.cpp keeps them: each step loads and widens them in one instruction and narrows
    /// and stores them in one ([`load_widen`], [`narrow_store`]), fewer vector-port
    /// operations than a round trip between registers.
    ///
    /// # Safety
    /// Those outputs of every value row `slot0..slot0 + n` lie inside `kv.v`.
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    #[inline]
    unsafe fn pass<const NH: usize, const G: usize>(
        kv: &HeadKv,
        slot0: usize,
        n: usize,
        i: usize,
        vs: &Cols,
        ms: &Cols,
        rescale: u64,
        o: &mut Online,
    ) {
        let dv = o.dv();
        let mut sums = [[[0u16; 16]; G]; NH];
        for (h, sums) in sums.iter_mut().enumerate() {
            for (g, s) in sums.iter_mut().enumerate() {
                // SAFETY: the slice holds 16 readable f32 (f16 values: narrowing is exact); the
                // load is unaligned.
                narrow_store(s, unsafe { _mm512_loadu_ps(o.acc[h * dv + i + 16 * g..][..16].as_ptr()) });
            }
        }
        let base = kv.v[slot0 * kv.v_stride + kv.v_off + i..].as_ptr();
        for j in 0..n {
            let mut v = [_mm512_setzero_ps(); G];
            for (g, v) in v.iter_mut().enumerate() {
                // SAFETY: the caller's contract.
                *v = unsafe { ld16(base.add(j * kv.v_stride + 16 * g)) };
            }
            if rescale >> j & 1 != 0 {
                for (h, sums) in sums.iter_mut().enumerate() {
                    let c = _mm512_set1_ps(ms[j][h]);
                    for s in sums.iter_mut() {
                        narrow_store(s, _mm512_mul_ps(load_widen(s), c));
                    }
                }
            }
            for (h, sums) in sums.iter_mut().enumerate() {
                let e = _mm512_set1_ps(vs[j][h]);
                for (s, v) in sums.iter_mut().zip(&v) {
                    narrow_store(s, _mm512_fmadd_ps(*v, e, load_widen(s)));
                }
            }
        }
        for (h, sums) in sums.iter().enumerate() {
            for (g, s) in sums.iter().enumerate() {
                // SAFETY: the slice holds 16 writable f32; the store is unaligned.
                unsafe { _mm512_storeu_ps(o.acc[h * dv + i + 16 * g..][..16].as_mut_ptr(), load_widen(s)) };
            }
        }
    }

    /// Sixteen f16 at `s` as f32, the load folded into the conversion (the compiler emits a
    /// separate load for the intrinsic).
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
    #[inline]
    fn load_widen(s: &[u16; 16]) -> __m512 {
        let r: __m512;
        // SAFETY: reads the 32 bytes of `s`; writes only `r`.
        unsafe {
            std::arch::asm!(
                "vcvtph2ps {r}, ymmword ptr [{p}]",
                p = in(reg) s.as_ptr(),
                r = lateout(zmm_reg) r,
                options(pure, readonly, nostack, preserves_flags),
            )
        };
        r
    }

    /// `v` rounded to f16 (nearest even) into `s`, the store folded into the conversion.
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
    #[inline]
    fn narrow_store(s: &mut [u16; 16], v: __m512) {
        // SAFETY: writes the 32 bytes of `s`, nothing else.
        unsafe {
            std::arch::asm!(
                "vcvtps2ph ymmword ptr [{p}], {v}, 0",
                p = in(reg) s.as_mut_ptr(),
                v = in(zmm_reg) v,
                options(nostack, preserves_flags),
            )
        };
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

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn run_body(
    q: &[f32],
    kv: &HeadKv,
    slot0: usize,
    n: usize,
    scale: f32,
    lanes: usize,
    m: &mut f32,
    l: &mut f32,
    acc: &mut [f32],
) {
    let dk = q.len();
    let dv = acc.len();
    let key = |j: usize| &kv.k[(slot0 + j) * kv.k_stride + kv.k_off..][..dk];
    let val = |j: usize| &kv.v[(slot0 + j) * kv.v_stride + kv.v_off..][..dv];
    for j in 0..n {
        let s = dot_ggml(q, key(j), lanes) * scale;
        let (mut ms, mut vs) = (1f32, 1f32);
        if s > *m {
            ms = exp_glibc(*m - s);
            *m = s;
            acc.iter_mut().for_each(|a| *a = round16(*a * ms));
        } else {
            vs = exp_glibc(s - *m);
        }
        acc.iter_mut().zip(val(j)).for_each(|(a, &v)| *a = round16(h2f(v).mul_add(vs, *a)));
        // Fused, as llama.cpp's compiled `S = S*ms + vs`.
        *l = l.mul_add(ms, vs);
    }
}
