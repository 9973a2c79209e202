//! IQ4_NL / IQ4_XS: 4-bit indices into a fixed non-linear 16-entry codebook, which follows the
//! bell-shaped weight distribution better than uniform steps.

use bytemuck::{Pod, Zeroable};

use super::{check_block_len, f16_le, QuantBlock, QuantType, QK, QK_K};

/// The IQ4 codebook (ggml's `kvalues_iq4nl`).
pub const KVALUES_IQ4NL: [i8; 16] =
    [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// ggml `block_iq4_nl` (18 bytes): nibble layout as Q4_0; value = `d * KVALUES_IQ4NL[q]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockIQ4NL {
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(size_of::<BlockIQ4NL>() == 18 && align_of::<BlockIQ4NL>() == 1);

/// ggml `block_iq4_xs` (136 bytes): 8 sub-blocks of 32 with 6-bit scales (low nibble in
/// `scales_l`, high 2 bits in `scales_h`); value = `d * (ls - 32) * KVALUES_IQ4NL[q]`. Each
/// sub-block's 16 bytes of `qs` hold its values as in IQ4_NL.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockIQ4XS {
    /// Super-block scale, f16 little-endian.
    pub d: [u8; 2],
    /// High 2 bits of the 8 scales, u16 little-endian.
    pub scales_h: [u8; 2],
    /// Low 4 bits of the 8 scales, two per byte.
    pub scales_l: [u8; QK_K / 64],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(size_of::<BlockIQ4XS>() == 136 && align_of::<BlockIQ4XS>() == 1);

/// Decodes 16 bytes of IQ4 nibbles with scale `d` into 32 values.
fn dequantize_nl(d: f32, qs: &[u8], out: &mut [f32]) {
    let (lo, hi) = out.split_at_mut(16);
    for ((&q, l), h) in qs.iter().zip(lo).zip(hi) {
        *l = d * KVALUES_IQ4NL[(q & 0x0f) as usize] as f32;
        *h = d * KVALUES_IQ4NL[(q >> 4) as usize] as f32;
    }
}

impl BlockIQ4NL {
    /// The scale as f32.
    pub fn d(&self) -> f32 {
        f16_le(self.d)
    }
}

impl QuantBlock for BlockIQ4NL {
    const BLOCK_ELEMS: usize = QK;
    const NAME: &'static str = "IQ4_NL";
    const TYPE: QuantType = QuantType::IQ4_NL;

    fn dequantize(&self, out: &mut [f32]) {
        check_block_len(Self::NAME, out.len(), QK);
        dequantize_nl(self.d(), &self.qs, out);
    }
}

impl BlockIQ4XS {
    /// The scale as f32.
    pub fn d(&self) -> f32 {
        f16_le(self.d)
    }

    /// Sub-block `ib`'s 6-bit scale, offset to [-32, 31].
    pub fn scale(&self, ib: usize) -> i32 {
        let h = u16::from_le_bytes(self.scales_h);
        let ls =
            ((self.scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0f) as i32 | ((((h >> (2 * ib)) & 3) as i32) << 4);
        ls - 32
    }
}

impl QuantBlock for BlockIQ4XS {
    const BLOCK_ELEMS: usize = QK_K;
    const NAME: &'static str = "IQ4_XS";
    const TYPE: QuantType = QuantType::IQ4_XS;

    fn dequantize(&self, out: &mut [f32]) {
        check_block_len(Self::NAME, out.len(), QK_K);
        let d = self.d();
        for (ib, (qs, y)) in self.qs.chunks_exact(16).zip(out.chunks_exact_mut(32)).enumerate() {
            dequantize_nl(d * self.scale(ib) as f32, qs, y);
        }
    }
}
