//! 8-bit formats: Q8_0 (weights), Q8_1 and Q8_K (activations for the dot-product kernels).

use bytemuck::{Pod, Zeroable};

use super::k_common::{nearest_int, signed_amax};
use super::{check_block_len, f16_le, f16_le_from, QuantBlock, QuantType, QuantizeBlock, QK, QK_K};

/// ggml `block_q8_0` (34 bytes): value = `qs[j] * d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_0 {
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
    pub qs: [i8; QK],
}
const _: () = assert!(size_of::<BlockQ8_0>() == 34 && align_of::<BlockQ8_0>() == 1);

/// ggml `block_q8_1` (36 bytes): as Q8_0 plus `s = d * sum(qs)`, which lets dot products with
/// Q4_1/Q5_1 apply the weight offset once per block.
///
/// Note: gguf-py's size table says 40 bytes (a leftover from when `d` and `s` were f32);
/// ggml's struct, and this one, is 36.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_1 {
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
    /// `d * sum(qs)`, f16 little-endian.
    pub s: [u8; 2],
    pub qs: [i8; QK],
}
const _: () = assert!(size_of::<BlockQ8_1>() == 36 && align_of::<BlockQ8_1>() == 1);

/// ggml `block_q8_K` (292 bytes): f32 scale, 256 codes and the sums of each group of 16 codes
/// (`bsums`), which the K-quant dot products use to apply sub-block minimums cheaply.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8K {
    /// Scale, f32 little-endian (not f16: activations need the range).
    pub d: [u8; 4],
    pub qs: [i8; QK_K],
    /// 16 little-endian i16 sums of `qs[16*i..16*i + 16]`.
    pub bsums: [u8; QK_K / 8],
}
const _: () = assert!(size_of::<BlockQ8K>() == 292 && align_of::<BlockQ8K>() == 1);

/// Absolute maximum with ggml's `MAX(amax, fabsf(v))` semantics.
fn amax_of(src: &[f32]) -> f32 {
    src.iter().fold(0.0f32, |amax, &v| if amax > v.abs() { amax } else { v.abs() })
}

/// Shared Q8_0/Q8_1 encoding: `d = amax / 127`, codes rounded half away from zero.
fn quantize_q8(src: &[f32]) -> (f32, [i8; QK]) {
    let d = amax_of(src) / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    (d, std::array::from_fn(|j| (src[j] * id).round() as i8))
}

impl BlockQ8_0 {
    /// The scale as f32.
    pub fn d(&self) -> f32 {
        f16_le(self.d)
    }
}

impl QuantBlock for BlockQ8_0 {
    const BLOCK_ELEMS: usize = QK;
    const NAME: &'static str = "Q8_0";
    const TYPE: QuantType = QuantType::Q8_0;

    fn dequantize(&self, out: &mut [f32]) {
        check_block_len(Self::NAME, out.len(), QK);
        let d = self.d();
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = q as f32 * d;
        }
    }
}

impl QuantizeBlock for BlockQ8_0 {
    fn quantize(src: &[f32]) -> Self {
        check_block_len(Self::NAME, src.len(), QK);
        let (d, qs) = quantize_q8(src);
        Self { d: f16_le_from(d), qs }
    }
}

impl BlockQ8_1 {
    /// The scale as f32.
    pub fn d(&self) -> f32 {
        f16_le(self.d)
    }

    /// `d * sum(qs)` as f32.
    pub fn s(&self) -> f32 {
        f16_le(self.s)
    }
}

impl QuantBlock for BlockQ8_1 {
    const BLOCK_ELEMS: usize = QK;
    const NAME: &'static str = "Q8_1";
    const TYPE: QuantType = QuantType::Q8_1;

    /// ggml has no `dequantize_row_q8_1`; this is the format's meaning, `qs[j] * d`.
    fn dequantize(&self, out: &mut [f32]) {
        check_block_len(Self::NAME, out.len(), QK);
        let d = self.d();
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = q as f32 * d;
        }
    }
}

impl QuantizeBlock for BlockQ8_1 {
    fn quantize(src: &[f32]) -> Self {
        check_block_len(Self::NAME, src.len(), QK);
        let (d, qs) = quantize_q8(src);
        let sum: i32 = qs.iter().map(|&q| q as i32).sum();
        // ggml uses the f32 `d` here, not its f16 rounding.
        Self { d: f16_le_from(d), s: f16_le_from(sum as f32 * d), qs }
    }
}

impl BlockQ8K {
    /// The scale as f32.
    pub fn d(&self) -> f32 {
        f32::from_le_bytes(self.d)
    }

    /// The 16 group sums.
    pub fn bsums(&self) -> [i16; QK_K / 16] {
        std::array::from_fn(|i| i16::from_le_bytes([self.bsums[2 * i], self.bsums[2 * i + 1]]))
    }
}

impl QuantBlock for BlockQ8K {
    const BLOCK_ELEMS: usize = QK_K;
    const NAME: &'static str = "Q8_K";
    const TYPE: QuantType = QuantType::Q8_K;

    fn dequantize(&self, out: &mut [f32]) {
        check_block_len(Self::NAME, out.len(), QK_K);
        let d = self.d();
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = d * q as f32;
        }
    }
}

impl QuantizeBlock for BlockQ8K {
    /// `iscale = -127 / max` (the signed extreme), so codes stay within [-127, 127]; ggml chose
    /// -127 over -128 to keep its IQ2 SIMD kernels simple. An all-zero block encodes as zeros
    /// (ggml leaves `bsums` unwritten there; here they are the correct 0).
    fn quantize(src: &[f32]) -> Self {
        check_block_len(Self::NAME, src.len(), QK_K);
        let (max, amax) = signed_amax(src);
        let mut block = Self::zeroed();
        if amax == 0.0 {
            return block;
        }
        let iscale = -127.0 / max;
        for (q, &v) in block.qs.iter_mut().zip(src) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (g, sum) in block.qs.chunks_exact(16).zip(block.bsums.chunks_exact_mut(2)) {
            let s: i32 = g.iter().map(|&q| q as i32).sum();
            sum.copy_from_slice(&(s as i16).to_le_bytes());
        }
        block.d = (1.0 / iscale).to_le_bytes();
        block
    }
}
