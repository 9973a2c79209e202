//! Token sampling: penalties, top-k, top-p, min-p, temperature, seeded draws, and the
//! log-probabilities of the chosen and the top-N tokens (from the raw model distribution,
//! before any sampler transform, as OpenAI-style APIs report them).

use ferrite_kernels::cpu::softmax;
use std::collections::{HashMap, VecDeque};

/// Sampling settings. Defaults are greedy-compatible (temperature 0 means greedy).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SamplerParams {
    /// ≤ 0: greedy (argmax).
    pub temperature: f32,
    /// Keep the k most likely tokens (0: off).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1: off).
    pub top_p: f32,
    /// Drop tokens less likely than min_p × the most likely one (0: off).
    pub min_p: f32,
    /// llama.cpp-style repetition penalty (1: off).
    pub repeat_penalty: f32,
    /// OpenAI presence penalty (0: off).
    pub presence_penalty: f32,
    /// OpenAI frequency penalty (0: off).
    pub frequency_penalty: f32,
    /// Penalties look at this many recent tokens (0: none, usize::MAX: all).
    pub penalty_last_n: usize,
    /// RNG seed: the same seed gives the same output.
    pub seed: u64,
    /// Number of top log-probabilities to report per token (0: none).
    pub n_logprobs: usize,
}

impl Default for SamplerParams {
    fn default() -> Self {
        SamplerParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            seed: 0xF3E2_1D0C,
            n_logprobs: 0,
        }
    }
}

impl SamplerParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        SamplerParams { temperature: 0.0, ..Default::default() }
    }
}

/// The outcome of one sampling step.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampled {
    /// The chosen token.
    pub token: u32,
    /// Its log-probability under the raw model distribution.
    pub logprob: f32,
    /// The `n_logprobs` most likely tokens and their log-probabilities, best first.
    pub top: Vec<(u32, f32)>,
}

/// xoshiro256** seeded by SplitMix64: small, fast, and stable across versions (a sampling
/// RNG must give the same stream for the same seed forever).
#[derive(Clone, Debug)]
pub struct Rng([u64; 4]);

impl Rng {
    /// A generator for a seed.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A sampler with its own RNG and token history.
#[derive(Clone, Debug)]
pub struct Sampler {
    /// Settings.
    pub params: SamplerParams,
    rng: Rng,
    history: VecDeque<u32>,
    cand: Vec<(u32, f32)>,
    /// The candidates' sampling weights (reused: no allocation per token).
    weights: Vec<f32>,
}

impl Sampler {
    /// A sampler for these settings.
    pub fn new(params: SamplerParams) -> Self {
        Sampler {
            rng: Rng::new(params.seed),
            params,
            history: VecDeque::new(),
            cand: Vec::new(),
            weights: Vec::new(),
        }
    }

    /// Records a token (prompt or generated) for the penalties.
    pub fn accept(&mut self, token: u32) {
        if self.params.penalty_last_n == 0 {
            return;
        }
        self.history.push_back(token);
        while self.history.len() > self.params.penalty_last_n {
            self.history.pop_front();
        }
    }

    /// Chooses the next token from a row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> Sampled {
        let p = &self.params;
        let (top, lse) = top_logprobs(logits, p.n_logprobs);
        let token = if p.temperature <= 0.0 && !self.has_penalties() {
            argmax(logits)
        } else if p.top_k == 0 && p.top_p >= 1.0 && p.min_p <= 0.0 && !self.has_penalties() {
            self.sample_tempered(logits)
        } else {
            self.sample_filtered(logits)
        };
        Sampled { token, logprob: logits[token as usize] - lse, top }
    }

    fn has_penalties(&self) -> bool {
        let p = &self.params;
        !self.history.is_empty()
            && (p.repeat_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0)
    }

    /// How many of a row's best logits this sampler needs, when those and the row's
    /// log-sum-exp are all it needs (greedy, or a top-k draw, without penalties): a GPU then
    /// sends back only these ([`Sampler::sample_top`]). `None`: it needs the whole row.
    pub fn device_k(&self) -> Option<usize> {
        let p = &self.params;
        if self.has_penalties() {
            return None;
        }
        let k = if p.temperature <= 0.0 {
            1
        } else if p.top_k > 0 {
            p.top_k
        } else {
            return None;
        };
        let k = k.max(p.n_logprobs);
        (k <= MAX_DEVICE_TOP_K).then_some(k)
    }

    /// [`Sampler::sample`] from a row's best logits: the same token, log-probabilities and
    /// RNG state as `sample` on the whole row, given at least [`Sampler::device_k`] of them.
    pub fn sample_top(&mut self, t: &TopLogits) -> Sampled {
        let p = &self.params;
        let top = t.top.iter().take(p.n_logprobs).map(|&(i, l)| (i, l - t.lse)).collect();
        let first = t.top.first().map_or(0, |c| c.0);
        let token = if p.temperature <= 0.0 {
            first
        } else {
            self.cand.clear();
            self.cand.extend(t.top.iter().take(p.top_k));
            self.choose(first)
        };
        let logit = t.top.iter().find(|c| c.0 == token).map_or(f32::NEG_INFINITY, |c| c.1);
        Sampled { token, logprob: logit - t.lse, top }
    }

    fn sample_filtered(&mut self, logits: &[f32]) -> u32 {
        let p = self.params.clone();
        self.cand.clear();
        self.cand.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        if self.has_penalties() {
            let mut counts: HashMap<u32, u32> = HashMap::new();
            for &t in &self.history {
                *counts.entry(t).or_default() += 1;
            }
            for (&t, &c) in &counts {
                if let Some(e) = self.cand.get_mut(t as usize) {
                    if e.1 > 0.0 {
                        e.1 /= p.repeat_penalty;
                    } else {
                        e.1 *= p.repeat_penalty;
                    }
                    e.1 -= c as f32 * p.frequency_penalty + p.presence_penalty;
                }
            }
        }
        if p.temperature <= 0.0 {
            return self
                .cand
                .iter()
                .fold((0u32, f32::NEG_INFINITY), |b, &(i, l)| if l > b.1 { (i, l) } else { b })
                .0;
        }
        self.choose(argmax(logits))
    }

    /// `sample_filtered` when temperature is the only filter (what an OpenAI client asks for
    /// by default): the weights come straight from the row, with no candidate list; the same
    /// token and RNG draw as `choose` on every candidate.
    fn sample_tempered(&mut self, logits: &[f32]) -> u32 {
        let max = softmax::max(logits);
        self.weights.clear();
        self.weights.extend_from_slice(logits);
        let total = softmax::exp_scaled(&mut self.weights, max, 1.0 / self.params.temperature);
        let r = self.rng.next_f64() * total;
        draw_index(&self.weights, r) as u32
    }

    /// Filters the candidates and draws one (`fallback` if none is left).
    fn choose(&mut self, fallback: u32) -> u32 {
        let p = self.params.clone();
        // llama.cpp's chain: top-k, then top-p and min-p on the probabilities at temperature 1
        // of what top-k kept, then temperature. What top-k keeps is sorted best first, so the
        // draw does not depend on how the candidates arrived (a whole row, or a device's top
        // k); without top-k only the top-p cut needs an order, and only of its own prefix, so
        // nothing here sorts the whole vocabulary.
        let best = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 {
            if p.top_k < self.cand.len() {
                self.cand.select_nth_unstable_by(p.top_k - 1, best);
                self.cand.truncate(p.top_k);
            }
            self.cand.sort_by(best);
        }
        let max = max_logit(&self.cand);
        // The temperature-1 normaliser, before min-p cuts (top-p's target is a share of it).
        let sum = if p.top_p < 1.0 { self.weights_of_cand(max, 1.0) } else { 0.0 };
        if p.min_p > 0.0 {
            // p_i ≥ min_p · p_max  ⇔  l_i − max ≥ ln min_p.
            let cut = p.min_p.ln();
            self.cand.retain(|&(_, l)| l - max >= cut);
        }
        if p.top_p < 1.0 {
            // The smallest best-first prefix whose probability reaches top_p: select a prefix
            // of growing size until it is long enough, then cut it.
            let target = p.top_p * sum as f32;
            let mut k = 64.min(self.cand.len());
            loop {
                if k < self.cand.len() {
                    self.cand.select_nth_unstable_by(k - 1, best);
                }
                self.cand[..k].sort_by(best);
                let mut acc = 0.0;
                let cut = self.cand[..k].iter().position(|&(_, l)| {
                    acc += (l - max).exp();
                    acc >= target
                });
                if let Some(i) = cut {
                    self.cand.truncate(i + 1);
                    break;
                }
                if k == self.cand.len() {
                    break;
                }
                k = (k * 4).min(self.cand.len());
            }
        }
        if self.cand.is_empty() {
            return fallback;
        }
        // Temperature, then a draw.
        let total = self.weights_of_cand(max, 1.0 / p.temperature);
        let r = self.rng.next_f64() * total;
        self.cand[draw_index(&self.weights, r)].0
    }

    /// Fills `weights` with `e^((l − max)·scale)` for each candidate (SIMD `exp`: the whole
    /// vocabulary is a candidate when no top-k is set) and returns their sum.
    fn weights_of_cand(&mut self, max: f32, scale: f32) -> f64 {
        self.weights.clear();
        self.weights.extend(self.cand.iter().map(|c| c.1));
        softmax::exp_scaled(&mut self.weights, max, scale)
    }
}

/// The largest logit of the candidates (eight running maxima: a single chain of `max` over
/// a whole vocabulary waits on each one's latency).
fn max_logit(cand: &[(u32, f32)]) -> f32 {
    let mut m = [f32::NEG_INFINITY; 8];
    let chunks = cand.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, c) in m.iter_mut().zip(c) {
            *m = m.max(c.1);
        }
    }
    tail.iter().map(|c| c.1).chain(m).fold(f32::NEG_INFINITY, f32::max)
}

/// Where `r ∈ [0, Σ weights)` falls among the weights laid end to end: the first `i` with
/// `r < w_i` after subtracting the weights before it (the last index if rounding leaves
/// none). Whole blocks whose sum `r` passes are subtracted at once, so a draw deep into
/// a 152k vocabulary does not wait on 152k dependent subtractions.
fn draw_index(weights: &[f32], mut r: f64) -> usize {
    const BLOCK: usize = 512;
    for (b, ws) in weights.chunks(BLOCK).enumerate() {
        let mut part = [0f64; 4];
        for c in ws.chunks(4) {
            for (p, &w) in part.iter_mut().zip(c) {
                *p += w as f64;
            }
        }
        let sum = (part[0] + part[1]) + (part[2] + part[3]);
        if r >= sum && (b + 1) * BLOCK < weights.len() {
            r -= sum;
            continue;
        }
        for (i, &w) in ws.iter().enumerate() {
            if r < w as f64 {
                return b * BLOCK + i;
            }
            r -= w as f64;
        }
    }
    weights.len().saturating_sub(1)
}

/// Index of the largest logit (lowest index on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    softmax::argmax(logits) as u32
}

/// The `n` largest log-softmax values, best first (lower id first on ties), and the
/// log-sum-exp of the row.
pub fn top_logprobs(logits: &[f32], n: usize) -> (Vec<(u32, f32)>, f32) {
    let t = TopLogits::of_row(logits, n);
    (t.top.into_iter().map(|(i, l)| (i, l - t.lse)).collect(), t.lse)
}

/// Candidates a sampler asks a device for at most ([`Sampler::device_k`]); a sampler that
/// needs more takes whole rows.
pub const MAX_DEVICE_TOP_K: usize = 128;

/// A row's best logits and its log-sum-exp: what a sampler without penalties needs from a
/// row, so a GPU sends back these instead of the whole vocabulary.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TopLogits {
    /// (id, logit), best first, lower id first on ties; never NaN.
    pub top: Vec<(u32, f32)>,
    /// ln Σ e^logit over the whole row.
    pub lse: f32,
}

impl TopLogits {
    /// The best `k` of a row on the host (the reference for device kernels). One SIMD pass
    /// for the max, one for the sum, one scan that keeps the best `k` (no vocabulary-sized
    /// buffers).
    pub fn of_row(row: &[f32], k: usize) -> Self {
        let max = softmax::max(row);
        let lse = softmax::log_sum_exp(row, max);
        let k = k.min(row.len());
        // k = 0 (the log-sum-exp alone, every greedy step) allocates nothing.
        let mut top: Vec<(u32, f32)> = Vec::with_capacity(if k > 0 { k + 1 } else { 0 });
        if k > 0 {
            for (i, &l) in row.iter().enumerate() {
                // Scanning in id order, an equal logit never displaces an earlier id.
                if l.is_nan() || (top.len() == k && l <= top[k - 1].1) {
                    continue;
                }
                let at = top.partition_point(|&(_, t)| t >= l);
                top.insert(at, (i as u32, l));
                top.truncate(k);
            }
        }
        TopLogits { top, lse }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_logprobs_matches_a_full_sort() {
        // Many ties (values repeat every 1000 ids), and a NaN that must never be chosen.
        let mut l: Vec<f32> = (0..5000).map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0).collect();
        l[17] = f32::NAN;
        for n in [1usize, 5, 20] {
            let (top, lse) = top_logprobs(&l, n);
            let mut idx: Vec<u32> = (0..l.len() as u32).filter(|&i| !l[i as usize].is_nan()).collect();
            idx.sort_by(|&a, &b| l[b as usize].total_cmp(&l[a as usize]).then(a.cmp(&b)));
            let want: Vec<(u32, f32)> = idx[..n].iter().map(|&i| (i, l[i as usize] - lse)).collect();
            assert_eq!(top, want, "n = {n}");
        }
        assert_eq!(argmax(&[1.0, 3.0, 2.0, 3.0]), 1);
    }

    fn logits() -> Vec<f32> {
        (0..1000).map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0).collect()
    }

    /// Temperature alone takes a shortcut past the candidate list: the same tokens and RNG
    /// state as the general chain, over a vocabulary-sized row.
    #[test]
    fn temperature_alone_draws_as_the_chain() {
        let mut rng = Rng::new(3);
        let l: Vec<f32> = (0..151_936).map(|_| (rng.next_f64() * 30.0 - 15.0) as f32).collect();
        for temperature in [0.3f32, 0.8, 1.5] {
            let params = SamplerParams {
                temperature,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                seed: 11,
                ..Default::default()
            };
            let (mut fast, mut chain) = (Sampler::new(params.clone()), Sampler::new(params));
            let mut seen = std::collections::HashSet::new();
            for _ in 0..40 {
                let (a, b) = (fast.sample(&l).token, chain.sample_filtered(&l));
                assert_eq!(a, b, "temperature {temperature}");
                seen.insert(a);
            }
            assert!(seen.len() > 10, "temperature {temperature}: {} distinct draws", seen.len());
        }
    }

    /// The blocked draw lands where subtracting the weights one by one does, and the eight
    /// running maxima find the fold's maximum.
    #[test]
    fn blocked_draw_and_max_match_the_sequential_ones() {
        let mut rng = Rng::new(5);
        for n in [1usize, 7, 511, 512, 513, 3000] {
            let w: Vec<f32> = (0..n).map(|_| (rng.next_f64() * 2.0) as f32).collect();
            let total: f64 = w.iter().map(|&w| w as f64).sum();
            for _ in 0..200 {
                let r0 = rng.next_f64() * total;
                let mut r = r0;
                let want = w.iter().position(|&w| {
                    let hit = r < w as f64;
                    r -= w as f64;
                    hit
                });
                assert_eq!(draw_index(&w, r0), want.unwrap_or(n - 1), "n {n}, r {r0}");
            }
            let mut cand: Vec<(u32, f32)> = w.iter().enumerate().map(|(i, &w)| (i as u32, w - 1.0)).collect();
            cand[n / 2].1 = f32::NAN;
            let fold = cand.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.1));
            assert_eq!(max_logit(&cand), fold, "n {n}");
        }
    }

    #[test]
    fn greedy_is_argmax() {
        let l = logits();
        let mut s = Sampler::new(SamplerParams { n_logprobs: 3, ..SamplerParams::greedy() });
        let out = s.sample(&l);
        assert_eq!(out.token, argmax(&l));
        assert_eq!(out.top.len(), 3);
        assert_eq!(out.top[0].0, out.token);
        assert!(out.top[0].1 >= out.top[1].1 && out.top[1].1 >= out.top[2].1);
        let total: f64 = l.iter().map(|&x| ((x - l[out.token as usize] + out.logprob) as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-3, "log-probs normalize: {total}");
    }

    #[test]
    fn same_seed_same_tokens() {
        let l = logits();
        let run = |seed| {
            let mut s = Sampler::new(SamplerParams {
                temperature: 1.0,
                seed,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                ..Default::default()
            });
            (0..50).map(|_| s.sample(&l).token).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn top_k_one_is_greedy_and_filters_hold() {
        let l = logits();
        let mut s = Sampler::new(SamplerParams { temperature: 5.0, top_k: 1, ..Default::default() });
        for _ in 0..20 {
            assert_eq!(s.sample(&l).token, argmax(&l));
        }
        let mut s = Sampler::new(SamplerParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.5,
            ..Default::default()
        });
        let best = l[argmax(&l) as usize];
        for _ in 0..200 {
            let t = s.sample(&l).token as usize;
            assert!((l[t] - best).exp() >= 0.5 - 1e-6, "min-p keeps only likely tokens");
        }
    }

    #[test]
    fn top_p_keeps_exactly_the_full_sort_prefix() {
        // Random logits over 1000 tokens; the kept set must be the best-first prefix that a
        // full sort finds (the sampler only ever sorts growing prefixes).
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let l: Vec<f32> = (0..1000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 10_000) as f32 / 1000.0
            })
            .collect();
        for top_p in [0.05f32, 0.5, 0.9, 0.99] {
            let max = l.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let sum: f32 = l.iter().map(|&v| (v - max).exp()).sum();
            let mut order: Vec<u32> = (0..l.len() as u32).collect();
            order.sort_by(|&a, &b| l[b as usize].total_cmp(&l[a as usize]).then(a.cmp(&b)));
            let mut acc = 0.0;
            let n = order.iter().position(|&i| {
                acc += (l[i as usize] - max).exp();
                acc >= top_p * sum
            });
            let kept: std::collections::BTreeSet<u32> = order[..n.unwrap() + 1].iter().copied().collect();
            let mut s = Sampler::new(SamplerParams {
                temperature: 1e4,
                top_k: 0,
                top_p,
                min_p: 0.0,
                ..Default::default()
            });
            let seen: std::collections::BTreeSet<u32> =
                (0..20 * kept.len() + 200).map(|_| s.sample(&l).token).collect();
            assert_eq!(seen, kept, "top_p {top_p}: {} kept", kept.len());
        }
    }

    /// Sampling from a row's device top-k gives the same tokens, log-probabilities and RNG
    /// stream as sampling from the whole row, for every setting that asks for it.
    #[test]
    fn sample_top_equals_sample_on_the_whole_row() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let settings = [
            SamplerParams { n_logprobs: 5, ..SamplerParams::greedy() },
            SamplerParams { temperature: 0.8, top_k: 40, ..Default::default() },
            SamplerParams { temperature: 1.5, top_k: 5, top_p: 1.0, min_p: 0.0, ..Default::default() },
            SamplerParams {
                temperature: 0.7,
                top_k: 100,
                top_p: 0.5,
                min_p: 0.0,
                n_logprobs: 3,
                ..Default::default()
            },
            SamplerParams { temperature: 2.0, top_k: 1, ..Default::default() },
            SamplerParams { temperature: 1.0, top_k: 40, min_p: 0.2, top_p: 1.0, ..Default::default() },
        ];
        for (si, p) in settings.iter().enumerate() {
            let (mut full, mut dev) = (Sampler::new(p.clone()), Sampler::new(p.clone()));
            let k = dev.device_k().expect("these settings need only the top");
            for step in 0..200 {
                // Coarse values: many ties, including at the k-th place; one -inf.
                let width = 1000 + step % 37;
                let mut row: Vec<f32> = (0..width).map(|_| (next() % 300) as f32 / 40.0 - 3.0).collect();
                row[step % width] = f32::NEG_INFINITY;
                let a = full.sample(&row);
                let b = dev.sample_top(&TopLogits::of_row(&row, k));
                assert_eq!(a, b, "setting {si}, step {step}");
                full.accept(a.token);
                dev.accept(b.token);
            }
        }
        let pen = Sampler::new(SamplerParams { repeat_penalty: 1.1, ..Default::default() });
        let mut pen_hist = pen.clone();
        pen_hist.accept(1);
        assert_eq!((pen.device_k(), pen_hist.device_k()), (Some(40), None), "penalties need whole rows");
        let no_k = Sampler::new(SamplerParams { top_k: 0, ..Default::default() });
        assert_eq!(no_k.device_k(), None);
    }

    #[test]
    fn penalties_change_the_choice() {
        let mut l = vec![0.0f32; 10];
        l[3] = 2.0;
        l[4] = 1.9;
        let mut s = Sampler::new(SamplerParams { repeat_penalty: 1.5, ..SamplerParams::greedy() });
        assert_eq!(s.sample(&l).token, 3);
        s.accept(3);
        assert_eq!(s.sample(&l).token, 4, "2.0/1.5 < 1.9");
        let mut s = Sampler::new(SamplerParams { presence_penalty: 0.5, ..SamplerParams::greedy() });
        s.accept(3);
        assert_eq!(s.sample(&l).token, 4);
    }
}
