//! Every WGSL kernel against the CPU backend (the reference) on random data, odd shapes
//! included. Needs a wgpu adapter (CI: Mesa's lavapipe); without one each test says so and
//! passes, unless FERRITE_WGPU_REQUIRED=1 (set by .ci/run) makes a missing adapter a failure.
#![cfg(feature = "wgpu")]

use ferrite_engine::backend::cpu::CpuBackend;
use ferrite_engine::backend::wgsl::{WgpuBackend, WgpuOptions, ATTN_PART_KEYS};
use ferrite_engine::backend::{Activation, AttnBatch, AttnParams, Backend, RopeParams, WeightUse};
use ferrite_engine::kv_cache::BLOCK_SIZE;
use ferrite_engine::sampler::TopLogits;
use ferrite_loader::writer::GgufWriter;
use ferrite_loader::{GgmlType, GgufFile};
use half::f16;
use std::sync::{Arc, OnceLock};

/// The shared wgpu backends: the adapter with f16, subgroups (where it offers them) and the
/// staged matmul; the same adapter without any of them (the paths other adapters take);
/// and, where it offers f64, once more without it: the float-pair sums and `exp` of
/// adapters without f64 (Metal), held to the tolerances of hardware. None (with a message)
/// when there is no adapter.
fn gpus() -> &'static [WgpuBackend] {
    static GPUS: OnceLock<Vec<WgpuBackend>> = OnceLock::new();
    GPUS.get_or_init(|| {
        // The staged matmul too, which the engine runs on hardware adapters only.
        let full =
            match WgpuBackend::with_options(true, WgpuOptions { tiled: Some(true), ..Default::default() }) {
                Ok(b) => b,
                Err(e) if std::env::var("FERRITE_WGPU_REQUIRED").as_deref() != Ok("1") => {
                    eprintln!("skipped: no wgpu adapter ({e}); install mesa-vulkan-drivers libvulkan1");
                    return Vec::new();
                }
                Err(e) => panic!("FERRITE_WGPU_REQUIRED=1 but {e}"),
            };
        let mut all = vec![full];
        {
            let opts = WgpuOptions { f16: false, subgroups: false, tiled: Some(false), ..Default::default() };
            all.push(
                WgpuBackend::with_options(true, opts)
                    .expect("the same adapter without f16, subgroups and staging"),
            );
            if all[0].caps().f64 {
                let opts = WgpuOptions { f64: false, tiled: Some(false), ..Default::default() };
                all.push(WgpuBackend::with_options(true, opts).expect("the same adapter without f64"));
            }
        }
        for b in &all {
            eprintln!("adapter: {}", b.adapter());
        }
        all
    })
}

/// A small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    /// Uniform in [-1, 1).
    fn f(&mut self) -> f32 {
        (self.next() as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// A block scale: nonzero, either sign, as f16 bytes.
    fn scale(&mut self, mag: f32) -> [u8; 2] {
        let s = mag * (0.2 + 0.8 * self.f().abs()) * if self.next() & 1 == 0 { 1.0 } else { -1.0 };
        f16::from_f32(s).to_le_bytes()
    }
}

/// Random data of `n` values in type `ty`: random codes, sane block scales.
fn random_tensor(rng: &mut Rng, ty: GgmlType, n: usize) -> Vec<u8> {
    let put = |dst: &mut [u8], at: usize, v: [u8; 2]| dst[at..at + 2].copy_from_slice(&v);
    match ty {
        GgmlType::F32 => rng.vec(n).iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => rng.vec(n).iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect(),
        _ => {
            let (block, bytes) = (ty.block_elems() as usize, ty.block_bytes() as usize);
            let mut out = Vec::with_capacity(n / block * bytes);
            for _ in 0..n / block {
                let mut b = rng.bytes(bytes);
                match ty {
                    GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => put(&mut b, 0, rng.scale(0.05)),
                    GgmlType::Q4_1 => {
                        put(&mut b, 0, rng.scale(0.05));
                        put(&mut b, 2, rng.scale(0.3));
                    }
                    GgmlType::Q4_K => {
                        put(&mut b, 0, rng.scale(0.01));
                        put(&mut b, 2, rng.scale(0.01));
                    }
                    GgmlType::Q6_K => put(&mut b, 208, rng.scale(0.002)),
                    other => panic!("no random blocks for {other:?}"),
                }
                out.extend_from_slice(&b);
            }
            out
        }
    }
}

/// A GGUF file holding `tensors` (name, dims, type, data), written to a temporary path.
fn gguf(tag: &str, tensors: Vec<(&str, Vec<u64>, GgmlType, Vec<u8>)>) -> Arc<GgufFile> {
    let mut w = GgufWriter::new();
    for (name, dims, ty, data) in tensors {
        w = w.tensor(name, &dims, ty, data);
    }
    let dir = std::env::temp_dir().join(format!("ferrite-wgpu-kernels-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{tag}.gguf"));
    std::fs::write(&path, w.to_bytes()).unwrap();
    let file = Arc::new(GgufFile::open(&path).unwrap());
    let _ = std::fs::remove_file(&path);
    file
}

/// Host data in, host data out, on one backend.
fn put<B: Backend>(b: &B, data: &[f32]) -> B::Buf {
    let mut buf = b.alloc(data.len());
    b.write(&mut buf, data);
    buf
}

fn get<B: Backend>(b: &B, buf: &B::Buf, len: usize) -> Vec<f32> {
    let mut out = Vec::new();
    b.read(buf, len, &mut out);
    out
}

/// Whether the adapter must reproduce the CPU's bits: a software one with f64 (lavapipe, as
/// in CI) divides and takes square roots exactly rounded, and the kernels emulate the CPU's
/// fused multiply-adds and f64 sums there. Hardware may round division and square root
/// within a few ulp (Vulkan allows it), so there each kernel is held to a tolerance.
fn exact(g: &WgpuBackend) -> bool {
    g.software() && g.caps().f64
}

/// `tol` where the adapter is not [`exact`], else 0 (equal values).
fn tol(g: &WgpuBackend, tol: f32) -> f32 {
    if exact(g) {
        0.0
    } else {
        tol
    }
}

/// Asserts `gpu ≈ cpu` elementwise: |a − b| ≤ tol · max(1, max|cpu|).
fn close(what: &str, cpu: &[f32], gpu: &[f32], tol: f32) {
    assert_eq!(cpu.len(), gpu.len(), "{what}: lengths");
    let scale = cpu.iter().fold(1f32, |m, v| m.max(v.abs()));
    let (i, d) = cpu
        .iter()
        .zip(gpu)
        .map(|(a, b)| if a.is_nan() || b.is_nan() { f32::INFINITY } else { (a - b).abs() })
        .enumerate()
        .fold((0, 0f32), |best, (i, d)| if d > best.1 { (i, d) } else { best });
    assert!(
        d <= tol * scale,
        "{what}: element {i} cpu {} gpu {} (|d| {d} > {tol} × {scale})",
        cpu[i],
        gpu[i]
    );
    assert!(cpu.iter().any(|v| *v != 0.0), "{what}: the reference is all zeros");
}

/// The weight types the WGSL matmul reads.
const MATMUL_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q6_K,
];

#[test]
fn matmul_matches_cpu() {
    for g in gpus() {
        let c = CpuBackend::new();
        let mut rng = Rng(11);
        // (n_in, n_out, rows): odd output counts, one row (decode), batches past a workgroup,
        // and for the staged kernels (8 rows or more) tiles cut short in rows, tokens and
        // input values (a step covers 256 values of quantized weights, 128 of float ones).
        for &(n_in, n_out, n) in &[
            (256usize, 67usize, 1usize),
            (512, 130, 5),
            (256, 9, 70),
            (768, 200, 3),
            (96, 33, 4),
            (96, 33, 9),
            (1280, 37, 13),
            (512, 8, 8),
            (416, 17, 11),
            (97, 21, 9),
        ] {
            for &ty in MATMUL_TYPES {
                if n_in % ty.block_elems() as usize != 0 {
                    continue;
                }
                let what = format!("{ty:?} {n_out}×{n_in}, {n} rows");
                let file = gguf(
                    "mm",
                    vec![(
                        "w",
                        vec![n_in as u64, n_out as u64],
                        ty,
                        random_tensor(&mut rng, ty, n_in * n_out),
                    )],
                );
                // Activations with a massive outlier in some rows, as SmolLM2's residual stream has.
                let mut x = rng.vec(n * n_in);
                for t in (0..n).step_by(2) {
                    x[t * n_in + (t * 7) % n_in] = 2800.0;
                }
                let (wc, wg) = (
                    c.weight(&file, "w", WeightUse::Matmul).unwrap(),
                    g.weight(&file, "w", WeightUse::Matmul).unwrap(),
                );
                let (xc, xg) = (put(&c, &x), put(g, &x));
                let (mut oc, mut og) = (c.alloc(n * n_out), g.alloc(n * n_out));
                c.matmul(&wc, &xc, n, &mut oc);
                g.matmul(&wg, &xg, n, &mut og);
                close(&what, &get(&c, &oc, n * n_out), &get(g, &og, n * n_out), tol(g, 1e-4));
            }
        }
    }
}

#[test]
fn embed_matches_cpu() {
    for g in gpus() {
        let c = CpuBackend::new();
        let mut rng = Rng(12);
        let (width, vocab) = (256usize, 37usize);
        for &ty in MATMUL_TYPES {
            let file = gguf(
                "embd",
                vec![("e", vec![width as u64, vocab as u64], ty, random_tensor(&mut rng, ty, width * vocab))],
            );
            let ids = [0u32, 36, 5, 5, 17];
            for scale in [1.0f32, 9.8] {
                let (wc, wg) = (
                    c.weight(&file, "e", WeightUse::Table).unwrap(),
                    g.weight(&file, "e", WeightUse::Table).unwrap(),
                );
                let (mut oc, mut og) = (c.alloc(ids.len() * width), g.alloc(ids.len() * width));
                c.embed(&wc, &ids, scale, &mut oc).unwrap();
                g.embed(&wg, &ids, scale, &mut og).unwrap();
                let len = ids.len() * width;
                close(&format!("embed {ty:?} ×{scale}"), &get(&c, &oc, len), &get(g, &og, len), 0.0);
            }
            let wg = g.weight(&file, "e", WeightUse::Table).unwrap();
            assert!(
                g.embed(&wg, &[vocab as u32], 1.0, &mut g.alloc(width)).is_err(),
                "an id past the vocabulary is refused"
            );
        }
    }
}

#[test]
fn norms_and_elementwise_match_cpu() {
    for g in gpus() {
        let c = CpuBackend::new();
        let mut rng = Rng(13);
        let (rows, width) = (7usize, 576usize);
        let len = rows * width;
        // Residual streams with SmolLM2-style outliers, so the norm's sum of squares is wide.
        let mut x = rng.vec(len);
        x[3] = 2800.0;
        x[width + 10] = -900.0;
        let y = rng.vec(len);
        let nw: Vec<f32> = rng.vec(width);
        let file = gguf(
            "vec",
            vec![("n", vec![width as u64], GgmlType::F32, nw.iter().flat_map(|v| v.to_le_bytes()).collect())],
        );
        let (nc, ng) = (
            c.weight(&file, "n", WeightUse::Matmul).unwrap(),
            g.weight(&file, "n", WeightUse::Matmul).unwrap(),
        );

        let (mut xc, mut xg) = (put(&c, &x), put(g, &x));
        c.rms_norm(&mut xc, &nc, rows, width, 1e-5);
        g.rms_norm(&mut xg, &ng, rows, width, 1e-5);
        close("rms_norm", &get(&c, &xc, len), &get(g, &xg, len), tol(g, 1e-6));

        let (xc, xg) = (put(&c, &x), put(g, &x));
        let (mut oc, mut og) = (c.alloc(len), g.alloc(len));
        c.rms_norm_to(&xc, &nc, rows, width, 1e-6, &mut oc);
        g.rms_norm_to(&xg, &ng, rows, width, 1e-6, &mut og);
        close("rms_norm_to", &get(&c, &oc, len), &get(g, &og, len), tol(g, 1e-6));
        close("rms_norm_to keeps x", &x, &get(g, &xg, len), 0.0);

        // Bias, add and gather.
        let bias = gguf(
            "bias",
            vec![(
                "b",
                vec![width as u64],
                GgmlType::F32,
                y[..width].iter().flat_map(|v| v.to_le_bytes()).collect(),
            )],
        );
        let (bc, bg) = (
            c.weight(&bias, "b", WeightUse::Matmul).unwrap(),
            g.weight(&bias, "b", WeightUse::Matmul).unwrap(),
        );
        let (mut xc, mut xg) = (put(&c, &x), put(g, &x));
        c.add_bias(&mut xc, &bc, rows);
        g.add_bias(&mut xg, &bg, rows);
        close("add_bias", &get(&c, &xc, len), &get(g, &xg, len), 0.0);
        let (yc, yg) = (put(&c, &y), put(g, &y));
        c.add(&mut xc, &yc, len - 5);
        g.add(&mut xg, &yg, len - 5);
        close("add", &get(&c, &xc, len), &get(g, &xg, len), 0.0);
        c.scale(&mut xc, len - 7, 0.37);
        g.scale(&mut xg, len - 7, 0.37);
        close("scale", &get(&c, &xc, len), &get(g, &xg, len), 0.0);
        let pick = [6u32, 0, 3];
        let (mut sc, mut sg) = (c.alloc(3 * width), g.alloc(3 * width));
        c.get_rows(&xc, &pick, width, &mut sc);
        g.get_rows(&xg, &pick, width, &mut sg);
        close("get_rows", &get(&c, &sc, 3 * width), &get(g, &sg, 3 * width), 0.0);

        // Gated activations on gate values across the ranges where SiLU and GELU bend.
        let gate: Vec<f32> = x.iter().map(|v| v.clamp(-1.0, 1.0) * 12.0).collect();
        for act in [Activation::Silu, Activation::GeluTanh] {
            let (mut gc, mut gg) = (put(&c, &gate), put(g, &gate));
            c.gated_act(&mut gc, &yc, len - 3, act);
            g.gated_act(&mut gg, &yg, len - 3, act);
            // GELU takes the device's tanh (then rounds to f16), so it keeps a tolerance.
            let t = if act == Activation::Silu { tol(g, 2e-6) } else { 2e-6 };
            close(&format!("{act:?}"), &get(&c, &gc, len), &get(g, &gg, len), t);
        }
    }
}

#[test]
fn rope_matches_cpu() {
    for g in gpus() {
        let c = CpuBackend::new();
        let mut rng = Rng(14);
        let positions: Vec<u32> = vec![0, 1, 7, 300, 4095, 12, 31999];
        // (heads, head dim, rotated dims, neox, YaRN)
        for &(heads, hd, n_dims, neox, yarn) in &[
            (3usize, 64usize, 64usize, false, false),
            (5, 64, 64, true, false),
            (2, 128, 64, true, false),
            (4, 64, 64, true, true),
        ] {
            let mut p = RopeParams::new(n_dims, 10000.0, neox, 4096);
            if yarn {
                p.freq_scale = 0.25;
                p.ext_factor = 1.0;
                p.attn_factor = 1.0;
                p.beta_fast = 32.0;
                p.beta_slow = 1.0;
            }
            let len = positions.len() * heads * hd;
            let x = rng.vec(len);
            let (mut xc, mut xg) = (put(&c, &x), put(g, &x));
            c.rope(&mut xc, &positions, heads, hd, &p);
            g.rope(&mut xg, &positions, heads, hd, &p);
            close(
                &format!("rope {heads}×{hd} dims {n_dims} neox {neox} yarn {yarn}"),
                &get(&c, &xc, len),
                &get(g, &xg, len),
                tol(g, 1e-6),
            );
        }
    }
}

/// How the attention test's batch is drawn from the stored sequences.
#[derive(Clone, Copy, Debug)]
enum Rows {
    /// Every position of both sequences (a prefill of two prompts): f32 mode.
    All,
    /// The last three positions of each sequence: a small batch, f16 mode.
    Tail,
    /// The last position of the first sequence alone: a decode step, f16 mode with the
    /// CPU's split of long ranges.
    Decode,
}

/// The KV store and attention on both backends: two sequences with scattered block tables,
/// GQA, an optional window, in the three batch shapes the model makes.
#[test]
fn attention_matches_cpu() {
    for g in gpus() {
        let c = CpuBackend::new();
        let mut rng = Rng(15);
        // (heads, kv heads, head dim, value dim, sequence lengths, window, rows)
        for &(n_head, n_head_kv, hd, hdv, lens, window, rows) in &[
            (4usize, 2usize, 16usize, 16usize, [45usize, 9usize], None, Rows::All),
            (3, 1, 64, 64, [70, 33], Some(20usize), Rows::All),
            (9, 3, 64, 64, [600, 40], None, Rows::All),
            (8, 4, 256, 256, [100, 3], Some(64), Rows::All),
            (9, 3, 64, 64, [600, 40], None, Rows::Tail),
            (4, 1, 128, 128, [77, 200], Some(50), Rows::Tail),
            (9, 3, 64, 64, [700, 40], None, Rows::Decode),
            (2, 2, 64, 64, [511, 5], None, Rows::Decode),
            (3, 1, 64, 64, [300, 5], None, Rows::Decode),
            (2, 1, 32, 32, [9000, 5], None, Rows::Decode),
            (2, 1, 32, 32, [5000, 5], Some(4500), Rows::Tail),
        ] {
            let n_blocks: usize = lens.iter().map(|l| l.div_ceil(BLOCK_SIZE)).sum::<usize>() + 3;
            let n_slots = n_blocks * BLOCK_SIZE;
            let mut kvc = c.alloc_kv(2, n_slots, n_head_kv, hd, hdv).unwrap();
            let mut kvg = g.alloc_kv(2, n_slots, n_head_kv, hd, hdv).unwrap();
            // Blocks handed out from the top, interleaved between the two sequences.
            let need = [lens[0].div_ceil(BLOCK_SIZE), lens[1].div_ceil(BLOCK_SIZE)];
            let mut next = n_blocks as u32;
            let mut tables: Vec<Vec<u32>> = vec![Vec::new(), Vec::new()];
            for b in 0..need[0] + need[1] {
                let s = usize::from(!(b % 2 == 0 && tables[0].len() < need[0] || tables[1].len() >= need[1]));
                next -= 1;
                tables[s].push(next);
            }
            let slot =
                |s: usize, t: usize| tables[s][t / BLOCK_SIZE] * BLOCK_SIZE as u32 + (t % BLOCK_SIZE) as u32;
            // Keys and values for every position of both sequences.
            let all: Vec<(usize, usize)> = (0..2).flat_map(|s| (0..lens[s]).map(move |t| (s, t))).collect();
            let slots: Vec<u32> = all.iter().map(|&(s, t)| slot(s, t)).collect();
            let k = rng.vec(all.len() * n_head_kv * hd);
            let v = rng.vec(all.len() * n_head_kv * hdv);
            let layer = 1;
            c.kv_store(&mut kvc, layer, &put(&c, &k), &put(&c, &v), &slots);
            g.kv_store(&mut kvg, layer, &put(g, &k), &put(g, &v), &slots);
            let picked: Vec<(usize, usize)> = match rows {
                Rows::All => all.clone(),
                Rows::Tail => all.iter().copied().filter(|&(s, t)| t + 3 >= lens[s]).collect(),
                Rows::Decode => vec![(0, lens[0] - 1)],
            };
            let mut batch = AttnBatch { tables: tables.clone(), ..Default::default() };
            for &(s, t) in &picked {
                batch.positions.push(t as u32);
                batch.table_of_row.push(s as u32);
                batch.slots.push(slot(s, t));
            }
            let n = picked.len();
            let q: Vec<f32> = rng.vec(n * n_head * hd).iter().map(|x| x * 3.0).collect();
            let p = AttnParams {
                n_head,
                n_head_kv,
                head_dim: hd,
                head_dim_v: hdv,
                scale: 1.0 / (hd as f32).sqrt(),
                window,
                f16_accum: !matches!(rows, Rows::All),
                single_row: matches!(rows, Rows::Decode),
            };
            let olen = n * n_head * hdv;
            let (mut oc, mut og) = (c.alloc(olen), g.alloc(olen));
            c.attention(&put(&c, &q), &kvc, layer, &batch, &p, &mut oc);
            g.attention(&put(g, &q), &kvg, layer, &batch, &p, &mut og);
            let what = format!("attention {n_head}/{n_head_kv} heads of {hd}/{hdv}, lengths {lens:?}, window {window:?}, {rows:?}");
            // Off exact adapters, f16 mode rounds the running sums to f16: a score one ulp apart
            // may round one step differently (2⁻¹¹ relative). Rows whose keys (per CPU part)
            // pass ATTN_PART_KEYS split into more parts here than on the CPU, so their merge
            // rounds differently too.
            // The CPU splits a decode step over 512 cells or more (`len` rounded up to 256) in half.
            let cpu_part = |len: usize| match len.next_multiple_of(256) / 2 {
                mid if p.single_row && mid >= 256 && mid < len => mid.max(len - mid),
                _ => len,
            };
            let beyond = picked
                .iter()
                .any(|&(_, t)| cpu_part((t + 1).min(window.unwrap_or(usize::MAX))) > ATTN_PART_KEYS);
            let tol = |t| if beyond { t } else { tol(g, t) };
            let t = tol(if p.f16_accum { 2e-3 } else { 1e-5 });
            close(&what, &get(&c, &oc, olen), &get(g, &og, olen), t);
        }
    }
}

/// Chained matmuls recorded into one submission (as a forward pass records them): each
/// quantizes its input into the shared activation-code buffers the previous one used.
#[test]
fn chained_matmuls_match_cpu() {
    for g in gpus() {
        let c = CpuBackend::new();
        let mut rng = Rng(16);
        // K-quants: 5 rows take llama.cpp's Q4_K gemm for four tokens and its gemv for the fifth,
        // and Q6_K's `vec_dot` lanes; 9 rows take Q6_K's tiled order.
        for (ty, n) in [
            (GgmlType::Q4_1, 5usize),
            (GgmlType::Q8_0, 5),
            (GgmlType::Q4_K, 5),
            (GgmlType::Q4_K, 9),
            (GgmlType::Q6_K, 5),
            (GgmlType::Q6_K, 9),
        ] {
            let (a, b) = (512usize, 1536usize);
            let file = gguf(
                "chain",
                vec![
                    ("up", vec![a as u64, b as u64], ty, random_tensor(&mut rng, ty, a * b)),
                    ("down", vec![b as u64, a as u64], ty, random_tensor(&mut rng, ty, a * b)),
                ],
            );
            let x = rng.vec(n * a);
            let (cpu, gpu) = (chain(&c, &file, &x, n, a, b), chain(g, &file, &x, n, a, b));
            close(&format!("chained {ty:?}, {n} rows"), &cpu, &gpu, tol(g, 1e-4));
        }
    }
}

/// `down · (up · x)` for `n` rows of `a` values through `b`, read back once at the end.
fn chain<B: Backend>(be: &B, file: &Arc<GgufFile>, x: &[f32], n: usize, a: usize, b: usize) -> Vec<f32> {
    let up = be.weight(file, "up", WeightUse::Matmul).unwrap();
    let down = be.weight(file, "down", WeightUse::Matmul).unwrap();
    let (mut h, mut y) = (be.alloc(n * b), be.alloc(n * a));
    be.matmul(&up, &put(be, x), n, &mut h);
    be.matmul(&down, &h, n, &mut y);
    get(be, &y, n * a)
}

/// The sampler's device top-k: the same indices and values as the host's, in the same
/// order (ties by lower index, NaN skipped), and the row's log-sum-exp to rounding.
#[test]
fn top_k_matches_host() {
    for g in gpus() {
        let mut rng = Rng(0x70b_c0de);
        for (width, n_rows, k) in [
            (1usize, 1usize, 1usize),
            (7, 3, 5),
            (1000, 4, 40),
            (49157, 2, 1),
            (49157, 2, 128),
            (300, 2, 300),
        ] {
            // Coarse values (ties at every rank), a NaN, -inf and a tied maximum.
            let mut x: Vec<f32> = (0..width * n_rows).map(|_| (rng.f() * 50.0).round() / 4.0).collect();
            if width > 10 {
                x[3] = f32::NAN;
                x[5] = f32::NEG_INFINITY;
                x[width + 8] = 100.0;
                x[width + 9] = 100.0;
            }
            let mut buf = g.alloc(x.len());
            g.write(&mut buf, &x);
            let mut got = Vec::new();
            g.top_k(&buf, n_rows, width, k, &mut got);
            assert_eq!(got.len(), n_rows);
            for (r, t) in got.iter().enumerate() {
                let want = TopLogits::of_row(&x[r * width..(r + 1) * width], k);
                let ids = |t: &TopLogits| t.top.iter().map(|&(i, v)| (i, v.to_bits())).collect::<Vec<_>>();
                assert_eq!(ids(t), ids(&want), "width {width}, row {r}, k {k}");
                assert!(
                    (t.lse - want.lse).abs() <= 1e-5 * want.lse.abs().max(1.0),
                    "lse {} vs {}",
                    t.lse,
                    want.lse
                );
            }
        }
    }
}
