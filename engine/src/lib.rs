//! ferrite-engine: model configuration, backends, architectures, KV cache, sampler and the
//! generation API. The CLI and the server are thin layers over this crate.

pub mod api;
pub mod backend;
pub mod bench;
pub mod config;
pub mod error;
pub mod info;
pub mod json_mode;
pub mod kv_cache;
pub mod model;
mod pool;
pub mod reasoning;
pub mod sampler;
pub mod scheduler;
pub mod text;
pub mod tool_calls;

pub use api::{
    BackendKind, DoneEvent, Engine, Event, FinishReason, GenerateRequest, Generation, KvCapacity,
    LoadOptions, Perplexity, Prompt, Prompter, Timings, TokenEvent,
};
pub use config::{Activation, Arch, ModelConfig, RopeScaling, RopeStyle};
pub use error::EngineError;
pub use info::ModelInfo;
pub use sampler::{Sampler, SamplerParams};
pub use scheduler::{BatchRequest, RequestId, Scheduler, SchedulerOptions, SchedulerStats, SeqEvent};
