//! ModelConfig: everything the forward pass needs to know about an architecture, read from
//! GGUF metadata. Architectures differ by these fields, never by copies of the forward pass.

use ferrite_loader::{GgufFile, Metadata, MetadataError};

/// Architecture families ferrite runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Llama 2/3, Mistral, SmolLM.
    Llama,
    /// Qwen2 / Qwen2.5: q/k/v bias.
    Qwen2,
    /// Qwen3: q/k RMSNorm.
    Qwen3,
    /// Gemma 3: scaled embeddings, post-norms, GELU, q/k norm, sliding-window layers.
    Gemma3,
}

impl Arch {
    /// The architecture for `general.architecture`, if supported.
    pub fn from_name(name: &str) -> Option<Arch> {
        Some(match name {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "gemma3" => Arch::Gemma3,
            _ => return None,
        })
    }
}

/// How rope rotates pairs of a head's dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i+1): llama.
    Normal,
    /// Halves (i, i + d/2): GPT-NeoX, Qwen, Gemma.
    Neox,
}

/// Rope context-extension scaling from `{arch}.rope.scaling.*`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// No scaling.
    None,
    /// Positions divided by `factor`.
    Linear {
        /// Scale factor.
        factor: f32,
    },
    /// YaRN (NTK-by-parts interpolation with attention temperature).
    Yarn {
        /// Scale factor.
        factor: f32,
        /// The training context before extension.
        original_context: usize,
        /// Ramp bounds (llama.cpp's defaults are 32 and 1).
        beta_fast: f32,
        /// See `beta_fast`.
        beta_slow: f32,
    },
}

/// Gated FFN activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// SiLU(gate) · up.
    Silu,
    /// GELU-tanh(gate) · up.
    GeluTanh,
}

/// The shape and numerics of a model.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ModelConfig {
    /// Family.
    pub arch: Arch,
    /// `general.architecture` as written.
    pub arch_name: String,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Hidden size.
    pub n_embd: usize,
    /// FFN inner size.
    pub n_ff: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (GQA when fewer than `n_head`).
    pub n_head_kv: usize,
    /// Per-head size of queries and keys.
    pub head_dim: usize,
    /// Per-head size of values.
    pub head_dim_v: usize,
    /// Vocabulary size (rows of the embedding).
    pub n_vocab: usize,
    /// Training context length.
    pub n_ctx_train: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// Rope base for global layers.
    pub rope_base: f32,
    /// Rope base for sliding-window layers (Gemma 3 uses 10,000 there).
    pub rope_base_swa: f32,
    /// Dimensions of each head that rope rotates.
    pub rope_dim: usize,
    /// Pair layout.
    pub rope_style: RopeStyle,
    /// Context-extension scaling.
    pub rope_scaling: RopeScaling,
    /// Sliding-window size, for architectures that use one.
    pub sliding_window: Option<usize>,
    /// With a sliding window: every `swa_period`-th layer is global, the others slide.
    pub swa_period: usize,
    /// Biases on q, k, v projections (Qwen2).
    pub qkv_bias: bool,
    /// RMSNorm on each q and k head (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Norms after attention and after the FFN, before the residual add (Gemma 3).
    pub post_norms: bool,
    /// FFN activation.
    pub activation: Activation,
    /// Embeddings multiplied by this (Gemma: √n_embd).
    pub embed_scale: Option<f32>,
    /// Attention scale (1/√head_dim unless the architecture says otherwise).
    pub attn_scale: f32,
    /// The scale multiplies the queries (after rope, by its own op) instead of q·k (Gemma 3,
    /// as llama.cpp's graph does: the scaled queries then round to f16 in attention).
    pub scale_queries: bool,
    /// The output head shares the embedding matrix.
    pub tied_embeddings: bool,
}

impl ModelConfig {
    /// KV cache bytes per token: every layer's key and value heads, f16.
    pub fn kv_bytes_per_token(&self) -> usize {
        self.n_layers
            * self.n_head_kv
            * (self.head_dim + self.head_dim_v)
            * crate::info::KV_BYTES_PER_ELEM as usize
    }

    /// Reads the config of a supported architecture.
    pub fn from_gguf(file: &GgufFile) -> Result<ModelConfig, MetadataError> {
        let md = file.metadata();
        let arch_name = md.architecture()?.to_string();
        let arch = Arch::from_name(&arch_name).ok_or_else(|| MetadataError::WrongType {
            key: "general.architecture".into(),
            expected: "a supported architecture (llama, mistral, qwen2, qwen3, gemma3)",
            found: arch_name.clone(),
        })?;
        let k = |s: &str| format!("{arch_name}.{s}");
        let n_embd = md.usize(&k("embedding_length"))?;
        let n_head = md.usize(&k("attention.head_count"))?;
        if n_head == 0 || n_embd == 0 {
            return Err(MetadataError::WrongType {
                key: k("attention.head_count"),
                expected: "positive head count and embedding length",
                found: "0".into(),
            });
        }
        let n_head_kv = md.opt(&k("attention.head_count_kv"), Metadata::usize)?.unwrap_or(n_head);
        if n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(MetadataError::WrongType {
                key: k("attention.head_count_kv"),
                expected: "a divisor of the head count",
                found: n_head_kv.to_string(),
            });
        }
        let head_dim = md.opt(&k("attention.key_length"), Metadata::usize)?.unwrap_or(n_embd / n_head);
        let head_dim_v = md.opt(&k("attention.value_length"), Metadata::usize)?.unwrap_or(head_dim);
        let embd = file.tensor("token_embd.weight")?;
        let n_vocab = embd.info.n_rows() as usize;
        let rope_dim = md.opt(&k("rope.dimension_count"), Metadata::usize)?.unwrap_or(head_dim);
        let rope_scaling = read_rope_scaling(md, &arch_name)?;
        let gemma = arch == Arch::Gemma3;
        let n_layers = md.usize(&k("block_count"))?;
        let sliding_window =
            if gemma { md.opt(&k("attention.sliding_window"), Metadata::usize)? } else { None };
        Ok(ModelConfig {
            arch,
            n_layers,
            n_embd,
            n_ff: md.usize(&k("feed_forward_length"))?,
            n_head,
            n_head_kv,
            head_dim,
            head_dim_v,
            n_vocab,
            n_ctx_train: md.usize(&k("context_length"))?,
            rms_eps: md.f32(&k("attention.layer_norm_rms_epsilon"))?,
            rope_base: md.opt(&k("rope.freq_base"), Metadata::f32)?.unwrap_or(10_000.0),
            rope_base_swa: if gemma {
                10_000.0
            } else {
                md.opt(&k("rope.freq_base"), Metadata::f32)?.unwrap_or(10_000.0)
            },
            rope_dim,
            rope_style: if arch == Arch::Llama { RopeStyle::Normal } else { RopeStyle::Neox },
            rope_scaling,
            sliding_window,
            swa_period: if gemma { 6 } else { 1 },
            qkv_bias: file.try_tensor("blk.0.attn_q.bias").is_some(),
            qk_norm: file.try_tensor("blk.0.attn_q_norm.weight").is_some(),
            post_norms: gemma,
            activation: if gemma { Activation::GeluTanh } else { Activation::Silu },
            embed_scale: gemma.then(|| (n_embd as f32).sqrt()),
            // Gemma 3 27B (62 layers) scales by 1/√(n_embd / n_head), as llama.cpp does.
            attn_scale: if gemma && n_layers == 62 {
                1.0 / ((n_embd / n_head) as f32).sqrt()
            } else {
                1.0 / (head_dim as f32).sqrt()
            },
            scale_queries: gemma,
            tied_embeddings: file.try_tensor("output.weight").is_none(),
            arch_name,
        })
    }

    /// Whether layer `il` uses the sliding window (Gemma 3: all but every sixth layer).
    pub fn is_swa_layer(&self, il: usize) -> bool {
        self.sliding_window.is_some() && !(il + 1).is_multiple_of(self.swa_period)
    }
}

fn read_rope_scaling(md: &Metadata, arch: &str) -> Result<RopeScaling, MetadataError> {
    let k = |s: &str| format!("{arch}.rope.scaling.{s}");
    let ty = if md.contains(&k("type")) { md.str(&k("type"))? } else { "none" };
    let factor = md.opt(&k("factor"), Metadata::f32)?.unwrap_or(1.0);
    Ok(match ty {
        "none" => RopeScaling::None,
        "linear" if factor == 1.0 => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor },
        "yarn" => RopeScaling::Yarn {
            factor,
            original_context: md.opt(&k("original_context_length"), Metadata::usize)?.unwrap_or(0),
            beta_fast: md.opt(&k("yarn_beta_fast"), Metadata::f32)?.unwrap_or(32.0),
            beta_slow: md.opt(&k("yarn_beta_slow"), Metadata::f32)?.unwrap_or(1.0),
        },
        other => {
            return Err(MetadataError::WrongType {
                key: k("type"),
                expected: "none, linear or yarn",
                found: other.to_string(),
            })
        }
    })
}
