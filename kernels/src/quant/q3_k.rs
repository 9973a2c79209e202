//! Q3_K: 256 values, 3-bit signed codes (2 low bits in `qs`, the third in `hmask`) in 16
//! sub-blocks of 16 with 6-bit signed scales: value = d * (sc - 32) * q, q in [-4, 3].

use bytemuck::{Pod, Zeroable};

use super::k_common::{make_q3_quants, nearest_int, signed_amax};
use super::q2_k::pack_2bit;
use super::{check_block_len, f16_le, f16_le_from, QuantBlock, QuantType, QuantizeBlock, QK_K};

/// ggml `block_q3_K` (110 bytes). Low 2 bits are packed as in Q2_K. Bit `k` of `hmask[l]`
/// belongs to value `32k + l`; when it is *clear* the code is lowered by 4. The 16 six-bit
/// scales: low nibbles in `scales[0..8]` (sub-blocks 0-7 low nibble, 8-15 high nibble), high
/// 2-bit pairs in `scales[8..12]` (sub-block `j` at byte `8 + j%4`, bits `2*(j/4)`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    /// Super-block scale, f16 little-endian.
    pub d: [u8; 2],
}
const _: () = assert!(size_of::<BlockQ3K>() == 110 && align_of::<BlockQ3K>() == 1);

impl BlockQ3K {
    /// `d` as f32.
    pub fn d(&self) -> f32 {
        f16_le(self.d)
    }

    /// The 16 sub-block scales, already offset to [-32, 31].
    pub fn unpacked_scales(&self) -> [i8; 16] {
        std::array::from_fn(|j| {
            let low = if j < 8 { self.scales[j] & 0x0f } else { self.scales[j - 8] >> 4 };
            let high = (self.scales[8 + j % 4] >> (2 * (j / 4))) & 3;
            (low | (high << 4)) as i8 - 32
        })
    }
}

impl QuantBlock for BlockQ3K {
    const BLOCK_ELEMS: usize = QK_K;
    const NAME: &'static str = "Q3_K";
    const TYPE: QuantType = QuantType::Q3_K;

    fn dequantize(&self, out: &mut [f32]) {
        check_block_len(Self::NAME, out.len(), QK_K);
        let d_all = self.d();
        let scales = self.unpacked_scales();
        for (j, y) in out.chunks_exact_mut(16).enumerate() {
            let (half, shift, part) = (j / 8, 2 * ((j % 8) / 2), j % 2);
            let m = 1u8 << (j / 2);
            let q = &self.qs[32 * half + 16 * part..][..16];
            let hm = &self.hmask[16 * part..][..16];
            let dl = d_all * scales[j] as f32;
            for ((y, &q), &h) in y.iter_mut().zip(q).zip(hm) {
                let v = ((q >> shift) & 3) as i32 - if h & m != 0 { 0 } else { 4 };
                *y = dl * v as f32;
            }
        }
    }
}

impl QuantizeBlock for BlockQ3K {
    fn quantize(src: &[f32]) -> Self {
        check_block_len(Self::NAME, src.len(), QK_K);
        let mut l = [0i8; QK_K];
        let mut scales = [0.0f32; QK_K / 16];
        for (j, (x, l)) in src.chunks_exact(16).zip(l.chunks_exact_mut(16)).enumerate() {
            scales[j] = make_q3_quants(4, x, l);
        }
        let (max_scale, _) = signed_amax(&scales);
        let mut block = Self::zeroed();
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for (j, &scale) in scales.iter().enumerate() {
                // ggml narrows to int8_t before clamping.
                let ls = ((nearest_int(iscale * scale) as i8).clamp(-32, 31) + 32) as u8;
                if j < 8 {
                    block.scales[j] = ls & 0x0f;
                } else {
                    block.scales[j - 8] |= (ls & 0x0f) << 4;
                }
                block.scales[j % 4 + 8] |= (ls >> 4) << (2 * (j / 4));
            }
            block.d = f16_le_from(1.0 / iscale);
        }
        let d = block.d();
        for (j, &sc) in block.unpacked_scales().iter().enumerate() {
            let dj = d * sc as f32;
            if dj == 0.0 {
                continue;
            }
            for ii in 0..16 {
                l[16 * j + ii] = (nearest_int(src[16 * j + ii] / dj).clamp(-4, 3) + 4) as i8;
            }
        }
        // Codes 4..7 set their hmask bit and keep the low 2 bits.
        let mut low = [0u8; QK_K];
        for (j, (&q, low)) in l.iter().zip(&mut low).enumerate() {
            let mut q = q as u8;
            if q > 3 {
                block.hmask[j % 32] |= 1 << (j / 32);
                q -= 4;
            }
            *low = q;
        }
        pack_2bit(&low, &mut block.qs);
        block
    }
}
