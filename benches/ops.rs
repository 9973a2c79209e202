//! The CPU backend's small ops at the bench models' sizes: RMSNorm, rope, and sampling
//! (log-softmax top-N, greedy argmax, and the full sampler chain) over the 49k (SmolLM2)
//! and 152k (Qwen2.5) vocabularies. Throughput is values processed per second.
//! `cargo bench --bench ops [-- FILTER]`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferrite::engine::backend::cpu::{CpuBackend, CpuWeight};
use ferrite::engine::backend::{Backend, RopeParams};
use ferrite::sampler::{argmax, top_logprobs};
use ferrite::{Sampler, SamplerParams};
use std::time::Duration;

fn rand_vec(n: usize, seed: &mut u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            (*seed >> 40) as f32 / (1u64 << 24) as f32 * 8.0 - 4.0
        })
        .collect()
}

fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    g
}

fn norm_and_rope(c: &mut Criterion) {
    let b = CpuBackend::new();
    let mut seed = 11u64;
    // (model, hidden size, query heads, head size, rope base, NeoX)
    for &(model, width, heads, hd, base, neox) in &[
        ("smollm2", 576usize, 9usize, 64usize, 100_000f32, false),
        ("qwen05", 896, 14, 64, 1_000_000.0, true),
        ("qwen15", 1536, 12, 128, 1_000_000.0, true),
    ] {
        let w = CpuWeight::Vector(rand_vec(width, &mut seed));
        let mut g = group(c, &format!("rms_norm {model} {width}"));
        for rows in [1usize, 512] {
            let x0 = rand_vec(rows * width, &mut seed);
            let mut x = x0.clone();
            g.throughput(Throughput::Elements((rows * width) as u64));
            g.bench_with_input(BenchmarkId::from_parameter(format!("{rows} rows")), &rows, |bn, &rows| {
                bn.iter(|| {
                    x.copy_from_slice(&x0);
                    b.rms_norm(&mut x, &w, rows, width, 1e-6)
                })
            });
        }
        g.finish();

        let p = RopeParams::new(hd, base, neox, 32768);
        let mut g = group(c, &format!("rope {model} {heads}x{hd}"));
        for rows in [1usize, 512] {
            let x0 = rand_vec(rows * heads * hd, &mut seed);
            let mut x = x0.clone();
            let positions: Vec<u32> = (0..rows as u32).map(|i| 4000 + i).collect();
            g.throughput(Throughput::Elements((rows * heads * hd) as u64));
            g.bench_with_input(BenchmarkId::from_parameter(format!("{rows} rows")), &rows, |bn, _| {
                bn.iter(|| {
                    x.copy_from_slice(&x0);
                    b.rope(&mut x, &positions, heads, hd, &p)
                })
            });
        }
        g.finish();
    }
}

fn sampling(c: &mut Criterion) {
    let mut seed = 5u64;
    for &(name, n_vocab) in &[("49k (SmolLM2)", 49_152usize), ("152k (Qwen2.5)", 151_936)] {
        let logits = rand_vec(n_vocab, &mut seed);
        let mut g = group(c, &format!("sampling {name}"));
        g.throughput(Throughput::Elements(n_vocab as u64));
        g.bench_function("argmax", |b| b.iter(|| argmax(&logits)));
        g.bench_function("log-softmax top-5", |b| b.iter(|| top_logprobs(&logits, 5)));
        let chain = SamplerParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.1,
            seed: 42,
            ..SamplerParams::default()
        };
        // Temperature alone is what an OpenAI client sends by default: the whole vocabulary
        // is a candidate.
        let temp = SamplerParams {
            temperature: 0.8,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 42,
            ..SamplerParams::default()
        };
        for (label, params) in [
            ("greedy", SamplerParams::greedy()),
            ("temperature", temp),
            ("temp+top-k+top-p+min-p+penalty", chain),
        ] {
            let mut s = Sampler::new(params);
            for t in 0..64 {
                s.accept(t * 31);
            }
            g.bench_function(BenchmarkId::new("sampler", label), |b| b.iter(|| s.sample(&logits)));
        }
        g.finish();
    }
}

criterion_group!(benches, norm_and_rope, sampling);
criterion_main!(benches);
