//! Matmul per weight type at the real shapes of the three bench models, through the path
//! the CPU backend takes: weights repacked for the SIMD kernels where the format has a
//! packed layout (Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K), the row kernels otherwise (F32, F16,
//! BF16, Q5_K). Decode (1 row) is reported as weight bytes read per second — generation is
//! bound by reading weights — and 8 rows (a continuous-batching decode step) and a 64-row
//! prefill tile as multiply-adds·2 per second.
//! rayon's global pool (all cores). `cargo bench --bench matmul [-- FILTER]`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferrite::kernels::cpu::packed::{PackScratch, PackedMatrix};
use ferrite::kernels::cpu::{matmul, Scratch};
use ferrite::kernels::quant::QuantType;
use std::time::Duration;

/// (name, n_in, n_out): per model, the attention query, the FFN up/gate and the FFN down
/// projections (SmolLM2-135M, Qwen2.5-0.5B, Qwen2.5-1.5B).
const SHAPES: &[(&str, usize, usize)] = &[
    ("smollm2 attn_q 576x576", 576, 576),
    ("smollm2 ffn_up 576x1536", 576, 1536),
    ("smollm2 ffn_down 1536x576", 1536, 576),
    ("qwen05 attn_q 896x896", 896, 896),
    ("qwen05 ffn_up 896x4864", 896, 4864),
    ("qwen05 ffn_down 4864x896", 4864, 896),
    ("qwen15 attn_q 1536x1536", 1536, 1536),
    ("qwen15 ffn_up 1536x8960", 1536, 8960),
    ("qwen15 ffn_down 8960x1536", 8960, 1536),
];

/// Every weight type the fetchable models use, plus Q5_K.
const TYPES: &[QuantType] = &[
    QuantType::Q4_0,
    QuantType::Q4_1,
    QuantType::Q5_0,
    QuantType::Q8_0,
    QuantType::Q4_K,
    QuantType::Q5_K,
    QuantType::Q6_K,
    QuantType::F16,
    QuantType::BF16,
    QuantType::F32,
];

/// Random rows (never zeros) quantized with the reference quantizer.
fn weights(ty: QuantType, n_in: usize, n_out: usize) -> Vec<u8> {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let mut out = Vec::new();
    let mut row = vec![0f32; n_in];
    for _ in 0..n_out {
        row.iter_mut().for_each(|x| *x = next());
        ty.quantize_row(&row, &mut out).expect("quantizable type");
    }
    out
}

fn bench(c: &mut Criterion) {
    for &(shape, n_in, n_out) in SHAPES {
        let mut g = c.benchmark_group(format!("matmul {shape}"));
        g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
        for &ty in TYPES {
            if n_in % ty.block_elems() != 0 {
                continue;
            }
            let w = weights(ty, n_in, n_out);
            let packed = PackedMatrix::pack(ty, &w, n_in, n_out);
            let path = packed.as_ref().map_or("rows", |p| p.isa().name());
            let (mut scratch, mut pack_scratch) = (Scratch::default(), PackScratch::default());
            for n in [1usize, 8, 64] {
                let x: Vec<f32> = (0..n * n_in).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
                let mut out = vec![0f32; n * n_out];
                g.throughput(if n == 1 {
                    Throughput::Bytes(w.len() as u64)
                } else {
                    Throughput::Elements((2 * n * n_in * n_out) as u64)
                });
                let id = BenchmarkId::new(format!("{} {path}", ty.name()), format!("{n} rows"));
                g.bench_with_input(id, &n, |b, &n| match &packed {
                    Some(p) => b.iter(|| p.matmul(&x, n, &mut out, &mut pack_scratch)),
                    None => b.iter(|| matmul(ty, &w, n_in, n_out, &x, n, &mut out, &mut scratch)),
                });
            }
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
