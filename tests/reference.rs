//! ferrite against llama.cpp's outputs (../shared/reference): prompt tokens, teacher-forced
//! top-1 and top-5 log-probabilities, free-running greedy tokens, and GPL-3 perplexity.
//! Every SmolLM2 case runs by default (CI); the larger models run with `--ignored`.

mod common;

use ferrite::loader::tokenizer::StreamDecoder;
use ferrite::{BackendKind, Engine, Event, GenerateRequest, LoadOptions, Prompt};
use serde_json::Value;

/// Top-1 must agree where llama.cpp's top-1 leads its top-2 by more than this (nats).
const CLEAR_LEAD: f64 = 0.1;
/// Top-5 log-probabilities must agree within this.
const LOGPROB_TOL: f64 = 0.15;
/// Free-running greedy tokens must agree for at least this many tokens.
const GREEDY_PREFIX: usize = 16;
/// Perplexity within this fraction of llama.cpp's.
const PPL_TOL: f64 = 0.01;

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// The backend under test: the CPU (as llama.cpp's reference ran), or another with
/// FERRITE_TEST_BACKEND=cuda|wgpu (a GPU run of the same checks:
/// `FERRITE_TEST_BACKEND=cuda cargo test --release --test reference -- --include-ignored`).
fn backend() -> BackendKind {
    std::env::var("FERRITE_TEST_BACKEND")
        .map_or(BackendKind::Cpu, |b| b.parse().expect("FERRITE_TEST_BACKEND"))
}

fn load(file: &str, required: bool) -> Option<Engine> {
    let path = common::model(file, required)?;
    Some(
        Engine::load(path, &LoadOptions { ctx: Some(2048), backend: backend(), ..Default::default() })
            .expect("model loads"),
    )
}

/// Every check against one reference file; returns a report line per case.
fn check_reference(key: &str, required: bool) {
    let r = common::reference(&format!("{key}.json"));
    let Some(mut engine) = load(r["model_file"].as_str().unwrap(), required) else { return };
    let mut failures = Vec::new();
    for case in r["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let prompt = case["prompt"].as_str().unwrap();
        let want_prompt = ids(&case["prompt_tokens"]);
        let greedy = ids(&case["greedy_tokens"]);
        let top5 = case["top5_logprobs"].as_array().unwrap();

        // 1. Tokenization.
        let got_prompt = engine.tokenize(prompt);
        if got_prompt != want_prompt {
            failures.push(format!(
                "{key}/{name}: prompt tokens differ:\n  got  {got_prompt:?}\n  want {want_prompt:?}"
            ));
            continue;
        }

        // 2. Teacher forcing along llama.cpp's greedy tokens.
        // The prompt as one batch, then token by token, as llama.cpp generated the reference.
        let all_rows = engine.teacher_force(&want_prompt, &greedy).unwrap();
        // llama.cpp's tool recorded a top-5 row only at steps whose token completed the UTF-8
        // text (steps that end inside a multi-byte character have none): align the same way.
        let mut dec = StreamDecoder::new(false);
        let recorded: Vec<usize> = greedy
            .iter()
            .enumerate()
            .filter_map(|(i, &t)| {
                dec.push(engine.tokenizer(), t);
                dec.pending().is_empty().then_some(i)
            })
            .collect();
        assert_eq!(recorded.len(), top5.len(), "{key}/{name}: top-5 rows align with completed-text steps");
        let rows: Vec<&Vec<f32>> = recorded.iter().map(|&i| &all_rows[i]).collect();
        let (mut worst, mut clear_steps) = (0f64, 0);
        for (step, (row, theirs)) in rows.iter().zip(top5).enumerate() {
            let theirs: Vec<(u32, f64)> = theirs
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_u64().unwrap() as u32, p[1].as_f64().unwrap()))
                .collect();
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = max as f64 + row.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>().ln();
            let ours_top1 = ferrite::sampler::argmax(row);
            if theirs[0].1 - theirs[1].1 > CLEAR_LEAD {
                clear_steps += 1;
                if ours_top1 != theirs[0].0 {
                    failures.push(format!(
                        "{key}/{name} step {step}: top-1 {ours_top1} != {} (their lead {:.3})",
                        theirs[0].0,
                        theirs[0].1 - theirs[1].1
                    ));
                }
            }
            for &(id, lp) in &theirs {
                let ours = row[id as usize] as f64 - lse;
                worst = worst.max((ours - lp).abs());
                if (ours - lp).abs() > LOGPROB_TOL {
                    failures.push(format!(
                        "{key}/{name} step {step}: logprob of {id}: ours {ours:.4}, theirs {lp:.4}"
                    ));
                }
            }
        }

        // 3. Free-running greedy generation.
        let mut req = GenerateRequest::new("").max_tokens(greedy.len());
        req.prompt = Prompt::Tokens(want_prompt.clone());
        let mut ours = Vec::new();
        for ev in engine.generate(req).unwrap() {
            if let Event::Token(t) = ev.unwrap() {
                ours.push(t.id);
            }
        }
        let n = GREEDY_PREFIX.min(greedy.len());
        let same = ours.iter().zip(&greedy).take_while(|(a, b)| a == b).count();
        if same < n {
            failures.push(format!(
                "{key}/{name}: greedy tokens agree for {same} < {n}:\n  ours {ours:?}\n  ref  {greedy:?}"
            ));
        }
        eprintln!(
            "{key}/{name}: prompt {} tokens ok, {} steps ({clear_steps} clear), worst top-5 logprob diff {worst:.4}, greedy agrees for {same}/{}",
            want_prompt.len(),
            rows.len(),
            greedy.len()
        );
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

fn check_perplexity(key: &str, file: &str, required: bool) {
    let Some(path) = common::model(file, required) else { return };
    let want = common::reference("perplexity.json")[key]["GPL-3"]["ppl"].as_f64().unwrap();
    let mut engine =
        Engine::load(path, &LoadOptions { ctx: Some(512), backend: backend(), ..Default::default() })
            .unwrap();
    let text = std::fs::read_to_string(common::shared().join("text/GPL-3")).unwrap();
    let tokens = engine.tokenizer().encode(&text, true, false);
    let r = engine.perplexity(&tokens, 512, |_, _, _| {}).unwrap();
    let rel = (r.ppl - want).abs() / want;
    eprintln!(
        "{key}: PPL {:.4} +/- {:.5} over {} chunks; llama.cpp {want}; diff {:.3}%",
        r.ppl,
        r.stderr,
        r.chunks,
        rel * 100.0
    );
    assert!(rel <= PPL_TOL, "{key}: PPL {:.4} vs llama.cpp {want} ({:.2}% off)", r.ppl, rel * 100.0);
}

#[test]
fn smollm2_q4_1_reference() {
    check_reference("smollm2-q4_1", true);
}
#[test]
fn smollm2_q4_1_perplexity() {
    check_perplexity("smollm2-q4_1", "SmolLM2-135M-Instruct.Q4_1.gguf", true);
}
#[test]
fn smollm2_q8_0_reference() {
    check_reference("smollm2-q8_0", true);
}
#[test]
fn smollm2_q8_0_perplexity() {
    check_perplexity("smollm2-q8_0", "SmolLM2-135M-Instruct.Q8_0.gguf", true);
}
#[test]
fn smollm2_q4_0_reference() {
    check_reference("smollm2-q4_0", true);
}
#[test]
fn smollm2_q4_0_perplexity() {
    check_perplexity("smollm2-q4_0", "SmolLM2-135M-Instruct.Q4_0.gguf", true);
}
#[test]
fn smollm2_f16_reference() {
    check_reference("smollm2-f16", true);
}
#[test]
fn smollm2_f16_perplexity() {
    check_perplexity("smollm2-f16", "SmolLM2-135M-Instruct.F16.gguf", true);
}
#[test]
fn smollm2_f32_reference() {
    check_reference("smollm2-f32", true);
}
#[test]
fn smollm2_f32_perplexity() {
    check_perplexity("smollm2-f32", "SmolLM2-135M-Instruct.F32.gguf", true);
}
#[test]
#[ignore = "large model: cargo test --release --test reference -- --ignored"]
fn qwen05_reference() {
    check_reference("qwen05", false);
}
#[test]
#[ignore = "large model"]
fn qwen05_perplexity() {
    check_perplexity("qwen05", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", false);
}
#[test]
#[ignore = "large model"]
fn qwen15_reference() {
    check_reference("qwen15", false);
}
#[test]
#[ignore = "large model"]
fn qwen15_perplexity() {
    check_perplexity("qwen15", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", false);
}
#[test]
#[ignore = "large model"]
fn gemma3_reference() {
    check_reference("gemma3", false);
}
#[test]
#[ignore = "large model"]
fn gemma3_perplexity() {
    check_perplexity("gemma3", "gemma-3-270m-q4_k_m.gguf", false);
}
