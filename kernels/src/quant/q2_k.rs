//! Q2_K: 256 values, 2-bit codes in 16 sub-blocks of 16, each with a 4-bit scale and 4-bit min
//! against the super-block's f16 `d` and `dmin`: value = d*sc*q - dmin*m.

use bytemuck::{Pod, Zeroable};

use super::k_common::{make_qkx2_quants, nearest_int, Qkx2Search};
use super::{check_block_len, f16_le, f16_le_from, QuantBlock, QuantType, QuantizeBlock, QK_K};

/// ggml `block_q2_K` (84 bytes). `scales[j]` holds sub-block `j`'s scale (low nibble) and min
/// (high nibble). In each 128-value half `h`, value `h*128 + 32*s + l` (s < 4, l < 32) is bits
/// `2s..2s+2` of `qs[32h + l]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    /// Super-block scale for the sub-block scales, f16 little-endian.
    pub d: [u8; 2],
    /// Super-block scale for the sub-block mins, f16 little-endian.
    pub dmin: [u8; 2],
}
const _: () = assert!(size_of::<BlockQ2K>() == 84 && align_of::<BlockQ2K>() == 1);

impl BlockQ2K {
    /// `d` as f32.
    pub fn d(&self) -> f32 {
        f16_le(self.d)
    }

    /// `dmin` as f32.
    pub fn dmin(&self) -> f32 {
        f16_le(self.dmin)
    }
}

impl QuantBlock for BlockQ2K {
    const BLOCK_ELEMS: usize = QK_K;
    const NAME: &'static str = "Q2_K";
    const TYPE: QuantType = QuantType::Q2_K;

    fn dequantize(&self, out: &mut [f32]) {
        check_block_len(Self::NAME, out.len(), QK_K);
        let (d, min) = (self.d(), self.dmin());
        // Output order walks (half, shift, 16-value group): exactly the order of `scales`.
        for (j, (y, &sc)) in out.chunks_exact_mut(16).zip(&self.scales).enumerate() {
            let (half, shift, part) = (j / 8, 2 * ((j % 8) / 2), j % 2);
            let q = &self.qs[32 * half + 16 * part..][..16];
            let (dl, ml) = (d * (sc & 0x0f) as f32, min * (sc >> 4) as f32);
            for (y, &q) in y.iter_mut().zip(q) {
                *y = dl * ((q >> shift) & 3) as f32 - ml;
            }
        }
    }
}

impl QuantizeBlock for BlockQ2K {
    /// Per 16-value group a `make_qkx2_quants` fit weighted by |x| minimizing absolute error,
    /// 4-bit scales/mins against their maxima, then re-rounding against the stored parameters.
    fn quantize(src: &[f32]) -> Self {
        check_block_len(Self::NAME, src.len(), QK_K);
        const Q4SCALE: f32 = 15.0;
        let search = Qkx2Search { nmax: 3, rmin: -0.5, rdelta: 0.1, nstep: 15, use_mad: true };
        let mut l = [0u8; QK_K];
        let mut scales = [0.0f32; QK_K / 16];
        let mut mins = [0.0f32; QK_K / 16];
        let mut max_scale = 0.0f32;
        let mut max_min = 0.0f32;
        for j in 0..QK_K / 16 {
            let x = &src[16 * j..16 * j + 16];
            let weights: [f32; 16] = std::array::from_fn(|i| x[i].abs());
            (scales[j], mins[j]) = make_qkx2_quants(&search, x, &weights, &mut l[16 * j..16 * j + 16]);
            if scales[j] > max_scale {
                max_scale = scales[j];
            }
            if mins[j] > max_min {
                max_min = mins[j];
            }
        }
        let mut block = Self::zeroed();
        if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for (s, &scale) in block.scales.iter_mut().zip(&scales) {
                *s = nearest_int(iscale * scale) as u8;
            }
            block.d = f16_le_from(max_scale / Q4SCALE);
        }
        if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for (s, &min) in block.scales.iter_mut().zip(&mins) {
                *s |= (nearest_int(iscale * min) << 4) as u8;
            }
            block.dmin = f16_le_from(max_min / Q4SCALE);
        }
        let (d, dmin) = (block.d(), block.dmin());
        for j in 0..QK_K / 16 {
            let dj = d * (block.scales[j] & 0x0f) as f32;
            if dj == 0.0 {
                continue;
            }
            let dm = dmin * (block.scales[j] >> 4) as f32;
            for ii in 0..16 {
                l[16 * j + ii] = nearest_int((src[16 * j + ii] + dm) / dj).clamp(0, 3) as u8;
            }
        }
        pack_2bit(&l, &mut block.qs);
        block
    }
}

/// Packs 256 two-bit codes the Q2_K/Q3_K way: per 128-value half, byte `l` holds values
/// `l`, `l+32`, `l+64`, `l+96` in bits 0-1, 2-3, 4-5, 6-7.
pub(crate) fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8; QK_K / 4]) {
    for (q, l) in qs.chunks_exact_mut(32).zip(l.chunks_exact(128)) {
        for i in 0..32 {
            q[i] = l[i] | (l[i + 32] << 2) | (l[i + 64] << 4) | (l[i + 96] << 6);
        }
    }
}
