//! Errors of the loader: every parse error names the byte offset where it was found.

use thiserror::Error;

/// A GGUF file that could not be opened or parsed.
#[derive(Debug, Error)]
pub enum GgufError {
    /// The file could not be opened or mapped.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bytes are not a valid GGUF file.
    #[error("invalid GGUF at byte {offset}: {what}")]
    Invalid {
        /// Byte offset where the problem was found.
        offset: u64,
        /// What is wrong.
        what: String,
    },
}

impl GgufError {
    pub(crate) fn at(offset: u64, what: impl Into<String>) -> Self {
        GgufError::Invalid { offset, what: what.into() }
    }

    /// The byte offset of a parse error (`None` for I/O errors).
    pub fn offset(&self) -> Option<u64> {
        match self {
            GgufError::Invalid { offset, .. } => Some(*offset),
            GgufError::Io { .. } => None,
        }
    }
}

/// A metadata key a model needs is absent or has the wrong type.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum MetadataError {
    /// The key is not in the file.
    #[error("missing key {0}")]
    Missing(String),
    /// The key holds another type or an out-of-range value.
    #[error("key {key}: expected {expected}, found {found}")]
    WrongType {
        /// The key.
        key: String,
        /// What the caller wanted.
        expected: &'static str,
        /// What the file holds.
        found: String,
    },
}
