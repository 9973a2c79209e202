//! Q4_K: 256 values in 8 sub-blocks of 32, 4-bit codes, each sub-block with a 6-bit scale and
//! 6-bit min against the super-block's f16 `d` and `dmin`: value = d*sc*q - dmin*m.

use bytemuck::{Pod, Zeroable};

use super::k_common::{get_scale_min_k4, quantize_k_superblock, Qkx2Search};
use super::{check_block_len, f16_le, QuantBlock, QuantType, QuantizeBlock, QK_K};

/// ggml `block_q4_K` (144 bytes). Values `64*i .. 64*i + 32` are the low nibbles of
/// `qs[32*i .. 32*i + 32]`, the next 32 values the high nibbles; sub-block `j` uses
/// `get_scale_min_k4(j, scales)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4K {
    /// Super-block scale for the sub-block scales, f16 little-endian.
    pub d: [u8; 2],
    /// Super-block scale for the sub-block mins, f16 little-endian.
    pub dmin: [u8; 2],
    /// 8 six-bit scales and 8 six-bit mins, packed.
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(size_of::<BlockQ4K>() == 144 && align_of::<BlockQ4K>() == 1);

impl BlockQ4K {
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

impl QuantBlock for BlockQ4K {
    const BLOCK_ELEMS: usize = QK_K;
    const NAME: &'static str = "Q4_K";
    const TYPE: QuantType = QuantType::Q4_K;

    fn dequantize(&self, out: &mut [f32]) {
        check_block_len(Self::NAME, out.len(), QK_K);
        let (d, min) = (self.d(), self.dmin());
        for (i, (q, y)) in self.qs.chunks_exact(32).zip(out.chunks_exact_mut(64)).enumerate() {
            let (sc, m) = self.scale_min(2 * i);
            let (d1, m1) = (d * sc as f32, min * m as f32);
            let (sc, m) = self.scale_min(2 * i + 1);
            let (d2, m2) = (d * sc as f32, min * m as f32);
            let (lo, hi) = y.split_at_mut(32);
            for ((&q, l), h) in q.iter().zip(lo).zip(hi) {
                *l = d1 * (q & 0x0f) as f32 - m1;
                *h = d2 * (q >> 4) as f32 - m2;
            }
        }
    }
}

impl QuantizeBlock for BlockQ4K {
    fn quantize(src: &[f32]) -> Self {
        check_block_len(Self::NAME, src.len(), QK_K);
        let search = Qkx2Search { nmax: 15, rmin: -1.0, rdelta: 0.1, nstep: 20, use_mad: false };
        let (d, dmin, scales, l) = quantize_k_superblock(src, &search);
        let mut qs = [0u8; QK_K / 2];
        for (q, l) in qs.chunks_exact_mut(32).zip(l.chunks_exact(64)) {
            for i in 0..32 {
                q[i] = l[i] | (l[i + 32] << 4);
            }
        }
        Self { d, dmin, scales, qs }
    }
}
