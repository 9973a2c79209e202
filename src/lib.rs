//! ferrite: an LLM inference engine. This facade re-exports the engine's public API (what
//! the CLI uses and what embedding programs use) and the loader and kernel crates.

pub use ferrite_engine as engine;
pub use ferrite_engine::*;
pub use ferrite_kernels as kernels;
pub use ferrite_loader as loader;
