//! Dot products of one weight row with one activation row, per block format, on 8-bit
//! quantized activations as ggml does (integer sums inside a block, one float multiply per
//! block). Written as plain loops that LLVM vectorizes; `matmul` compiles them a second
//! time with AVX2 enabled and picks that copy at run time.

use super::attn::tree_ggml;
use crate::quant::*;
use half::{bf16, f16};

/// A weight block format with a dot product against an activation format.
pub trait VecDot: QuantBlock + Sync {
    /// The block type activations are quantized to for this weight type.
    type Act: bytemuck::Pod + Send + Sync;
    /// Values per activation block (the weight block size or a divisor of it).
    const ACT_ELEMS: usize;
    /// Quantizes one activation row (length a multiple of `ACT_ELEMS`).
    fn quantize_act(x: &[f32], out: &mut [Self::Act]);
    /// Σ w·a over a row.
    fn dot(w: &[Self], a: &[Self::Act]) -> f32;
    /// The values the quantized activations stand for (what `dot` multiplies by).
    fn act_values(a: &[Self::Act], out: &mut [f32]);
    /// [`VecDot::dot`] as the AVX2 row kernel runs it: the same sums in the same order,
    /// with intrinsics where the compiler does not find them on its own.
    ///
    /// # Safety
    /// The CPU must have avx2, fma and f16c.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn dot_avx2(w: &[Self], a: &[Self::Act]) -> f32 {
        Self::dot(w, a)
    }
}

/// `act_values` for block-quantized activations.
fn act_blocks_to_f32<A: QuantBlock>(a: &[A], out: &mut [f32]) {
    for (b, o) in a.iter().zip(out.chunks_exact_mut(A::BLOCK_ELEMS)) {
        b.dequantize(o);
    }
}

fn quantize_with<B: QuantizeBlock>(x: &[f32], out: &mut [B]) {
    for (o, src) in out.iter_mut().zip(x.chunks_exact(B::BLOCK_ELEMS)) {
        *o = B::quantize(src);
    }
}

/// Q8_0/Q8_1 activation codes of one block as llama.cpp's x86 build computes them (its AVX2
/// quantizer, not ggml's scalar reference): `id = 127 / max|x|` and round-half-to-even; the
/// stored scale is `max / 127`. Returns the f32 scale, the codes and their sum. Matching this
/// exactly matters: models with massive activations (SmolLM2's token 0 carries values near
/// 3000) turn a single different rounding into visibly different log-probabilities.
pub(crate) fn q8_block_scalar(src: &[f32]) -> (f32, [i8; QK], i32) {
    let max = src.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = max / 127.0;
    let id = if max != 0.0 { 127.0 / max } else { 0.0 };
    let qs: [i8; QK] = std::array::from_fn(|j| (src[j] * id).round_ties_even() as i8);
    (d, qs, qs.iter().map(|&q| q as i32).sum())
}

/// Calls `f` with each 32-value block's [`q8_block_scalar`] result, computed with AVX2 when
/// the CPU has it (same codes, bit for bit; the check is made once per row).
#[inline]
fn q8_blocks(x: &[f32], mut f: impl FnMut(usize, (f32, [i8; QK], i32))) {
    #[cfg(target_arch = "x86_64")]
    if super::use_avx2() {
        for (i, src) in x.chunks_exact(QK).enumerate() {
            // SAFETY: `use_avx2` detected avx2, fma and f16c; `src` has QK values.
            f(i, unsafe { q8_avx2::block(src) });
        }
        return;
    }
    for (i, src) in x.chunks_exact(QK).enumerate() {
        f(i, q8_block_scalar(src));
    }
}

#[cfg(target_arch = "x86_64")]
mod q8_avx2 {
    use super::QK;
    use std::arch::x86_64::*;

    /// One block: the max of |x| as a lane-wise tree (max is exact in any order), codes
    /// rounded half-to-even by `vcvtps2dq`, packed to bytes in order.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn block(src: &[f32]) -> (f32, [i8; QK], i32) {
        let src: &[f32; QK] = src[..QK].try_into().expect("one block");
        // SAFETY: the four loads read src[0..32], which the array type guarantees.
        let v: [__m256; 4] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(src.as_ptr().add(8 * i)) });
        let sign = _mm256_set1_ps(-0.0);
        let a: [__m256; 4] = v.map(|x| _mm256_andnot_ps(sign, x));
        let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let max = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
        let d = max / 127.0;
        let id = _mm256_set1_ps(if max != 0.0 { 127.0 / max } else { 0.0 });
        let q: [__m256i; 4] = v.map(|x| _mm256_cvtps_epi32(_mm256_mul_ps(x, id)));
        let s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        let s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
        let sum = _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 1)));
        // The packs interleave 128-bit lanes; one permute puts the 8 dwords back in order.
        let p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        let mut qs = [0i8; QK];
        // SAFETY: qs holds exactly 32 bytes.
        unsafe { _mm256_storeu_si256(qs.as_mut_ptr().cast(), p) };
        (d, qs, sum)
    }
}

pub(crate) fn quantize_q8_0_x86(x: &[f32], out: &mut [BlockQ8_0]) {
    q8_blocks(&x[..out.len().min(x.len() / QK) * QK], |i, (d, qs, _)| {
        out[i] = BlockQ8_0 { d: f16::from_f32(d).to_le_bytes(), qs };
    });
}

pub(crate) fn quantize_q8_1_x86(x: &[f32], out: &mut [BlockQ8_1]) {
    q8_blocks(&x[..out.len().min(x.len() / QK) * QK], |i, (d, qs, sum)| {
        // The f32 `d`, not its f16 rounding, as ggml does.
        out[i] = BlockQ8_1 {
            d: f16::from_f32(d).to_le_bytes(),
            s: f16::from_f32(d * sum as f32).to_le_bytes(),
            qs,
        };
    });
}

/// The activation side of a `VecDot` impl: activation block type, its size, its quantizer.
macro_rules! activations {
    ($act:ty, $elems:expr, $quantize:expr) => {
        type Act = $act;
        const ACT_ELEMS: usize = $elems;
        fn quantize_act(x: &[f32], out: &mut [$act]) {
            $quantize(x, out)
        }
        fn act_values(a: &[$act], out: &mut [f32]) {
            act_blocks_to_f32(a, out)
        }
    };
}

impl VecDot for BlockQ4_0 {
    activations!(BlockQ8_0, QK, quantize_q8_0_x86);
    #[inline(always)]
    fn dot(w: &[Self], a: &[BlockQ8_0]) -> f32 {
        let mut sum = 0f32;
        for (x, y) in w.iter().zip(a) {
            let mut s = 0i32;
            for j in 0..QK / 2 {
                let lo = (x.qs[j] & 0x0f) as i32 - 8;
                let hi = (x.qs[j] >> 4) as i32 - 8;
                s += lo * y.qs[j] as i32 + hi * y.qs[j + QK / 2] as i32;
            }
            // Fused, as llama.cpp's repacked Q4_0 kernels (and ferrite's packed kernel) do.
            sum = (s as f32).mul_add(x.d() * y.d(), sum);
        }
        sum
    }
}

impl VecDot for BlockQ4_1 {
    activations!(BlockQ8_1, QK, quantize_q8_1_x86);
    #[inline(always)]
    fn dot(w: &[Self], a: &[BlockQ8_1]) -> f32 {
        let code =
            |x: &Self, t: usize| if t < QK / 2 { x.qs[t] & 0x0f } else { x.qs[t - QK / 2] >> 4 } as i32;
        // llama.cpp: `summs += m·s`, fused, beside the lanes; added after their sum.
        let mut summs = 0f32;
        let sum = lanes8(w.iter().zip(a).map(|(x, y)| {
            summs = x.m().mul_add(y.s(), summs);
            (x.d() * y.d(), lane_sums(|t| code(x, t) * y.qs[t] as i32))
        }));
        sum + summs
    }
}

/// llama.cpp's x86 `vec_dot` order for 32-value blocks (Q4_1, Q5_0, Q8_0, also tinyBLAS for
/// batches): a block's lane `k` is the exact integer sum of products `4k..4k+4`; each lane
/// accumulates `fma(d_w·d_a, lane, acc_k)` over the blocks in turn; the eight lanes are then
/// summed as `hsum_float_8` ([`hsum8`]).
#[inline(always)]
fn lanes8(blocks: impl Iterator<Item = (f32, [i32; 8])>) -> f32 {
    let mut acc = [0f32; 8];
    for (dd, lane) in blocks {
        for (a, &v) in acc.iter_mut().zip(&lane) {
            *a = dd.mul_add(v as f32, *a);
        }
    }
    hsum8(&acc)
}

/// The lane sums of one block: `product(t)` summed over `t = 4k..4k+4` for lane `k`.
#[inline(always)]
fn lane_sums(product: impl Fn(usize) -> i32) -> [i32; 8] {
    std::array::from_fn(|k| (4 * k..4 * k + 4).map(&product).sum())
}

/// Eight lanes summed as ggml's `hsum_float_8`: `((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))`.
#[inline(always)]
pub fn hsum8(a: &[f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// The 5th bits of a Q5 block's 32 values, as 0 or 16.
#[inline(always)]
fn q5_high(qh: [u8; 4], j: usize) -> (i32, i32) {
    let qh = u32::from_le_bytes(qh);
    ((((qh >> j) << 4) & 0x10) as i32, ((qh >> (j + 12)) & 0x10) as i32)
}

impl VecDot for BlockQ5_0 {
    activations!(BlockQ8_0, QK, quantize_q8_0_x86);
    #[inline(always)]
    fn dot(w: &[Self], a: &[BlockQ8_0]) -> f32 {
        let code = |x: &Self, t: usize| {
            let nib = if t < QK / 2 { x.qs[t] & 0x0f } else { x.qs[t - QK / 2] >> 4 } as i32;
            (nib | (((u32::from_le_bytes(x.qh) >> t) & 1) << 4) as i32) - 16
        };
        lanes8(w.iter().zip(a).map(|(x, y)| (x.d() * y.d(), lane_sums(|t| code(x, t) * y.qs[t] as i32))))
    }
}

impl VecDot for BlockQ5_1 {
    activations!(BlockQ8_1, QK, quantize_q8_1_x86);
    #[inline(always)]
    fn dot(w: &[Self], a: &[BlockQ8_1]) -> f32 {
        let mut sum = 0f32;
        for (x, y) in w.iter().zip(a) {
            let mut s = 0i32;
            for j in 0..QK / 2 {
                let (h0, h1) = q5_high(x.qh, j);
                s += ((x.qs[j] & 0x0f) as i32 | h0) * y.qs[j] as i32
                    + ((x.qs[j] >> 4) as i32 | h1) * y.qs[j + QK / 2] as i32;
            }
            sum += (x.d() * y.d()) * s as f32 + x.m() * y.s();
        }
        sum
    }
}

impl VecDot for BlockQ8_0 {
    activations!(BlockQ8_0, QK, quantize_q8_0_x86);
    #[inline(always)]
    fn dot(w: &[Self], a: &[BlockQ8_0]) -> f32 {
        lanes8(w.iter().zip(a).map(|(x, y)| (x.d() * y.d(), lane_sums(|t| x.qs[t] as i32 * y.qs[t] as i32))))
    }
}

impl VecDot for BlockIQ4NL {
    activations!(BlockQ8_0, QK, quantize_q8_0_x86);
    #[inline(always)]
    fn dot(w: &[Self], a: &[BlockQ8_0]) -> f32 {
        let mut sum = 0f32;
        for (x, y) in w.iter().zip(a) {
            let mut s = 0i32;
            for j in 0..QK / 2 {
                s += KVALUES_IQ4NL[(x.qs[j] & 0x0f) as usize] as i32 * y.qs[j] as i32
                    + KVALUES_IQ4NL[(x.qs[j] >> 4) as usize] as i32 * y.qs[j + QK / 2] as i32;
            }
            sum += s as f32 * (x.d() * y.d());
        }
        sum
    }
}

/// One Q4_K/Q5_K super-block against a Q8_K block: 8 sub-blocks of 32 with 6-bit scales
/// and mins; `qh` holds Q5_K's fifth bits. Returns per sub-block `j` the exact integers
/// `scale_j · Σ q·a` and `min_j · Σ a`.
#[inline(always)]
fn k_sums(
    sm: impl Fn(usize) -> (u8, u8),
    qs: &[u8; QK_K / 2],
    qh: Option<&[u8; QK_K / 8]>,
    y: &BlockQ8K,
) -> ([i32; 8], [i32; 8]) {
    let bsums = y.bsums();
    let (mut sums, mut mins) = ([0i32; 8], [0i32; 8]);
    for j in 0..8 {
        let (sc, m) = sm(j);
        let q = &qs[(j / 2) * 32..(j / 2) * 32 + 32];
        let yq = &y.qs[j * 32..j * 32 + 32];
        let shift = if j % 2 == 0 { 0 } else { 4 };
        let s: i32 = match qh {
            None => q.iter().zip(yq).map(|(&q, &v)| ((q >> shift) & 0x0f) as i32 * v as i32).sum(),
            Some(qh) => q
                .iter()
                .zip(qh)
                .zip(yq)
                .map(|((&q, &h), &v)| ((((q >> shift) & 0x0f) | (((h >> j) & 1) << 4)) as i32) * v as i32)
                .sum(),
        };
        sums[j] = sc as i32 * s;
        mins[j] = m as i32 * (bsums[2 * j] as i32 + bsums[2 * j + 1] as i32);
    }
    (sums, mins)
}

impl VecDot for BlockQ4K {
    activations!(BlockQ8K, QK_K, quantize_with);
    /// llama.cpp's x86 build repacks Q4_K (`q4_K_8x8_q8_K`, rows a multiple of 8); this is
    /// its gemv (single token) order: per block `acc += sumi · (d·d_a)` and, in a second
    /// accumulator, `acc_min += mins · (dmin·d_a)`, both fused; the row is `acc − acc_min`.
    /// Its gemm (tokens in fours) fuses per pair of sub-blocks: [`dot_q4k_gemm`].
    #[inline(always)]
    fn dot(w: &[Self], a: &[BlockQ8K]) -> f32 {
        dot_q4k(w, a, 8)
    }
}

/// Q4_K in the order of llama.cpp's repacked gemm, which it runs for a batch's tokens in
/// groups of four (the last `n % 4` tokens take the gemv order of `VecDot::dot`): one
/// fused multiply-add per pair of 32-value sub-blocks.
pub fn dot_q4k_gemm(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    dot_q4k(w, a, 2)
}

/// Q4_K with one fused step per `step` sub-blocks (8: per block; 2: per pair).
#[inline(always)]
fn dot_q4k(w: &[BlockQ4K], a: &[BlockQ8K], step: usize) -> f32 {
    let (mut acc, mut acc_min) = (0f32, 0f32);
    for (x, y) in w.iter().zip(a) {
        let (sums, mins) = k_sums(|j| x.scale_min(j), &x.qs, None, y);
        let (dd, dm) = (x.d() * y.d(), x.dmin() * y.d());
        for (s, m) in sums.chunks_exact(step).zip(mins.chunks_exact(step)) {
            acc = (s.iter().sum::<i32>() as f32).mul_add(dd, acc);
            acc_min = (m.iter().sum::<i32>() as f32).mul_add(dm, acc_min);
        }
    }
    acc - acc_min
}

impl VecDot for BlockQ5K {
    activations!(BlockQ8K, QK_K, quantize_with);
    #[inline(always)]
    fn dot(w: &[Self], a: &[BlockQ8K]) -> f32 {
        w.iter()
            .zip(a)
            .map(|(x, y)| {
                let (sums, mins) = k_sums(|j| x.scale_min(j), &x.qs, Some(&x.qh), y);
                let (sumi, mins) = (sums.iter().sum::<i32>(), mins.iter().sum::<i32>());
                let yd = y.d();
                yd * x.d() * sumi as f32 - yd * x.dmin() * mins as f32
            })
            .sum()
    }
}

/// The 256 unsigned 6-bit codes of a Q6_K block (value `u − 32`), in value order.
#[inline(always)]
pub(crate) fn q6k_codes(x: &BlockQ6K) -> [u8; QK_K] {
    let mut u = [0u8; QK_K];
    for n in 0..2 {
        let (ql, qh) = (&x.ql[64 * n..64 * n + 64], &x.qh[32 * n..32 * n + 32]);
        let out = &mut u[128 * n..128 * n + 128];
        for l in 0..32 {
            out[l] = (ql[l] & 0x0f) | ((qh[l] & 3) << 4);
            out[l + 32] = (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4);
            out[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            out[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
    u
}

impl VecDot for BlockQ6K {
    activations!(BlockQ8K, QK_K, quantize_with);
    /// llama.cpp's x86 `vec_dot_q6_K_q8_K` (Q6_K is not repacked there): lane `k` of a block
    /// is the exact integer `Σ_c scale(2c + k/4) · Σ_{t=4k..4k+4} u·a` over the eight
    /// 32-value chunks `c`, minus `32 · (bsum_2k·scale_2k + bsum_2k+1·scale_2k+1)`; then
    /// [`lanes8`] with `d·d_a`.
    #[inline(always)]
    fn dot(w: &[Self], a: &[BlockQ8K]) -> f32 {
        lanes8(w.iter().zip(a).map(|(x, y)| {
            let u = q6k_codes(x);
            let bs = y.bsums();
            let sc = |j: usize| x.scales[j] as i32;
            let lanes = std::array::from_fn(|k| {
                let mut s = 0i32;
                for c in 0..QK_K / 32 {
                    let p: i32 =
                        (32 * c + 4 * k..32 * c + 4 * k + 4).map(|t| u[t] as i32 * y.qs[t] as i32).sum();
                    s += sc(2 * c + k / 4) * p;
                }
                s - 32 * (bs[2 * k] as i32 * sc(2 * k) + bs[2 * k + 1] as i32 * sc(2 * k + 1))
            });
            (x.d() * y.d(), lanes)
        }))
    }
}

/// Q6_K in the order of llama.cpp's tiled K-quant matmul (`ggml-cpu/tiled`, VNNI
/// microkernel), which it runs for batches of 8 tokens or more: per block the exact integer
/// `s = Σ_j scale_j · Σ (u − 32)·a` is scaled to `float(s) · d`, then `acc = fma(that, d_a,
/// acc)` (the source writes a multiply and an add; GCC's default contraction fuses them).
pub fn dot_q6k_tiled(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    let mut acc = 0f32;
    for (x, y) in w.iter().zip(a) {
        let u = q6k_codes(x);
        let s: i32 = (0..QK_K / 16)
            .map(|j| {
                let p: i32 = (16 * j..16 * j + 16).map(|t| (u[t] as i32 - 32) * y.qs[t] as i32).sum();
                x.scales[j] as i32 * p
            })
            .sum();
        acc = (s as f32 * x.d()).mul_add(y.d(), acc);
    }
    acc
}

impl VecDot for BlockF32 {
    type Act = f32;
    const ACT_ELEMS: usize = 1;
    fn act_values(a: &[f32], out: &mut [f32]) {
        out.copy_from_slice(a)
    }
    fn quantize_act(x: &[f32], out: &mut [f32]) {
        out.copy_from_slice(x)
    }
    #[inline(always)]
    fn dot(w: &[Self], a: &[f32]) -> f32 {
        dot16_by(w, a, |b| f32::from_le_bytes(b.0))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn dot_avx2(w: &[Self], a: &[f32]) -> f32 {
        // SAFETY: the caller guarantees avx2, fma and f16c.
        unsafe { dot_f32_avx2(w, a) }
    }
}

/// Float dot in the order of llama.cpp's tinyBLAS (its AVX-512 build runs F32 and F16
/// matmuls of every batch size through it): 16 lanes, lane `l` one fma chain over values
/// `i ≡ l (mod 16)` from zero, the lanes summed by `_mm512_reduce_add_ps`'s tree
/// ([`tree_ggml`]); values past the last whole 16 (tinyBLAS has none) fused in after, in
/// order. Written over whole groups of 16 so that it vectorizes; the batched GEMM
/// (`gemm`) and the AVX2 row kernel give its bits.
#[inline(always)]
pub fn dot16_by<T>(w: &[T], a: &[f32], value: impl Fn(&T) -> f32) -> f32 {
    let n = w.len().min(a.len());
    let (w16, w_tail) = w[..n].as_chunks::<16>();
    let (a16, a_tail) = a[..n].as_chunks::<16>();
    let mut acc = [0f32; 16];
    for (w, a) in w16.iter().zip(a16) {
        for l in 0..16 {
            acc[l] = value(&w[l]).mul_add(a[l], acc[l]);
        }
    }
    let mut sum = tree_ggml(&acc);
    for (w, a) in w_tail.iter().zip(a_tail) {
        sum = value(w).mul_add(*a, sum);
    }
    sum
}

/// [`dot16_by`] of two f32 rows.
#[inline(always)]
pub fn dot16(w: &[f32], a: &[f32]) -> f32 {
    dot16_by(w, a, |v| *v)
}

impl VecDot for BlockF16 {
    type Act = f32;
    const ACT_ELEMS: usize = 1;
    fn act_values(a: &[f32], out: &mut [f32]) {
        out.copy_from_slice(a)
    }
    /// ggml rounds activations to f16 for f16 weights; so do we, to agree with it. Through
    /// `half`'s slice conversions (F16C eight at a time, its feature check once per slice
    /// rather than per value), in stack-sized pieces.
    fn quantize_act(x: &[f32], out: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        let mut tmp = [f16::ZERO; 256];
        for (xc, oc) in x.chunks(256).zip(out.chunks_mut(256)) {
            let t = &mut tmp[..xc.len()];
            t.convert_from_f32_slice(xc);
            t.convert_to_f32_slice(oc);
        }
    }
    #[inline(always)]
    fn dot(w: &[Self], a: &[f32]) -> f32 {
        dot16_by(w, a, |b| f16_to_f32(u16::from_le_bytes(b.0)))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn dot_avx2(w: &[Self], a: &[f32]) -> f32 {
        // SAFETY: the caller guarantees avx2, fma and f16c.
        unsafe { dot_halves_avx2::<_, true>(w, a, |b| f16_to_f32(u16::from_le_bytes(b.0))) }
    }
}

impl VecDot for BlockBF16 {
    type Act = f32;
    const ACT_ELEMS: usize = 1;
    fn act_values(a: &[f32], out: &mut [f32]) {
        out.copy_from_slice(a)
    }
    /// ggml rounds activations to bf16 for bf16 weights; so do we, to agree with it.
    fn quantize_act(x: &[f32], out: &mut [f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = bf16::from_f32(v).to_f32();
        }
    }
    #[inline(always)]
    fn dot(w: &[Self], a: &[f32]) -> f32 {
        dot16_by(w, a, |b| bf16::from_le_bytes(b.0).to_f32())
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn dot_avx2(w: &[Self], a: &[f32]) -> f32 {
        // SAFETY: the caller guarantees avx2, fma and f16c.
        unsafe { dot_halves_avx2::<_, false>(w, a, |b| bf16::from_le_bytes(b.0).to_f32()) }
    }
}

/// [`BlockF16::dot`] and [`BlockBF16::dot`] in the AVX2 kernel: 16 two-byte values at a
/// time into two registers of 8 lanes (F16C converts f16; a bf16 is the high half of its
/// f32), fused multiply-adds, then [`dot16_by`]'s tree and tail: equal bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_halves_avx2<T, const F16: bool>(w: &[T], a: &[f32], value: impl Fn(&T) -> f32) -> f32 {
    use std::arch::x86_64::*;
    const { assert!(std::mem::size_of::<T>() == 2) };
    let n = w.len().min(a.len());
    let widen = |h: __m128i| {
        if F16 {
            _mm256_cvtph_ps(h)
        } else {
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        }
    };
    let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n, so 16 two-byte values (32 bytes, asserted above) of `w` and 16
        // f32 of `a` from i are in bounds; all loads are unaligned.
        let (h0, h1, x0, x1) = unsafe {
            let p = w.as_ptr().add(i).cast::<__m128i>();
            (
                _mm_loadu_si128(p),
                _mm_loadu_si128(p.add(1)),
                _mm256_loadu_ps(a.as_ptr().add(i)),
                _mm256_loadu_ps(a.as_ptr().add(i + 8)),
            )
        };
        lo = _mm256_fmadd_ps(widen(h0), x0, lo);
        hi = _mm256_fmadd_ps(widen(h1), x1, hi);
        i += 16;
    }
    sum16_avx2(lo, hi, &w[i..n], &a[i..n], value)
}

/// [`BlockF32::dot`] in the AVX2 kernel: 16 values at a time in two registers of 8 lanes,
/// fused multiply-adds, then [`dot16_by`]'s tree and tail: equal bits. (The portable loop
/// compiled for AVX2 used 2-lane loads.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_f32_avx2(w: &[BlockF32], a: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = w.len().min(a.len());
    let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n: 16 values (4 bytes each) of `w` and 16 f32 of `a` from i are in
        // bounds; all loads are unaligned (a `BlockF32` is 4 bytes of alignment 1).
        unsafe {
            let p = w.as_ptr().add(i).cast::<f32>();
            lo = _mm256_fmadd_ps(_mm256_loadu_ps(p), _mm256_loadu_ps(a.as_ptr().add(i)), lo);
            hi = _mm256_fmadd_ps(_mm256_loadu_ps(p.add(8)), _mm256_loadu_ps(a.as_ptr().add(i + 8)), hi);
        }
        i += 16;
    }
    sum16_avx2(lo, hi, &w[i..n], &a[i..n], |b| f32::from_le_bytes(b.0))
}

/// The end of every AVX2 float dot in [`dot16_by`]'s order: the 16 lanes (`lo` = lanes 0..8,
/// `hi` = 8..16) summed by the tree, then the tail `w`·`a` (values past the last whole 16)
/// fused in, in order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) fn sum16_avx2<T>(
    lo: std::arch::x86_64::__m256,
    hi: std::arch::x86_64::__m256,
    w: &[T],
    a: &[f32],
    value: impl Fn(&T) -> f32,
) -> f32 {
    use std::arch::x86_64::_mm256_storeu_ps;
    let mut lanes = [0f32; 16];
    // SAFETY: `lanes` holds 16 writable f32; the stores are unaligned.
    unsafe {
        _mm256_storeu_ps(lanes.as_mut_ptr(), lo);
        _mm256_storeu_ps(lanes.as_mut_ptr().add(8), hi);
    }
    let mut sum = tree_ggml(&lanes);
    for (w, a) in w.iter().zip(a) {
        sum = value(w).mul_add(*a, sum);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The AVX2 dots of the float types (F16C for f16, widening for bf16, plain f32) give the
    /// portable dot's bits on random rows of every length 1..=100 (whole groups of 16 and
    /// tails), random signs and magnitudes.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn float_dots_avx2_match_portable() {
        if !(is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
        {
            eprintln!("skipped: no avx2/fma/f16c");
            return;
        }
        fn check<W: VecDot<Act = f32>>(seed: u64, make: impl Fn(f32) -> W) {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            for len in 1..=100 {
                for _ in 0..20 {
                    let w: Vec<W> = (0..len).map(|_| make(rng.random_range(-4.0f32..4.0))).collect();
                    let a: Vec<f32> = (0..len).map(|_| rng.random_range(-2.0f32..2.0)).collect();
                    let want = W::dot(&w, &a);
                    // SAFETY: avx2, fma and f16c were detected by the caller.
                    let got = unsafe { W::dot_avx2(&w, &a) };
                    assert_eq!(got.to_bits(), want.to_bits(), "{:?} length {len}: {got} vs {want}", W::TYPE);
                }
            }
        }
        check(16, |v| BlockF16(f16::from_f32(v).to_le_bytes()));
        check(17, |v| BlockBF16(bf16::from_f32(v).to_le_bytes()));
        check(18, |v| BlockF32(v.to_le_bytes()));
    }

    /// F16 weights' activation rounding (slice conversions in pieces) gives the per-value
    /// rounding's bits, across piece edges, for normals, subnormals, overflow and NaN.
    #[test]
    fn f16_activation_rounding_matches_per_value() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(19);
        for len in [1, 7, 255, 256, 257, 600] {
            let x: Vec<f32> = (0..len)
                .map(|i| match i % 7 {
                    0 => f32::NAN,
                    1 => 1e6,
                    2 => rng.random_range(-1e-6f32..1e-6),
                    _ => rng.random_range(-70000.0f32..70000.0) * 2f32.powi(rng.random_range(-20..0)),
                })
                .collect();
            let mut got = vec![0f32; len];
            BlockF16::quantize_act(&x, &mut got);
            for (i, (&v, &g)) in x.iter().zip(&got).enumerate() {
                let want = f16::from_f32(v).to_f32();
                assert!(
                    g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                    "{len}[{i}] {v}: {g} vs {want}"
                );
            }
        }
    }

    /// Every one of the 65,536 f16 values converts to `half`'s f32, bit for bit.
    #[test]
    fn f16_to_f32_matches_half_on_every_value() {
        for h in 0..=u16::MAX {
            let (want, got) = (f16::from_bits(h).to_f32().to_bits(), f16_to_f32(h).to_bits());
            assert_eq!(got, want, "f16 bits {h:#06x}: {got:#010x} vs {want:#010x}");
        }
    }

    /// The SIMD block quantizer gives the scalar reference's codes, scale and sum exactly,
    /// on random blocks of every magnitude (massive activations included) and on ties.
    #[test]
    fn q8_block_matches_scalar() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for case in 0..4000 {
            let mag = 10f32.powi(rng.random_range(-6..5));
            let mut x: Vec<f32> = (0..QK).map(|_| rng.random_range(-1.0..1.0) * mag).collect();
            if case % 7 == 0 {
                // Exact half steps: rounding ties must go to even.
                let m = rng.random_range(1..200) as f32;
                for (j, v) in x.iter_mut().enumerate() {
                    *v = (j as f32 - 16.0 + 0.5) * m / 127.0;
                }
                x[0] = m;
            }
            if case % 11 == 0 {
                x[rng.random_range(0..QK)] = 2800.0 * mag.signum();
            }
            q8_blocks(&x, |_, got| assert_eq!(got, q8_block_scalar(&x), "case {case}"));
        }
        q8_blocks(&[0.0; QK], |_, got| assert_eq!(got, q8_block_scalar(&[0.0; QK])));
    }
}
