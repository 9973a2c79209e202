//! Continuous batching: many generations share each forward pass.
//!
//! Every [`Scheduler::step`] builds one batch from the next token of every running sequence
//! that is decoding plus chunks of prompts still being processed (chunked prefill: a long
//! prompt is spread over several steps, so it never stalls the running streams), runs it,
//! samples one token for every sequence whose logits came back, and reports events through a
//! callback. KV blocks come from the paged cache within its fixed budget; whole blocks of an
//! identical token prefix are shared between sequences (the prefix cache in
//! [`crate::kv_cache`]). When blocks run out, the most recently admitted sequence is
//! preempted: its blocks are freed and it waits to be recomputed from its tokens, with its
//! sampler and text state kept, so the client sees nothing but a pause.
//!
//! The scheduler is synchronous and owns the [`Engine`]; a server runs it on its own thread
//! and feeds it requests between steps.

use crate::api::{DoneEvent, Engine, FinishReason, Prompter, Timings, TokenEvent};
use crate::error::EngineError;
use crate::json_mode::JsonObjectState;
use crate::kv_cache::{SeqId, BLOCK_SIZE};
use crate::model::Batch;
use crate::sampler::{Sampler, SamplerParams, TopLogits};
use crate::text::TextStream;
use ferrite_loader::tokenizer::Tokenizer;
use rayon::prelude::*;
use std::collections::VecDeque;
use std::time::Instant;

/// A caller's name for a request.
pub type RequestId = u64;

/// One generation to schedule.
#[derive(Clone, Debug)]
pub struct BatchRequest {
    /// Prompt tokens (already tokenized).
    pub prompt: Vec<u32>,
    /// At most this many new tokens (clipped to the context).
    pub max_tokens: usize,
    /// Sampling.
    pub sampler: SamplerParams,
    /// Generation stops before any of these strings.
    pub stop: Vec<String>,
    /// Keep going past end-of-generation tokens.
    pub ignore_eos: bool,
    /// Constrain the output to one JSON object (ends when it closes).
    pub json_object: bool,
    /// Control tokens whose text goes into the output (tool-call markers).
    pub keep_tokens: Vec<u32>,
}

/// What happens to a request.
#[derive(Clone, Debug, PartialEq)]
pub enum SeqEvent {
    /// A token.
    Token(TokenEvent),
    /// The end (the last event).
    Done(DoneEvent),
    /// The request failed (the last event).
    Failed(String),
}

/// Limits of the scheduler.
#[derive(Clone, Copy, Debug)]
pub struct SchedulerOptions {
    /// Sequences running at once.
    pub max_running: usize,
    /// Requests waiting beyond those; more are refused.
    pub max_waiting: usize,
    /// Tokens per forward pass (decode tokens plus prompt chunks).
    pub step_tokens: usize,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions { max_running: 8, max_waiting: 64, step_tokens: crate::api::PREFILL_CHUNK }
    }
}

/// Counters and gauges for monitoring.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct SchedulerStats {
    /// Sequences admitted and not finished.
    pub running: usize,
    /// Requests waiting to be admitted (preempted ones included).
    pub waiting: usize,
    /// KV blocks held by sequences.
    pub kv_blocks_used: usize,
    /// KV blocks in the cache.
    pub kv_blocks_total: usize,
    /// Blocks registered in the prefix cache.
    pub kv_blocks_cached: usize,
    /// Prompt tokens looked up in the prefix cache (cumulative).
    pub prefix_queries: u64,
    /// Of those, tokens found (cumulative).
    pub prefix_hits: u64,
    /// Sequences preempted for lack of blocks (cumulative).
    pub preemptions: u64,
    /// Prompt tokens computed (cumulative; recomputation after preemption included).
    pub prompt_tokens_computed: u64,
    /// Tokens generated (cumulative).
    pub generated_tokens: u64,
    /// Forward passes run (cumulative).
    pub steps: u64,
}

/// One sequence's state.
#[derive(Debug)]
struct Seq {
    id: RequestId,
    sid: SeqId,
    /// Prompt then generated tokens: what the cache must hold before the next sample.
    tokens: Vec<u32>,
    n_prompt: usize,
    /// Leading tokens whose keys and values are in the cache.
    computed: usize,
    /// Tokens fed in the current step.
    feeding: usize,
    max_tokens: usize,
    generated: usize,
    ignore_eos: bool,
    sampler: Sampler,
    text: TextStream,
    json: Option<JsonObjectState>,
    arrived: Instant,
    first_token: Option<Instant>,
    /// Prompt tokens found in the prefix cache at first admission (None: not admitted yet).
    cached: Option<usize>,
}

/// The outcome of sampling one sequence.
struct Draw {
    token: u32,
    logprob: f32,
    top: Vec<(u32, f32)>,
}

/// Continuous-batching scheduler over one engine.
#[derive(Debug)]
pub struct Scheduler {
    engine: Engine,
    /// The engine's tokenizer, held apart so that sampling can read it while the engine's
    /// cache is updated.
    prompter: Prompter,
    opts: SchedulerOptions,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    next_sid: SeqId,
    batch: Batch,
    /// The step's logits rows, or (`on_top`) each row's top for samplers that need no more.
    logits: Vec<f32>,
    tops: Vec<TopLogits>,
    on_top: bool,
    stats: SchedulerStats,
}

impl Scheduler {
    /// A scheduler that owns `engine` (its single-sequence cache is dropped).
    pub fn new(mut engine: Engine, opts: SchedulerOptions) -> Self {
        engine.reset_cache();
        let opts = SchedulerOptions {
            // A step holds a decode row per running sequence plus prompt chunks up to
            // `step_tokens`: both within one forward pass (`ferrite serve` refuses larger
            // --parallel or --batch-tokens with a message; this bounds embedders too).
            max_running: opts.max_running.clamp(1, engine.max_batch_tokens()),
            step_tokens: opts.step_tokens.clamp(1, engine.max_batch_tokens()),
            ..opts
        };
        let mut s = Scheduler {
            prompter: engine.prompter(),
            engine,
            opts,
            waiting: VecDeque::new(),
            running: Vec::new(),
            next_sid: 1,
            batch: Batch::default(),
            logits: Vec::new(),
            tops: Vec::new(),
            on_top: false,
            stats: SchedulerStats::default(),
        };
        s.refresh_gauges();
        s
    }

    /// The engine (model, tokenizer, template).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Counters and gauges.
    pub fn stats(&self) -> SchedulerStats {
        self.stats
    }

    /// Whether there is work for [`Scheduler::step`].
    pub fn is_busy(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }

    /// Queues a request. Fails at once (nothing queued) if it can never run — empty, bad
    /// token ids, no room in the context for one new token — or if the queue is full.
    pub fn add(&mut self, id: RequestId, req: BatchRequest) -> Result<(), EngineError> {
        let n_vocab = self.engine.config().n_vocab;
        let ctx = self.engine.ctx;
        if req.prompt.is_empty() {
            return Err(EngineError::Invalid("the prompt is empty".into()));
        }
        if let Some(&t) = req.prompt.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(EngineError::BadToken { id: t, n_vocab });
        }
        if req.prompt.len() >= ctx {
            return Err(EngineError::ContextOverflow { prompt: req.prompt.len(), ctx });
        }
        if req.max_tokens == 0 {
            return Err(EngineError::Invalid("max_tokens must be at least 1".into()));
        }
        // Room to wait, plus the running slots that are free (a burst that arrives while
        // idle is admitted at the next step, not refused).
        let free = self.opts.max_running.saturating_sub(self.running.len());
        if self.waiting.len() >= self.opts.max_waiting + free {
            return Err(EngineError::Overloaded { waiting: self.waiting.len() });
        }
        let mut sampler = Sampler::new(req.sampler);
        for &t in &req.prompt {
            sampler.accept(t);
        }
        let sid = self.next_sid;
        self.next_sid = self.next_sid.wrapping_add(1).max(1);
        self.waiting.push_back(Seq {
            id,
            sid,
            n_prompt: req.prompt.len(),
            max_tokens: req.max_tokens.min(ctx - req.prompt.len()),
            tokens: req.prompt,
            computed: 0,
            feeding: 0,
            generated: 0,
            ignore_eos: req.ignore_eos,
            sampler,
            text: TextStream::with_kept(req.stop, req.keep_tokens),
            json: req.json_object.then(JsonObjectState::new),
            arrived: Instant::now(),
            first_token: None,
            cached: None,
        });
        self.refresh_gauges();
        Ok(())
    }

    /// Drops a request (a client went away): its blocks are free at once. False if unknown.
    pub fn cancel(&mut self, id: RequestId) -> bool {
        let tables = &mut self.engine.model.tables;
        let found = if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
            let s = self.waiting.remove(i).expect("found above");
            tables.remove(s.sid);
            true
        } else if let Some(i) = self.running.iter().position(|s| s.id == id) {
            let s = self.running.remove(i);
            tables.remove(s.sid);
            true
        } else {
            false
        };
        self.refresh_gauges();
        found
    }

    /// Runs one forward pass over the running sequences and reports what happened through
    /// `emit(request, event)`; `emit` returns false when nobody listens any more, and the
    /// request is then cancelled. Returns false when there was nothing to do.
    pub fn step(&mut self, emit: &mut dyn FnMut(RequestId, SeqEvent) -> bool) -> bool {
        self.admit();
        if self.running.is_empty() {
            self.refresh_gauges();
            return false;
        }
        self.plan();
        self.batch.clear();
        for s in &self.running {
            let end = s.computed + s.feeding;
            for (i, &t) in s.tokens[s.computed..end].iter().enumerate() {
                self.batch.push(t, s.sid, s.computed + i + 1 == s.tokens.len());
            }
        }
        // When every sequence sampling this step needs only the top of its row (no JSON
        // constraint, no penalties), only those tops come back from the device.
        let k = self
            .running
            .iter()
            .filter(|s| s.feeding > 0 && s.computed + s.feeding == s.tokens.len())
            .try_fold(1, |k, s| if s.json.is_some() { None } else { s.sampler.device_k().map(|d| k.max(d)) });
        self.on_top = k.is_some();
        let Scheduler { engine, batch, logits, tops, .. } = self;
        let model = &mut engine.model;
        let result = engine.pool.forward(|| match k {
            Some(k) => model.forward_top(batch, k, tops),
            None => model.forward_into(batch, logits),
        });
        if let Err(e) = result {
            // Slots were planned to fit, so this is a bug or a device failure: every running
            // sequence fails, and the cache is made consistent again.
            let msg = e.to_string();
            for s in std::mem::take(&mut self.running) {
                self.engine.model.tables.remove(s.sid);
                emit(s.id, SeqEvent::Failed(msg.clone()));
            }
            self.refresh_gauges();
            return true;
        }
        self.stats.steps += 1;
        for s in &mut self.running {
            s.computed += s.feeding;
            let decoding = s.generated > 0 && s.feeding == 1 && s.computed == s.tokens.len();
            if !decoding {
                self.stats.prompt_tokens_computed += s.feeding as u64;
            }
            self.engine.model.tables.register(s.sid, &s.tokens, s.computed);
        }
        self.sample_and_emit(emit);
        self.refresh_gauges();
        true
    }

    /// Admits waiting requests, oldest first, while there is room for their whole prompt.
    fn admit(&mut self) {
        while self.running.len() < self.opts.max_running {
            let Some(s) = self.waiting.front_mut() else { break };
            let tables = &mut self.engine.model.tables;
            // At least the last token is computed, for its logits.
            let shared = tables.share_prefix(s.sid, &s.tokens, s.tokens.len() - 1);
            let need = s.tokens.len().div_ceil(BLOCK_SIZE) - shared / BLOCK_SIZE;
            // Keep a block per running sequence for its next tokens.
            if need + self.running.len() > tables.n_free() && !self.running.is_empty() {
                tables.remove(s.sid);
                break;
            }
            if s.cached.is_none() {
                self.stats.prefix_queries += s.n_prompt as u64;
                self.stats.prefix_hits += shared as u64;
                s.cached = Some(shared);
            }
            s.computed = shared;
            let s = self.waiting.pop_front().expect("checked above");
            self.running.push(s);
        }
    }

    /// Decides how many tokens each running sequence feeds this step: one for each decoding
    /// sequence, then prompt chunks within the step's token budget. Preempts the newest
    /// sequences while the blocks this needs are not free.
    fn plan(&mut self) {
        loop {
            let mut budget = self.opts.step_tokens;
            for s in &mut self.running {
                s.feeding = 0;
                if s.tokens.len() - s.computed == 1 {
                    s.feeding = 1;
                    budget = budget.saturating_sub(1);
                }
            }
            for s in &mut self.running {
                let left = s.tokens.len() - s.computed;
                if left > 1 && budget > 0 {
                    s.feeding = left.min(budget);
                    budget -= s.feeding;
                }
            }
            let tables = &self.engine.model.tables;
            let need: usize = self
                .running
                .iter()
                .map(|s| {
                    (s.computed + s.feeding).div_ceil(BLOCK_SIZE).saturating_sub(tables.table(s.sid).len())
                })
                .sum();
            if need <= tables.n_free() || self.running.len() == 1 {
                // A lone sequence always fits: the cache holds at least a context.
                return;
            }
            let mut s = self.running.pop().expect("more than one running");
            self.engine.model.tables.remove(s.sid);
            s.computed = 0;
            s.feeding = 0;
            self.stats.preemptions += 1;
            self.waiting.push_front(s);
        }
    }

    fn sample_and_emit(&mut self, emit: &mut dyn FnMut(RequestId, SeqEvent) -> bool) {
        let n_vocab = self.engine.config().n_vocab;
        let tok = self.prompter.tokenizer();
        // Logits rows come back in batch order: one for each sequence that reached its last
        // token.
        let wants = |s: &Seq| s.feeding > 0 && s.computed == s.tokens.len();
        let rows: Vec<usize> = (0..self.running.len()).filter(|&i| wants(&self.running[i])).collect();
        let (logits, tops, on_top) = (&self.logits, &self.tops, self.on_top);
        let mut wanted: Vec<&mut Seq> = self.running.iter_mut().filter(|s| wants(s)).collect();
        let mut draws: Vec<Draw> = Vec::with_capacity(rows.len());
        self.engine.pool.install(|| {
            wanted
                .par_iter_mut()
                .enumerate()
                .map(|(k, s)| {
                    let row = if on_top {
                        Row::Top(&tops[k])
                    } else {
                        Row::Full(&logits[k * n_vocab..(k + 1) * n_vocab])
                    };
                    draw(s, row, tok)
                })
                .collect_into_vec(&mut draws);
        });
        let now = Instant::now();
        let mut finished: Vec<(usize, Option<FinishReason>, bool)> = Vec::new();
        for (&r, d) in rows.iter().zip(draws) {
            let s = &mut self.running[r];
            s.first_token.get_or_insert(now);
            s.sampler.accept(d.token);
            s.generated += 1;
            self.stats.generated_tokens += 1;
            if !s.ignore_eos && tok.is_eog(d.token) {
                finished.push((r, Some(FinishReason::Stop), true));
                continue;
            }
            let (text, stopped) = s.text.push(tok, d.token);
            if let Some(j) = &mut s.json {
                j.feed(tok.token_to_piece(d.token, false));
            }
            let ev = TokenEvent { id: d.token, text, logprob: d.logprob, top_logprobs: d.top };
            if !emit(s.id, SeqEvent::Token(ev)) {
                finished.push((r, None, false));
                continue;
            }
            if stopped {
                finished.push((r, Some(FinishReason::Stop), false));
            } else if s.json.is_some_and(|j| j.is_done()) {
                finished.push((r, Some(FinishReason::Stop), true));
            } else if s.generated >= s.max_tokens {
                finished.push((r, Some(FinishReason::Length), true));
            } else {
                s.tokens.push(d.token);
            }
        }
        // Remove finished sequences, highest index first so the others keep their places.
        for (r, reason, flush) in finished.into_iter().rev() {
            let mut s = self.running.remove(r);
            self.engine.model.tables.remove(s.sid);
            let Some(reason) = reason else { continue };
            let text = if flush { s.text.finish() } else { String::new() };
            let first = s.first_token.unwrap_or(now);
            let timings = Timings {
                prompt_tokens: s.n_prompt,
                prompt_cached: s.cached.unwrap_or(0),
                prompt_ms: (first - s.arrived).as_secs_f64() * 1e3,
                gen_tokens: s.generated,
                gen_ms: (now - first).as_secs_f64() * 1e3,
            };
            emit(s.id, SeqEvent::Done(DoneEvent { finish_reason: reason, text, timings }));
        }
    }

    fn refresh_gauges(&mut self) {
        let t = &self.engine.model.tables;
        self.stats.running = self.running.len();
        self.stats.waiting = self.waiting.len();
        self.stats.kv_blocks_used = t.n_used();
        self.stats.kv_blocks_total = t.n_blocks();
        self.stats.kv_blocks_cached = t.n_cached();
    }
}

/// One sequence's logits for sampling: its whole row, or the row's top.
enum Row<'a> {
    Full(&'a [f32]),
    Top(&'a TopLogits),
}

/// Whether `token` may come next under a JSON constraint.
fn json_allows(j: &JsonObjectState, token: u32, tok: &Tokenizer) -> bool {
    if tok.is_eog(token) {
        return j.is_done();
    }
    let piece = tok.token_to_piece(token, false);
    !piece.is_empty() && j.allows(piece)
}

/// Samples a sequence's next token. Under a JSON constraint the unconstrained draw is kept
/// when it is allowed (the common case, and the same distribution as masking first); else
/// every disallowed token is masked and the draw repeated. Log-probabilities are always those
/// of the model's own distribution.
fn draw(s: &mut Seq, row: Row<'_>, tok: &Tokenizer) -> Draw {
    let row = match row {
        Row::Full(row) => row,
        Row::Top(t) => {
            // Only sequences without a JSON constraint sample from a row's top.
            let d = s.sampler.sample_top(t);
            return Draw { token: d.token, logprob: d.logprob, top: d.top };
        }
    };
    let first = s.sampler.sample(row);
    let Some(j) = s.json else {
        return Draw { token: first.token, logprob: first.logprob, top: first.top };
    };
    if json_allows(&j, first.token, tok) {
        return Draw { token: first.token, logprob: first.logprob, top: first.top };
    }
    let lse = row[first.token as usize] - first.logprob;
    let masked: Vec<f32> = row
        .iter()
        .enumerate()
        .map(|(i, &l)| if json_allows(&j, i as u32, tok) { l } else { f32::NEG_INFINITY })
        .collect();
    let token = s.sampler.sample(&masked).token;
    Draw { token, logprob: row[token as usize] - lse, top: first.top }
}
