//! Attention over an f16 KV cache at several context lengths, with the head shapes of the
//! three bench models (query heads per KV head × head size): the small-batch (f16) mode as
//! decode runs it, reported as K+V bytes read per second, and the tiled prompt mode as one
//! job of 16 rows runs it, reported as scores per second. `cargo bench --bench attention`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferrite::kernels::cpu::attn::{attend_run, HeadKv, Online, Run, MAX_RUN};
use ferrite::kernels::cpu::attn_tile::{self, State, Tile, TILE};

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

/// One query row's attention over `keys` slots, run by run as the backend feeds it (each run
/// asking for the next one's keys and values); returns the first head's denominator (so that
/// nothing is optimised away).
fn attend_all(q: &[f32], d: usize, kv: &HeadKv, keys: usize, st: &mut Online) -> f32 {
    for s0 in (0..keys).step_by(RUN) {
        let (s1, n1) = (s0 + RUN, keys.saturating_sub(s0 + RUN).min(RUN));
        let ahead: [&[u8]; 2] = match n1 {
            0 => [&[], &[]],
            _ => [
                bytemuck::cast_slice(&kv.k[s1 * kv.k_stride + kv.k_off..][..(n1 - 1) * kv.k_stride + d]),
                bytemuck::cast_slice(&kv.v[s1 * kv.v_stride + kv.v_off..][..(n1 - 1) * kv.v_stride + d]),
            ],
        };
        let run = Run { q, dk: d, kv, slot0: s0, n: RUN.min(keys - s0), scale: 0.125, ahead };
        attend_run(&run, st);
    }
    st.l[0]
}

/// Rows of one tiled job (as the CPU backend groups them).
const TILE_ROWS: usize = 16;

/// One tiled job: `TILE_ROWS` query rows × `heads` heads over `keys` keys, each tile
/// converted once; returns a sum of the denominators.
fn attend_tiled(
    q: &[f32],
    d: usize,
    heads: usize,
    kv: &HeadKv,
    keys: usize,
    tile: &mut Tile,
    acc: &mut [f32],
) -> f32 {
    let n = TILE_ROWS * heads;
    let (mut m, mut s) = (vec![f32::NEG_INFINITY; n], vec![0f32; n]);
    acc.fill(0.0);
    for t0 in (0..keys).step_by(TILE) {
        let lanes = 0..TILE.min(keys - t0);
        tile.load(kv, d, d, lanes.clone(), |j| t0 + j);
        for i in 0..n {
            let mut st = State { m: m[i], s: s[i], acc: &mut acc[i * d..(i + 1) * d] };
            attn_tile::update(&q[i * d..(i + 1) * d], tile, lanes.clone(), 0.125, &mut st);
            (m[i], s[i]) = (st.m, st.s);
        }
    }
    s.iter().sum()
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
            g.bench_with_input(BenchmarkId::new("f16 mode (decode)", keys), &keys, |b, &keys| {
                b.iter(|| attend_all(&q, d, &kv, keys, &mut Online::new(heads, &mut acc)))
            });
        }
        g.finish();
    }
}

/// The tiled prompt mode: one job of 16 rows at 512 and 4096 keys.
fn bench_tiled(c: &mut Criterion) {
    let mut seed = 0x1234_5678_9ABC_DEF1u64;
    for &(shape, heads, d, kv_heads) in SHAPES {
        let mut g = c.benchmark_group(format!("attention {shape} tiled, {TILE_ROWS} rows"));
        g.sample_size(10);
        for keys in [512usize, 4096] {
            let stride = kv_heads * d;
            let k = rand_bits(keys * stride, &mut seed);
            let v = rand_bits(keys * stride, &mut seed);
            let q: Vec<f32> = rand_bits(TILE_ROWS * heads * d, &mut seed)
                .iter()
                .map(|&b| half::f16::from_bits(b).to_f32())
                .collect();
            let kv = HeadKv { k: &k, v: &v, k_stride: stride, v_stride: stride, k_off: d, v_off: d };
            let mut acc = vec![0f32; TILE_ROWS * heads * d];
            let mut tile = Tile::default();
            g.throughput(Throughput::Elements((TILE_ROWS * heads * keys) as u64));
            g.bench_with_input(BenchmarkId::new("scores", keys), &keys, |b, &keys| {
                b.iter(|| attend_tiled(&q, d, heads, &kv, keys, &mut tile, &mut acc))
            });
        }
        g.finish();
    }
}

/// Decode as the model runs it: one query row over 24 layers' caches (96 MiB in all: past
/// the L2, though a large last-level cache may hold them), f16 mode, blocks in order; with
/// each KV head's rows interleaved slot by slot, and contiguous (head-major blocks); and
/// head-major with the last-level cache emptied before every pass (as in a decode).
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
    // Larger than the last-level cache (480 MiB on the Xeon VM the figures come from): read
    // before every iteration, so the caches come from memory as in a decode, whose weights
    // pass through the cache between two layers' attention.
    let flush: Vec<u64> = (0..96u64 << 20).collect();
    g.bench_function(BenchmarkId::new("head-major blocks, past the last-level cache", keys), |b| {
        b.iter_batched(
            || flush.iter().fold(0u64, |a, &x| a ^ x),
            |_| {
                let mut l = 0.0;
                for (k, v) in &caches {
                    let kv = HeadKv { k, v, k_stride: d, v_stride: d, k_off: 0, v_off: 0 };
                    l += attend_all(&q, d, &kv, keys, &mut Online::new(heads, &mut acc));
                }
                l
            },
            criterion::BatchSize::PerIteration,
        )
    });
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
                    l += attend_all(&q, d, &kv, keys, &mut Online::new(heads, &mut acc));
                }
                l
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench, bench_tiled, bench_cold);
criterion_main!(benches);
