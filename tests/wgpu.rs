//! The WGSL backend end to end on SmolLM2 and its four variants: for every reference case,
//! 32 greedy tokens on `--backend wgpu` equal the CPU backend's (the kernels reproduce the
//! CPU's bits; see docs/ARCHITECTURE.md). The Q4_1 (CI model) and F16 copies run in CI, the
//! other three by hand (about 7 minutes each on lavapipe). Needs a wgpu adapter (CI: Mesa's
//! lavapipe); without one the test says so and passes, unless FERRITE_WGPU_REQUIRED=1 (set
//! by .ci/run) makes a missing adapter a failure.
#![cfg(feature = "wgpu")]

mod common;
use ferrite::{BackendKind, Engine, Event, GenerateRequest, LoadOptions, Prompt};

fn greedy(engine: &mut Engine, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut req = GenerateRequest::new("").max_tokens(n);
    req.prompt = Prompt::Tokens(prompt.to_vec());
    let mut out = Vec::new();
    for ev in engine.generate(req).unwrap() {
        if let Event::Token(t) = ev.unwrap() {
            out.push(t.id);
        }
    }
    out
}

#[test]
fn smollm2_greedy_equal_cpu() {
    greedy_equal_cpu(&["smollm2-q4_1", "smollm2-f16"]);
}

#[test]
#[ignore = "about 20 minutes on lavapipe. Run: cargo test --release --test wgpu -- --ignored"]
fn smollm2_other_copies_greedy_equal_cpu() {
    greedy_equal_cpu(&["smollm2-f32", "smollm2-q4_0", "smollm2-q8_0"]);
}

fn greedy_equal_cpu(keys: &[&str]) {
    let opts = |backend| LoadOptions { ctx: Some(1024), backend, ..Default::default() };
    let mut failures = Vec::new();
    for key in keys {
        let r = common::reference(&format!("{key}.json"));
        let Some(path) = common::model(r["model_file"].as_str().unwrap(), true) else { return };
        let mut gpu = match Engine::load(&path, &opts(BackendKind::Wgpu)) {
            Ok(e) => e,
            Err(e) if std::env::var("FERRITE_WGPU_REQUIRED").as_deref() != Ok("1") => {
                eprintln!("skipped: no wgpu adapter here ({e}); install mesa-vulkan-drivers libvulkan1");
                return;
            }
            Err(e) => panic!("{key}: wgpu backend: {e}"),
        };
        let mut cpu = Engine::load(&path, &opts(BackendKind::Cpu)).unwrap();
        for case in r["cases"].as_array().unwrap() {
            let prompt: Vec<u32> = case["prompt_tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let (a, b) = (greedy(&mut cpu, &prompt, 32), greedy(&mut gpu, &prompt, 32));
            let same = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
            eprintln!("{key}/{}: {same} of {} greedy tokens equal", case["name"].as_str().unwrap(), a.len());
            if a != b {
                failures.push(format!("{key}/{}: cpu {a:?}\n  wgpu {b:?}", case["name"]));
            }
        }
    }
    assert!(failures.is_empty(), "wgpu differs from cpu:\n{}", failures.join("\n"));
}

/// A big model's splits on a small one: with the storage binding capped at 1 MiB, SmolLM2's
/// 49,152-token head gives logits in passes of 5 rows or fewer and its matrices upload in
/// parts of at most 1 MiB. The logits of the 27 rows of a 40-row batch that want them, and
/// each row's device top-k, must still equal the CPU backend's.
#[test]
fn binding_limit_splits_logits_and_weights() {
    use ferrite::backend::{
        cpu::CpuBackend,
        wgsl::{WgpuBackend, WgpuOptions},
    };
    use ferrite::model::{Batch, Model};
    use ferrite::sampler::TopLogits;
    let r = common::reference("smollm2-q4_1.json");
    let Some(path) = common::model(r["model_file"].as_str().unwrap(), true) else { return };
    // The paths other adapters take: no f16, no subgroups, and the staged matmul (the
    // 40-row batch) on parts that start past row 0.
    let opts = WgpuOptions {
        max_binding: 1 << 20,
        f16: false,
        subgroups: false,
        tiled: Some(true),
        ..Default::default()
    };
    let gpu = match WgpuBackend::with_options(true, opts) {
        Ok(g) => g,
        Err(e) if std::env::var("FERRITE_WGPU_REQUIRED").as_deref() != Ok("1") => {
            eprintln!("skipped: no wgpu adapter here ({e})");
            return;
        }
        Err(e) => panic!("wgpu backend: {e}"),
    };
    let exact = gpu.software() && gpu.caps().f64;
    let file = std::sync::Arc::new(ferrite::loader::GgufFile::open(&path).unwrap());
    let cfg = ferrite::ModelConfig::from_gguf(&file).unwrap();
    let mut g = Model::load(gpu, &file, cfg.clone(), 256).unwrap();
    let mut c = Model::load(CpuBackend::new(), &file, cfg.clone(), 256).unwrap();
    let prompt: Vec<u32> = r["cases"][0]["prompt_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let mut batch = Batch::default();
    for i in 0..40 {
        batch.push(prompt[i % prompt.len()], 1, i % 3 != 1);
    }
    let (want, got) = (c.forward(&batch).unwrap(), g.forward(&batch).unwrap());
    assert_eq!(want.len(), 27 * cfg.n_vocab);
    assert_eq!(got.len(), want.len());
    let worst = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    if exact {
        let differ = want.iter().zip(&got).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differ, 0, "logits differ from the CPU's (largest difference {worst})");
    } else {
        assert!(worst < 1e-2, "logits differ from the CPU's by {worst}");
    }
    // Top-k on the device for the next 40 rows (the cache now holds the first 40).
    let mut tops = Vec::new();
    g.forward_top(&batch, 8, &mut tops).unwrap();
    let want = c.forward(&batch).unwrap();
    assert_eq!(tops.len(), 27);
    for (t, row) in tops.iter().zip(want.chunks_exact(cfg.n_vocab)) {
        let host = TopLogits::of_row(row, 8);
        if exact {
            assert_eq!(t.top, host.top);
        } else {
            assert_eq!(t.top[0].0, host.top[0].0);
        }
        assert!((t.lse - host.lse).abs() < 1e-3, "lse {} vs {}", t.lse, host.lse);
    }
    // One forward pass holds as many rows as the widest activation buffer (SmolLM2's
    // feed-forward rows) fits in a binding; a wider batch is an error, the cache untouched.
    assert_eq!(g.max_batch_tokens(), (1 << 20) / 4 / cfg.n_ff);
    let mut wide = Batch::default();
    for i in 0..=g.max_batch_tokens() {
        wide.push(prompt[i % prompt.len()], 2, i % 2 == 0);
    }
    let free = g.tables.n_free();
    let err = g.forward(&wide).unwrap_err().to_string();
    assert!(err.contains("exceeds the 170 that one forward pass"), "{err}");
    assert_eq!(g.tables.n_free(), free);
}
