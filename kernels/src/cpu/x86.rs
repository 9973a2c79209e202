//! x86 kernels over [`super::packed`] weights, compiled once per instruction set.
//!
//! One body (the `kernels!` macro) is instantiated twice: with AVX2, where the 8-bit
//! products are `vpmaddubsw` + `vpmaddwd`, and with AVX-512 VNNI, where they are one
//! `vpdpbusd`. A task walks its row groups for tiles of up to four tokens: each weight vector
//! is loaded and unpacked once per tile, the eight rows of a group sit in the eight lanes of
//! the accumulators, integer sums stay exact within a block, and each block adds
//! `float(sum) · d_w · d_a` to an f32 accumulator as ggml does. The VNNI instantiation adds
//! `*_pair` kernels for batches: two groups in the halves of 512-bit vectors, each lane with
//! the 8-row kernel's arithmetic (the AVX2 ones run the two groups one after the other);
//! in decode batches their passes over a pair that is already in cache ask for the next
//! pair's bytes ([`Ahead`]).

use crate::cpu::packed::Job;
use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};

/// The weight bytes a task reads next, handed out in shares to the tile passes over a pair
/// of groups that find the pair's weights in cache: such passes would leave the memory idle
/// while the core multiplies, so each asks for a share of the next pair's bytes, spread
/// evenly over its blocks ([`prefetch_share`]), and the next pair's first pass finds them in
/// L2. At eight tokens this took Qwen2.5-0.5B's batched step from 54 to 46 ms
/// (docs/PERFORMANCE.md, session 24).
pub(crate) struct Ahead<'a> {
    shares: std::slice::Chunks<'a, u8>,
    skip: usize,
}

impl<'a> Ahead<'a> {
    /// The pair of groups after groups `g` and `g + 1` of `job`, for `passes` passes of which
    /// the first `skip` read their own bytes from memory and get no share (`passes` 0: none).
    pub(crate) fn new(job: &'a Job, g: usize, passes: usize, skip: usize) -> Self {
        let parts = passes.saturating_sub(skip);
        let next = if parts == 0 { &[] } else { job.w.get((g + 2) * job.group_bytes..).unwrap_or(&[]) };
        let next = &next[..next.len().min(2 * job.group_bytes)];
        let size = next.len().div_ceil(parts.max(1)).next_multiple_of(64).max(64);
        Ahead { shares: next.chunks(size), skip }
    }

    /// The next pass's share (empty for a streaming pass, or when none is left).
    pub(crate) fn next(&mut self) -> &'a [u8] {
        if self.skip > 0 {
            self.skip -= 1;
            return &[];
        }
        self.shares.next().unwrap_or(&[])
    }
}

/// Asks for block `b`'s part of a pass's `share` over `nblk` blocks (its cache lines
/// `b·L/nblk..(b + 1)·L/nblk`) to be brought into L2. Even spreading matters: the same
/// lines asked for two per block in the first blocks gained a third as much.
#[inline]
pub(crate) fn prefetch_share(share: &[u8], b: usize, nblk: usize) {
    let lines = share.len().div_ceil(64);
    for line in b * lines / nblk..(b + 1) * lines / nblk {
        // SAFETY: a prefetch reads nothing architecturally; the line is in `share`.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(share.as_ptr().add(64 * line).cast()) };
    }
}

macro_rules! kernels {
    ($feat:literal, $($isa_fn:item),+ $(,)?) => {
        use super::Ahead;
        use crate::cpu::packed::*;
        use std::arch::x86_64::*;

        /// Tokens per activation tile kept hot while a task streams its row groups.
        const TOKEN_BLOCK: usize = 64;

        $($isa_fn)*

        /// Runs one task of a packed matmul.
        #[target_feature(enable = $feat)]
        pub(crate) fn run(job: &Job) {
            match job.fmt {
                FMT_Q4_0 => tiles::<FMT_Q4_0>(job),
                FMT_Q4_1 => tiles::<FMT_Q4_1>(job),
                FMT_Q5_0 => tiles::<FMT_Q5_0>(job),
                FMT_Q8_0 => tiles::<FMT_Q8_0>(job),
                FMT_Q4_K => tiles::<FMT_Q4_K>(job),
                FMT_Q6_K => tiles::<FMT_Q6_K>(job),
                _ => unreachable!("no packed layout"),
            }
        }

        #[target_feature(enable = $feat)]
        fn tiles<const F: usize>(job: &Job) {
            let groups = job.w.len() / job.group_bytes;
            if F != FMT_Q6_K && LAYOUTS[F].lanes {
                return lane_tiles::<F>(job, groups);
            }
            if !LAYOUTS[F].lanes {
                return block_tiles::<F>(job, groups);
            }
            // Q6_K: llama.cpp's tiled K-quant matmul order for batches of 8 or more, its
            // `vec_dot` lanes (one token at a time) below.
            for tb in (0..job.n).step_by(TOKEN_BLOCK) {
                let te = (tb + TOKEN_BLOCK).min(job.n);
                let mut g = 0;
                // As `block_tiles`: decode batches ask for the next pair (`Ahead`).
                let passes = if job.n >= 8 { (te - tb).div_ceil(4) } else { te - tb };
                let ahead_passes = if passes <= 4 { passes } else { 0 };
                while job.n > 1 && g + 2 <= groups {
                    let (w0, w1) = (&job.w[g * job.group_bytes..], &job.w[(g + 1) * job.group_bytes..]);
                    let mut ahead = Ahead::new(job, g, ahead_passes, 1);
                    let mut t = tb;
                    if job.n >= 8 {
                        while t + 4 <= te {
                            let a = ahead.next();
                            if ahead_passes > 1 {
                                store_pair(job, g, t, &group_q6k_tiled_pair::<4, true>(w0, w1, a, job, t));
                            } else {
                                store_pair(job, g, t, &group_q6k_tiled_pair::<4, false>(w0, w1, a, job, t));
                            }
                            t += 4;
                        }
                        let a = ahead.next();
                        match te - t {
                            3 => store_pair(job, g, t, &group_q6k_tiled_pair::<3, true>(w0, w1, a, job, t)),
                            2 => store_pair(job, g, t, &group_q6k_tiled_pair::<2, true>(w0, w1, a, job, t)),
                            1 => store_pair(job, g, t, &group_q6k_tiled_pair::<1, true>(w0, w1, a, job, t)),
                            _ => {}
                        }
                    } else {
                        for t in t..te {
                            store_pair(job, g, t, &group_q6k_pair(w0, w1, ahead.next(), job, t));
                        }
                    }
                    g += 2;
                }
                for g in g..groups {
                    let w = &job.w[g * job.group_bytes..];
                    let mut t = tb;
                    if job.n >= 8 {
                        while t + 4 <= te {
                            store(job, g, t, &group_q6k_tiled::<4>(w, job, t));
                            t += 4;
                        }
                        match te - t {
                            3 => store(job, g, t, &group_q6k_tiled::<3>(w, job, t)),
                            2 => store(job, g, t, &group_q6k_tiled::<2>(w, job, t)),
                            1 => store(job, g, t, &group_q6k_tiled::<1>(w, job, t)),
                            _ => {}
                        }
                    } else {
                        for t in t..te {
                            store(job, g, t, &group_q6k(w, job, t));
                        }
                    }
                }
            }
        }

        /// Q4_0 and Q4_K (one sum per block): pairs of groups (`group_pair`), tiles of four
        /// tokens, then the last `n % 4` as one tile.
        #[target_feature(enable = $feat)]
        fn block_tiles<const F: usize>(job: &Job, groups: usize) {
            for tb in (0..job.n).step_by(TOKEN_BLOCK) {
                let te = (tb + TOKEN_BLOCK).min(job.n);
                let mut g = 0;
                // A decode batch (a few passes) asks for the next pair's bytes after its first
                // pass (`Ahead`); a prompt's tiles reuse each pair 16 times and need not.
                let passes = (te - tb).div_ceil(4);
                let ahead_passes = if passes <= 4 { passes } else { 0 };
                while job.n > 1 && g + 2 <= groups {
                    let (w0, w1) = (&job.w[g * job.group_bytes..], &job.w[(g + 1) * job.group_bytes..]);
                    let mut ahead = Ahead::new(job, g, ahead_passes, 1);
                    let mut t = tb;
                    while t + 4 <= te {
                        let a = ahead.next();
                        if ahead_passes > 1 {
                            store_pair(job, g, t, &group_pair::<F, 4, true>(w0, w1, a, job, t));
                        } else {
                            store_pair(job, g, t, &group_pair::<F, 4, false>(w0, w1, a, job, t));
                        }
                        t += 4;
                    }
                    let a = ahead.next();
                    match te - t {
                        3 => store_pair(job, g, t, &group_pair::<F, 3, true>(w0, w1, a, job, t)),
                        2 => store_pair(job, g, t, &group_pair::<F, 2, true>(w0, w1, a, job, t)),
                        1 => store_pair(job, g, t, &group_pair::<F, 1, true>(w0, w1, a, job, t)),
                        _ => {}
                    }
                    g += 2;
                }
                for g in g..groups {
                    let w = &job.w[g * job.group_bytes..];
                    let mut t = tb;
                    while t + 4 <= te {
                        store(job, g, t, &group::<F, 4>(w, job, t));
                        t += 4;
                    }
                    match te - t {
                        3 => store(job, g, t, &group::<F, 3>(w, job, t)),
                        2 => store(job, g, t, &group::<F, 2>(w, job, t)),
                        1 => store(job, g, t, &group::<F, 1>(w, job, t)),
                        _ => {}
                    }
                }
            }
        }

        /// The lane-order formats (Q4_1, Q5_0, Q8_0): pairs of groups (`group_lanes_pair`),
        /// tiles of two tokens (eight accumulators per token and group).
        #[target_feature(enable = $feat)]
        fn lane_tiles<const F: usize>(job: &Job, groups: usize) {
            for tb in (0..job.n).step_by(TOKEN_BLOCK) {
                let te = (tb + TOKEN_BLOCK).min(job.n);
                let mut g = 0;
                while job.n > 1 && g + 2 <= groups {
                    lane_pair_tokens::<F>(job, g, tb, te);
                    g += 2;
                }
                for g in g..groups {
                    lane_group_tokens::<F>(job, g, tb, te);
                }
            }
        }

        /// Tokens `tb..te` of group `g` alone (`group_lanes`, tiles of two).
        #[target_feature(enable = $feat)]
        #[inline]
        fn lane_group_tokens<const F: usize>(job: &Job, g: usize, tb: usize, te: usize) {
            let w = &job.w[g * job.group_bytes..];
            let mut t = tb;
            while t + 2 <= te {
                store(job, g, t, &group_lanes::<F, 2>(w, job, t));
                t += 2;
            }
            if t < te {
                store(job, g, t, &group_lanes::<F, 1>(w, job, t));
            }
        }

        fn store<const T: usize>(job: &Job, g: usize, t0: usize, r: &[[f32; GROUP]; T]) {
            for (i, v) in r.iter().enumerate() {
                job.store(g, t0 + i, v);
            }
        }

        /// Stores the results of groups `g` and `g + 1`.
        fn store_pair<const T: usize>(job: &Job, g: usize, t0: usize, r: &[[[f32; GROUP]; T]; 2]) {
            store(job, g, t0, &r[0]);
            store(job, g + 1, t0, &r[1]);
        }

        /// How far ahead of the bytes being multiplied the weight stream asks for cache lines:
        /// a decode matvec is bound by memory, and the hardware prefetcher alone left a fifth
        /// of Qwen2.5-1.5B's generation speed behind (docs/PERFORMANCE.md, session 21).
        const PREFETCH: usize = 2048;

        /// Asks for the cache lines of `len` bytes at `PREFETCH` past offset `off` of `p`
        /// (nothing past its end).
        #[target_feature(enable = $feat)]
        #[inline]
        fn prefetch(p: &[u8], off: usize, len: usize) {
            let at = off + PREFETCH;
            if at + len <= p.len() {
                for line in (0..len).step_by(64) {
                    // SAFETY: a prefetch reads nothing architecturally; the address is in `p`.
                    unsafe { _mm_prefetch::<_MM_HINT_T0>(p.as_ptr().add(at + line).cast()) };
                }
            }
        }

        /// 32 bytes at `off` of `p`.
        #[target_feature(enable = $feat)]
        #[inline]
        fn ld(p: &[u8], off: usize) -> __m256i {
            let s = &p[off..off + 32];
            // SAFETY: `s` holds 32 readable bytes; the load is unaligned.
            unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
        }

        /// 16 bytes at `off` of `p`.
        #[target_feature(enable = $feat)]
        #[inline]
        fn ld128(p: &[u8], off: usize) -> __m128i {
            let s = &p[off..off + 16];
            // SAFETY: `s` holds 16 readable bytes; the load is unaligned.
            unsafe { _mm_loadu_si128(s.as_ptr().cast()) }
        }

        /// 8 bytes at `off` of `p`, in the low half.
        #[target_feature(enable = $feat)]
        #[inline]
        fn ld64(p: &[u8], off: usize) -> __m128i {
            _mm_set_epi64x(0, i64::from_le_bytes(p[off..off + 8].try_into().expect("8 bytes")))
        }

        /// Bytes shifted left (`s > 0`) or right within 16-bit lanes; callers mask off the
        /// bits that cross into the neighbouring byte.
        #[target_feature(enable = $feat)]
        #[inline]
        fn shift(v: __m256i, s: i32) -> __m256i {
            if s >= 0 {
                _mm256_sll_epi16(v, _mm_cvtsi32_si128(s))
            } else {
                _mm256_srl_epi16(v, _mm_cvtsi32_si128(-s))
            }
        }

        /// The eight code vectors of a 32-value chunk: vector `k` holds values `4k..4k+4`
        /// of each of the eight rows (unsigned codes, or signed for 8-bit formats).
        #[target_feature(enable = $feat)]
        #[inline]
        fn unpack<const F: usize>(ch: &[u8]) -> [__m256i; 8] {
            let l = LAYOUTS[F];
            let mut u = [_mm256_setzero_si256(); 8];
            if l.bits == 8 {
                for (k, u) in u.iter_mut().enumerate() {
                    *u = ld(ch, 32 * k);
                }
                return u;
            }
            let nib = _mm256_set1_epi8(0x0f);
            for k in 0..4 {
                let v = ld(ch, 32 * k);
                u[k] = _mm256_and_si256(v, nib);
                u[k + 4] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib);
            }
            if l.bits == 5 {
                let h = ld(ch, 128);
                let m = _mm256_set1_epi8(0x10);
                for (k, u) in u.iter_mut().enumerate() {
                    *u = _mm256_or_si256(*u, _mm256_and_si256(shift(h, 4 - k as i32), m));
                }
            } else if l.bits == 6 {
                let m = _mm256_set1_epi8(0x30);
                for hh in 0..2 {
                    let h = ld(ch, 128 + 32 * hh);
                    for j in 0..4 {
                        let k = 4 * hh + j;
                        u[k] = _mm256_or_si256(u[k], _mm256_and_si256(shift(h, 4 - 2 * j as i32), m));
                    }
                }
            }
            u
        }

        /// Four activation codes `a[off..off + 4]` broadcast to every lane.
        #[target_feature(enable = $feat)]
        #[inline]
        fn bcast(a: &[i8], off: usize) -> __m256i {
            let b: [i8; 4] = a[off..off + 4].try_into().expect("4 codes");
            _mm256_set1_epi32(i32::from_le_bytes(b.map(|x| x as u8)))
        }

        /// `hsum_float_8`'s tree over eight lane accumulators (one row per lane), per token.
        #[target_feature(enable = $feat)]
        #[inline]
        fn hsum_lanes<const T: usize>(acc: &[[__m256; 8]; T]) -> [[f32; GROUP]; T] {
            let mut r = [[0f32; GROUP]; T];
            for (r, a) in r.iter_mut().zip(acc) {
                let h = _mm256_add_ps(
                    _mm256_add_ps(_mm256_add_ps(a[0], a[4]), _mm256_add_ps(a[2], a[6])),
                    _mm256_add_ps(_mm256_add_ps(a[1], a[5]), _mm256_add_ps(a[3], a[7])),
                );
                // SAFETY: `r` is 8 writable f32; the store is unaligned.
                unsafe { _mm256_storeu_ps(r.as_mut_ptr(), h) };
            }
            r
        }

        /// Eight rows (one group) of Q6_K against token `t0` in llama.cpp's x86
        /// `vec_dot_q6_K_q8_K` order (see `dot`'s Q6_K): lane `k` of a block is the exact
        /// integer `Σ_c scale(2c + k/4)·(products 4k..4k+4 of chunk c)` minus
        /// `32·(bsum·scale)` of sub-blocks `2k` and `2k + 1`, accumulated as
        /// `fma(d_w·d_a, lane, acc_k)`; then `hsum_float_8`'s tree. One token at a time (this
        /// order serves batches under 8): the eight lane sums, eight accumulators and a
        /// chunk's eight code vectors then stay in registers.
        #[target_feature(enable = $feat)]
        #[inline]
        fn group_q6k(w: &[u8], job: &Job, t0: usize) -> [[f32; GROUP]; 1] {
            let l = LAYOUTS[FMT_Q6_K];
            let bb = l.block_bytes();
            let acts = job.acts;
            let mut acc = [_mm256_setzero_ps(); 8];
            for b in 0..job.nblk {
                let rec = &w[b * bb..(b + 1) * bb];
                let dw = _mm256_cvtph_ps(ld128(rec, 0));
                let scb = |j: usize| ld64(rec, l.sc_off() + GROUP * j);
                let a = &acts.qs[t0 * acts.n_in + b * l.blk..][..l.blk];
                let iz = &acts.iz[t0 * acts.iz_stride + b * 8..][..8];
                // Lane k starts at −32·(scale·bsum) of sub-blocks 2k and 2k + 1: the scales
                // as an i16 pair against the activations' pair of sums.
                let mut isum: [__m256i; 8] = std::array::from_fn(|k| {
                    let scp = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(scb(2 * k), scb(2 * k + 1)));
                    let z = _mm256_madd_epi16(scp, _mm256_set1_epi32(iz[k]));
                    _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<5>(z))
                });
                for c in 0..l.blk / 32 {
                    prefetch(w, b * bb + l.hdr_bytes() + c * l.chunk_bytes(), l.chunk_bytes());
                    let u = unpack::<FMT_Q6_K>(&rec[l.hdr_bytes() + c * l.chunk_bytes()..][..l.chunk_bytes()]);
                    // Sub-block scales of the chunk's two halves, as i16 pairs (s, s).
                    let s0 = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(scb(2 * c), scb(2 * c)));
                    let s1 = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(scb(2 * c + 1), scb(2 * c + 1)));
                    for (k, isum) in isum.iter_mut().enumerate() {
                        let s = if k < 4 { s0 } else { s1 };
                        *isum = dot4_scaled(*isum, u[k], bcast(a, 32 * c + 4 * k), s);
                    }
                }
                let dd = _mm256_mul_ps(dw, _mm256_set1_ps(acts.d[t0 * job.nblk + b]));
                for (acc, isum) in acc.iter_mut().zip(isum) {
                    *acc = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(isum), *acc);
                }
            }
            hsum_lanes(&[acc])
        }

        /// Eight rows (one group) of Q6_K against tokens `t0..t0 + T` in the order of
        /// llama.cpp's tiled K-quant matmul (`dot::dot_q6k_tiled`): per block the exact
        /// integer `Σ_j scale_j·Σ(u − 32)·a`, then `acc = fma(float(s)·d_w, d_a, acc)`.
        #[target_feature(enable = $feat)]
        #[inline]
        fn group_q6k_tiled<const T: usize>(w: &[u8], job: &Job, t0: usize) -> [[f32; GROUP]; T] {
            let l = LAYOUTS[FMT_Q6_K];
            let bb = l.block_bytes();
            let acts = job.acts;
            let mut acc = [_mm256_setzero_ps(); T];
            for b in 0..job.nblk {
                let rec = &w[b * bb..(b + 1) * bb];
                let dw = _mm256_cvtph_ps(ld128(rec, 0));
                let scb = |j: usize| ld64(rec, l.sc_off() + GROUP * j);
                // The zero point: 32·Σ_j scale_j·bsum_j, from the activations' i16 pairs.
                let mut isum = [_mm256_setzero_si256(); T];
                for k in 0..8 {
                    let scp = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(scb(2 * k), scb(2 * k + 1)));
                    for (i, isum) in isum.iter_mut().enumerate() {
                        let pair = acts.iz[(t0 + i) * acts.iz_stride + b * 8 + k];
                        *isum = _mm256_sub_epi32(*isum, _mm256_madd_epi16(scp, _mm256_set1_epi32(pair)));
                    }
                }
                for isum in isum.iter_mut() {
                    *isum = _mm256_slli_epi32::<5>(*isum);
                }
                for c in 0..l.blk / 32 {
                    let u = unpack::<FMT_Q6_K>(&rec[l.hdr_bytes() + c * l.chunk_bytes()..][..l.chunk_bytes()]);
                    for h in 0..2 {
                        let sc = _mm256_cvtepi8_epi32(scb(2 * c + h));
                        for (i, isum) in isum.iter_mut().enumerate() {
                            let a = &acts.qs[(t0 + i) * acts.n_in + b * l.blk + 32 * c..][..32];
                            let mut dp = _mm256_setzero_si256();
                            for k in 4 * h..4 * h + 4 {
                                dp = dot4(dp, u[k], bcast(a, 4 * k));
                            }
                            *isum = _mm256_add_epi32(*isum, _mm256_mullo_epi32(dp, sc));
                        }
                    }
                }
                for (i, acc) in acc.iter_mut().enumerate() {
                    let da = _mm256_set1_ps(acts.d[(t0 + i) * job.nblk + b]);
                    *acc = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(isum[i]), dw), da, *acc);
                }
            }
            let mut r = [[0f32; GROUP]; T];
            for (r, acc) in r.iter_mut().zip(acc) {
                // SAFETY: `r` is 8 writable f32; the store is unaligned.
                unsafe { _mm256_storeu_ps(r.as_mut_ptr(), acc) };
            }
            r
        }

        /// Eight rows (one group) against tokens `t0..t0 + T` in llama.cpp's x86 `vec_dot`
        /// order (Q4_1, Q5_0, Q8_0; see `dot::lanes8`): per token, vector `k` holds lane `k`
        /// (products `4k..4k+4` of each block) of the eight rows, accumulated as
        /// `fma(d_w·d_a, lane, acc_k)`; then `hsum_float_8`'s tree, plus Q4_1's `Σ m·s`.
        /// Each lane's integer is exact, however it is formed: Q5_0's unsigned codes start
        /// from the activations' `−16·Σa` of the lane; Q8_0's signed codes become `w + 128`
        /// from `−128·Σa` where `Q8_UNSIGNED` (VNNI), else take ggml's sign trick.
        #[target_feature(enable = $feat)]
        #[inline]
        fn group_lanes<const F: usize, const T: usize>(w: &[u8], job: &Job, t0: usize) -> [[f32; GROUP]; T] {
            let l = LAYOUTS[F];
            let bb = l.block_bytes();
            let acts = job.acts;
            let zero = _mm256_setzero_si256();
            let sign_trick = l.bits == 8 && !Q8_UNSIGNED;
            let mut acc = [[_mm256_setzero_ps(); 8]; T];
            let mut summs = [_mm256_setzero_ps(); T];
            for b in 0..job.nblk {
                let rec = &w[b * bb..(b + 1) * bb];
                prefetch(w, b * bb, bb);
                let dw = _mm256_cvtph_ps(ld128(rec, 0));
                let u = unpack::<F>(&rec[l.hdr_bytes()..][..l.chunk_bytes()]);
                let ax = if sign_trick {
                    // |code| × (activation with the code's sign).
                    u.map(|u| _mm256_abs_epi8(u))
                } else if l.bits == 8 {
                    u.map(|u| _mm256_xor_si256(u, _mm256_set1_epi8(-128)))
                } else {
                    u
                };
                for i in 0..T {
                    let a = &acts.qs[(t0 + i) * acts.n_in + b * 32..][..32];
                    let iz = if l.lane_offset() != 0 { &acts.iz[(t0 + i) * acts.iz_stride + 8 * b..][..8] } else { &[0; 8] };
                    let dd = _mm256_mul_ps(dw, _mm256_set1_ps(acts.d[(t0 + i) * job.nblk + b]));
                    for (k, acc) in acc[i].iter_mut().enumerate() {
                        let av = bcast(a, 4 * k);
                        let dp = if sign_trick {
                            dot4(zero, ax[k], _mm256_sign_epi8(av, u[k]))
                        } else if l.lane_offset() != 0 {
                            dot4(_mm256_set1_epi32(iz[k]), ax[k], av)
                        } else {
                            dot4(zero, u[k], av)
                        };
                        *acc = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(dp), *acc);
                    }
                }
                if l.min == Min::Block {
                    let m = _mm256_cvtph_ps(ld128(rec, 16));
                    for i in 0..T {
                        let s = _mm256_set1_ps(acts.s[(t0 + i) * acts.s_stride + b]);
                        summs[i] = _mm256_fmadd_ps(m, s, summs[i]);
                    }
                }
            }
            let mut r = hsum_lanes(&acc);
            if l.min == Min::Block {
                // Q4_1: `+ Σ m·s` after the lanes' sum.
                for (r, summs) in r.iter_mut().zip(summs) {
                    // SAFETY: `r` is 8 readable and writable f32; the accesses are unaligned.
                    unsafe { _mm256_storeu_ps(r.as_mut_ptr(), _mm256_add_ps(_mm256_loadu_ps(r.as_ptr()), summs)) };
                }
            }
            r
        }

        /// Eight rows (one group) against tokens `t0..t0 + T`: Q4_0 and Q4_K in the order of
        /// llama.cpp's repacked kernels (`q4_0_8x8_q8_0`, `q4_K_8x8_q8_K`): one exact integer
        /// sum per block, fused into the accumulator with `d_w·d_a`; Q4_K's mins go to a second
        /// accumulator (`dmin·d_a`) subtracted at the end. Q4_1, Q5_0 and Q8_0 run `group_lanes`,
        /// Q6_K `group_q6k` / `group_q6k_tiled`.
        #[target_feature(enable = $feat)]
        #[inline]
        fn group<const F: usize, const T: usize>(w: &[u8], job: &Job, t0: usize) -> [[f32; GROUP]; T] {
            let l = LAYOUTS[F];
            debug_assert!(!l.lanes && l.bits < 8);
            let bb = l.block_bytes();
            let acts = job.acts;
            let nsub_chunk = 32 / l.sub;
            let gv = l.sub / 4;
            // llama.cpp's gemm (tokens in fours: our full tiles) fuses Q4_K per pair of
            // sub-blocks, its gemv (the last n % 4 tokens: our partial tile) per block.
            let pairs = F == FMT_Q4_K && T == 4;
            let mut acc = [_mm256_setzero_ps(); T];
            let mut acc_min = [_mm256_setzero_ps(); T];
            for b in 0..job.nblk {
                let rec = &w[b * bb..(b + 1) * bb];
                let dw = _mm256_cvtph_ps(ld128(rec, 0));
                let mut da = [_mm256_setzero_ps(); T];
                let mut dd = [_mm256_setzero_ps(); T];
                for i in 0..T {
                    da[i] = _mm256_set1_ps(acts.d[(t0 + i) * job.nblk + b]);
                    dd[i] = _mm256_mul_ps(dw, da[i]);
                }
                let mut a: [&[i8]; T] = [&[]; T];
                for (i, a) in a.iter_mut().enumerate() {
                    *a = &acts.qs[(t0 + i) * acts.n_in + b * l.blk..][..l.blk];
                }
                let mut isum = [_mm256_setzero_si256(); T];
                for c in 0..l.blk / 32 {
                    prefetch(w, b * bb + l.hdr_bytes() + c * l.chunk_bytes(), l.chunk_bytes());
                    let u = unpack::<F>(&rec[l.hdr_bytes() + c * l.chunk_bytes()..][..l.chunk_bytes()]);
                    for s in 0..nsub_chunk {
                        let j = c * nsub_chunk + s;
                        let mut dp = [_mm256_setzero_si256(); T];
                        if l.zero != 0 {
                            for (i, dp) in dp.iter_mut().enumerate() {
                                *dp = _mm256_set1_epi32(acts.iz[(t0 + i) * acts.iz_stride + b * l.nsub() + j]);
                            }
                        }
                        for k in s * gv..(s + 1) * gv {
                            for i in 0..T {
                                dp[i] = dot4(dp[i], u[k], bcast(a[i], 32 * c + 4 * k));
                            }
                        }
                        if l.scales {
                            let sc = _mm256_cvtepu8_epi32(ld64(rec, l.sc_off() + GROUP * j));
                            for i in 0..T {
                                isum[i] = _mm256_add_epi32(isum[i], _mm256_mullo_epi32(dp[i], sc));
                            }
                            if pairs && j % 2 == 1 {
                                for i in 0..T {
                                    acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[i]), dd[i], acc[i]);
                                    isum[i] = _mm256_setzero_si256();
                                }
                            }
                        } else {
                            for i in 0..T {
                                isum[i] = _mm256_add_epi32(isum[i], dp[i]);
                            }
                        }
                    }
                }
                if !pairs {
                    for i in 0..T {
                        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[i]), dd[i], acc[i]);
                    }
                }
                match l.min {
                    // Q4_1 runs `group_lanes`.
                    Min::None | Min::Block => {}
                    Min::Sub => {
                        let dmin = _mm256_cvtph_ps(ld128(rec, 16));
                        let mut ms = [_mm256_setzero_si256(); T];
                        for p in 0..l.nsub() / 2 {
                            let lo = ld64(rec, l.mn_off() + GROUP * 2 * p);
                            let hi = ld64(rec, l.mn_off() + GROUP * (2 * p + 1));
                            // Lane r: (min of sub-block 2p, min of 2p + 1) as an i16 pair.
                            let m16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(lo, hi));
                            for i in 0..T {
                                let pair = acts.iz[(t0 + i) * acts.iz_stride + b * (l.nsub() / 2) + p];
                                ms[i] = _mm256_add_epi32(ms[i], _mm256_madd_epi16(m16, _mm256_set1_epi32(pair)));
                                if pairs {
                                    let dm = _mm256_mul_ps(dmin, da[i]);
                                    acc_min[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ms[i]), dm, acc_min[i]);
                                    ms[i] = _mm256_setzero_si256();
                                }
                            }
                        }
                        if !pairs {
                            for i in 0..T {
                                let dm = _mm256_mul_ps(dmin, da[i]);
                                acc_min[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ms[i]), dm, acc_min[i]);
                            }
                        }
                    }
                }
            }
            let mut r = [[0f32; GROUP]; T];
            for ((r, acc), acc_min) in r.iter_mut().zip(acc).zip(acc_min) {
                // SAFETY: `r` is 8 writable f32; the store is unaligned.
                unsafe { _mm256_storeu_ps(r.as_mut_ptr(), _mm256_sub_ps(acc, acc_min)) };
            }
            r
        }
    };
}

/// AVX2 + FMA + F16C.
pub(crate) mod avx2 {
    kernels!(
        "avx2,fma,f16c",
        /// `vpmaddubsw` would saturate on `w + 128`: Q8_0 takes the sign trick.
        const Q8_UNSIGNED: bool = false;,
        /// Tokens `tb..te` of groups `g` and `g + 1`, one group after the other (no 16-lane
        /// vectors here).
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        fn lane_pair_tokens<const F: usize>(job: &Job, g: usize, tb: usize, te: usize) {
            lane_group_tokens::<F>(job, g, tb, te);
            lane_group_tokens::<F>(job, g + 1, tb, te);
        },
        /// Two groups one after the other (no look-ahead here: `Ahead` serves the VNNI pairs).
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        fn group_pair<const F: usize, const T: usize, const AHEAD: bool>(
            w0: &[u8],
            w1: &[u8],
            _ahead: &[u8],
            job: &Job,
            t0: usize,
        ) -> [[[f32; GROUP]; T]; 2] {
            [group::<F, T>(w0, job, t0), group::<F, T>(w1, job, t0)]
        },
        /// Two groups one after the other (no look-ahead, as `group_pair`).
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        fn group_q6k_pair(
            w0: &[u8],
            w1: &[u8],
            _ahead: &[u8],
            job: &Job,
            t0: usize,
        ) -> [[[f32; GROUP]; 1]; 2] {
            [group_q6k(w0, job, t0), group_q6k(w1, job, t0)]
        },
        /// Two groups one after the other (no look-ahead, as `group_pair`).
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        fn group_q6k_tiled_pair<const T: usize, const AHEAD: bool>(
            w0: &[u8],
            w1: &[u8],
            _ahead: &[u8],
            job: &Job,
            t0: usize,
        ) -> [[[f32; GROUP]; T]; 2] {
            [group_q6k_tiled::<T>(w0, job, t0), group_q6k_tiled::<T>(w1, job, t0)]
        },
        /// `acc + Σ` of four u8 × i8 products per i32 lane (`vpmaddubsw` cannot saturate
        /// here: codes are at most 63, or 128 with the sign trick, and activations ±127).
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        fn dot4(acc: __m256i, u: __m256i, a: __m256i) -> __m256i {
            let p16 = _mm256_maddubs_epi16(u, a);
            _mm256_add_epi32(acc, _mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
        },
        /// `acc + Σ sc·(u·a pairs)`: `vpmaddubsw` then `vpmaddwd` against i16 scales
        /// (llama.cpp's Q6_K `vec_dot`; no saturation: codes ≤ 63, activations ±127).
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        fn dot4_scaled(acc: __m256i, u: __m256i, a: __m256i, sc: __m256i) -> __m256i {
            _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, a), sc))
        }
    );
}

/// AVX-512 F/BW/VL + VNNI (Zen 4 and Ice Lake or later): 256-bit vectors for one group,
/// 512-bit vectors for pairs of groups.
pub(crate) mod vnni {
    kernels!(
        "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
        /// Q8_0 codes read as `w + 128` (one `vpxor` per block instead of a `vpsignb` per
        /// token and lane).
        const Q8_UNSIGNED: bool = true;,
        /// Tokens `tb..te` of groups `g` and `g + 1` (`group_lanes_pair`, tiles of two). With
        /// more than one tile, the pair's codes are unpacked once into up to `MAX_PRE` blocks
        /// of stack (32 KiB, in L1) and every tile reads them there: unpacking a Q5_0 block
        /// costs as many instructions as two tokens' products (Q8_0 gains too: its two
        /// streams are read once).
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        #[inline]
        fn lane_pair_tokens<const F: usize>(job: &Job, g: usize, tb: usize, te: usize) {
            const MAX_PRE: usize = 64;
            let (w0, w1) = (&job.w[g * job.group_bytes..], &job.w[(g + 1) * job.group_bytes..]);
            let l = LAYOUTS[F];
            let (bb, hdr, cb) = (l.block_bytes(), l.hdr_bytes(), l.chunk_bytes());
            if te - tb <= 2 || job.nblk > MAX_PRE {
                return pair_tiles::<F, false, false>(job, g, tb, te, &[]);
            }
            let mut buf = [std::mem::MaybeUninit::<[__m512i; 8]>::uninit(); MAX_PRE];
            for (b, slot) in buf.iter_mut().enumerate().take(job.nblk) {
                prefetch(w0, b * bb, bb);
                prefetch(w1, b * bb, bb);
                slot.write(unpack_lanes::<F>(&w0[b * bb + hdr..][..cb], &w1[b * bb + hdr..][..cb]));
            }
            // SAFETY: the first `nblk` slots were written just above.
            let pre: &[[__m512i; 8]] = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), job.nblk) };
            // A decode batch (few passes) asks for the next pair's bytes while it multiplies
            // (`Ahead`); a prompt's 64-token tiles reuse each pair 32 times and need not.
            if te - tb <= 16 {
                pair_tiles::<F, true, true>(job, g, tb, te, pre);
            } else {
                pair_tiles::<F, true, false>(job, g, tb, te, pre);
            }
        },
        /// Tokens `tb..te` of groups `g` and `g + 1` in tiles of two (`group_lanes_pair`;
        /// `PRE`: codes from `pre`; `AHEAD`: each tile asks for its share of the next pair).
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        #[inline]
        fn pair_tiles<const F: usize, const PRE: bool, const AHEAD: bool>(
            job: &Job,
            g: usize,
            tb: usize,
            te: usize,
            pre: &[[__m512i; 8]],
        ) {
            let (w0, w1) = (&job.w[g * job.group_bytes..], &job.w[(g + 1) * job.group_bytes..]);
            let mut ahead = Ahead::new(job, g, if AHEAD { (te - tb).div_ceil(2) } else { 0 }, 0);
            let mut t = tb;
            while t + 2 <= te {
                let a = ahead.next();
                store_pair(job, g, t, &group_lanes_pair::<F, 2, PRE, AHEAD>(w0, w1, pre, a, job, t));
                t += 2;
            }
            if t < te {
                let a = ahead.next();
                store_pair(job, g, t, &group_lanes_pair::<F, 1, PRE, AHEAD>(w0, w1, pre, a, job, t));
            }
        },
        /// The eight code vectors of a lane-order block of two groups, as `vpdpbusd` takes
        /// them (Q8_0 as `w + 128`).
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        #[inline]
        fn unpack_lanes<const F: usize>(c0: &[u8], c1: &[u8]) -> [__m512i; 8] {
            let mut u = unpack_pair::<F>(c0, c1);
            if LAYOUTS[F].bits == 8 {
                for u in u.iter_mut() {
                    *u = _mm512_xor_si512(*u, _mm512_set1_epi8(-128));
                }
            }
            u
        },
        /// `group_lanes` for two groups at once on 512-bit vectors: the rows of `w0` in the
        /// low half, those of `w1` in the high half, so each instruction serves sixteen rows
        /// (twice the multiply-adds per instruction, where a core has two 512-bit units). Every
        /// lane does `group_lanes`' arithmetic in its order: the same bits. `PRE`: the codes
        /// come unpacked in `pre` (one entry per block).
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        #[inline]
        fn group_lanes_pair<const F: usize, const T: usize, const PRE: bool, const AHEAD: bool>(
            w0: &[u8],
            w1: &[u8],
            pre: &[[__m512i; 8]],
            ahead: &[u8],
            job: &Job,
            t0: usize,
        ) -> [[[f32; GROUP]; T]; 2] {
            let l = LAYOUTS[F];
            let (bb, hdr, cb) = (l.block_bytes(), l.hdr_bytes(), l.chunk_bytes());
            let acts = job.acts;
            let mut acc = [[_mm512_setzero_ps(); 8]; T];
            let mut summs = [_mm512_setzero_ps(); T];
            for b in 0..job.nblk {
                let (r0, r1) = (&w0[b * bb..(b + 1) * bb], &w1[b * bb..(b + 1) * bb]);
                if AHEAD {
                    super::prefetch_share(ahead, b, job.nblk);
                }
                let u = if PRE {
                    pre[b]
                } else {
                    prefetch(w0, b * bb, bb);
                    prefetch(w1, b * bb, bb);
                    unpack_lanes::<F>(&r0[hdr..hdr + cb], &r1[hdr..hdr + cb])
                };
                let dw = ph_pair(r0, r1, 0);
                for i in 0..T {
                    let a = &acts.qs[(t0 + i) * acts.n_in + b * 32..][..32];
                    let iz = if l.lane_offset() != 0 {
                        &acts.iz[(t0 + i) * acts.iz_stride + 8 * b..][..8]
                    } else {
                        &[0; 8]
                    };
                    let dd = _mm512_mul_ps(dw, _mm512_set1_ps(acts.d[(t0 + i) * job.nblk + b]));
                    for (k, acc) in acc[i].iter_mut().enumerate() {
                        let dp = _mm512_dpbusd_epi32(_mm512_set1_epi32(iz[k]), u[k], bcast16(a, 4 * k));
                        *acc = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(dp), *acc);
                    }
                }
                if l.min == Min::Block {
                    let m = ph_pair(r0, r1, 16);
                    for (i, summs) in summs.iter_mut().enumerate() {
                        let s = _mm512_set1_ps(acts.s[(t0 + i) * acts.s_stride + b]);
                        *summs = _mm512_fmadd_ps(m, s, *summs);
                    }
                }
            }
            let mut h = [_mm512_setzero_ps(); T];
            for i in 0..T {
                // `hsum_lanes`' tree, then Q4_1's `+ Σ m·s`.
                let a = &acc[i];
                h[i] = _mm512_add_ps(
                    _mm512_add_ps(_mm512_add_ps(a[0], a[4]), _mm512_add_ps(a[2], a[6])),
                    _mm512_add_ps(_mm512_add_ps(a[1], a[5]), _mm512_add_ps(a[3], a[7])),
                );
                if l.min == Min::Block {
                    h[i] = _mm512_add_ps(h[i], summs[i]);
                }
            }
            split(&h)
        },
        /// Four activation codes `a[off..off + 4]` broadcast to all sixteen lanes.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        #[inline]
        fn bcast16(a: &[i8], off: usize) -> __m512i {
            let b: [i8; 4] = a[off..off + 4].try_into().expect("4 codes");
            _mm512_set1_epi32(i32::from_le_bytes(b.map(|x| x as u8)))
        },
        /// Two 256-bit halves as one 512-bit vector.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        #[inline]
        fn join(lo: __m256i, hi: __m256i) -> __m512i {
            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
        },
        /// Eight rows' f16 header values at `off` of two block records, as sixteen f32.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        #[inline]
        fn ph_pair(r0: &[u8], r1: &[u8], off: usize) -> __m512 {
            _mm512_cvtph_ps(_mm256_set_m128i(ld128(r1, off), ld128(r0, off)))
        },
        /// Eight bytes at `off` of two block records (one per row of a group), as sixteen.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        #[inline]
        fn b64_pair(r0: &[u8], r1: &[u8], off: usize) -> __m128i {
            _mm_unpacklo_epi64(ld64(r0, off), ld64(r1, off))
        },
        /// `unpack` of the same chunk of two groups: group `c0`'s rows in the low half.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        #[inline]
        fn unpack_pair<const F: usize>(c0: &[u8], c1: &[u8]) -> [__m512i; 8] {
            let l = LAYOUTS[F];
            let mut u = [_mm512_setzero_si512(); 8];
            if l.bits == 8 {
                for (k, u) in u.iter_mut().enumerate() {
                    *u = join(ld(c0, 32 * k), ld(c1, 32 * k));
                }
                return u;
            }
            let nib = _mm512_set1_epi8(0x0f);
            for k in 0..4 {
                let v = join(ld(c0, 32 * k), ld(c1, 32 * k));
                u[k] = _mm512_and_si512(v, nib);
                u[k + 4] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), nib);
            }
            let shift = |v: __m512i, s: i32| {
                if s >= 0 {
                    _mm512_sll_epi16(v, _mm_cvtsi32_si128(s))
                } else {
                    _mm512_srl_epi16(v, _mm_cvtsi32_si128(-s))
                }
            };
            if l.bits == 5 {
                let h = join(ld(c0, 128), ld(c1, 128));
                let m = _mm512_set1_epi8(0x10);
                for (k, u) in u.iter_mut().enumerate() {
                    *u = _mm512_or_si512(*u, _mm512_and_si512(shift(h, 4 - k as i32), m));
                }
            } else if l.bits == 6 {
                let m = _mm512_set1_epi8(0x30);
                for hh in 0..2 {
                    let h = join(ld(c0, 128 + 32 * hh), ld(c1, 128 + 32 * hh));
                    for j in 0..4 {
                        let k = 4 * hh + j;
                        u[k] = _mm512_or_si512(u[k], _mm512_and_si512(shift(h, 4 - 2 * j as i32), m));
                    }
                }
            }
            u
        },
        /// `group` for two groups at once on 512-bit vectors (rows of `w0` in the low half),
        /// every lane in `group`'s order: the same bits.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        #[inline]
        fn group_pair<const F: usize, const T: usize, const AHEAD: bool>(
            w0: &[u8],
            w1: &[u8],
            ahead: &[u8],
            job: &Job,
            t0: usize,
        ) -> [[[f32; GROUP]; T]; 2] {
            let l = LAYOUTS[F];
            let (bb, hdr, cb) = (l.block_bytes(), l.hdr_bytes(), l.chunk_bytes());
            let acts = job.acts;
            let nsub_chunk = 32 / l.sub;
            let gv = l.sub / 4;
            let pairs = F == FMT_Q4_K && T == 4;
            let mut acc = [_mm512_setzero_ps(); T];
            let mut acc_min = [_mm512_setzero_ps(); T];
            for b in 0..job.nblk {
                let (r0, r1) = (&w0[b * bb..(b + 1) * bb], &w1[b * bb..(b + 1) * bb]);
                if AHEAD {
                    super::prefetch_share(ahead, b, job.nblk);
                }
                let dw = ph_pair(r0, r1, 0);
                let mut da = [_mm512_setzero_ps(); T];
                let mut dd = [_mm512_setzero_ps(); T];
                let mut a: [&[i8]; T] = [&[]; T];
                for i in 0..T {
                    da[i] = _mm512_set1_ps(acts.d[(t0 + i) * job.nblk + b]);
                    dd[i] = _mm512_mul_ps(dw, da[i]);
                    a[i] = &acts.qs[(t0 + i) * acts.n_in + b * l.blk..][..l.blk];
                }
                let mut isum = [_mm512_setzero_si512(); T];
                for c in 0..l.blk / 32 {
                    let off = hdr + c * cb;
                    prefetch(w0, b * bb + off, cb);
                    prefetch(w1, b * bb + off, cb);
                    let u = unpack_pair::<F>(&r0[off..off + cb], &r1[off..off + cb]);
                    for s in 0..nsub_chunk {
                        let j = c * nsub_chunk + s;
                        let mut dp = [_mm512_setzero_si512(); T];
                        if l.zero != 0 {
                            for (i, dp) in dp.iter_mut().enumerate() {
                                *dp =
                                    _mm512_set1_epi32(acts.iz[(t0 + i) * acts.iz_stride + b * l.nsub() + j]);
                            }
                        }
                        for (kk, &u) in u[s * gv..(s + 1) * gv].iter().enumerate() {
                            let k = s * gv + kk;
                            for i in 0..T {
                                dp[i] = _mm512_dpbusd_epi32(dp[i], u, bcast16(a[i], 32 * c + 4 * k));
                            }
                        }
                        if l.scales {
                            let sc = _mm512_cvtepu8_epi32(b64_pair(r0, r1, l.sc_off() + GROUP * j));
                            for i in 0..T {
                                isum[i] = _mm512_add_epi32(isum[i], _mm512_mullo_epi32(dp[i], sc));
                            }
                            if pairs && j % 2 == 1 {
                                for i in 0..T {
                                    acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[i]), dd[i], acc[i]);
                                    isum[i] = _mm512_setzero_si512();
                                }
                            }
                        } else {
                            for i in 0..T {
                                isum[i] = _mm512_add_epi32(isum[i], dp[i]);
                            }
                        }
                    }
                }
                if !pairs {
                    for i in 0..T {
                        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[i]), dd[i], acc[i]);
                    }
                }
                if l.min == Min::Sub {
                    let dmin = ph_pair(r0, r1, 16);
                    let mut ms = [_mm512_setzero_si512(); T];
                    for p in 0..l.nsub() / 2 {
                        let lo = b64_pair(r0, r1, l.mn_off() + GROUP * 2 * p);
                        let hi = b64_pair(r0, r1, l.mn_off() + GROUP * (2 * p + 1));
                        // Lane r: (min of sub-block 2p, min of 2p + 1) as an i16 pair; the
                        // low bytes of `lo`/`hi` are `w0`'s rows, the high bytes `w1`'s.
                        let m16 = _mm512_cvtepu8_epi16(_mm256_set_m128i(
                            _mm_unpackhi_epi8(lo, hi),
                            _mm_unpacklo_epi8(lo, hi),
                        ));
                        for i in 0..T {
                            let pair = acts.iz[(t0 + i) * acts.iz_stride + b * (l.nsub() / 2) + p];
                            ms[i] = _mm512_add_epi32(ms[i], _mm512_madd_epi16(m16, _mm512_set1_epi32(pair)));
                            if pairs {
                                let dm = _mm512_mul_ps(dmin, da[i]);
                                acc_min[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ms[i]), dm, acc_min[i]);
                                ms[i] = _mm512_setzero_si512();
                            }
                        }
                    }
                    if !pairs {
                        for i in 0..T {
                            let dm = _mm512_mul_ps(dmin, da[i]);
                            acc_min[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ms[i]), dm, acc_min[i]);
                        }
                    }
                }
            }
            for i in 0..T {
                acc[i] = _mm512_sub_ps(acc[i], acc_min[i]);
            }
            split(&acc)
        },
        /// Sixteen i8 scales of sub-blocks `j0` and `j1` of two block records, as i16 pairs
        /// `(scale j0, scale j1)` per row: `w0`'s rows in the low half.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        #[inline]
        fn sc_pairs(r0: &[u8], r1: &[u8], off0: usize, off1: usize) -> __m512i {
            let (lo, hi) = (b64_pair(r0, r1, off0), b64_pair(r0, r1, off1));
            _mm512_cvtepi8_epi16(_mm256_set_m128i(_mm_unpackhi_epi8(lo, hi), _mm_unpacklo_epi8(lo, hi)))
        },
        /// `group_q6k` for two groups at once on 512-bit vectors (rows of `w0` in the low
        /// half), every lane in its order: the same bits.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        #[inline]
        fn group_q6k_pair(
            w0: &[u8],
            w1: &[u8],
            ahead: &[u8],
            job: &Job,
            t0: usize,
        ) -> [[[f32; GROUP]; 1]; 2] {
            let l = LAYOUTS[FMT_Q6_K];
            let (bb, hdr, cb) = (l.block_bytes(), l.hdr_bytes(), l.chunk_bytes());
            let acts = job.acts;
            let sc = |j: usize| l.sc_off() + GROUP * j;
            let mut acc = [_mm512_setzero_ps(); 8];
            for b in 0..job.nblk {
                let (r0, r1) = (&w0[b * bb..(b + 1) * bb], &w1[b * bb..(b + 1) * bb]);
                if !ahead.is_empty() {
                    super::prefetch_share(ahead, b, job.nblk);
                }
                let dw = ph_pair(r0, r1, 0);
                let a = &acts.qs[t0 * acts.n_in + b * l.blk..][..l.blk];
                let iz = &acts.iz[t0 * acts.iz_stride + b * 8..][..8];
                let mut isum = [_mm512_setzero_si512(); 8];
                for (k, isum) in isum.iter_mut().enumerate() {
                    let z = _mm512_madd_epi16(
                        sc_pairs(r0, r1, sc(2 * k), sc(2 * k + 1)),
                        _mm512_set1_epi32(iz[k]),
                    );
                    *isum = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32::<5>(z));
                }
                for c in 0..l.blk / 32 {
                    let off = hdr + c * cb;
                    prefetch(w0, b * bb + off, cb);
                    prefetch(w1, b * bb + off, cb);
                    let u = unpack_pair::<FMT_Q6_K>(&r0[off..off + cb], &r1[off..off + cb]);
                    let s0 = sc_pairs(r0, r1, sc(2 * c), sc(2 * c));
                    let s1 = sc_pairs(r0, r1, sc(2 * c + 1), sc(2 * c + 1));
                    for (k, isum) in isum.iter_mut().enumerate() {
                        let s = if k < 4 { s0 } else { s1 };
                        let av = bcast16(a, 32 * c + 4 * k);
                        *isum = _mm512_dpwssd_epi32(*isum, _mm512_maddubs_epi16(u[k], av), s);
                    }
                }
                let dd = _mm512_mul_ps(dw, _mm512_set1_ps(acts.d[t0 * job.nblk + b]));
                for (acc, isum) in acc.iter_mut().zip(isum) {
                    *acc = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(isum), *acc);
                }
            }
            let a = &acc;
            split(&[_mm512_add_ps(
                _mm512_add_ps(_mm512_add_ps(a[0], a[4]), _mm512_add_ps(a[2], a[6])),
                _mm512_add_ps(_mm512_add_ps(a[1], a[5]), _mm512_add_ps(a[3], a[7])),
            )])
        },
        /// `group_q6k_tiled` for two groups at once on 512-bit vectors (rows of `w0` in the
        /// low half), every lane in its order: the same bits.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        #[inline]
        fn group_q6k_tiled_pair<const T: usize, const AHEAD: bool>(
            w0: &[u8],
            w1: &[u8],
            ahead: &[u8],
            job: &Job,
            t0: usize,
        ) -> [[[f32; GROUP]; T]; 2] {
            let l = LAYOUTS[FMT_Q6_K];
            let (bb, hdr, cb) = (l.block_bytes(), l.hdr_bytes(), l.chunk_bytes());
            let acts = job.acts;
            let sc = |j: usize| l.sc_off() + GROUP * j;
            let mut acc = [_mm512_setzero_ps(); T];
            for b in 0..job.nblk {
                let (r0, r1) = (&w0[b * bb..(b + 1) * bb], &w1[b * bb..(b + 1) * bb]);
                if AHEAD {
                    super::prefetch_share(ahead, b, job.nblk);
                }
                let dw = ph_pair(r0, r1, 0);
                // The zero point: 32·Σ_j scale_j·bsum_j, from the activations' i16 pairs.
                let mut isum = [_mm512_setzero_si512(); T];
                for k in 0..8 {
                    let scp = sc_pairs(r0, r1, sc(2 * k), sc(2 * k + 1));
                    for (i, isum) in isum.iter_mut().enumerate() {
                        let pair = acts.iz[(t0 + i) * acts.iz_stride + b * 8 + k];
                        *isum = _mm512_sub_epi32(*isum, _mm512_madd_epi16(scp, _mm512_set1_epi32(pair)));
                    }
                }
                for isum in isum.iter_mut() {
                    *isum = _mm512_slli_epi32::<5>(*isum);
                }
                for c in 0..l.blk / 32 {
                    let off = hdr + c * cb;
                    let u = unpack_pair::<FMT_Q6_K>(&r0[off..off + cb], &r1[off..off + cb]);
                    for h in 0..2 {
                        let s = _mm512_cvtepi8_epi32(b64_pair(r0, r1, sc(2 * c + h)));
                        for (i, isum) in isum.iter_mut().enumerate() {
                            let a = &acts.qs[(t0 + i) * acts.n_in + b * l.blk + 32 * c..][..32];
                            let mut dp = _mm512_setzero_si512();
                            for (kk, &u) in u[4 * h..4 * h + 4].iter().enumerate() {
                                dp = _mm512_dpbusd_epi32(dp, u, bcast16(a, 4 * (4 * h + kk)));
                            }
                            *isum = _mm512_add_epi32(*isum, _mm512_mullo_epi32(dp, s));
                        }
                    }
                }
                for (i, acc) in acc.iter_mut().enumerate() {
                    let da = _mm512_set1_ps(acts.d[(t0 + i) * job.nblk + b]);
                    *acc = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(isum[i]), dw), da, *acc);
                }
            }
            split(&acc)
        },
        /// Per token, sixteen results as the eight of each group.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        #[inline]
        fn split<const T: usize>(h: &[__m512; T]) -> [[[f32; GROUP]; T]; 2] {
            let mut r = [[[0f32; GROUP]; T]; 2];
            for (i, h) in h.iter().enumerate() {
                let mut v = [0f32; 2 * GROUP];
                // SAFETY: `v` is 16 writable f32; the store is unaligned.
                unsafe { _mm512_storeu_ps(v.as_mut_ptr(), *h) };
                r[0][i].copy_from_slice(&v[..GROUP]);
                r[1][i].copy_from_slice(&v[GROUP..]);
            }
            r
        },
        /// `acc + Σ` of four u8 × i8 products per i32 lane: one `vpdpbusd`.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        #[inline]
        fn dot4(acc: __m256i, u: __m256i, a: __m256i) -> __m256i {
            _mm256_dpbusd_epi32(acc, u, a)
        },
        /// `acc + Σ sc·(u·a pairs)`: `vpmaddubsw` then one `vpdpwssd`.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        #[inline]
        fn dot4_scaled(acc: __m256i, u: __m256i, a: __m256i, sc: __m256i) -> __m256i {
            _mm256_dpwssd_epi32(acc, _mm256_maddubs_epi16(u, a), sc)
        }
    );
}
