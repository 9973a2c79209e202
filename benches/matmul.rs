//! Matmul kernels per weight type at real model shapes: decode (1 row, reported as weight
//! GB/s — generation is bound by reading weights) and a 64-row batch (reported as GFLOP/s).
//! `cargo bench --bench matmul` (criterion; compare figures within one run).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferrite::kernels::cpu::{matmul, Scratch};
use ferrite::kernels::quant::QuantType;

/// (name, n_in, n_out): SmolLM2-135M attention/FFN and Qwen2.5-0.5B FFN shapes.
const SHAPES: &[(&str, usize, usize)] = &[
    ("smollm2 q/o 576x576", 576, 576),
    ("smollm2 up 576x1536", 576, 1536),
    ("qwen05 up 896x4864", 896, 4864),
];

fn weights(ty: QuantType, n_in: usize, n_out: usize) -> Vec<u8> {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let row: Vec<f32> = (0..n_in).map(|_| next()).collect();
    let mut out = Vec::new();
    for _ in 0..n_out {
        ty.quantize_row(&row, &mut out).expect("quantizable type");
    }
    out
}

fn bench(c: &mut Criterion) {
    use QuantType::*;
    for &(shape, n_in, n_out) in SHAPES {
        for ty in [F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K] {
            if n_in % ty.block_elems() != 0 {
                continue;
            }
            let w = weights(ty, n_in, n_out);
            let mut scratch = Scratch::default();
            let mut g = c.benchmark_group(format!("matmul {shape}"));
            g.sample_size(20);
            for n in [1usize, 64] {
                let x: Vec<f32> = (0..n * n_in).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
                let mut out = vec![0f32; n * n_out];
                if n == 1 {
                    g.throughput(Throughput::Bytes(w.len() as u64));
                } else {
                    g.throughput(Throughput::Elements((2 * n * n_in * n_out) as u64));
                }
                g.bench_with_input(BenchmarkId::new(ty.name(), format!("{n} rows")), &n, |b, &n| {
                    b.iter(|| matmul(ty, &w, n_in, n_out, &x, n, &mut out, &mut scratch))
                });
            }
            g.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
