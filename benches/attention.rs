//! Attention over an f16 KV cache at several context lengths, with the head shapes of the
//! three bench models (query heads per KV head × head size), in both accumulation modes.
//! Reported as K+V bytes read per second. `cargo bench --bench attention`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferrite::kernels::cpu::attn::{attend_run, HeadKv, Online, Run, MAX_RUN};

/// (name, query heads sharing a KV head, head size, KV heads in a slot).
const SHAPES: &[(&str, usize, usize, usize)] =
    &[("smollm2 3x64", 3, 64, 3), ("qwen05 7x64", 7, 64, 2), ("qwen15 6x128", 6, 128, 2)];
/// Cache block size: runs never cross a block.
const RUN: usize = 32;

fn rand_bits(n: usize, seed: &mut u64) -> Vec<u16> {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            half::f16::from_f32((*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0).to_bits()
        })
        .collect()
}

/// One query row's attention over `keys` slots, run by run as the backend feeds it; returns
/// the first head's denominator (so that nothing is optimised away).
fn attend_all(q: &[f32], d: usize, kv: &HeadKv, keys: usize, f16_accum: bool, st: &mut Online) -> f32 {
    for s0 in (0..keys).step_by(RUN) {
        let run =
            Run { q, dk: d, kv, slot0: s0, n: RUN.min(keys - s0), scale: 0.125, f16_accum, group: st.heads };
        attend_run(&run, st);
    }
    st.l[0]
}

fn bench(c: &mut Criterion) {
    const { assert!(RUN <= MAX_RUN) };
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for &(shape, heads, d, kv_heads) in SHAPES {
        let mut g = c.benchmark_group(format!("attention {shape}"));
        g.sample_size(20);
        for keys in [512usize, 4096] {
            let stride = kv_heads * d;
            let k = rand_bits(keys * stride, &mut seed);
            let v = rand_bits(keys * stride, &mut seed);
            let q: Vec<f32> =
                rand_bits(heads * d, &mut seed).iter().map(|&b| half::f16::from_bits(b).to_f32()).collect();
            let kv = HeadKv { k: &k, v: &v, k_stride: stride, v_stride: stride, k_off: d, v_off: d };
            let mut acc = vec![0f32; heads * d];
            g.throughput(Throughput::Bytes((2 * keys * d * 2) as u64));
            for f16_accum in [false, true] {
                let mode = if f16_accum { "f16 acc" } else { "f32 acc" };
                g.bench_with_input(BenchmarkId::new(mode, keys), &keys, |b, &keys| {
                    b.iter(|| attend_all(&q, d, &kv, keys, f16_accum, &mut Online::new(heads, &mut acc)))
                });
            }
        }
        g.finish();
    }
}

/// Decode as the model runs it: one query row over 24 layers' caches (96 MiB in all, so
/// keys and values come from memory, not from a warm cache), f16 mode, blocks in order;
/// with each KV head's rows interleaved slot by slot, and contiguous (head-major blocks).
fn bench_cold(c: &mut Criterion) {
    let (heads, d, kv_heads, layers, keys) = (7usize, 64usize, 2usize, 24usize, 4096usize);
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let stride = kv_heads * d;
    let caches: Vec<(Vec<u16>, Vec<u16>)> = (0..layers)
        .map(|_| (rand_bits(keys * stride, &mut seed), rand_bits(keys * stride, &mut seed)))
        .collect();
    let q: Vec<f32> =
        rand_bits(heads * d, &mut seed).iter().map(|&b| half::f16::from_bits(b).to_f32()).collect();
    let mut acc = vec![0f32; heads * d];
    let mut g = c.benchmark_group("attention qwen05 7x64 decode, 24 layers from memory");
    g.sample_size(20);
    g.throughput(Throughput::Bytes((layers * 2 * keys * d * 2) as u64));
    for contiguous in [false, true] {
        let name = if contiguous { "head-major blocks" } else { "heads interleaved per slot" };
        g.bench_function(BenchmarkId::new(name, keys), |b| {
            b.iter(|| {
                let mut l = 0.0;
                for (k, v) in &caches {
                    let kv = if contiguous {
                        HeadKv { k, v, k_stride: d, v_stride: d, k_off: 0, v_off: 0 }
                    } else {
                        HeadKv { k, v, k_stride: stride, v_stride: stride, k_off: d, v_off: d }
                    };
                    l += attend_all(&q, d, &kv, keys, true, &mut Online::new(heads, &mut acc));
                }
                l
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench, bench_cold);
criterion_main!(benches);
