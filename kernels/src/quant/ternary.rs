//! Ternary formats for BitNet b1.58 / TriLM weights: every value is -d, 0 or +d.

use bytemuck::{Pod, Zeroable};

use super::{check_block_len, f16_le, f16_le_from, QuantBlock, QuantType, QuantizeBlock, QK_K};

/// ggml `block_tq1_0` (54 bytes, 1.6875 bits per value): trits packed 5 per byte in `qs` and
/// 4 per byte in `qh`, as a base-3 fraction of 256 so that trit `n` of byte `b` is
/// `((b * 3^n) mod 256) * 3 >> 8` (no division needed to decode).
///
/// Order: `qs[0..32]` hold values `m + 32n` (n < 5), `qs[32..48]` hold `160 + m + 16n`,
/// `qh[0..4]` hold `240 + j + 4n` (n < 4).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockTQ1_0 {
    pub qs: [u8; (QK_K - 4 * QK_K / 64) / 5],
    pub qh: [u8; QK_K / 64],
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
}
const _: () = assert!(size_of::<BlockTQ1_0>() == 54 && align_of::<BlockTQ1_0>() == 1);

/// ggml `block_tq2_0` (66 bytes): 2-bit codes 0/1/2 meaning -1/0/+1, packed as in Q2_K's
/// halves (byte `32h + m` holds values `128h + m + 32n` in bits `2n..2n+2`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockTQ2_0 {
    pub qs: [u8; QK_K / 4],
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
}
const _: () = assert!(size_of::<BlockTQ2_0>() == 66 && align_of::<BlockTQ2_0>() == 1);

const POW3: [u8; 6] = [1, 3, 9, 27, 81, 243];

/// Trit `n` (0, 1 or 2) of a base-3-fraction byte.
#[inline]
fn trit(b: u8, n: usize) -> i32 {
    ((b.wrapping_mul(POW3[n]) as u16 * 3) >> 8) as i32
}

/// Ternary code of `x * id`: round half away from zero (`lroundf`), shifted from {-1, 0, 1}
/// to {0, 1, 2}. The clamp only matters for non-finite input, where ggml's result is undefined.
#[inline]
fn ternary_code(x: f32, id: f32) -> u8 {
    (((x * id).round() as i32).clamp(-1, 1) + 1) as u8
}

/// Absolute maximum (ggml's `MAX(amax, fabsf(v))`) and its inverse, 0 for an all-zero block.
fn scale_of(src: &[f32]) -> (f32, f32) {
    let d = src.iter().fold(0.0f32, |amax, &v| if amax > v.abs() { amax } else { v.abs() });
    (d, if d != 0.0 { 1.0 / d } else { 0.0 })
}

/// Packs base-3 digits (most significant first) as ggml does: ceil(value * 256 / 243).
fn pack_trits(digits: impl Iterator<Item = u8>) -> u8 {
    let q = digits.fold(0u8, |q, t| q * 3 + t);
    (q as u16 * 256).div_ceil(243) as u8
}

impl BlockTQ1_0 {
    /// The scale as f32.
    pub fn d(&self) -> f32 {
        f16_le(self.d)
    }
}

impl QuantBlock for BlockTQ1_0 {
    const BLOCK_ELEMS: usize = QK_K;
    const NAME: &'static str = "TQ1_0";
    const TYPE: QuantType = QuantType::TQ1_0;

    fn dequantize(&self, out: &mut [f32]) {
        check_block_len(Self::NAME, out.len(), QK_K);
        let d = self.d();
        let (a, rest) = out.split_at_mut(160);
        let (b, c) = rest.split_at_mut(80);
        for (n, y) in a.chunks_exact_mut(32).enumerate() {
            for (y, &q) in y.iter_mut().zip(&self.qs[..32]) {
                *y = (trit(q, n) - 1) as f32 * d;
            }
        }
        for (n, y) in b.chunks_exact_mut(16).enumerate() {
            for (y, &q) in y.iter_mut().zip(&self.qs[32..]) {
                *y = (trit(q, n) - 1) as f32 * d;
            }
        }
        for (n, y) in c.chunks_exact_mut(4).enumerate() {
            for (y, &q) in y.iter_mut().zip(&self.qh) {
                *y = (trit(q, n) - 1) as f32 * d;
            }
        }
    }
}

impl QuantizeBlock for BlockTQ1_0 {
    fn quantize(src: &[f32]) -> Self {
        check_block_len(Self::NAME, src.len(), QK_K);
        let (d, id) = scale_of(src);
        let code = |i: usize| ternary_code(src[i], id);
        let mut block = Self { qs: [0; 48], qh: [0; 4], d: f16_le_from(d) };
        for m in 0..32 {
            block.qs[m] = pack_trits((0..5).map(|n| code(m + 32 * n)));
        }
        for m in 0..16 {
            block.qs[32 + m] = pack_trits((0..5).map(|n| code(160 + m + 16 * n)));
        }
        for j in 0..4 {
            // Four trits plus a zero fifth, so the first lands in the most significant place.
            block.qh[j] = pack_trits((0..4).map(|n| code(240 + j + 4 * n)).chain([0]));
        }
        block
    }
}

impl BlockTQ2_0 {
    /// The scale as f32.
    pub fn d(&self) -> f32 {
        f16_le(self.d)
    }
}

impl QuantBlock for BlockTQ2_0 {
    const BLOCK_ELEMS: usize = QK_K;
    const NAME: &'static str = "TQ2_0";
    const TYPE: QuantType = QuantType::TQ2_0;

    fn dequantize(&self, out: &mut [f32]) {
        check_block_len(Self::NAME, out.len(), QK_K);
        let d = self.d();
        for (j, y) in out.chunks_exact_mut(32).enumerate() {
            let (half, shift) = (j / 4, 2 * (j % 4));
            for (y, &q) in y.iter_mut().zip(&self.qs[32 * half..32 * half + 32]) {
                *y = (((q >> shift) & 3) as i32 - 1) as f32 * d;
            }
        }
    }
}

impl QuantizeBlock for BlockTQ2_0 {
    fn quantize(src: &[f32]) -> Self {
        check_block_len(Self::NAME, src.len(), QK_K);
        let (d, id) = scale_of(src);
        let mut qs = [0u8; QK_K / 4];
        for (half, q) in qs.chunks_exact_mut(32).enumerate() {
            for (m, q) in q.iter_mut().enumerate() {
                for n in 0..4 {
                    *q |= (ternary_code(src[128 * half + m + 32 * n], id) & 3) << (2 * n);
                }
            }
        }
        Self { qs, d: f16_le_from(d) }
    }
}
