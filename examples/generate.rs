//! Embedding ferrite: load a GGUF model, chat-format a question, stream the answer.
//!
//! `cargo run --release --example generate -- models/SmolLM2-135M-Instruct.Q4_1.gguf "What is Rust?"`

use ferrite::{Engine, Event, GenerateRequest, LoadOptions, SamplerParams};
use std::io::Write;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = args.next().ok_or("usage: generate MODEL.gguf [QUESTION]")?;
    let question = args.next().unwrap_or_else(|| "Name three prime numbers.".to_string());

    let mut engine = Engine::load(&model, &LoadOptions::default())?;
    let prompt = engine.chat_prompt(&[("user", &question)])?;
    let mut request = GenerateRequest::new(prompt).max_tokens(128).sampler(SamplerParams {
        temperature: 0.7,
        seed: 42,
        ..Default::default()
    });
    // A model without a chat template of its own gets ChatML: stop at its markers' text.
    request.stop = engine.chat_stops();

    for event in engine.generate(request)? {
        match event? {
            Event::Token(t) => {
                print!("{}", t.text);
                std::io::stdout().flush()?;
            }
            Event::Done(d) => {
                println!("{}", d.text);
                eprintln!(
                    "[{:?}: {} prompt tokens at {:.0} t/s, {} generated at {:.1} t/s]",
                    d.finish_reason,
                    d.timings.prompt_tokens,
                    d.timings.prompt_tps(),
                    d.timings.gen_tokens,
                    d.timings.gen_tps()
                );
            }
        }
    }
    Ok(())
}
