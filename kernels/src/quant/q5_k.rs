//! Q5_K: Q4_K with a fifth bit per value: value = d*sc*q - dmin*m with q in [0, 31].

use bytemuck::{Pod, Zeroable};

use super::k_common::{get_scale_min_k4, quantize_k_superblock, Qkx2Search};
use super::{check_block_len, f16_le, QuantBlock, QuantType, QuantizeBlock, QK_K};

/// ggml `block_q5_K` (176 bytes). Nibbles as Q4_K; for the 64-value group `i`, bit `2i` of
/// `qh[l]` is bit 4 of value `64i + l` and bit `2i + 1` that of value `64i + 32 + l`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5K {
    /// Super-block scale for the sub-block scales, f16 little-endian.
    pub d: [u8; 2],
    /// Super-block scale for the sub-block mins, f16 little-endian.
    pub dmin: [u8; 2],
    /// 8 six-bit scales and 8 six-bit mins, packed as in Q4_K.
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(size_of::<BlockQ5K>() == 176 && align_of::<BlockQ5K>() == 1);

impl BlockQ5K {
    /// `d` as f32.
    pub fn d(&self) -> f32 {
        f16_le(self.d)
    }

    /// `dmin` as f32.
    pub fn dmin(&self) -> f32 {
        f16_le(self.dmin)
    }

    /// Sub-block `j`'s (6-bit scale, 6-bit min), `j < 8`.
    pub fn scale_min(&self, j: usize) -> (u8, u8) {
        get_scale_min_k4(j, &self.scales)
    }
}

impl QuantBlock for BlockQ5K {
    const BLOCK_ELEMS: usize = QK_K;
    const NAME: &'static str = "Q5_K";
    const TYPE: QuantType = QuantType::Q5_K;

    fn dequantize(&self, out: &mut [f32]) {
        check_block_len(Self::NAME, out.len(), QK_K);
        let (d, min) = (self.d(), self.dmin());
        for (i, (ql, y)) in self.qs.chunks_exact(32).zip(out.chunks_exact_mut(64)).enumerate() {
            let (u1, u2) = (1u8 << (2 * i), 2u8 << (2 * i));
            let (sc, m) = self.scale_min(2 * i);
            let (d1, m1) = (d * sc as f32, min * m as f32);
            let (sc, m) = self.scale_min(2 * i + 1);
            let (d2, m2) = (d * sc as f32, min * m as f32);
            for l in 0..32 {
                let hi1 = if self.qh[l] & u1 != 0 { 16 } else { 0 };
                let hi2 = if self.qh[l] & u2 != 0 { 16 } else { 0 };
                y[l] = d1 * ((ql[l] & 0x0f) + hi1) as f32 - m1;
                y[l + 32] = d2 * ((ql[l] >> 4) + hi2) as f32 - m2;
            }
        }
    }
}

impl QuantizeBlock for BlockQ5K {
    fn quantize(src: &[f32]) -> Self {
        check_block_len(Self::NAME, src.len(), QK_K);
        let search = Qkx2Search { nmax: 31, rmin: -0.5, rdelta: 0.1, nstep: 15, use_mad: false };
        let (d, dmin, scales, l) = quantize_k_superblock(src, &search);
        let mut qh = [0u8; QK_K / 8];
        let mut qs = [0u8; QK_K / 2];
        for (i, (ql, l)) in qs.chunks_exact_mut(32).zip(l.chunks_exact(64)).enumerate() {
            let (m1, m2) = (1u8 << (2 * i), 2u8 << (2 * i));
            for j in 0..32 {
                let (mut l1, mut l2) = (l[j], l[j + 32]);
                if l1 > 15 {
                    l1 -= 16;
                    qh[j] |= m1;
                }
                if l2 > 15 {
                    l2 -= 16;
                    qh[j] |= m2;
                }
                ql[j] = l1 | (l2 << 4);
            }
        }
        Self { d, dmin, scales, qh, qs }
    }
}
