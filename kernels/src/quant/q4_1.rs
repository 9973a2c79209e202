//! Q4_1: 32 values as 4-bit codes with an f16 scale and an f16 offset; value = q * d + m.

use bytemuck::{Pod, Zeroable};

use super::{check_block_len, f16_le, f16_le_from, QuantBlock, QuantType, QuantizeBlock, QK};

/// ggml `block_q4_1` (20 bytes): nibble layout as Q4_0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_1 {
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
    /// Offset (the block minimum), f16 little-endian.
    pub m: [u8; 2],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(size_of::<BlockQ4_1>() == 20 && align_of::<BlockQ4_1>() == 1);

impl BlockQ4_1 {
    /// The scale as f32.
    pub fn d(&self) -> f32 {
        f16_le(self.d)
    }

    /// The offset as f32.
    pub fn m(&self) -> f32 {
        f16_le(self.m)
    }
}

impl QuantBlock for BlockQ4_1 {
    const BLOCK_ELEMS: usize = QK;
    const NAME: &'static str = "Q4_1";
    const TYPE: QuantType = QuantType::Q4_1;

    fn dequantize(&self, out: &mut [f32]) {
        check_block_len(Self::NAME, out.len(), QK);
        let (d, m) = (self.d(), self.m());
        let (lo, hi) = out.split_at_mut(QK / 2);
        for ((&q, l), h) in self.qs.iter().zip(lo).zip(hi) {
            *l = (q & 0x0f) as f32 * d + m;
            *h = (q >> 4) as f32 * d + m;
        }
    }
}

impl QuantizeBlock for BlockQ4_1 {
    fn quantize(src: &[f32]) -> Self {
        check_block_len(Self::NAME, src.len(), QK);
        let (min, max) = min_max(src);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let code = |x: f32| (((x - min) * id + 0.5) as i8 as u8).min(15);
        let mut qs = [0u8; QK / 2];
        for (j, q) in qs.iter_mut().enumerate() {
            *q = code(src[j]) | (code(src[j + QK / 2]) << 4);
        }
        Self { d: f16_le_from(d), m: f16_le_from(min), qs }
    }
}

/// ggml's min/max scan (strict comparisons from ±FLT_MAX, so NaNs are skipped the same way).
pub(crate) fn min_max(src: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in src {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}
