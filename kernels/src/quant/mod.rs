//! ggml quantized block formats: exact byte layouts plus scalar reference kernels.
//!
//! Every block type here is a `#[repr(C)]` struct whose bytes are exactly ggml's `block_*`
//! struct (see `ggml-common.h`), so a GGUF tensor's bytes can be reinterpreted as `&[Block]`
//! with no copy. The scalar `dequantize` routines reproduce ggml's `dequantize_row_*`
//! bit for bit (same operations, same order, f32 arithmetic, no fused multiply-add), and the
//! `quantize` routines reproduce ggml's `quantize_row_*_ref`. They are the ground truth the
//! optimized kernels are tested against, not the fast path.
//!
//! "Bit for bit" means against ggml compiled without floating-point contraction (and against
//! the `gguf` Python package, which has none): a ggml built with `-march=native` may fuse
//! `a*b + c` into an FMA and differ in the last bit.
//!
//! # Why every block has alignment 1
//!
//! ggml stores its `f16`/`f32`/`u16`/`i16` fields at their natural alignment, but a GGUF tensor
//! sits at an arbitrary 32-byte-aligned offset in an mmap and a row inside it may start at any
//! multiple of the block size (18 bytes for Q4_0), so a 2- or 4-aligned view is not always
//! possible. All multi-byte fields are therefore stored as little-endian byte arrays
//! (`[u8; 2]`, `[u8; 4]`) behind accessor methods. With alignment 1, [`cast_blocks`] can never
//! fail on alignment: a zero-copy view of any byte slice of the right length always exists,
//! and the layout has no padding, which `bytemuck::Pod` requires.

use std::fmt;

use bytemuck::Pod;

mod float;
mod iq4;
mod k_common;
mod q2_k;
mod q3_k;
mod q4_0;
mod q4_1;
mod q4_k;
mod q5;
mod q5_k;
mod q6_k;
mod q8;
mod ternary;

pub use float::{
    bf16_to_f32_row, f16_to_f32, f16_to_f32_row, f32_to_bf16_row, f32_to_f16_row, BlockBF16, BlockF16,
    BlockF32,
};
pub use iq4::{BlockIQ4NL, BlockIQ4XS, KVALUES_IQ4NL};
pub use q2_k::BlockQ2K;
pub use q3_k::BlockQ3K;
pub use q4_0::BlockQ4_0;
pub use q4_1::BlockQ4_1;
pub use q4_k::BlockQ4K;
pub use q5::{BlockQ5_0, BlockQ5_1};
pub use q5_k::BlockQ5K;
pub use q6_k::BlockQ6K;
pub use q8::{BlockQ8K, BlockQ8_0, BlockQ8_1};
pub use ternary::{BlockTQ1_0, BlockTQ2_0};

/// Values per block of the 32-element "legacy" formats (Q4_0 … Q8_1, IQ4_NL).
pub const QK: usize = 32;
/// Values per super-block of the K-quants, IQ4_XS and the ternary formats.
pub const QK_K: usize = 256;

/// A ggml block: a fixed number of values stored in a fixed number of bytes.
pub trait QuantBlock: Pod + fmt::Debug {
    /// Values encoded by one block.
    const BLOCK_ELEMS: usize;
    /// Bytes per block (always `size_of::<Self>()`; the layouts have no padding).
    const BLOCK_BYTES: usize = std::mem::size_of::<Self>();
    /// The type's name as ggml spells it (`"Q4_K"`).
    const NAME: &'static str;
    /// The matching runtime type tag.
    const TYPE: QuantType;

    /// Scalar reference dequantization: writes `BLOCK_ELEMS` values to `out`.
    ///
    /// # Panics
    /// If `out.len() != Self::BLOCK_ELEMS`. Use [`dequantize_row`] for checked input.
    fn dequantize(&self, out: &mut [f32]);
}

/// A block type with a reference quantizer (ggml's `quantize_row_*_ref`).
pub trait QuantizeBlock: QuantBlock {
    /// Quantizes exactly `BLOCK_ELEMS` values.
    ///
    /// # Panics
    /// If `src.len() != Self::BLOCK_ELEMS`. Use [`quantize_row`] for checked input.
    fn quantize(src: &[f32]) -> Self;
}

/// Errors of the checked row helpers: lengths that do not fit whole blocks, or an operation a
/// type does not support.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuantError {
    /// A byte length that is not a whole number of blocks.
    PartialBlockBytes { ty: &'static str, len: usize, block_bytes: usize },
    /// A value count that is not a whole number of blocks.
    PartialBlockElems { ty: &'static str, len: usize, block_elems: usize },
    /// An output buffer whose length does not match the input.
    OutputLen { ty: &'static str, expected: usize, got: usize },
    /// The type has no reference quantizer here.
    QuantizeUnsupported { ty: &'static str },
}

impl fmt::Display for QuantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PartialBlockBytes { ty, len, block_bytes } => {
                write!(f, "{ty}: {len} bytes is not a whole number of {block_bytes}-byte blocks")
            }
            Self::PartialBlockElems { ty, len, block_elems } => {
                write!(f, "{ty}: {len} values is not a whole number of {block_elems}-value blocks")
            }
            Self::OutputLen { ty, expected, got } => {
                write!(f, "{ty}: output holds {got} elements, expected {expected}")
            }
            Self::QuantizeUnsupported { ty } => write!(f, "{ty}: no reference quantizer"),
        }
    }
}

impl std::error::Error for QuantError {}

/// Zero-copy view of raw tensor bytes as blocks. Never fails on alignment (see module docs),
/// only when `bytes.len()` is not a multiple of the block size.
pub fn cast_blocks<B: QuantBlock>(bytes: &[u8]) -> Result<&[B], QuantError> {
    if !bytes.len().is_multiple_of(B::BLOCK_BYTES) {
        return Err(QuantError::PartialBlockBytes {
            ty: B::NAME,
            len: bytes.len(),
            block_bytes: B::BLOCK_BYTES,
        });
    }
    Ok(bytemuck::cast_slice(bytes))
}

/// Dequantizes whole blocks of `bytes` into `out`, which must hold exactly
/// `bytes.len() / BLOCK_BYTES * BLOCK_ELEMS` values.
pub fn dequantize_row<B: QuantBlock>(bytes: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    dequantize_blocks(cast_blocks::<B>(bytes)?, out)
}

/// Dequantizes `blocks` into `out`, which must hold exactly `blocks.len() * BLOCK_ELEMS` values.
pub fn dequantize_blocks<B: QuantBlock>(blocks: &[B], out: &mut [f32]) -> Result<(), QuantError> {
    let expected = blocks.len() * B::BLOCK_ELEMS;
    if out.len() != expected {
        return Err(QuantError::OutputLen { ty: B::NAME, expected, got: out.len() });
    }
    for (block, dst) in blocks.iter().zip(out.chunks_exact_mut(B::BLOCK_ELEMS)) {
        block.dequantize(dst);
    }
    Ok(())
}

/// Quantizes `src` (a whole number of blocks) and appends the block bytes to `out`.
/// On error `out` is left untouched.
pub fn quantize_row<B: QuantizeBlock>(src: &[f32], out: &mut Vec<u8>) -> Result<(), QuantError> {
    check_elems::<B>(src.len())?;
    out.reserve(src.len() / B::BLOCK_ELEMS * B::BLOCK_BYTES);
    for chunk in src.chunks_exact(B::BLOCK_ELEMS) {
        out.extend_from_slice(bytemuck::bytes_of(&B::quantize(chunk)));
    }
    Ok(())
}

/// Quantizes `src` into a preallocated block slice of exactly `src.len() / BLOCK_ELEMS`
/// blocks (no allocation: meant for per-token activation quantization).
pub fn quantize_row_into<B: QuantizeBlock>(src: &[f32], out: &mut [B]) -> Result<(), QuantError> {
    check_elems::<B>(src.len())?;
    let expected = src.len() / B::BLOCK_ELEMS;
    if out.len() != expected {
        return Err(QuantError::OutputLen { ty: B::NAME, expected, got: out.len() });
    }
    for (chunk, block) in src.chunks_exact(B::BLOCK_ELEMS).zip(out) {
        *block = B::quantize(chunk);
    }
    Ok(())
}

fn check_elems<B: QuantBlock>(len: usize) -> Result<(), QuantError> {
    if !len.is_multiple_of(B::BLOCK_ELEMS) {
        return Err(QuantError::PartialBlockElems { ty: B::NAME, len, block_elems: B::BLOCK_ELEMS });
    }
    Ok(())
}

/// Runtime tag for the supported ggml tensor types, with ggml's type ids.
///
/// Variant names keep ggml's spelling so they can be matched against GGUF files and docs.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ4_NL,
    IQ4_XS,
    TQ1_0,
    TQ2_0,
}

/// Expands `$body` with `$B` bound to the block type of `$ty`.
macro_rules! with_block {
    ($ty:expr, $B:ident => $body:expr) => {
        match $ty {
            QuantType::F32 => {
                type $B = BlockF32;
                $body
            }
            QuantType::F16 => {
                type $B = BlockF16;
                $body
            }
            QuantType::BF16 => {
                type $B = BlockBF16;
                $body
            }
            QuantType::Q4_0 => {
                type $B = BlockQ4_0;
                $body
            }
            QuantType::Q4_1 => {
                type $B = BlockQ4_1;
                $body
            }
            QuantType::Q5_0 => {
                type $B = BlockQ5_0;
                $body
            }
            QuantType::Q5_1 => {
                type $B = BlockQ5_1;
                $body
            }
            QuantType::Q8_0 => {
                type $B = BlockQ8_0;
                $body
            }
            QuantType::Q8_1 => {
                type $B = BlockQ8_1;
                $body
            }
            QuantType::Q2_K => {
                type $B = BlockQ2K;
                $body
            }
            QuantType::Q3_K => {
                type $B = BlockQ3K;
                $body
            }
            QuantType::Q4_K => {
                type $B = BlockQ4K;
                $body
            }
            QuantType::Q5_K => {
                type $B = BlockQ5K;
                $body
            }
            QuantType::Q6_K => {
                type $B = BlockQ6K;
                $body
            }
            QuantType::Q8_K => {
                type $B = BlockQ8K;
                $body
            }
            QuantType::IQ4_NL => {
                type $B = BlockIQ4NL;
                $body
            }
            QuantType::IQ4_XS => {
                type $B = BlockIQ4XS;
                $body
            }
            QuantType::TQ1_0 => {
                type $B = BlockTQ1_0;
                $body
            }
            QuantType::TQ2_0 => {
                type $B = BlockTQ2_0;
                $body
            }
        }
    };
}

impl QuantType {
    /// Every supported type.
    pub const ALL: [QuantType; 19] = [
        Self::F32,
        Self::F16,
        Self::BF16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q8_1,
        Self::Q2_K,
        Self::Q3_K,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
        Self::Q8_K,
        Self::IQ4_NL,
        Self::IQ4_XS,
        Self::TQ1_0,
        Self::TQ2_0,
    ];

    /// ggml's `enum ggml_type` value, as stored in GGUF tensor infos.
    pub const fn ggml_id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q8_1 => 9,
            Self::Q2_K => 10,
            Self::Q3_K => 11,
            Self::Q4_K => 12,
            Self::Q5_K => 13,
            Self::Q6_K => 14,
            Self::Q8_K => 15,
            Self::IQ4_NL => 20,
            Self::IQ4_XS => 23,
            Self::BF16 => 30,
            Self::TQ1_0 => 34,
            Self::TQ2_0 => 35,
        }
    }

    /// The type for a ggml type id, if supported here.
    pub fn from_ggml_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.ggml_id() == id)
    }

    /// ggml's name for the type (`"Q4_K"`).
    pub fn name(self) -> &'static str {
        with_block!(self, B => B::NAME)
    }

    /// The type with ggml name `name` (exact, case-sensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Values per block (1 for the float types).
    pub fn block_elems(self) -> usize {
        with_block!(self, B => B::BLOCK_ELEMS)
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        with_block!(self, B => B::BLOCK_BYTES)
    }

    /// Bytes needed for `n_elems` values; errors unless `n_elems` is a whole number of blocks.
    pub fn row_bytes(self, n_elems: usize) -> Result<usize, QuantError> {
        let block_elems = self.block_elems();
        if !n_elems.is_multiple_of(block_elems) {
            return Err(QuantError::PartialBlockElems { ty: self.name(), len: n_elems, block_elems });
        }
        Ok(n_elems / block_elems * self.block_bytes())
    }

    /// Whether [`QuantType::quantize_row`] is available for this type.
    pub fn can_quantize(self) -> bool {
        !matches!(self, Self::IQ4_NL | Self::IQ4_XS)
    }

    /// Runtime-dispatched [`dequantize_row`].
    pub fn dequantize_row(self, bytes: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
        with_block!(self, B => dequantize_row::<B>(bytes, out))
    }

    /// Runtime-dispatched [`quantize_row`]; errors for types without a reference quantizer.
    pub fn quantize_row(self, src: &[f32], out: &mut Vec<u8>) -> Result<(), QuantError> {
        match self {
            Self::IQ4_NL | Self::IQ4_XS => Err(QuantError::QuantizeUnsupported { ty: self.name() }),
            Self::F32 => quantize_row::<BlockF32>(src, out),
            Self::F16 => quantize_row::<BlockF16>(src, out),
            Self::BF16 => quantize_row::<BlockBF16>(src, out),
            Self::Q4_0 => quantize_row::<BlockQ4_0>(src, out),
            Self::Q4_1 => quantize_row::<BlockQ4_1>(src, out),
            Self::Q5_0 => quantize_row::<BlockQ5_0>(src, out),
            Self::Q5_1 => quantize_row::<BlockQ5_1>(src, out),
            Self::Q8_0 => quantize_row::<BlockQ8_0>(src, out),
            Self::Q8_1 => quantize_row::<BlockQ8_1>(src, out),
            Self::Q2_K => quantize_row::<BlockQ2K>(src, out),
            Self::Q3_K => quantize_row::<BlockQ3K>(src, out),
            Self::Q4_K => quantize_row::<BlockQ4K>(src, out),
            Self::Q5_K => quantize_row::<BlockQ5K>(src, out),
            Self::Q6_K => quantize_row::<BlockQ6K>(src, out),
            Self::Q8_K => quantize_row::<BlockQ8K>(src, out),
            Self::TQ1_0 => quantize_row::<BlockTQ1_0>(src, out),
            Self::TQ2_0 => quantize_row::<BlockTQ2_0>(src, out),
        }
    }
}

impl fmt::Display for QuantType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Reads a little-endian IEEE half as f32 (exact).
#[inline]
pub(crate) fn f16_le(bytes: [u8; 2]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes(bytes)).to_f32()
}

/// Rounds to the nearest IEEE half (ties to even, like `GGML_FP32_TO_FP16`), little-endian.
#[inline]
pub(crate) fn f16_le_from(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_bits().to_le_bytes()
}

/// Panics with a clear message when a block routine gets a wrong-sized slice.
#[inline]
pub(crate) fn check_block_len(name: &str, len: usize, expected: usize) {
    assert_eq!(len, expected, "{name}: a block holds {expected} values, slice has {len}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytemuck::Zeroable;

    #[test]
    fn type_table_is_consistent() {
        for t in QuantType::ALL {
            assert_eq!(QuantType::from_ggml_id(t.ggml_id()), Some(t));
            assert_eq!(QuantType::from_name(t.name()), Some(t));
            assert_eq!(t.row_bytes(t.block_elems() * 3), Ok(t.block_bytes() * 3));
        }
        assert_eq!(QuantType::from_ggml_id(16), None);
    }

    #[test]
    fn bad_lengths_are_errors_not_panics() {
        let mut out = vec![0.0; 32];
        assert_eq!(
            dequantize_row::<BlockQ4_0>(&[0; 17], &mut out),
            Err(QuantError::PartialBlockBytes { ty: "Q4_0", len: 17, block_bytes: 18 })
        );
        assert_eq!(
            dequantize_row::<BlockQ4_0>(&[0; 36], &mut out),
            Err(QuantError::OutputLen { ty: "Q4_0", expected: 64, got: 32 })
        );
        let mut bytes = vec![1, 2, 3];
        assert!(matches!(
            quantize_row::<BlockQ8K>(&[0.0; 255], &mut bytes),
            Err(QuantError::PartialBlockElems { ty: "Q8_K", len: 255, block_elems: 256 })
        ));
        assert_eq!(bytes, [1, 2, 3], "output untouched on error");
        let mut blocks = [BlockQ8_0::zeroed(); 1];
        assert!(quantize_row_into(&[0.0; 64], &mut blocks).is_err());
        assert_eq!(
            QuantType::IQ4_XS.quantize_row(&[0.0; 256], &mut bytes),
            Err(QuantError::QuantizeUnsupported { ty: "IQ4_XS" })
        );
        assert!(QuantType::Q4_K.row_bytes(100).is_err());
        assert!(QuantError::OutputLen { ty: "Q4_0", expected: 64, got: 32 }.to_string().contains("64"));
    }

    #[test]
    fn unaligned_views_work() {
        // One Q8_0 block at every byte offset of a buffer: the cast never fails on alignment.
        let mut block = BlockQ8_0::zeroed();
        block.d = f16_le_from(0.5);
        block.qs[3] = -4;
        let mut buf = [0u8; 64];
        for off in 0..8 {
            buf[off..off + 34].copy_from_slice(bytemuck::bytes_of(&block));
            let mut out = [0.0; 32];
            dequantize_row::<BlockQ8_0>(&buf[off..off + 34], &mut out).unwrap();
            assert_eq!(out[3], -2.0);
        }
    }
}
