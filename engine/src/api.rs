//! The public API: load a model, apply its chat template, generate as an iterator of
//! events, score text. The CLI and the server use only this.
//!
//! ```no_run
//! use ferrite_engine::{Engine, LoadOptions, GenerateRequest, Event};
//! let mut engine = Engine::load("model.gguf", &LoadOptions::default())?;
//! let prompt = engine.chat_prompt(&[("user", "Hi!")])?;
//! for event in engine.generate(GenerateRequest::new(prompt).max_tokens(32))? {
//!     match event? {
//!         Event::Token(t) => print!("{}", t.text),
//!         Event::Done(d) => eprintln!("\n{:?}", d.finish_reason),
//!     }
//! }
//! # Ok::<(), ferrite_engine::EngineError>(())
//! ```

use crate::backend::cpu::CpuBackend;
use crate::config::ModelConfig;
use crate::error::EngineError;
use crate::model::{Batch, LogitsOut, Model};
use crate::pool::Pool;
use crate::sampler::{Sampled, Sampler, SamplerParams, TopLogits};
use crate::text::TextStream;
use ferrite_loader::chat::{ChatRequest, ChatTemplate};
use ferrite_loader::tokenizer::Tokenizer;
use ferrite_loader::GgufFile;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tokens per forward pass when a prompt is processed (bounds activation memory).
pub const PREFILL_CHUNK: usize = 512;

/// Which device runs the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendKind {
    /// The best available: a GPU backend when one is built and finds a device, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// WGSL compute shaders through wgpu.
    Wgpu,
    /// CUDA kernels through cudarc.
    Cuda,
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => BackendKind::Auto,
            "cpu" => BackendKind::Cpu,
            "wgpu" => BackendKind::Wgpu,
            "cuda" => BackendKind::Cuda,
            _ => return Err(format!("unknown backend {s} (auto, cpu, wgpu, cuda)")),
        })
    }
}

/// How large the KV cache is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvCapacity {
    /// This many tokens.
    Tokens(usize),
    /// As many tokens as fit in this many bytes.
    Bytes(usize),
    /// `n` full contexts, each in whole cache blocks, within `max_bytes`.
    Contexts {
        /// Contexts.
        n: usize,
        /// Byte cap.
        max_bytes: usize,
    },
}

impl KvCapacity {
    /// Tokens for a context of `ctx` and `per_token` bytes per token (at least `ctx`).
    pub fn tokens(self, ctx: usize, per_token: usize) -> usize {
        let per_token = per_token.max(1);
        let t = match self {
            KvCapacity::Tokens(t) => t,
            KvCapacity::Bytes(b) => b / per_token,
            // A sequence holds whole blocks: n contexts need n × ctx rounded up to them.
            KvCapacity::Contexts { n, max_bytes } => {
                (n * ctx.next_multiple_of(crate::kv_cache::BLOCK_SIZE)).min(max_bytes / per_token)
            }
        };
        t.max(ctx)
    }
}

/// Called with (bytes done, bytes total) while weights are read in.
pub type ProgressFn = std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>;

/// How to load a model.
#[derive(Clone, Default)]
pub struct LoadOptions {
    /// Worker threads (default: all cores).
    pub threads: Option<usize>,
    /// Context length (default: the training context, capped at 4096).
    pub ctx: Option<usize>,
    /// KV cache capacity, shared by all sequences (default: one context; a server running
    /// several sequences wants more). Never less than one context.
    pub kv: Option<KvCapacity>,
    /// Device.
    pub backend: BackendKind,
    /// Read all weights in at load (with progress) instead of on first use.
    pub prefetch: Option<ProgressFn>,
}

impl std::fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("threads", &self.threads)
            .field("ctx", &self.ctx)
            .field("kv", &self.kv)
            .field("backend", &self.backend)
            .field("prefetch", &self.prefetch.is_some())
            .finish()
    }
}

/// A prompt: text (tokenized with the model's BOS rule and special tokens parsed) or ids.
#[derive(Clone, Debug)]
pub enum Prompt {
    /// Text.
    Text(String),
    /// Token ids, used as given.
    Tokens(Vec<u32>),
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    /// The prompt.
    pub prompt: Prompt,
    /// At most this many new tokens.
    pub max_tokens: usize,
    /// Sampling.
    pub sampler: SamplerParams,
    /// Generation stops before any of these strings (not included in the output).
    pub stop: Vec<String>,
    /// Keep going past end-of-generation tokens.
    pub ignore_eos: bool,
}

impl GenerateRequest {
    /// Greedy generation of up to 256 tokens.
    pub fn new(prompt: impl Into<String>) -> Self {
        GenerateRequest {
            prompt: Prompt::Text(prompt.into()),
            max_tokens: 256,
            sampler: SamplerParams::greedy(),
            stop: Vec::new(),
            ignore_eos: false,
        }
    }

    /// Sets the token budget.
    pub fn max_tokens(mut self, n: usize) -> Self {
        self.max_tokens = n;
        self
    }

    /// Sets the sampler.
    pub fn sampler(mut self, s: SamplerParams) -> Self {
        self.sampler = s;
        self
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// The token budget or the context ran out.
    Length,
}

/// Prompt and generation speed.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Timings {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Of those, tokens whose KV entries were reused from the previous generation.
    pub prompt_cached: usize,
    /// Time to process them.
    pub prompt_ms: f64,
    /// Tokens generated.
    pub gen_tokens: usize,
    /// Time to generate them (first sampled token to last).
    pub gen_ms: f64,
}

impl Timings {
    /// Prompt tokens per second.
    pub fn prompt_tps(&self) -> f64 {
        self.prompt_tokens as f64 / (self.prompt_ms / 1e3).max(1e-9)
    }
    /// Generated tokens per second.
    pub fn gen_tps(&self) -> f64 {
        self.gen_tokens as f64 / (self.gen_ms / 1e3).max(1e-9)
    }
}

/// One generated token.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenEvent {
    /// Token id.
    pub id: u32,
    /// Text completed by this token (may be empty while a UTF-8 character or a possible stop
    /// string is held back; it is released with a later token or at the end).
    pub text: String,
    /// Log-probability of the token.
    pub logprob: f32,
    /// Top log-probabilities, if asked for.
    pub top_logprobs: Vec<(u32, f32)>,
}

/// The end of a generation.
#[derive(Clone, Debug, PartialEq)]
pub struct DoneEvent {
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Text held back until the end (a partial stop string that did not complete).
    pub text: String,
    /// Speed.
    pub timings: Timings,
}

/// Events of a generation.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A token.
    Token(TokenEvent),
    /// The end.
    Done(DoneEvent),
}

/// Perplexity as llama-perplexity computes it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Perplexity {
    /// exp(mean NLL).
    pub ppl: f64,
    /// Its standard error.
    pub stderr: f64,
    /// Chunks scored.
    pub chunks: usize,
    /// Tokens scored.
    pub scored: usize,
    /// Running PPL after each chunk.
    pub per_chunk: Vec<f64>,
}

/// The text side of a model — tokenizer and chat template — cheap to clone and shareable
/// across threads: a server renders and tokenizes requests while another thread runs the
/// model.
#[derive(Clone, Debug)]
pub struct Prompter {
    tokenizer: Arc<Tokenizer>,
    template: Arc<ChatTemplate>,
}

impl Prompter {
    /// A prompter from a tokenizer and a chat template (no weights needed).
    pub fn new(tokenizer: Tokenizer, template: ChatTemplate) -> Self {
        Prompter { tokenizer: Arc::new(tokenizer), template: Arc::new(template) }
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Renders a chat with the model's template, ready for [`Prompter::tokenize`]: a BOS
    /// (EOS) the template writes is dropped when the tokenizer adds one itself, so the
    /// model sees one, not two (as llama.cpp does).
    pub fn apply_chat_template(&self, req: &ChatRequest) -> Result<String, EngineError> {
        let text = self.template.render(req).map_err(|e| EngineError::Template(e.to_string()))?;
        Ok(self.drop_added_specials(text))
    }

    /// Stop strings a chat generation needs beyond the end-of-generation tokens: the markers
    /// of the built-in ChatML fallback that the vocabulary has no tokens for (a model without
    /// a template of its own then writes them as text, and would run on past its turn).
    pub fn chat_stops(&self) -> Vec<String> {
        if self.template.source() != ferrite_loader::chat::CHATML_TEMPLATE {
            return Vec::new();
        }
        ["<|im_end|>", "<|im_start|>"]
            .into_iter()
            .filter(|m| self.tokenizer.find_token(m).is_none())
            .map(str::to_string)
            .collect()
    }

    fn drop_added_specials(&self, mut text: String) -> String {
        let (bos, eos) = (self.template.bos_token(), self.template.eos_token());
        if self.tokenizer.add_bos() && !bos.is_empty() && text.starts_with(bos) {
            text.drain(..bos.len());
        }
        if self.tokenizer.add_eos() && !eos.is_empty() && text.ends_with(eos) {
            text.truncate(text.len() - eos.len());
        }
        text
    }

    /// How the model's template asks for tool calls.
    pub fn tool_format(&self) -> crate::tool_calls::ToolFormat {
        crate::tool_calls::ToolFormat::detect(self.template.source())
    }

    /// The tags around the model's thinking, as its template writes them.
    pub fn think_tags(&self) -> crate::reasoning::ThinkTags {
        crate::reasoning::ThinkTags::detect(self.template.source())
    }

    /// The vocabulary's tokens for the thinking tags: chat generations keep their text
    /// (Mistral's `[THINK]` is a control token, which output hides).
    pub fn think_tokens(&self) -> Vec<u32> {
        let t = self.think_tags();
        [t.open, t.close].iter().filter_map(|m| self.tokenizer.find_token(m)).collect()
    }

    /// The vocabulary's tokens for `format`'s markers: generations that may call tools keep
    /// their text (Mistral's are control tokens, which output hides; Qwen's `<tool_call>`
    /// is an ordinary token, kept anyway).
    pub fn tool_tokens(&self, format: crate::tool_calls::ToolFormat) -> Vec<u32> {
        format.markers().iter().filter_map(|m| self.tokenizer.find_token(m)).collect()
    }

    /// Tokenizes a prompt as llama.cpp does: the model's BOS rule, special tokens parsed.
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        self.tokenizer.encode(text, true, true)
    }
}

/// A loaded model with its tokenizer and chat template.
#[derive(Debug)]
pub struct Engine {
    file: Arc<GgufFile>,
    pub(crate) model: Model,
    prompter: Prompter,
    template_warning: Option<String>,
    /// Why `--backend auto` did not pick a GPU.
    backend_note: Option<String>,
    pub(crate) pool: Pool,
    pub(crate) ctx: usize,
    load_time: Duration,
    /// Tokens whose keys and values sequence `SEQ` holds (reused by the next prompt that
    /// starts with them).
    cached: Vec<u32>,
    /// Reused for every forward pass.
    batch: Batch,
}

const SEQ: u32 = 0;

impl Engine {
    /// Loads a GGUF model.
    pub fn load(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Engine, EngineError> {
        let t0 = Instant::now();
        let file = Arc::new(GgufFile::open(path)?);
        let cfg = ModelConfig::from_gguf(&file)?;
        if let Some(progress) = &opts.prefetch {
            file.prefetch(|done, total| progress(done, total));
        }
        let tokenizer =
            Tokenizer::from_metadata(file.metadata()).map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let (template, template_warning) = match ChatTemplate::from_metadata(file.metadata(), |id| {
            tokenizer.token_text(id).map(str::to_string)
        }) {
            Ok(Some(t)) => (t, None),
            Ok(None) => {
                (ChatTemplate::chatml(), Some("the model has no chat template: using ChatML".to_string()))
            }
            Err(e) => return Err(EngineError::Template(e.to_string())),
        };
        let ctx = opts.ctx.unwrap_or(cfg.n_ctx_train.min(4096)).max(1);
        let threads =
            opts.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let mut pool = Pool::new(threads).map_err(|e| EngineError::Invalid(format!("thread pool: {e}")))?;
        let kv_tokens = opts.kv.map_or(ctx, |kv| kv.tokens(ctx, cfg.kv_bytes_per_token()));
        let cpu = |cfg| Model::load(CpuBackend::new(), &file, cfg, kv_tokens);
        let (model, backend_note) = match opts.backend {
            // `auto`: CUDA when there is an NVIDIA GPU, else a hardware GPU through wgpu (a
            // software adapter such as lavapipe does not count), else the CPU; a GPU is taken
            // only if it has kernels for every tensor of the model.
            BackendKind::Auto => {
                #[allow(unused_mut)]
                let mut why: Vec<String> = Vec::new();
                #[allow(unused_mut)]
                let mut found: Option<Model> = None;
                #[cfg(feature = "cuda")]
                match crate::backend::cuda::CudaBackend::new()
                    .and_then(|b| Model::load(b, &file, cfg.clone(), kv_tokens))
                {
                    Ok(m) => found = Some(m),
                    Err(e) => why.push(e.to_string()),
                }
                #[cfg(feature = "wgpu")]
                if found.is_none() {
                    match crate::backend::wgsl::WgpuBackend::new(false)
                        .and_then(|b| Model::load(b, &file, cfg.clone(), kv_tokens))
                    {
                        Ok(m) => found = Some(m),
                        Err(e) => why.push(e.to_string()),
                    }
                }
                match found {
                    Some(m) => (m, None),
                    None if why.is_empty() => (cpu(cfg)?, None),
                    None => {
                        (cpu(cfg)?, Some(format!("backend auto: running on the CPU ({})", why.join("; "))))
                    }
                }
            }
            BackendKind::Cpu => (cpu(cfg)?, None),
            #[cfg(feature = "wgpu")]
            BackendKind::Wgpu => {
                (Model::load(crate::backend::wgsl::WgpuBackend::new(true)?, &file, cfg, kv_tokens)?, None)
            }
            #[cfg(feature = "cuda")]
            BackendKind::Cuda => {
                (Model::load(crate::backend::cuda::CudaBackend::new()?, &file, cfg, kv_tokens)?, None)
            }
            #[allow(unreachable_patterns)]
            other => {
                return Err(EngineError::BackendUnavailable {
                    name: format!("{other:?}").to_lowercase(),
                    why: "this build of ferrite does not include it; use --backend cpu or auto".into(),
                })
            }
        };
        pool.set_cpu(model.backend_name() == "cpu");
        Ok(Engine {
            file,
            model,
            prompter: Prompter { tokenizer: Arc::new(tokenizer), template: Arc::new(template) },
            template_warning,
            backend_note,
            pool,
            ctx,
            load_time: t0.elapsed(),
            cached: Vec::new(),
            batch: Batch::default(),
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.model.cfg
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.prompter.tokenizer
    }

    /// The tokenizer and chat template, to share with other threads.
    pub fn prompter(&self) -> Prompter {
        self.prompter.clone()
    }

    /// The mapped file.
    pub fn file(&self) -> &Arc<GgufFile> {
        &self.file
    }

    /// Context length.
    pub fn ctx(&self) -> usize {
        self.ctx
    }

    /// KV cache capacity in tokens (whole blocks), shared by all sequences.
    pub fn kv_tokens(&self) -> usize {
        self.model.tables.n_blocks() * crate::kv_cache::BLOCK_SIZE
    }

    /// The most tokens one forward pass takes ([`Model::max_batch_tokens`]).
    pub fn max_batch_tokens(&self) -> usize {
        self.model.max_batch_tokens()
    }

    /// Worker threads.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Time spent loading.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// What preparing the weights at load cost (repacking for the SIMD kernels).
    pub fn prepare_stats(&self) -> crate::backend::PrepareStats {
        self.model.prepare_stats()
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.model.backend_name()
    }

    /// The GPU's name (and driver or compute capability) the engine runs on; empty on the CPU.
    pub fn device_name(&self) -> String {
        self.model.device_name()
    }

    /// Why `--backend auto` runs on the CPU (no hardware GPU adapter, or one without kernels
    /// for every tensor of the model); `None` when it picked a GPU or a backend was named.
    pub fn backend_note(&self) -> Option<&str> {
        self.backend_note.as_deref()
    }

    /// A warning about the chat template (none in the file: ChatML is used).
    pub fn template_warning(&self) -> Option<&str> {
        self.template_warning.as_deref()
    }

    /// Forgets everything in the KV cache.
    pub fn reset_cache(&mut self) {
        self.model.tables.remove(SEQ);
        self.cached.clear();
    }

    /// Runs `tokens` after what sequence 0 already holds, in batches of `PREFILL_CHUNK` (fewer
    /// where the backend's buffers hold fewer), and writes into `out` (replaced) the logits of the rows `i` (index into `tokens`) for
    /// which `want(i)` holds, in order. Every path that feeds the model goes through here —
    /// prompts, decode steps, scoring, measurements — so the cached-prefix bookkeeping lives
    /// in one place; on an error the cache is reset. A single-chunk call writes straight into
    /// `out`, so a decode step allocates nothing.
    pub(crate) fn prefill(
        &mut self,
        tokens: &[u32],
        want: impl Fn(usize) -> bool,
        out: &mut Vec<f32>,
    ) -> Result<(), EngineError> {
        self.prefill_out(tokens, want, LogitsOut::Full(out))
    }

    /// [`Engine::prefill`] into either whole logits rows or each row's top (`out` replaced).
    pub(crate) fn prefill_out(
        &mut self,
        tokens: &[u32],
        want: impl Fn(usize) -> bool,
        mut out: LogitsOut<'_>,
    ) -> Result<(), EngineError> {
        out.clear();
        let mut batch = std::mem::take(&mut self.batch);
        let step = PREFILL_CHUNK.min(self.model.max_batch_tokens());
        for (c, chunk) in tokens.chunks(step).enumerate() {
            batch.clear();
            for (j, &t) in chunk.iter().enumerate() {
                batch.push(t, SEQ, want(c * step + j));
            }
            let model = &mut self.model;
            let dst = out.reborrow();
            if let Err(e) = self.pool.forward(|| model.forward_append(&batch, dst)) {
                self.batch = batch;
                self.reset_cache();
                return Err(e);
            }
            self.cached.extend_from_slice(chunk);
        }
        self.batch = batch;
        Ok(())
    }

    /// Renders a chat with the model's template ([`Prompter::apply_chat_template`]).
    pub fn apply_chat_template(&self, req: &ChatRequest) -> Result<String, EngineError> {
        self.prompter.apply_chat_template(req)
    }

    /// Renders `(role, content)` messages with a generation prompt.
    pub fn chat_prompt(&self, messages: &[(&str, &str)]) -> Result<String, EngineError> {
        let req = ChatRequest {
            messages: messages.iter().map(|(r, c)| serde_json::json!({"role": r, "content": c})).collect(),
            add_generation_prompt: true,
            ..Default::default()
        };
        self.apply_chat_template(&req)
    }

    /// Tokenizes a prompt as llama.cpp does: the model's BOS rule, special tokens parsed.
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        self.prompter.tokenize(text)
    }

    /// Stop strings a chat generation needs ([`Prompter::chat_stops`]).
    pub fn chat_stops(&self) -> Vec<String> {
        self.prompter.chat_stops()
    }

    /// Runs `tokens` from an empty context and returns the logits of the rows for which
    /// `want(i)` holds, in order (teacher forcing, scoring).
    pub fn eval(
        &mut self,
        tokens: &[u32],
        want: impl Fn(usize) -> bool,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        if tokens.len() > self.ctx {
            return Err(EngineError::ContextOverflow { prompt: tokens.len(), ctx: self.ctx });
        }
        self.reset_cache();
        let mut logits = Vec::new();
        self.prefill(tokens, want, &mut logits)?;
        self.reset_cache();
        Ok(logits.chunks_exact(self.model.cfg.n_vocab).map(<[f32]>::to_vec).collect())
    }

    /// Teacher forcing as a generation would see it: the prompt runs as one batch (chunks of
    /// `PREFILL_CHUNK`), then each token of `continuation` runs alone. Returns the logits that
    /// predict each continuation token: the last prompt row, then every continuation row but
    /// the last (so `continuation.len()` rows).
    pub fn teacher_force(
        &mut self,
        prompt: &[u32],
        continuation: &[u32],
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        if prompt.is_empty() {
            return Err(EngineError::Invalid("the prompt is empty".into()));
        }
        if prompt.len() + continuation.len() > self.ctx {
            return Err(EngineError::ContextOverflow {
                prompt: prompt.len() + continuation.len(),
                ctx: self.ctx,
            });
        }
        self.reset_cache();
        let mut rows = Vec::with_capacity(continuation.len());
        if continuation.is_empty() {
            return Ok(rows);
        }
        let mut logits = Vec::new();
        self.prefill(prompt, |i| i + 1 == prompt.len(), &mut logits)?;
        rows.push(logits.clone());
        for &t in &continuation[..continuation.len() - 1] {
            self.prefill(&[t], |_| true, &mut logits)?;
            rows.push(logits.clone());
        }
        self.reset_cache();
        Ok(rows)
    }

    /// Perplexity of `tokens` in chunks of `n_ctx`, as llama-perplexity computes it: each chunk
    /// from an empty cache, its first token replaced by BOS when the model adds one, scored
    /// on the predictions of its second half.
    pub fn perplexity(
        &mut self,
        tokens: &[u32],
        n_ctx: usize,
        mut progress: impl FnMut(usize, usize, f64),
    ) -> Result<Perplexity, EngineError> {
        self.perplexity_resume(tokens, n_ctx, &[], |i, n, ppl, _| progress(i, n, ppl))
    }

    /// [`Engine::perplexity`] continuing an interrupted run: `done` holds the log-probabilities
    /// of the chunks already scored, as `on_chunk` handed them out (one per scored token, in
    /// order). Those chunks are not evaluated again, and the sums run in the same order, so
    /// the result is bit for bit an uninterrupted run's. `on_chunk` gets each newly scored
    /// chunk: its number (from 1), the chunk count, the running PPL and its log-probabilities.
    pub fn perplexity_resume(
        &mut self,
        tokens: &[u32],
        n_ctx: usize,
        done: &[Vec<f32>],
        mut on_chunk: impl FnMut(usize, usize, f64, &[f32]),
    ) -> Result<Perplexity, EngineError> {
        if n_ctx < 4 || n_ctx > self.ctx {
            return Err(EngineError::Invalid(format!(
                "perplexity context {n_ctx} must be in 4..={}",
                self.ctx
            )));
        }
        let n_chunks = tokens.len() / n_ctx;
        if n_chunks == 0 {
            return Err(EngineError::Invalid(format!(
                "need at least {n_ctx} tokens, the text has {}",
                tokens.len()
            )));
        }
        let first = n_ctx / 2;
        let per_chunk_scored = n_ctx - 1 - first;
        if done.len() > n_chunks {
            return Err(EngineError::Invalid(format!(
                "{} chunks already scored, but the text has {n_chunks}",
                done.len()
            )));
        }
        if let Some(c) = done.iter().position(|d| d.len() != per_chunk_scored) {
            return Err(EngineError::Invalid(format!(
                "scored chunk {} has {} log-probabilities, a chunk of {n_ctx} scores {per_chunk_scored}",
                c + 1,
                done[c].len()
            )));
        }
        let bos = self.tokenizer().add_bos().then(|| self.tokenizer().bos()).flatten();
        let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
        let mut per_chunk = Vec::with_capacity(n_chunks);
        let mut scored = Vec::with_capacity(per_chunk_scored);
        for c in 0..n_chunks {
            let lps = match done.get(c) {
                Some(d) => d,
                None => {
                    let mut chunk = tokens[c * n_ctx..(c + 1) * n_ctx].to_vec();
                    let targets = chunk.clone();
                    if let Some(b) = bos {
                        chunk[0] = b;
                    }
                    let rows = self.eval(&chunk, |i| i >= first && i < n_ctx - 1)?;
                    scored.clear();
                    for (j, row) in rows.iter().enumerate() {
                        let target = targets[first + j + 1] as usize;
                        let (_, lse) = crate::sampler::top_logprobs(row, 0);
                        scored.push(row[target] - lse);
                    }
                    &scored
                }
            };
            for &lp in lps {
                let lp = lp as f64;
                nll -= lp;
                nll2 += lp * lp;
                count += 1;
            }
            let ppl = (nll / count as f64).exp();
            per_chunk.push(ppl);
            if c >= done.len() {
                on_chunk(c + 1, n_chunks, ppl, lps);
            }
        }
        let mean = nll / count as f64;
        let var = nll2 / count as f64 - mean * mean;
        let ppl = mean.exp();
        let stderr = if var > 0.0 && count > 1 { (var / (count - 1) as f64).sqrt() * ppl } else { 0.0 };
        Ok(Perplexity { ppl, stderr, chunks: n_chunks, scored: count, per_chunk })
    }

    /// Starts a generation: the prompt is processed in batches, then tokens come one at a
    /// time from the returned iterator.
    pub fn generate(&mut self, req: GenerateRequest) -> Result<Generation<'_>, EngineError> {
        let prompt = match &req.prompt {
            Prompt::Text(t) => self.tokenize(t),
            Prompt::Tokens(t) => t.clone(),
        };
        if prompt.is_empty() {
            return Err(EngineError::Invalid("the prompt is empty".into()));
        }
        if prompt.len() >= self.ctx {
            return Err(EngineError::ContextOverflow { prompt: prompt.len(), ctx: self.ctx });
        }
        let mut sampler = Sampler::new(req.sampler.clone());
        for &t in &prompt {
            sampler.accept(t);
        }
        // Reuse the cached prefix; at least the last prompt token runs, for its logits.
        let common =
            self.cached.iter().zip(&prompt).take_while(|(a, b)| a == b).count().min(prompt.len() - 1);
        self.model.tables.truncate(SEQ, common);
        self.cached.truncate(common);
        let t0 = Instant::now();
        let todo = &prompt[common..];
        let (mut logits, mut top) = (Vec::new(), Vec::new());
        let on_top = sampler.device_k();
        let out = match on_top {
            Some(k) => LogitsOut::Top(k, &mut top),
            None => LogitsOut::Full(&mut logits),
        };
        self.prefill_out(todo, |i| i + 1 == todo.len(), out)?;
        let timings = Timings {
            prompt_tokens: prompt.len(),
            prompt_cached: common,
            prompt_ms: t0.elapsed().as_secs_f64() * 1e3,
            ..Default::default()
        };
        Ok(Generation {
            engine: self,
            logits,
            top,
            on_top: on_top.is_some(),
            sampler,
            text: TextStream::new(req.stop),
            n_past: prompt.len(),
            generated: 0,
            max_tokens: req.max_tokens,
            ignore_eos: req.ignore_eos,
            timings,
            gen_start: None,
            stop_hit: false,
            done: false,
        })
    }
}

/// A running generation: an iterator of events that ends after `Event::Done`.
#[derive(Debug)]
pub struct Generation<'a> {
    engine: &'a mut Engine,
    /// The last step's logits: the whole row, or (`on_top`) its top for the sampler.
    logits: Vec<f32>,
    top: Vec<TopLogits>,
    on_top: bool,
    sampler: Sampler,
    text: TextStream,
    n_past: usize,
    generated: usize,
    max_tokens: usize,
    ignore_eos: bool,
    timings: Timings,
    gen_start: Option<Instant>,
    stop_hit: bool,
    done: bool,
}

impl Generation<'_> {
    fn finish(&mut self, reason: FinishReason, flush: bool) -> Event {
        self.done = true;
        if let Some(t) = self.gen_start {
            self.timings.gen_ms = t.elapsed().as_secs_f64() * 1e3;
        }
        self.timings.gen_tokens = self.generated;
        let text = if flush { self.text.finish() } else { String::new() };
        Event::Done(DoneEvent { finish_reason: reason, text, timings: self.timings })
    }

    fn step(&mut self) -> Result<Event, EngineError> {
        if self.stop_hit {
            return Ok(self.finish(FinishReason::Stop, false));
        }
        if self.generated >= self.max_tokens {
            return Ok(self.finish(FinishReason::Length, true));
        }
        if self.gen_start.is_none() {
            self.gen_start = Some(Instant::now());
        }
        let Sampled { token, logprob, top } = if self.on_top {
            self.sampler.sample_top(&self.top[0])
        } else {
            self.sampler.sample(&self.logits)
        };
        self.sampler.accept(token);
        self.generated += 1;
        let tok = &self.engine.prompter.tokenizer;
        if !self.ignore_eos && tok.is_eog(token) {
            let ev = self.finish(FinishReason::Stop, true);
            return Ok(ev);
        }
        let (text, stopped) = self.text.push(tok, token);
        if stopped {
            // The text before the stop string goes out with this token; Done comes next.
            self.stop_hit = true;
            return Ok(Event::Token(TokenEvent { id: token, text, logprob, top_logprobs: top }));
        }
        // Feed the token back unless this was the last one we may produce.
        if self.generated < self.max_tokens && self.n_past + 1 < self.engine.ctx {
            // A sampler that needs only the top of the next row gets only that back.
            let k = self.sampler.device_k();
            self.on_top = k.is_some();
            let out = match k {
                Some(k) => LogitsOut::Top(k, &mut self.top),
                None => LogitsOut::Full(&mut self.logits),
            };
            self.engine.prefill_out(&[token], |_| true, out)?;
            self.n_past += 1;
        } else if self.n_past + 1 >= self.engine.ctx {
            self.max_tokens = self.generated; // context full: the next step reports Length
        }
        Ok(Event::Token(TokenEvent { id: token, text, logprob, top_logprobs: top }))
    }
}

impl Iterator for Generation<'_> {
    type Item = Result<Event, EngineError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.step();
        if r.is_err() {
            self.done = true;
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_loader::chat::message;

    const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures");

    fn tokenizer(vocab: &str) -> Tokenizer {
        let file = GgufFile::open(Path::new(SHARED).join("vocab").join(vocab)).unwrap();
        Tokenizer::from_metadata(file.metadata()).unwrap()
    }

    fn prompter(vocab: &str, template: &str, bos: &str, eos: &str) -> Prompter {
        let src = std::fs::read_to_string(Path::new(SHARED).join("chat-templates").join(template)).unwrap();
        Prompter::new(tokenizer(vocab), ChatTemplate::new(&src, bos, eos).unwrap())
    }

    /// Llama 3's template writes `<|begin_of_text|>` and its tokenizer adds BOS: the model
    /// must see one BOS, as llama.cpp gives it.
    #[test]
    fn one_bos_when_template_and_tokenizer_both_add_it() {
        let p = prompter(
            "ggml-vocab-llama-bpe.gguf",
            "meta-llama-Llama-3.1-8B-Instruct.jinja",
            "<|begin_of_text|>",
            "<|eot_id|>",
        );
        assert!(p.tokenizer().add_bos());
        let req = ChatRequest::new(vec![message("user", "Hi")]);
        let text = p.apply_chat_template(&req).unwrap();
        assert!(text.starts_with("<|start_header_id|>system<|end_header_id|>"), "{text:?}");
        let ids = p.tokenize(&text);
        let bos = p.tokenizer().bos().unwrap();
        assert_eq!(ids[0], bos);
        assert_eq!(ids.iter().filter(|&&t| t == bos).count(), 1, "{ids:?}");
        assert_eq!(p.tokenizer().token_text(ids[1]), Some("<|start_header_id|>"));
    }

    /// The ChatML fallback stops at its markers' text where the vocabulary lacks them.
    #[test]
    fn chatml_fallback_stops_at_its_markers_as_text() {
        let spm = Prompter::new(tokenizer("ggml-vocab-llama-spm.gguf"), ChatTemplate::chatml());
        assert_eq!(spm.chat_stops(), ["<|im_end|>", "<|im_start|>"]);
        let qwen = Prompter::new(tokenizer("ggml-vocab-qwen2.gguf"), ChatTemplate::chatml());
        assert!(qwen.chat_stops().is_empty());
        let own = prompter("ggml-vocab-llama-spm.gguf", "Qwen-Qwen2.5-7B-Instruct.jinja", "<s>", "</s>");
        assert!(own.chat_stops().is_empty());
    }

    /// A tokenizer that adds no BOS keeps the one the template writes.
    #[test]
    fn template_bos_kept_when_tokenizer_adds_none() {
        let p =
            prompter("ggml-vocab-qwen2.gguf", "meta-llama-Llama-3.1-8B-Instruct.jinja", "<|endoftext|>", "");
        assert!(!p.tokenizer().add_bos());
        let req = ChatRequest::new(vec![message("user", "Hi")]);
        assert!(p.apply_chat_template(&req).unwrap().starts_with("<|endoftext|><|start_header_id|>"));
    }

    /// `Contexts` holds each context in whole blocks (a 16-token context takes a block), within
    /// its byte cap, and never less than one context.
    #[test]
    fn contexts_are_whole_blocks() {
        use crate::kv_cache::BLOCK_SIZE;
        let unbounded = |n| KvCapacity::Contexts { n, max_bytes: usize::MAX };
        assert_eq!(unbounded(8).tokens(16, 4), 8 * BLOCK_SIZE);
        assert_eq!(unbounded(2).tokens(2 * BLOCK_SIZE, 4), 4 * BLOCK_SIZE);
        assert_eq!(KvCapacity::Contexts { n: 8, max_bytes: 4 * 100 }.tokens(16, 4), 100);
        assert_eq!(KvCapacity::Contexts { n: 8, max_bytes: 4 }.tokens(16, 4), 16);
    }
}
