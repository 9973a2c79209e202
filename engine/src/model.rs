//! The transformer forward pass, written once for every supported family (llama, qwen2,
//! qwen3, gemma3) against the Backend op set. Families differ only by `ModelConfig`.

use crate::backend::{AttnBatch, AttnParams, Backend, RopeParams, WeightUse};
use crate::config::{ModelConfig, RopeScaling};
use crate::error::EngineError;
use crate::kv_cache::{BlockTables, SeqId, BLOCK_SIZE};
use crate::sampler::TopLogits;
use ferrite_loader::GgufFile;
use std::sync::Arc;

/// One transformer block's weights.
struct Layer<W> {
    attn_norm: W,
    wq: W,
    wk: W,
    wv: W,
    bq: Option<W>,
    bk: Option<W>,
    bv: Option<W>,
    q_norm: Option<W>,
    k_norm: Option<W>,
    wo: W,
    post_attn_norm: Option<W>,
    ffn_norm: W,
    w_gate: W,
    w_up: W,
    w_down: W,
    post_ffn_norm: Option<W>,
}

/// A model's weights on a backend.
struct Weights<B: Backend> {
    tok_embd: B::Weight,
    layers: Vec<Layer<B::Weight>>,
    out_norm: B::Weight,
    output: Option<B::Weight>,
}

impl<B: Backend> Weights<B> {
    /// Loads every tensor the config needs, with clear errors for missing ones.
    pub fn load(backend: &B, file: &Arc<GgufFile>, cfg: &ModelConfig) -> Result<Self, EngineError> {
        let w = |name: &str| backend.weight(file, name, WeightUse::Matmul);
        let opt = |name: &str| -> Result<Option<B::Weight>, EngineError> {
            if file.try_tensor(name).is_some() {
                backend.weight(file, name, WeightUse::Matmul).map(Some)
            } else {
                Ok(None)
            }
        };
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}");
            layers.push(Layer {
                attn_norm: w(&n("attn_norm.weight"))?,
                wq: w(&n("attn_q.weight"))?,
                wk: w(&n("attn_k.weight"))?,
                wv: w(&n("attn_v.weight"))?,
                bq: opt(&n("attn_q.bias"))?,
                bk: opt(&n("attn_k.bias"))?,
                bv: opt(&n("attn_v.bias"))?,
                q_norm: if cfg.qk_norm { Some(w(&n("attn_q_norm.weight"))?) } else { None },
                k_norm: if cfg.qk_norm { Some(w(&n("attn_k_norm.weight"))?) } else { None },
                wo: w(&n("attn_output.weight"))?,
                post_attn_norm: if cfg.post_norms {
                    Some(w(&n("post_attention_norm.weight"))?)
                } else {
                    None
                },
                ffn_norm: w(&n("ffn_norm.weight"))?,
                w_gate: w(&n("ffn_gate.weight"))?,
                w_up: w(&n("ffn_up.weight"))?,
                w_down: w(&n("ffn_down.weight"))?,
                post_ffn_norm: if cfg.post_norms { Some(w(&n("post_ffw_norm.weight"))?) } else { None },
            });
        }
        Ok(Weights {
            tok_embd: backend.weight(
                file,
                "token_embd.weight",
                if cfg.tied_embeddings { WeightUse::Both } else { WeightUse::Table },
            )?,
            layers,
            out_norm: w("output_norm.weight")?,
            output: if cfg.tied_embeddings { None } else { Some(w("output.weight")?) },
        })
    }
}

/// Scratch buffers for one batch size, reused across steps.
struct Scratch<B: Backend> {
    cap: usize,
    x: B::Buf,
    h: B::Buf,
    q: B::Buf,
    k: B::Buf,
    v: B::Buf,
    attn: B::Buf,
    gate: B::Buf,
    up: B::Buf,
    sel: B::Buf,
    /// Logits for `logits_rows` rows: sized by the rows that want logits, not the batch,
    /// and at most what one device buffer holds (more rows take several passes).
    logits: B::Buf,
    logits_rows: usize,
    /// Host side of a logits pass that is appended to what earlier passes returned.
    part: Vec<f32>,
    part_top: Vec<TopLogits>,
}

/// Where a forward pass puts what it computes for the rows that want logits.
#[derive(Debug)]
pub enum LogitsOut<'a> {
    /// Whole rows, `n_vocab` values each, in row order.
    Full(&'a mut Vec<f32>),
    /// Each row's best `k` logits and log-sum-exp, in row order: computed where the logits
    /// are, so a GPU sends back only these.
    Top(usize, &'a mut Vec<TopLogits>),
}

impl LogitsOut<'_> {
    /// The same destination, borrowed for one call.
    pub fn reborrow(&mut self) -> LogitsOut<'_> {
        match self {
            LogitsOut::Full(v) => LogitsOut::Full(v),
            LogitsOut::Top(k, v) => LogitsOut::Top(*k, v),
        }
    }

    /// Empties the destination.
    pub fn clear(&mut self) {
        match self {
            LogitsOut::Full(v) => v.clear(),
            LogitsOut::Top(_, v) => v.clear(),
        }
    }
}

/// A batch of tokens for one forward pass: each row is (sequence, token). Rows of one
/// sequence must be consecutive positions following what the cache already holds.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// Token ids.
    pub tokens: Vec<u32>,
    /// Sequence of each token.
    pub seq_ids: Vec<SeqId>,
    /// Rows whose logits are wanted.
    pub logits: Vec<bool>,
}

impl Batch {
    /// Adds a token.
    pub fn push(&mut self, token: u32, seq: SeqId, want_logits: bool) {
        self.tokens.push(token);
        self.seq_ids.push(seq);
        self.logits.push(want_logits);
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Empties the batch, keeping its allocations.
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.seq_ids.clear();
        self.logits.clear();
    }
}

/// The device side of a model: its weights, KV cache and activation buffers on one
/// backend. `Model` holds it as a trait object so that one engine type runs any backend.
trait Device: Send + std::fmt::Debug {
    /// Runs a planned batch (`attn` says where each row reads and writes the cache) and
    /// appends the logits (or their top) of `logit_rows` to `out`.
    fn forward(
        &mut self,
        cfg: &ModelConfig,
        batch: &Batch,
        attn: &AttnBatch,
        logit_rows: &[u32],
        out: LogitsOut<'_>,
    ) -> Result<(), EngineError>;
    fn name(&self) -> &'static str;
    fn device_name(&self) -> String;
    fn prepare_stats(&self) -> crate::backend::PrepareStats;
    /// The most f32 one of the backend's buffers holds ([`Backend::max_buf_len`]).
    fn max_buf_len(&self) -> usize;
}

/// The widest activation row of a model (f32 per batch row): the scratch buffer that
/// bounds how many rows one forward pass holds on a backend with a buffer limit.
fn widest_row(c: &ModelConfig) -> usize {
    [
        c.n_embd,
        c.n_head * c.head_dim,
        c.n_head * c.head_dim_v,
        c.n_head_kv * c.head_dim,
        c.n_head_kv * c.head_dim_v,
        c.n_ff,
    ]
    .into_iter()
    .max()
    .unwrap_or(1)
    .max(1)
}

/// [`Device`] for a backend.
struct OnBackend<B: Backend> {
    backend: B,
    weights: Weights<B>,
    kv: B::Kv,
    scratch: Option<Scratch<B>>,
    ropes: Vec<RopeParams>,
}

impl<B: Backend> std::fmt::Debug for OnBackend<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnBackend").field("backend", &self.backend.name()).finish_non_exhaustive()
    }
}

/// A model on a backend, with its KV cache.
#[derive(Debug)]
pub struct Model {
    /// Shape and numerics.
    pub cfg: ModelConfig,
    /// Block tables of the paged KV cache.
    pub tables: BlockTables,
    device: Box<dyn Device>,
    attn: AttnBatch,
    /// `plan_attention`'s buffers, reused across steps.
    plan: PlanScratch,
    /// Rows of the current batch that want logits (reused across steps).
    logit_rows: Vec<u32>,
}

/// Buffers of [`Model::plan_attention`], kept so that a decode step allocates nothing.
#[derive(Debug, Default)]
struct PlanScratch {
    /// The batch's sequences in first-seen order, and their rows.
    seqs: Vec<SeqId>,
    counts: Vec<usize>,
    /// Next position, and next slot index into `slots`, per sequence.
    next: Vec<usize>,
    start: Vec<usize>,
    /// New slots of every sequence, one after the other.
    slots: Vec<u32>,
    /// Block-table vectors of earlier steps, reused.
    spare: Vec<Vec<u32>>,
}

impl Model {
    /// Loads weights onto `backend` and allocates a KV cache of `kv_tokens` tokens (rounded up
    /// to whole blocks).
    pub fn load<B: Backend + 'static>(
        backend: B,
        file: &Arc<GgufFile>,
        cfg: ModelConfig,
        kv_tokens: usize,
    ) -> Result<Self, EngineError> {
        // One row of each buffer, logits included, must fit a binding (a GPU's limit).
        let row = widest_row(&cfg).max(cfg.n_vocab);
        if row > backend.max_buf_len() {
            return Err(EngineError::BackendUnavailable {
                name: backend.name().into(),
                why: format!(
                    "one activation row of this model ({row} values) exceeds the largest buffer it binds ({} values)",
                    backend.max_buf_len()
                ),
            });
        }
        let weights = Weights::load(&backend, file, &cfg)?;
        let n_blocks = kv_tokens.div_ceil(BLOCK_SIZE).max(1);
        let kv = backend.alloc_kv(
            cfg.n_layers,
            n_blocks * BLOCK_SIZE,
            cfg.n_head_kv,
            cfg.head_dim,
            cfg.head_dim_v,
        )?;
        let ropes = (0..cfg.n_layers).map(|il| rope_params(&cfg, il)).collect();
        Ok(Model {
            cfg,
            tables: BlockTables::new(n_blocks),
            device: Box::new(OnBackend { backend, weights, kv, scratch: None, ropes }),
            attn: AttnBatch::default(),
            plan: PlanScratch::default(),
            logit_rows: Vec::new(),
        })
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.device.name()
    }

    /// The device's own name (empty on the CPU).
    pub fn device_name(&self) -> String {
        self.device.device_name()
    }

    /// The most tokens one forward pass takes: a GPU binds each activation buffer whole,
    /// so its largest binding bounds the batch (usize::MAX on the CPU).
    pub fn max_batch_tokens(&self) -> usize {
        (self.device.max_buf_len() / widest_row(&self.cfg)).max(1)
    }

    /// What preparing the weights cost (repacking on the CPU, uploads on a GPU).
    pub fn prepare_stats(&self) -> crate::backend::PrepareStats {
        self.device.prepare_stats()
    }

    /// Runs one batch through the model, storing its keys and values in the cache, and
    /// returns the logits of the rows that asked for them (`n_vocab` each, in row order).
    pub fn forward(&mut self, batch: &Batch) -> Result<Vec<f32>, EngineError> {
        let mut logits = Vec::new();
        self.forward_into(batch, &mut logits)?;
        Ok(logits)
    }

    /// `forward`, writing the logits into `out` (replaced; its allocation is reused, so a
    /// decode loop allocates nothing per token for them).
    pub fn forward_into(&mut self, batch: &Batch, out: &mut Vec<f32>) -> Result<(), EngineError> {
        out.clear();
        self.forward_append(batch, LogitsOut::Full(out))
    }

    /// `forward` for a sampler that needs only each row's best `k` logits and log-sum-exp
    /// ([`crate::sampler::Sampler::device_k`]): a GPU computes them and sends back only
    /// these. `out` is replaced.
    pub fn forward_top(
        &mut self,
        batch: &Batch,
        k: usize,
        out: &mut Vec<TopLogits>,
    ) -> Result<(), EngineError> {
        out.clear();
        self.forward_append(batch, LogitsOut::Top(k, out))
    }

    /// Runs one batch and appends what `out` asks for, for the rows that want logits.
    pub fn forward_append(&mut self, batch: &Batch, out: LogitsOut<'_>) -> Result<(), EngineError> {
        if batch.is_empty() {
            return Ok(());
        }
        if batch.len() > self.max_batch_tokens() {
            return Err(EngineError::Invalid(format!(
                "a batch of {} tokens exceeds the {} that one forward pass of this model holds on the {} backend",
                batch.len(),
                self.max_batch_tokens(),
                self.device.name()
            )));
        }
        for &t in &batch.tokens {
            if t as usize >= self.cfg.n_vocab {
                return Err(EngineError::BadToken { id: t, n_vocab: self.cfg.n_vocab });
            }
        }
        self.plan_attention(batch)?;
        self.logit_rows.clear();
        self.logit_rows.extend((0..batch.len() as u32).filter(|&i| batch.logits[i as usize]));
        self.device.forward(&self.cfg, batch, &self.attn, &self.logit_rows, out)
    }

    /// Assigns KV slots to the batch's rows and gathers the block tables attention needs.
    /// All or nothing: if the cache is full, no sequence changes.
    fn plan_attention(&mut self, batch: &Batch) -> Result<(), EngineError> {
        let (a, p) = (&mut self.attn, &mut self.plan);
        a.positions.clear();
        a.table_of_row.clear();
        a.slots.clear();
        p.spare.append(&mut a.tables);
        p.seqs.clear();
        p.counts.clear();
        for &s in &batch.seq_ids {
            match p.seqs.iter().position(|&x| x == s) {
                Some(i) => p.counts[i] += 1,
                None => {
                    p.seqs.push(s);
                    p.counts.push(1);
                }
            }
        }
        let need: usize = p
            .seqs
            .iter()
            .zip(&p.counts)
            .map(|(&s, &c)| {
                let len = self.tables.seq_len(s);
                (len + c).div_ceil(BLOCK_SIZE) - len.div_ceil(BLOCK_SIZE)
            })
            .sum();
        if need > self.tables.n_free() {
            return Err(crate::kv_cache::KvFull {
                needed: need,
                free: self.tables.n_free(),
                total: self.tables.n_blocks(),
            }
            .into());
        }
        p.next.clear();
        p.next.extend(p.seqs.iter().map(|&s| self.tables.seq_len(s)));
        p.slots.clear();
        p.start.clear();
        for (&s, &c) in p.seqs.iter().zip(&p.counts) {
            p.start.push(p.slots.len());
            self.tables.append_into(s, c, &mut p.slots).expect("room checked above");
        }
        for &s in &p.seqs {
            let mut t = p.spare.pop().unwrap_or_default();
            t.clear();
            t.extend_from_slice(self.tables.table(s));
            a.tables.push(t);
        }
        for &s in &batch.seq_ids {
            let i = p.seqs.iter().position(|&x| x == s).expect("collected above");
            a.positions.push(p.next[i] as u32);
            p.next[i] += 1;
            a.table_of_row.push(i as u32);
            a.slots.push(p.slots[p.start[i]]);
            p.start[i] += 1;
        }
        Ok(())
    }
}

impl<B: Backend> OnBackend<B> {
    fn ensure_scratch(&mut self, c: &ModelConfig, n: usize) {
        if self.scratch.as_ref().is_some_and(|s| s.cap >= n) {
            return;
        }
        let b = &self.backend;
        let q_w = c.n_head * c.head_dim;
        let kv_w = c.n_head_kv * c.head_dim;
        let v_w = c.n_head_kv * c.head_dim_v;
        let wide = c.n_embd.max(c.n_head * c.head_dim_v);
        self.scratch = Some(Scratch {
            cap: n,
            x: b.alloc(n * c.n_embd),
            h: b.alloc(n * wide),
            q: b.alloc(n * q_w),
            k: b.alloc(n * kv_w),
            v: b.alloc(n * v_w),
            attn: b.alloc(n * c.n_head * c.head_dim_v),
            gate: b.alloc(n * c.n_ff),
            up: b.alloc(n * c.n_ff),
            sel: b.alloc(n * c.n_embd),
            logits: b.alloc(0),
            logits_rows: 0,
            part: Vec::new(),
            part_top: Vec::new(),
        });
    }
}

impl<B: Backend> Device for OnBackend<B> {
    fn name(&self) -> &'static str {
        self.backend.name()
    }

    fn device_name(&self) -> String {
        self.backend.device_name()
    }

    fn prepare_stats(&self) -> crate::backend::PrepareStats {
        self.backend.prepare_stats()
    }

    fn max_buf_len(&self) -> usize {
        self.backend.max_buf_len()
    }

    fn forward(
        &mut self,
        cfg: &ModelConfig,
        batch: &Batch,
        attn: &AttnBatch,
        logit_rows: &[u32],
        mut out: LogitsOut<'_>,
    ) -> Result<(), EngineError> {
        let n = batch.len();
        self.ensure_scratch(cfg, n);
        let OnBackend { backend: b, weights: w, kv, scratch, ropes } = self;
        let c = cfg;
        let s = scratch.as_mut().expect("allocated above");

        b.embed(&w.tok_embd, &batch.tokens, c.embed_scale.unwrap_or(1.0), &mut s.x)?;
        // Rows through the current layer's feed-forward block: all of them, except in the last
        // layer, which (as in llama.cpp) keeps only the rows that need logits.
        let mut nr = n;
        let last = w.layers.len() - 1;
        for (il, l) in w.layers.iter().enumerate() {
            // Attention block.
            b.rms_norm_to(&s.x, &l.attn_norm, n, c.n_embd, c.rms_eps, &mut s.h);
            b.matmul_shared([&l.wq, &l.wk, &l.wv], &s.h, n, [&mut s.q, &mut s.k, &mut s.v]);
            if let Some(bias) = &l.bq {
                b.add_bias(&mut s.q, bias, n);
            }
            if let Some(bias) = &l.bk {
                b.add_bias(&mut s.k, bias, n);
            }
            if let Some(bias) = &l.bv {
                b.add_bias(&mut s.v, bias, n);
            }
            if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                b.rms_norm(&mut s.q, qn, n * c.n_head, c.head_dim, c.rms_eps);
                b.rms_norm(&mut s.k, kn, n * c.n_head_kv, c.head_dim, c.rms_eps);
            }
            let rp = ropes[il];
            b.rope(&mut s.q, &attn.positions, c.n_head, c.head_dim, &rp);
            b.rope(&mut s.k, &attn.positions, c.n_head_kv, c.head_dim, &rp);
            if c.scale_queries {
                b.scale(&mut s.q, n * c.n_head * c.head_dim, c.attn_scale);
            }
            b.kv_store(kv, il, &s.k, &s.v, &attn.slots);
            let ap = AttnParams {
                n_head: c.n_head,
                n_head_kv: c.n_head_kv,
                head_dim: c.head_dim,
                head_dim_v: c.head_dim_v,
                scale: if c.scale_queries { 1.0 } else { c.attn_scale },
                window: if c.is_swa_layer(il) { c.sliding_window } else { None },
                f16_accum: n < crate::backend::F16_ATTN_MAX_ROWS,
                single_row: n == 1,
            };
            b.attention(&s.q, kv, il, attn, &ap, &mut s.attn);
            b.matmul(&l.wo, &s.attn, n, &mut s.h);
            if let Some(pn) = &l.post_attn_norm {
                b.rms_norm(&mut s.h, pn, n, c.n_embd, c.rms_eps);
            }
            if il == last && logit_rows.len() < n {
                // Only the rows that need logits go on; the kernels' order can depend on the
                // batch size, so this also keeps ferrite's numbers equal to llama.cpp's.
                nr = logit_rows.len();
                if nr == 0 {
                    return Ok(());
                }
                b.get_rows(&s.h, logit_rows, c.n_embd, &mut s.sel);
                b.get_rows(&s.x, logit_rows, c.n_embd, &mut s.gate);
                // `h + x` equals `x + h` bit for bit (IEEE addition commutes).
                b.add(&mut s.sel, &s.gate, nr * c.n_embd);
                std::mem::swap(&mut s.x, &mut s.sel);
            } else {
                b.add(&mut s.x, &s.h, n * c.n_embd);
            }

            // Feed-forward block.
            b.rms_norm_to(&s.x, &l.ffn_norm, nr, c.n_embd, c.rms_eps, &mut s.h);
            b.matmul_shared([&l.w_gate, &l.w_up], &s.h, nr, [&mut s.gate, &mut s.up]);
            b.gated_act(&mut s.gate, &s.up, nr * c.n_ff, c.activation);
            b.matmul(&l.w_down, &s.gate, nr, &mut s.h);
            if let Some(pn) = &l.post_ffn_norm {
                b.rms_norm(&mut s.h, pn, nr, c.n_embd, c.rms_eps);
            }
            b.add(&mut s.x, &s.h, nr * c.n_embd);
        }

        // Logits only for the rows that need them, in passes of equal size whose logits fit
        // one device buffer (Qwen's 152k vocabulary × 256 scored rows does not).
        let rows = logit_rows.len();
        if rows == 0 {
            return Ok(());
        }
        let max_rows = (b.max_buf_len() / c.n_vocab).clamp(1, rows);
        let per = rows.div_ceil(rows.div_ceil(max_rows));
        if per > s.logits_rows {
            s.logits = b.alloc(per * c.n_vocab);
            s.logits_rows = per;
        }
        let head = w.output.as_ref().unwrap_or(&w.tok_embd);
        // After the last layer's pruning, row `i` of `x` is the `i`-th logit row.
        let kept: Vec<u32>;
        let logit_rows = if nr < n {
            kept = (0..nr as u32).collect();
            &kept[..]
        } else {
            logit_rows
        };
        for chunk in logit_rows.chunks(per) {
            let m = chunk.len();
            b.get_rows(&s.x, chunk, c.n_embd, &mut s.sel);
            b.rms_norm(&mut s.sel, &w.out_norm, m, c.n_embd, c.rms_eps);
            b.matmul(head, &s.sel, m, &mut s.logits);
            // The first pass reads straight into `out` when it is empty (a decode step
            // allocates nothing); later ones append.
            match &mut out {
                LogitsOut::Full(v) if v.is_empty() => b.read(&s.logits, m * c.n_vocab, v),
                LogitsOut::Full(v) => {
                    b.read(&s.logits, m * c.n_vocab, &mut s.part);
                    v.extend_from_slice(&s.part);
                }
                LogitsOut::Top(k, v) if v.is_empty() => b.top_k(&s.logits, m, c.n_vocab, *k, v),
                LogitsOut::Top(k, v) => {
                    b.top_k(&s.logits, m, c.n_vocab, *k, &mut s.part_top);
                    v.append(&mut s.part_top);
                }
            }
        }
        Ok(())
    }
}

/// Rope parameters of a layer: its base (sliding layers have their own) and scaling.
fn rope_params(c: &ModelConfig, layer: usize) -> RopeParams {
    let base = if c.is_swa_layer(layer) { c.rope_base_swa } else { c.rope_base };
    let mut p =
        RopeParams::new(c.rope_dim, base, c.rope_style == crate::config::RopeStyle::Neox, c.n_ctx_train);
    // Gemma 3's sliding layers never use the global scaling.
    if !c.is_swa_layer(layer) {
        match c.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => p.freq_scale = 1.0 / factor,
            RopeScaling::Yarn { factor, original_context, beta_fast, beta_slow } => {
                p.freq_scale = 1.0 / factor;
                p.ext_factor = 1.0;
                p.beta_fast = beta_fast;
                p.beta_slow = beta_slow;
                if original_context > 0 {
                    p.n_ctx_orig = original_context;
                }
            }
        }
    }
    p
}
