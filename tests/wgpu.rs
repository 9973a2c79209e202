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
