//! The Backend op set: what a forward pass may ask of a device. The model code is written
//! once against this trait; the CPU backend is the reference the GPU backends must match.
//!
//! Activations are rows of f32 (`n_rows × width`, row-major) in the backend's own buffers;
//! weights are uploaded once; the KV cache lives on the device, addressed by slots that the
//! paged block tables hand out.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "wgpu")]
pub mod wgsl;

use crate::error::EngineError;
use crate::sampler::TopLogits;
use ferrite_kernels::quant::QuantType;
use ferrite_loader::{GgufFile, TensorView};
use std::sync::Arc;

/// What a weight is used for, so that a backend prepares it for those ops only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightUse {
    /// Matmuls (and, for vectors, element-wise ops).
    Matmul,
    /// Row lookups only (an untied embedding table).
    Table,
    /// Both (a tied embedding table that is also the output head).
    Both,
}

/// A weight tensor as every backend takes it from the file.
pub(crate) enum Tensor<'a> {
    /// A 1-D tensor (norm weight, bias), dequantized to f32.
    Vector(Vec<f32>),
    /// A 2-D matrix of `n_out` rows of `n_in` values in its file format.
    Matrix { view: TensorView<'a>, ty: QuantType, n_in: usize, n_out: usize },
}

/// Reads tensor `name`: vectors dequantized, matrices checked to be 2-D with whole rows.
/// `backend` names the backend in the errors; `has_kernel` says which matrix formats it runs.
pub(crate) fn read_tensor<'a>(
    file: &'a GgufFile,
    name: &str,
    backend: &str,
    has_kernel: impl Fn(QuantType) -> bool,
) -> Result<Tensor<'a>, EngineError> {
    let view = file.tensor(name)?;
    let info = view.info;
    let err = |what: String| EngineError::Tensor { name: name.into(), what };
    let ty = QuantType::from_ggml_id(info.ty.id())
        .ok_or_else(|| err(format!("tensor type id {} has no {backend} kernel", info.ty.id())))?;
    if info.dims.len() <= 1 {
        let mut v = vec![0f32; info.n_elements as usize];
        ty.dequantize_row(view.data, &mut v).map_err(|e| err(e.to_string()))?;
        return Ok(Tensor::Vector(v));
    }
    if info.dims.len() > 2 && info.dims[2..].iter().any(|&d| d != 1) {
        return Err(err(format!("expected a matrix, dims {:?}", info.dims)));
    }
    if !has_kernel(ty) {
        return Err(err(format!("{} matrices have no {backend} kernel yet", ty.name())));
    }
    let (n_in, n_out) = (info.dims[0] as usize, info.dims[1] as usize);
    if n_out == 0 {
        return Err(err("a matrix with no rows".into()));
    }
    let row_bytes = ty.row_bytes(n_in).map_err(|e| err(e.to_string()))?;
    if row_bytes.checked_mul(n_out) != Some(view.data.len()) {
        return Err(err(format!("{} bytes are not {n_out} rows of {row_bytes}", view.data.len())));
    }
    Ok(Tensor::Matrix { view, ty, n_in, n_out })
}

/// Weight preparation done at load: repacking into kernel layouts.
#[derive(Clone, Debug, Default)]
pub struct PrepareStats {
    /// Matrices repacked.
    pub matrices: usize,
    /// Bytes of repacked data.
    pub bytes: usize,
    /// Wall time spent repacking, seconds.
    pub seconds: f64,
    /// The kernel variant the repacked layout is for.
    pub variant: Option<&'static str>,
}

/// Rope parameters for one layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeParams {
    /// Rotated dimensions per head (the rest pass through).
    pub n_dims: usize,
    /// Base frequency.
    pub base: f32,
    /// NeoX layout (halves) instead of adjacent pairs.
    pub neox: bool,
    /// Linear position scale (1 / factor) applied to positions (YaRN: the interpolation part).
    pub freq_scale: f32,
    /// YaRN extrapolation mix (0 disables YaRN).
    pub ext_factor: f32,
    /// YaRN attention magnitude factor.
    pub attn_factor: f32,
    /// YaRN ramp bound.
    pub beta_fast: f32,
    /// YaRN ramp bound.
    pub beta_slow: f32,
    /// Training context before extension (YaRN).
    pub n_ctx_orig: usize,
}

impl RopeParams {
    /// Plain rope (no context-extension scaling) over `n_dims` dimensions.
    pub fn new(n_dims: usize, base: f32, neox: bool, n_ctx_orig: usize) -> Self {
        RopeParams {
            n_dims,
            base,
            neox,
            freq_scale: 1.0,
            ext_factor: 0.0,
            attn_factor: 1.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            n_ctx_orig,
        }
    }
}

/// Where each row of a batch attends: its sequence's block table and its position.
#[derive(Clone, Debug, Default)]
pub struct AttnBatch {
    /// Position of each row in its sequence.
    pub positions: Vec<u32>,
    /// For each row, the index of its sequence's table in `tables`.
    pub table_of_row: Vec<u32>,
    /// Block tables of the sequences in the batch.
    pub tables: Vec<Vec<u32>>,
    /// KV slot each row's key and value are written to.
    pub slots: Vec<u32>,
}

/// Attention shape for one layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnParams {
    /// Query heads.
    pub n_head: usize,
    /// KV heads.
    pub n_head_kv: usize,
    /// Key/query head size.
    pub head_dim: usize,
    /// Value head size.
    pub head_dim_v: usize,
    /// Scale applied to q·k.
    pub scale: f32,
    /// Keys older than `pos - window` are ignored (sliding-window layers).
    pub window: Option<usize>,
    /// Round queries to f16 and accumulate softmax·V in f16, as llama.cpp's CPU flash
    /// attention does for batches of fewer than 64 rows (token generation included); larger
    /// batches use its f32 tiled path. Agreement with llama.cpp needs the same rounding.
    pub f16_accum: bool,
    /// The batch has one row (token generation): llama.cpp then splits long key ranges.
    pub single_row: bool,
}

impl AttnParams {
    /// The positions a row at `pos` attends to: all before it and itself, or the last
    /// `window` of them on sliding-window layers.
    pub fn keys(&self, pos: usize) -> std::ops::Range<usize> {
        self.window.map_or(0, |w| (pos + 1).saturating_sub(w))..pos + 1
    }
}

/// Batches with fewer rows than this attend in llama.cpp's f16-accumulating mode.
pub const F16_ATTN_MAX_ROWS: usize = 64;

/// Gated FFN activation (re-exported from the config).
pub use crate::config::Activation;

/// A compute device.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Activation buffer (f32 rows).
    type Buf: Send + std::fmt::Debug;
    /// An uploaded weight tensor.
    type Weight: Send + Sync + std::fmt::Debug;
    /// KV cache storage for all layers.
    type Kv: Send + std::fmt::Debug;

    /// Short name (`cpu`, `wgpu`, `cuda`).
    fn name(&self) -> &'static str;

    /// The device's own name (a GPU's, with its driver or capability); empty on the CPU.
    fn device_name(&self) -> String {
        String::new()
    }

    /// Uploads (or, on the CPU, borrows or repacks) a weight tensor from the file, for the
    /// ops that `usage` names.
    fn weight(&self, file: &Arc<GgufFile>, name: &str, usage: WeightUse)
        -> Result<Self::Weight, EngineError>;

    /// What preparing the weights cost so far (repacking on the CPU).
    fn prepare_stats(&self) -> PrepareStats {
        PrepareStats::default()
    }

    /// A zeroed buffer of `len` f32.
    fn alloc(&self, len: usize) -> Self::Buf;

    /// The most f32 one buffer may hold for a kernel to bind it whole (a GPU's largest
    /// storage binding): logits of many rows are computed in passes of at most this.
    fn max_buf_len(&self) -> usize {
        usize::MAX
    }

    /// KV storage: `n_layers × n_slots` entries (`n_slots` a multiple of the cache block
    /// size) of `n_head_kv` heads of `head_dim` keys and `head_dim_v` values. The layout is
    /// the backend's own.
    fn alloc_kv(
        &self,
        n_layers: usize,
        n_slots: usize,
        n_head_kv: usize,
        head_dim: usize,
        head_dim_v: usize,
    ) -> Result<Self::Kv, EngineError>;

    /// Copies host data into a buffer (first `data.len()` values).
    fn write(&self, buf: &mut Self::Buf, data: &[f32]);

    /// Reads the first `len` values of a buffer back to the host into `out` (replaced).
    fn read(&self, buf: &Self::Buf, len: usize, out: &mut Vec<f32>);

    /// The best `k` values of each of `n_rows` rows of `width` (best first, lower index
    /// first on ties, NaN skipped) and each row's log-sum-exp, into `out` (replaced). A GPU
    /// computes them on the device and sends back only these; the default reads the rows
    /// back and computes them on the host.
    fn top_k(&self, x: &Self::Buf, n_rows: usize, width: usize, k: usize, out: &mut Vec<TopLogits>) {
        out.clear();
        if n_rows == 0 || width == 0 {
            return;
        }
        let mut rows = Vec::new();
        self.read(x, n_rows * width, &mut rows);
        out.extend(rows.chunks_exact(width).map(|r| TopLogits::of_row(r, k)));
    }

    /// `out[i] = table[ids[i]] · scale` (one row of the embedding per id).
    fn embed(
        &self,
        table: &Self::Weight,
        ids: &[u32],
        scale: f32,
        out: &mut Self::Buf,
    ) -> Result<(), EngineError>;

    /// `out = x · Wᵀ` for `n` rows: x is `n × in`, W is `out × in`, out is `n × out`.
    fn matmul(&self, w: &Self::Weight, x: &Self::Buf, n: usize, out: &mut Self::Buf);

    /// `outs[i] = x · ws[i]ᵀ`: matrices that read the same input (attention's Q, K and V, the
    /// feed-forward's gate and up), which a backend may run together (the CPU quantizes the
    /// input once and runs them in one parallel pass). Each output equals its own `matmul`'s.
    fn matmul_shared<const M: usize>(
        &self,
        ws: [&Self::Weight; M],
        x: &Self::Buf,
        n: usize,
        outs: [&mut Self::Buf; M],
    ) {
        for (w, out) in ws.into_iter().zip(outs) {
            self.matmul(w, x, n, out);
        }
    }

    /// Adds a bias vector to each of `n` rows.
    fn add_bias(&self, x: &mut Self::Buf, bias: &Self::Weight, n: usize);

    /// RMSNorm of `n_rows` rows of `width` values, times `weight`, in place.
    fn rms_norm(&self, x: &mut Self::Buf, weight: &Self::Weight, n_rows: usize, width: usize, eps: f32);

    /// `out = rms_norm(x)` (x kept) for the pre-norms.
    fn rms_norm_to(
        &self,
        x: &Self::Buf,
        weight: &Self::Weight,
        n_rows: usize,
        width: usize,
        eps: f32,
        out: &mut Self::Buf,
    );

    /// Rotates `n_heads` heads of `head_dim` in each of `positions.len()` rows, in place.
    fn rope(&self, x: &mut Self::Buf, positions: &[u32], n_heads: usize, head_dim: usize, p: &RopeParams);

    /// Writes each row's key and value into the layer's KV slots.
    fn kv_store(&self, kv: &mut Self::Kv, layer: usize, k: &Self::Buf, v: &Self::Buf, slots: &[u32]);

    /// Causal attention of each query row over its sequence's cached keys and values.
    fn attention(
        &self,
        q: &Self::Buf,
        kv: &Self::Kv,
        layer: usize,
        batch: &AttnBatch,
        p: &AttnParams,
        out: &mut Self::Buf,
    );

    /// `gate = act(gate) · up` over `len` values.
    fn gated_act(&self, gate: &mut Self::Buf, up: &Self::Buf, len: usize, act: Activation);

    /// `x += y` over `len` values.
    fn add(&self, x: &mut Self::Buf, y: &Self::Buf, len: usize);

    /// `x *= s` over `len` values (ggml's `scale`: Gemma scales its queries by their own op,
    /// before attention rounds them).
    fn scale(&self, x: &mut Self::Buf, len: usize, s: f32);

    /// Gathers rows: `out[j] = x[rows[j]]`, rows of `width`.
    fn get_rows(&self, x: &Self::Buf, rows: &[u32], width: usize, out: &mut Self::Buf);
}
