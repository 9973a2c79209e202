//! Q6_K: 256 values, 6-bit signed codes in 16 sub-blocks of 16 with 8-bit signed scales:
//! value = d * sc * (q - 32).

use bytemuck::{Pod, Zeroable};

use super::k_common::{make_qx_quants, nearest_int, GROUP_MAX_EPS};
use super::{check_block_len, f16_le, f16_le_from, QuantBlock, QuantType, QuantizeBlock, QK_K};

/// ggml `block_q6_K` (210 bytes), laid out in two 128-value halves `h`. Within a half, for
/// `l < 32`, values `l`, `l+32`, `l+64`, `l+96` take their low 4 bits from
/// `ql[64h + l] & 15`, `ql[64h + l + 32] & 15`, `ql[64h + l] >> 4`, `ql[64h + l + 32] >> 4` and
/// their high 2 bits from bits 0-1, 2-3, 4-5, 6-7 of `qh[32h + l]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    /// One signed scale per 16 values.
    pub scales: [i8; QK_K / 16],
    /// Super-block scale, f16 little-endian.
    pub d: [u8; 2],
}
const _: () = assert!(size_of::<BlockQ6K>() == 210 && align_of::<BlockQ6K>() == 1);

impl BlockQ6K {
    /// `d` as f32.
    pub fn d(&self) -> f32 {
        f16_le(self.d)
    }
}

impl QuantBlock for BlockQ6K {
    const BLOCK_ELEMS: usize = QK_K;
    const NAME: &'static str = "Q6_K";
    const TYPE: QuantType = QuantType::Q6_K;

    fn dequantize(&self, out: &mut [f32]) {
        check_block_len(Self::NAME, out.len(), QK_K);
        let d = self.d();
        for (h, y) in out.chunks_exact_mut(128).enumerate() {
            let ql = &self.ql[64 * h..64 * h + 64];
            let qh = &self.qh[32 * h..32 * h + 32];
            let sc = &self.scales[8 * h..8 * h + 8];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                y[l] = d * sc[is] as f32 * q1 as f32;
                y[l + 32] = d * sc[is + 2] as f32 * q2 as f32;
                y[l + 64] = d * sc[is + 4] as f32 * q3 as f32;
                y[l + 96] = d * sc[is + 6] as f32 * q4 as f32;
            }
        }
    }
}

impl QuantizeBlock for BlockQ6K {
    /// Fits each 16-value group with `make_qx_quants` (codes in [-32, 31]), quantizes the 16
    /// scales to i8 against the one of largest magnitude (`iscale = -128 / max_scale`), then
    /// re-rounds every value against the stored scales.
    fn quantize(src: &[f32]) -> Self {
        check_block_len(Self::NAME, src.len(), QK_K);
        let mut l = [0i8; QK_K];
        let mut scales = [0.0f32; QK_K / 16];
        let mut max_scale = 0.0f32;
        let mut max_abs_scale = 0.0f32;
        for (ib, (x, l)) in src.chunks_exact(16).zip(l.chunks_exact_mut(16)).enumerate() {
            let scale = make_qx_quants(32, x, l);
            scales[ib] = scale;
            if scale.abs() > max_abs_scale {
                max_abs_scale = scale.abs();
                max_scale = scale;
            }
        }
        let mut block = Self::zeroed();
        if max_abs_scale < GROUP_MAX_EPS {
            return block;
        }
        let iscale = -128.0 / max_scale;
        block.d = f16_le_from(1.0 / iscale);
        for (s, &scale) in block.scales.iter_mut().zip(&scales) {
            *s = nearest_int(iscale * scale).min(127) as i8;
        }
        let d = block.d();
        for j in 0..QK_K / 16 {
            let dj = d * block.scales[j] as f32;
            if dj == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let q = nearest_int(src[16 * j + ii] / dj).clamp(-32, 31);
                l[16 * j + ii] = (q + 32) as i8;
            }
        }
        let l = l.map(|v| v as u8);
        for h in 0..2 {
            let (ql, qh, l) = (&mut block.ql[64 * h..], &mut block.qh[32 * h..], &l[128 * h..]);
            for i in 0..32 {
                let (q1, q2, q3, q4) = (l[i], l[i + 32], l[i + 64], l[i + 96]);
                ql[i] = (q1 & 0x0f) | ((q3 & 0x0f) << 4);
                ql[i + 32] = (q2 & 0x0f) | ((q4 & 0x0f) << 4);
                qh[i] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
            }
        }
        block
    }
}
