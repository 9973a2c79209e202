//! Throughput measurement in the manner of llama-bench: prompt processing (pp) and token
//! generation (tg) at a context depth, repeated, warm-up excluded; plus this machine's
//! memory bandwidth and the generation floor it implies (weights read once per token).

use crate::api::{Engine, PREFILL_CHUNK};
use crate::error::EngineError;
use crate::kv_cache::BLOCK_SIZE;
use crate::model::{Batch, LogitsOut};
use rayon::prelude::*;
use std::time::Instant;

/// One measured test.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchSample {
    /// Prompt tokens processed per repetition (0 for a tg test).
    pub n_prompt: usize,
    /// Tokens generated per repetition (0 for a pp test).
    pub n_gen: usize,
    /// Tokens already in the KV cache when the timed part starts (in each sequence).
    pub n_depth: usize,
    /// Sequences generating together, one token each per forward pass (1: plain tg).
    pub n_parallel: usize,
    /// Seconds of each repetition.
    pub samples_s: Vec<f64>,
}

impl BenchSample {
    fn tokens(&self) -> usize {
        self.n_prompt + self.n_gen * self.n_parallel
    }

    /// Tokens per second of each repetition.
    pub fn samples_ts(&self) -> Vec<f64> {
        self.samples_s.iter().map(|s| self.tokens() as f64 / s).collect()
    }

    /// Mean tokens per second.
    pub fn avg_ts(&self) -> f64 {
        mean(&self.samples_ts())
    }

    /// Sample standard deviation of tokens per second.
    pub fn stddev_ts(&self) -> f64 {
        stddev(&self.samples_ts())
    }
}

/// The CPU's model name as the OS reports it (`/proc/cpuinfo` on Linux), else the
/// architecture: llama-bench's `cpu_info`.
pub fn cpu_info() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Mean of a slice (0 for an empty one).
pub fn mean(x: &[f64]) -> f64 {
    if x.is_empty() {
        0.0
    } else {
        x.iter().sum::<f64>() / x.len() as f64
    }
}

/// Sample standard deviation (0 below two values).
pub fn stddev(x: &[f64]) -> f64 {
    if x.len() < 2 {
        return 0.0;
    }
    let m = mean(x);
    (x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (x.len() - 1) as f64).sqrt()
}

/// Deterministic token ids spread over the vocabulary (llama-bench uses random ones).
fn tokens(n: usize, n_vocab: usize, salt: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + salt * 104_729 + 1) % n_vocab) as u32).collect()
}

impl Engine {
    /// Runs `depth` tokens into an empty cache (untimed), for tests at a depth.
    fn bench_fill(&mut self, depth: usize, logits: &mut Vec<f32>) -> Result<(), EngineError> {
        self.reset_cache();
        let toks = tokens(depth, self.config().n_vocab, 0);
        self.prefill(&toks, |_| false, logits)
    }

    /// Prompt processing: `reps` timed runs of `n_prompt` tokens (in batches of
    /// `PREFILL_CHUNK`) on top of `depth` cached tokens, after one untimed warm-up run.
    pub fn bench_pp(
        &mut self,
        n_prompt: usize,
        depth: usize,
        reps: usize,
    ) -> Result<BenchSample, EngineError> {
        self.check_bench_fits(n_prompt + depth)?;
        let n_vocab = self.config().n_vocab;
        let mut logits = Vec::new();
        let mut samples_s = Vec::with_capacity(reps);
        for rep in 0..=reps {
            self.bench_fill(depth, &mut logits)?;
            let toks = tokens(n_prompt, n_vocab, rep + 1);
            let t0 = Instant::now();
            self.prefill(&toks, |i| i + 1 == n_prompt, &mut logits)?;
            if rep > 0 {
                samples_s.push(t0.elapsed().as_secs_f64());
            }
        }
        self.reset_cache();
        Ok(BenchSample { n_prompt, n_gen: 0, n_depth: depth, n_parallel: 1, samples_s })
    }

    /// Token generation: `reps` timed runs of `n_gen` single-token steps (logits each step)
    /// on top of `depth` cached tokens, after one untimed warm-up run.
    pub fn bench_tg(&mut self, n_gen: usize, depth: usize, reps: usize) -> Result<BenchSample, EngineError> {
        self.check_bench_fits(n_gen + depth)?;
        let n_vocab = self.config().n_vocab;
        let mut logits = Vec::new();
        let mut samples_s = Vec::with_capacity(reps);
        for rep in 0..=reps {
            self.bench_fill(depth, &mut logits)?;
            let toks = tokens(n_gen, n_vocab, rep + 7);
            let t0 = Instant::now();
            for &t in &toks {
                self.prefill(&[t], |_| true, &mut logits)?;
            }
            if rep > 0 {
                samples_s.push(t0.elapsed().as_secs_f64());
            }
        }
        self.reset_cache();
        Ok(BenchSample { n_prompt: 0, n_gen, n_depth: depth, n_parallel: 1, samples_s })
    }

    /// Batched generation, as a continuous-batching server runs it: `parallel` sequences
    /// with `depth` cached tokens each (filled untimed, sequence by sequence), then `n_gen`
    /// forward passes of one token per sequence (logits of every row); `reps` timed runs
    /// after one warm-up. Throughput counts every sequence's tokens. The KV cache must hold
    /// `parallel × (depth + n_gen)` tokens.
    pub fn bench_tg_parallel(
        &mut self,
        n_gen: usize,
        depth: usize,
        parallel: usize,
        reps: usize,
    ) -> Result<BenchSample, EngineError> {
        if parallel <= 1 {
            return self.bench_tg(n_gen, depth, reps);
        }
        self.check_bench_fits(n_gen + depth)?;
        if parallel > self.model.max_batch_tokens() {
            return Err(EngineError::Invalid(format!(
                "{parallel} sequences exceed the {} rows one forward pass of this model holds",
                self.model.max_batch_tokens()
            )));
        }
        self.reset_cache();
        let need = parallel * (depth + n_gen).div_ceil(BLOCK_SIZE);
        if need > self.model.tables.n_free() {
            return Err(EngineError::Invalid(format!(
                "{parallel} sequences of {} tokens need {} KV tokens; the cache holds {}",
                depth + n_gen,
                need * BLOCK_SIZE,
                self.model.tables.n_free() * BLOCK_SIZE
            )));
        }
        // Sequence ids past the engine's own (0); all dropped at the end, error or not.
        let seqs: Vec<u32> = (1..=parallel as u32).collect();
        let result = self.time_parallel(&seqs, n_gen, depth, reps);
        for &s in &seqs {
            self.model.tables.remove(s);
        }
        Ok(BenchSample { n_prompt: 0, n_gen, n_depth: depth, n_parallel: parallel, samples_s: result? })
    }

    /// The repetitions of [`Engine::bench_tg_parallel`]: seconds of each timed one.
    fn time_parallel(
        &mut self,
        seqs: &[u32],
        n_gen: usize,
        depth: usize,
        reps: usize,
    ) -> Result<Vec<f64>, EngineError> {
        let n_vocab = self.config().n_vocab;
        let chunk = PREFILL_CHUNK.min(self.model.max_batch_tokens());
        let (mut batch, mut logits) = (Batch::default(), Vec::new());
        let mut samples_s = Vec::with_capacity(reps);
        for rep in 0..=reps {
            for &s in seqs {
                self.model.tables.remove(s);
                for part in tokens(depth, n_vocab, s as usize).chunks(chunk) {
                    batch.clear();
                    part.iter().for_each(|&t| batch.push(t, s, false));
                    self.forward_bench(&batch, &mut logits)?;
                }
            }
            let steps: Vec<Vec<u32>> =
                seqs.iter().map(|&s| tokens(n_gen, n_vocab, rep * 1000 + 7 + s as usize)).collect();
            let t0 = Instant::now();
            for i in 0..n_gen {
                batch.clear();
                for (&s, toks) in seqs.iter().zip(&steps) {
                    batch.push(toks[i], s, true);
                }
                self.forward_bench(&batch, &mut logits)?;
            }
            if rep > 0 {
                samples_s.push(t0.elapsed().as_secs_f64());
            }
        }
        Ok(samples_s)
    }

    /// One forward pass of a bench batch in the engine's pool (`logits` replaced).
    fn forward_bench(&mut self, batch: &Batch, logits: &mut Vec<f32>) -> Result<(), EngineError> {
        logits.clear();
        let model = &mut self.model;
        self.pool.forward(|| model.forward_append(batch, LogitsOut::Full(logits)))
    }

    fn check_bench_fits(&self, n: usize) -> Result<(), EngineError> {
        if n > self.ctx() {
            return Err(EngineError::ContextOverflow { prompt: n, ctx: self.ctx() });
        }
        Ok(())
    }

    /// Bytes of weights one generated token reads: every tensor except the embedding table,
    /// of which it reads one row (unless the output head shares it).
    pub fn bytes_per_token(&self) -> u64 {
        let file = self.file();
        let embd = file.try_tensor("token_embd.weight").map(|t| t.info.n_bytes).unwrap_or(0);
        let total = file.header().tensor_bytes();
        if self.config().tied_embeddings {
            total
        } else {
            total - embd + embd / self.config().n_vocab.max(1) as u64
        }
    }
}

/// Memory read bandwidth in bytes/s with `threads` threads: summing a 2 GiB array (far past
/// any cache, each thread streaming its own part), the median of five passes so that one
/// lucky or unlucky pass does not set the generation floor.
pub fn memory_bandwidth(threads: usize) -> f64 {
    let pool = match rayon::ThreadPoolBuilder::new().num_threads(threads.max(1)).build() {
        Ok(p) => p,
        Err(_) => return 0.0,
    };
    pool.install(|| {
        let buf: Vec<u64> = (0..BANDWIDTH_BYTES / 8).into_par_iter().map(|i| i as u64).collect();
        let mut rates: Vec<f64> = (0..5)
            .map(|_| {
                let t0 = Instant::now();
                let s: u64 =
                    buf.par_chunks(1 << 16).map(|c| c.iter().fold(0u64, |a, &x| a.wrapping_add(x))).sum();
                let dt = t0.elapsed().as_secs_f64();
                std::hint::black_box(s);
                BANDWIDTH_BYTES as f64 / dt
            })
            .collect();
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    })
}

/// Bytes summed by [`memory_bandwidth`].
pub const BANDWIDTH_BYTES: usize = 2 << 30;

/// Peak resident set size of this process in bytes (Linux `VmHWM`; `None` elsewhere).
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats() {
        assert_eq!(mean(&[1.0, 2.0, 3.0]), 2.0);
        assert!((stddev(&[1.0, 2.0, 3.0]) - 1.0).abs() < 1e-12);
        assert_eq!(stddev(&[5.0]), 0.0);
        let s = BenchSample { n_prompt: 10, n_gen: 0, n_depth: 0, n_parallel: 1, samples_s: vec![1.0, 0.5] };
        assert_eq!(s.samples_ts(), vec![10.0, 20.0]);
        assert_eq!(s.avg_ts(), 15.0);
        // A batched tg test counts every sequence's tokens.
        let b = BenchSample { n_prompt: 0, n_gen: 4, n_depth: 0, n_parallel: 3, samples_s: vec![2.0] };
        assert_eq!(b.samples_ts(), vec![6.0]);
        let t = tokens(100, 50, 3);
        assert!(t.iter().all(|&x| x < 50));
    }
}
