//! ferrite-loader: GGUF files on memmap2 — metadata, tensor table, zero-copy tensor views —
//! and what a model needs from its metadata besides weights.
//!
//! A GGUF file is untrusted input: the parser bounds every allocation by the bytes that
//! remain in the file, bounds nesting, uses checked arithmetic for sizes and names the
//! byte offset of every problem it finds.

pub mod chat;
pub mod error;
pub mod gguf;
pub mod tokenizer;
pub mod types;
pub mod value;
pub mod writer;

pub use chat::{ChatError, ChatRequest, ChatTemplate};
pub use error::{GgufError, MetadataError};
pub use gguf::{Gguf, GgufFile, TensorInfo, TensorView};
pub use tokenizer::{
    SpecialTokens, StreamDecoder, TokenAttr, TokenType, Tokenizer, TokenizerError, TokenizerModel,
};
pub use types::GgmlType;
pub use value::{Array, Metadata, Value, ValueType};
