//! Engine errors: every failure a caller can act on, with a message a user can read.

use thiserror::Error;

/// What went wrong in loading or running a model.
#[derive(Debug, Error)]
pub enum EngineError {
    /// The file could not be read or is not valid GGUF.
    #[error(transparent)]
    Gguf(#[from] ferrite_loader::GgufError),
    /// A metadata key or tensor is missing or malformed.
    #[error(transparent)]
    Metadata(#[from] ferrite_loader::MetadataError),
    /// A tensor's type or shape is not what the architecture needs.
    #[error("tensor {name}: {what}")]
    Tensor {
        /// The tensor.
        name: String,
        /// What is wrong.
        what: String,
    },
    /// The tokenizer could not be built.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template failed.
    #[error("chat template: {0}")]
    Template(String),
    /// The prompt plus generation does not fit in the context.
    #[error("prompt of {prompt} tokens does not fit the context of {ctx} tokens")]
    ContextOverflow {
        /// Prompt tokens.
        prompt: usize,
        /// Context size.
        ctx: usize,
    },
    /// The KV cache has no room.
    #[error(transparent)]
    KvFull(#[from] crate::kv_cache::KvFull),
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {n_vocab}")]
    BadToken {
        /// The id.
        id: u32,
        /// Vocabulary size.
        n_vocab: usize,
    },
    /// The requested backend is not available here.
    #[error("backend {name} is not available: {why}")]
    BackendUnavailable {
        /// Backend name.
        name: String,
        /// Why.
        why: String,
    },
    /// Too many requests are waiting.
    #[error("the server is busy: {waiting} requests are already waiting")]
    Overloaded {
        /// Requests waiting.
        waiting: usize,
    },
    /// Invalid option or argument.
    #[error("{0}")]
    Invalid(String),
}
