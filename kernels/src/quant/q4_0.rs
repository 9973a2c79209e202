//! Q4_0: 32 values as 4-bit unsigned codes `q` with one f16 scale; value = (q - 8) * d.

use bytemuck::{Pod, Zeroable};

use super::k_common::signed_amax;
use super::{check_block_len, f16_le, f16_le_from, QuantBlock, QuantType, QuantizeBlock, QK};

/// ggml `block_q4_0` (18 bytes): value `j` is the low nibble of `qs[j]`, value `j + 16` the high.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_0 {
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(size_of::<BlockQ4_0>() == 18 && align_of::<BlockQ4_0>() == 1);

impl BlockQ4_0 {
    /// The scale as f32.
    pub fn d(&self) -> f32 {
        f16_le(self.d)
    }
}

impl QuantBlock for BlockQ4_0 {
    const BLOCK_ELEMS: usize = QK;
    const NAME: &'static str = "Q4_0";
    const TYPE: QuantType = QuantType::Q4_0;

    fn dequantize(&self, out: &mut [f32]) {
        check_block_len(Self::NAME, out.len(), QK);
        let d = self.d();
        let (lo, hi) = out.split_at_mut(QK / 2);
        for ((&q, l), h) in self.qs.iter().zip(lo).zip(hi) {
            *l = ((q & 0x0f) as i32 - 8) as f32 * d;
            *h = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

impl QuantizeBlock for BlockQ4_0 {
    /// The value of largest magnitude maps to code 0 exactly (`d = max / -8`), which uses the
    /// asymmetric range [-8, 7] fully for the extreme value.
    fn quantize(src: &[f32]) -> Self {
        check_block_len(Self::NAME, src.len(), QK);
        let (max, _) = signed_amax(src);
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        // ggml: MIN(15, (int8_t)(x*id + 8.5f)); the sum is in [0.5, 16.5] for finite input.
        let code = |x: f32| ((x * id + 8.5) as i8 as u8).min(15);
        let mut qs = [0u8; QK / 2];
        for (j, q) in qs.iter_mut().enumerate() {
            *q = code(src[j]) | (code(src[j + QK / 2]) << 4);
        }
        Self { d: f16_le_from(d), qs }
    }
}
