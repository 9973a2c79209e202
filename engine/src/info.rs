//! `ModelInfo`: what a user wants to know before running a model, read from the header
//! alone (no tensor data is touched), for any architecture.

use crate::config::{Arch, ModelConfig};
use ferrite_loader::{GgmlType, GgufFile, Metadata, Value};
use serde::Serialize;
use std::collections::BTreeMap;

/// Bytes per element of the KV cache: f16, as llama.cpp's default cache.
pub const KV_BYTES_PER_ELEM: u64 = 2;

/// One tensor type's share of the file.
#[derive(Clone, Debug, Serialize)]
pub struct TypeShare {
    /// ggml type name.
    #[serde(rename = "type")]
    pub ty: String,
    /// Number of tensors.
    pub count: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Their elements.
    pub elements: u64,
}

/// Rope settings.
#[derive(Clone, Debug, Serialize)]
pub struct RopeInfo {
    /// Base frequency.
    pub freq_base: Option<f32>,
    /// Base frequency for sliding-window layers, where it differs.
    pub freq_base_swa: Option<f32>,
    /// Rotated dimensions per head.
    pub dimension_count: Option<u64>,
    /// `normal` or `neox`, for supported architectures.
    pub style: Option<String>,
    /// `{arch}.rope.scaling.type`, if present.
    pub scaling_type: Option<String>,
    /// `{arch}.rope.scaling.factor`, if present.
    pub scaling_factor: Option<f32>,
}

/// Tokenizer summary.
#[derive(Clone, Debug, Serialize)]
pub struct TokenizerInfo {
    /// `tokenizer.ggml.model` (`llama` = SentencePiece, `gpt2` = byte-level BPE).
    pub model: Option<String>,
    /// `tokenizer.ggml.pre`.
    pub pre: Option<String>,
    /// Number of tokens.
    pub vocab_size: usize,
    /// Number of merges (BPE).
    pub merges: usize,
    /// BOS token id.
    pub bos_token_id: Option<u64>,
    /// EOS token id.
    pub eos_token_id: Option<u64>,
    /// Whether BOS is prepended.
    pub add_bos_token: Option<bool>,
}

/// Memory to run the model at a context length.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryInfo {
    /// Context length the estimate is for.
    pub ctx: u64,
    /// Weights (tensor data, memory-mapped).
    pub weights_bytes: u64,
    /// KV cache: layers × ctx × kv heads × (key + value head size) × `KV_BYTES_PER_ELEM`.
    pub kv_cache_bytes: u64,
    /// Sum.
    pub total_bytes: u64,
}

/// Everything `ferrite info` shows.
#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    /// Path as given.
    pub file: String,
    /// File size.
    pub file_size: u64,
    /// GGUF version.
    pub gguf_version: u32,
    /// `general.architecture`.
    pub architecture: Option<String>,
    /// Whether ferrite can run this architecture.
    pub supported: bool,
    /// `general.name`.
    pub name: Option<String>,
    /// Total elements of all tensors.
    pub n_params: u64,
    /// Number of tensors.
    pub n_tensors: usize,
    /// Tensor-type mix, largest share first.
    pub tensor_types: Vec<TypeShare>,
    /// Training context.
    pub context_length: Option<u64>,
    /// Hidden size.
    pub embedding_length: Option<u64>,
    /// FFN size.
    pub feed_forward_length: Option<u64>,
    /// Layers.
    pub n_layers: Option<u64>,
    /// Query heads.
    pub n_head: Option<u64>,
    /// KV heads.
    pub n_head_kv: Option<u64>,
    /// Per-head key size.
    pub head_dim: Option<u64>,
    /// Per-head value size.
    pub head_dim_v: Option<u64>,
    /// Sliding window, if any.
    pub sliding_window: Option<u64>,
    /// Rope.
    pub rope: RopeInfo,
    /// Tokenizer.
    pub tokenizer: TokenizerInfo,
    /// `tokenizer.chat_template` present.
    pub chat_template: bool,
    /// Memory estimate.
    pub memory: MemoryInfo,
    /// Metadata entries (small values in full; long strings and arrays summarized).
    pub metadata: BTreeMap<String, String>,
}

impl ModelInfo {
    /// Builds the summary; `ctx` defaults to the training context (capped at 4096 when absent).
    pub fn from_gguf(file: &GgufFile, ctx: Option<u64>) -> ModelInfo {
        let md = file.metadata();
        let arch = md.architecture().ok().map(str::to_string);
        let ak = |s: &str| arch.as_ref().map(|a| format!("{a}.{s}")).unwrap_or_default();
        let num = |key: String| md.u64(&key).ok();
        let config = ModelConfig::from_gguf(file).ok();

        let mut shares: BTreeMap<GgmlType, TypeShare> = BTreeMap::new();
        for t in file.tensors() {
            let s = shares.entry(t.ty).or_insert(TypeShare {
                ty: t.ty.name().to_string(),
                count: 0,
                bytes: 0,
                elements: 0,
            });
            s.count += 1;
            s.bytes += t.n_bytes;
            s.elements += t.n_elements;
        }
        let mut tensor_types: Vec<TypeShare> = shares.into_values().collect();
        tensor_types.sort_by_key(|t| std::cmp::Reverse(t.bytes));

        let n_embd = num(ak("embedding_length"));
        let n_head = num(ak("attention.head_count"));
        let n_head_kv = num(ak("attention.head_count_kv")).or(n_head);
        let head_dim = num(ak("attention.key_length")).or(match (n_embd, n_head) {
            (Some(e), Some(h)) if h > 0 => Some(e / h),
            _ => None,
        });
        let head_dim_v = num(ak("attention.value_length")).or(head_dim);
        let n_layers = num(ak("block_count"));
        let context_length = num(ak("context_length"));
        let ctx = ctx.or(context_length).unwrap_or(4096);
        let weights_bytes = file.header().tensor_bytes();
        let kv_cache_bytes = match (n_layers, n_head_kv, head_dim, head_dim_v) {
            (Some(l), Some(h), Some(dk), Some(dv)) => l * ctx * h * (dk + dv) * KV_BYTES_PER_ELEM,
            _ => 0,
        };
        let vocab_size = md.array("tokenizer.ggml.tokens").map(|a| a.len()).unwrap_or(0);

        ModelInfo {
            file: file.path().display().to_string(),
            file_size: file.file_len(),
            gguf_version: file.header().version,
            supported: arch.as_deref().and_then(Arch::from_name).is_some(),
            architecture: arch.clone(),
            name: md.str("general.name").ok().map(str::to_string),
            n_params: file.header().n_params(),
            n_tensors: file.tensors().len(),
            tensor_types,
            context_length,
            embedding_length: n_embd,
            feed_forward_length: num(ak("feed_forward_length")),
            n_layers,
            n_head,
            n_head_kv,
            head_dim,
            head_dim_v,
            sliding_window: num(ak("attention.sliding_window")),
            rope: RopeInfo {
                freq_base: md.f32(&ak("rope.freq_base")).ok(),
                freq_base_swa: config
                    .as_ref()
                    .filter(|c| c.sliding_window.is_some())
                    .map(|c| c.rope_base_swa),
                dimension_count: num(ak("rope.dimension_count")).or(head_dim),
                style: config.as_ref().map(|c| format!("{:?}", c.rope_style).to_lowercase()),
                scaling_type: md.str(&ak("rope.scaling.type")).ok().map(str::to_string),
                scaling_factor: md.f32(&ak("rope.scaling.factor")).ok(),
            },
            tokenizer: TokenizerInfo {
                model: md.str("tokenizer.ggml.model").ok().map(str::to_string),
                pre: md.str("tokenizer.ggml.pre").ok().map(str::to_string),
                vocab_size,
                merges: md.array("tokenizer.ggml.merges").map(|a| a.len()).unwrap_or(0),
                bos_token_id: md.u64("tokenizer.ggml.bos_token_id").ok(),
                eos_token_id: md.u64("tokenizer.ggml.eos_token_id").ok(),
                add_bos_token: md.bool("tokenizer.ggml.add_bos_token").ok(),
            },
            chat_template: md.contains("tokenizer.chat_template"),
            memory: MemoryInfo {
                ctx,
                weights_bytes,
                kv_cache_bytes,
                total_bytes: weights_bytes + kv_cache_bytes,
            },
            metadata: summarize(md),
        }
    }
}

fn summarize(md: &Metadata) -> BTreeMap<String, String> {
    md.iter()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) if k == "tokenizer.chat_template" => format!("<{} bytes>", s.len()),
                _ => v.to_string(),
            };
            (k.to_string(), s)
        })
        .collect()
}
