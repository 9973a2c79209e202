//! Unquantized element types (F32, F16, BF16) as one-value "blocks", so the generic row
//! helpers and [`QuantType`] dispatch treat every tensor type alike.

use bytemuck::{Pod, Zeroable};
use half::{bf16, f16};

use super::{check_block_len, QuantBlock, QuantError, QuantType, QuantizeBlock};

/// One little-endian f32.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockF32(pub [u8; 4]);
const _: () = assert!(size_of::<BlockF32>() == 4 && align_of::<BlockF32>() == 1);

/// One little-endian IEEE half.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockF16(pub [u8; 2]);
const _: () = assert!(size_of::<BlockF16>() == 2 && align_of::<BlockF16>() == 1);

/// One little-endian bfloat16.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockBF16(pub [u8; 2]);
const _: () = assert!(size_of::<BlockBF16>() == 2 && align_of::<BlockBF16>() == 1);

/// An f16 (its bits) as f32, exactly as `half` and F16C convert it, NaNs quieted as they
/// quiet them, in plain integer and float operations that loops over rows vectorize.
/// (`half::f16::to_f32` checks for F16C at run time on every value, which kept the F16 row
/// kernel and dequantization scalar.)
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff;
    // Normals and subnormals: the exponent and mantissa moved to f32's places are the value
    // × 2^-112 (an f32 subnormal for an f16 subnormal); the product is exact.
    let finite = (f32::from_bits(em << 13) * f32::from_bits(0x7780_0000)).to_bits();
    // Infinity and NaN (quiet bit set, as `half` and F16C do): selects, not branches, so
    // the lanes stay vectorized.
    let special = 0x7f80_0000 | (em & 0x3ff) << 13 | u32::from(em > 0x7c00) << 22;
    let bits = if em >= 0x7c00 { special } else { finite };
    f32::from_bits(bits | sign)
}

impl QuantBlock for BlockF32 {
    const BLOCK_ELEMS: usize = 1;
    const NAME: &'static str = "F32";
    const TYPE: QuantType = QuantType::F32;

    fn dequantize(&self, out: &mut [f32]) {
        check_block_len(Self::NAME, out.len(), 1);
        out[0] = f32::from_le_bytes(self.0);
    }
}

impl QuantizeBlock for BlockF32 {
    fn quantize(src: &[f32]) -> Self {
        check_block_len(Self::NAME, src.len(), 1);
        Self(src[0].to_le_bytes())
    }
}

impl QuantBlock for BlockF16 {
    const BLOCK_ELEMS: usize = 1;
    const NAME: &'static str = "F16";
    const TYPE: QuantType = QuantType::F16;

    fn dequantize(&self, out: &mut [f32]) {
        check_block_len(Self::NAME, out.len(), 1);
        out[0] = f16_to_f32(u16::from_le_bytes(self.0));
    }
}

impl QuantizeBlock for BlockF16 {
    fn quantize(src: &[f32]) -> Self {
        check_block_len(Self::NAME, src.len(), 1);
        Self(f16::from_f32(src[0]).to_bits().to_le_bytes())
    }
}

impl QuantBlock for BlockBF16 {
    const BLOCK_ELEMS: usize = 1;
    const NAME: &'static str = "BF16";
    const TYPE: QuantType = QuantType::BF16;

    fn dequantize(&self, out: &mut [f32]) {
        check_block_len(Self::NAME, out.len(), 1);
        out[0] = bf16::from_bits(u16::from_le_bytes(self.0)).to_f32();
    }
}

impl QuantizeBlock for BlockBF16 {
    /// Round to nearest even; NaN stays a quiet NaN (same rule as ggml's `GGML_FP32_TO_BF16`).
    fn quantize(src: &[f32]) -> Self {
        check_block_len(Self::NAME, src.len(), 1);
        Self(bf16::from_f32(src[0]).to_bits().to_le_bytes())
    }
}

fn check_same_len(ty: &'static str, src: usize, dst: usize) -> Result<(), QuantError> {
    if src != dst {
        return Err(QuantError::OutputLen { ty, expected: src, got: dst });
    }
    Ok(())
}

/// Converts f32 values to IEEE halves (round to nearest even). Lengths must match.
pub fn f32_to_f16_row(src: &[f32], out: &mut [f16]) -> Result<(), QuantError> {
    check_same_len("F16", src.len(), out.len())?;
    for (o, &v) in out.iter_mut().zip(src) {
        *o = f16::from_f32(v);
    }
    Ok(())
}

/// Converts f32 values to bfloat16 (round to nearest even, NaN kept quiet). Lengths must match.
pub fn f32_to_bf16_row(src: &[f32], out: &mut [bf16]) -> Result<(), QuantError> {
    check_same_len("BF16", src.len(), out.len())?;
    for (o, &v) in out.iter_mut().zip(src) {
        *o = bf16::from_f32(v);
    }
    Ok(())
}

/// Widens IEEE halves to f32 (exact). Lengths must match.
pub fn f16_to_f32_row(src: &[f16], out: &mut [f32]) -> Result<(), QuantError> {
    check_same_len("F16", src.len(), out.len())?;
    for (o, &v) in out.iter_mut().zip(src) {
        *o = v.to_f32();
    }
    Ok(())
}

/// Widens bfloat16 values to f32 (exact). Lengths must match.
pub fn bf16_to_f32_row(src: &[bf16], out: &mut [f32]) -> Result<(), QuantError> {
    check_same_len("BF16", src.len(), out.len())?;
    for (o, &v) in out.iter_mut().zip(src) {
        *o = v.to_f32();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ggml's `ggml_compute_fp32_to_bf16`, written out to pin `half`'s rounding to it.
    fn ggml_bf16(v: f32) -> u16 {
        let u = v.to_bits();
        if (u & 0x7fff_ffff) > 0x7f80_0000 {
            return ((u >> 16) | 64) as u16;
        }
        ((u as u64 + (0x7fff + ((u >> 16) & 1)) as u64) >> 16) as u16
    }

    #[test]
    fn bf16_rounding_matches_ggml() {
        let specials = [
            0.0f32,
            -0.0,
            1.0,
            f32::from_bits(0x3f80_8000), // exact tie, even stays
            f32::from_bits(0x3f81_8000), // exact tie, odd rounds up
            f32::from_bits(0x3f80_8001),
            f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::from_bits(0x7f80_0001), // signalling NaN becomes quiet
            f32::from_bits(1),
        ];
        let mut x = 0x1234_5678u32;
        let randoms = (0..10_000).map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            f32::from_bits(x)
        });
        for v in specials.into_iter().chain(randoms) {
            assert_eq!(bf16::from_f32(v).to_bits(), ggml_bf16(v), "{v:e} ({:#x})", v.to_bits());
        }
    }

    #[test]
    fn row_conversions_round_trip() {
        let src = [1.5f32, -2.25, 65504.0, 1e-8];
        let mut h = [f16::ZERO; 4];
        let mut b = [bf16::ZERO; 4];
        let mut back = [0.0; 4];
        f32_to_f16_row(&src, &mut h).unwrap();
        f16_to_f32_row(&h, &mut back).unwrap();
        assert_eq!(&back[..3], &src[..3]);
        f32_to_bf16_row(&src, &mut b).unwrap();
        bf16_to_f32_row(&b, &mut back).unwrap();
        assert_eq!(&back[..2], &src[..2]);
        assert!(f32_to_f16_row(&src, &mut h[..3]).is_err());
    }
}
