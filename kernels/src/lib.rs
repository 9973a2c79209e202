//! Ferrite's compute kernels.
//!
//! [`quant`] defines the ggml quantized block formats (exact on-disk layouts) with scalar
//! reference dequantize/quantize routines; the SIMD CPU kernels are checked against them.

pub mod cpu;
pub mod quant;
