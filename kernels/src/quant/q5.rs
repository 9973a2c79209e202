//! Q5_0 / Q5_1: like Q4_0 / Q4_1 with a fifth bit per value kept in a 32-bit mask `qh`.

use bytemuck::{Pod, Zeroable};

use super::k_common::signed_amax;
use super::q4_1::min_max;
use super::{check_block_len, f16_le, f16_le_from, QuantBlock, QuantType, QuantizeBlock, QK};

/// ggml `block_q5_0` (22 bytes): low nibbles as Q4_0; bit `j` of little-endian `qh` is bit 4
/// of value `j`. Value = (q - 16) * d.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_0 {
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
    /// High bits, u32 little-endian.
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(size_of::<BlockQ5_0>() == 22 && align_of::<BlockQ5_0>() == 1);

/// ggml `block_q5_1` (24 bytes): as Q5_0 plus an offset. Value = q * d + m.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_1 {
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
    /// Offset (the block minimum), f16 little-endian.
    pub m: [u8; 2],
    /// High bits, u32 little-endian.
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(size_of::<BlockQ5_1>() == 24 && align_of::<BlockQ5_1>() == 1);

/// The 5-bit codes of one block, in value order.
fn unpack5(qs: &[u8; QK / 2], qh: [u8; 4]) -> [u8; QK] {
    let qh = u32::from_le_bytes(qh);
    let mut q = [0u8; QK];
    for (j, &b) in qs.iter().enumerate() {
        q[j] = (b & 0x0f) | ((((qh >> j) << 4) & 0x10) as u8);
        q[j + QK / 2] = (b >> 4) | (((qh >> (j + 12)) & 0x10) as u8);
    }
    q
}

/// Packs 5-bit codes (value order) into nibbles and the high-bit mask.
fn pack5(q: &[u8; QK]) -> ([u8; QK / 2], [u8; 4]) {
    let mut qs = [0u8; QK / 2];
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let (a, b) = (q[j], q[j + QK / 2]);
        qs[j] = (a & 0x0f) | ((b & 0x0f) << 4);
        qh |= (((a & 0x10) >> 4) as u32) << j;
        qh |= (((b & 0x10) >> 4) as u32) << (j + QK / 2);
    }
    (qs, qh.to_le_bytes())
}

impl BlockQ5_0 {
    /// The scale as f32.
    pub fn d(&self) -> f32 {
        f16_le(self.d)
    }
}

impl QuantBlock for BlockQ5_0 {
    const BLOCK_ELEMS: usize = QK;
    const NAME: &'static str = "Q5_0";
    const TYPE: QuantType = QuantType::Q5_0;

    fn dequantize(&self, out: &mut [f32]) {
        check_block_len(Self::NAME, out.len(), QK);
        let d = self.d();
        for (o, q) in out.iter_mut().zip(unpack5(&self.qs, self.qh)) {
            *o = (q as i32 - 16) as f32 * d;
        }
    }
}

impl QuantizeBlock for BlockQ5_0 {
    /// As Q4_0: `d = max / -16` so the extreme value lands exactly on code 0.
    fn quantize(src: &[f32]) -> Self {
        check_block_len(Self::NAME, src.len(), QK);
        let (max, _) = signed_amax(src);
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let q: [u8; QK] = std::array::from_fn(|j| ((src[j] * id + 16.5) as i8 as u8).min(31));
        let (qs, qh) = pack5(&q);
        Self { d: f16_le_from(d), qh, qs }
    }
}

impl BlockQ5_1 {
    /// The scale as f32.
    pub fn d(&self) -> f32 {
        f16_le(self.d)
    }

    /// The offset as f32.
    pub fn m(&self) -> f32 {
        f16_le(self.m)
    }
}

impl QuantBlock for BlockQ5_1 {
    const BLOCK_ELEMS: usize = QK;
    const NAME: &'static str = "Q5_1";
    const TYPE: QuantType = QuantType::Q5_1;

    fn dequantize(&self, out: &mut [f32]) {
        check_block_len(Self::NAME, out.len(), QK);
        let (d, m) = (self.d(), self.m());
        for (o, q) in out.iter_mut().zip(unpack5(&self.qs, self.qh)) {
            *o = q as f32 * d + m;
        }
    }
}

impl QuantizeBlock for BlockQ5_1 {
    fn quantize(src: &[f32]) -> Self {
        check_block_len(Self::NAME, src.len(), QK);
        let (min, max) = min_max(src);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        // ggml: (uint8_t)(x + 0.5f) with no clamp; the sum is in [0.5, 31.5] for finite input.
        let q: [u8; QK] = std::array::from_fn(|j| ((src[j] - min) * id + 0.5) as u8);
        let (qs, qh) = pack5(&q);
        Self { d: f16_le_from(d), m: f16_le_from(min), qh, qs }
    }
}
