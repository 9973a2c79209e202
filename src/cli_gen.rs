//! `ferrite run` and `ferrite chat`: thin wrappers over the engine API.

use clap::Args;
use ferrite::loader::chat::ChatRequest;
use ferrite::{BackendKind, Engine, Event, FinishReason, GenerateRequest, LoadOptions, SamplerParams};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

/// Files from this size on are read in at load with a progress bar (on a terminal).
const PREFETCH_BAR_BYTES: u64 = 256 << 20;

/// Options shared by every command that loads a model.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// The GGUF file.
    pub model: PathBuf,
    /// Worker threads (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Context length (default: the model's, capped at 4096).
    #[arg(short = 'c', long = "ctx")]
    pub ctx: Option<usize>,
    /// Device: auto, cpu, wgpu or cuda.
    #[arg(long, default_value = "auto")]
    pub backend: BackendKind,
}

impl ModelArgs {
    pub fn load(&self) -> Result<Engine, String> {
        let mut opts =
            LoadOptions { threads: self.threads, ctx: self.ctx, backend: self.backend, ..Default::default() };
        // A progress bar while a large model is read in, when someone is watching.
        let big = std::fs::metadata(&self.model).map(|m| m.len() >= PREFETCH_BAR_BYTES).unwrap_or(false);
        if big && std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "loading {bar:40} {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .expect("valid template"),
            );
            let b = bar.clone();
            opts.prefetch = Some(std::sync::Arc::new(move |done, total| {
                b.set_length(total);
                b.set_position(done);
                if done >= total {
                    b.finish_and_clear();
                }
            }));
        }
        let engine = Engine::load(&self.model, &opts).map_err(|e| e.to_string())?;
        if let Some(w) = engine.template_warning() {
            eprintln!("ferrite: warning: {w}");
        }
        if let Some(n) = engine.backend_note() {
            eprintln!("ferrite: {n}");
        }
        for w in engine.tokenizer().warnings() {
            eprintln!("ferrite: warning: {w}");
        }
        Ok(engine)
    }
}

/// Sampling options.
#[derive(Args, Debug, Clone)]
pub struct SampleArgs {
    /// Tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 256)]
    pub n_predict: usize,
    /// Temperature (0: greedy).
    #[arg(long = "temp", default_value_t = 0.8)]
    pub temp: f32,
    /// Top-k (0: off).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Top-p (1: off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Min-p (0: off).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Repetition penalty (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Presence penalty.
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    /// Frequency penalty.
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// RNG seed (same seed, same output).
    #[arg(long, default_value_t = 0xF3E2_1D0C)]
    pub seed: u64,
    /// Stop before this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep generating past end-of-generation tokens.
    #[arg(long)]
    pub ignore_eos: bool,
}

impl SampleArgs {
    fn params(&self) -> SamplerParams {
        SamplerParams {
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
            ..SamplerParams::default()
        }
    }

    fn request(&self, prompt: String) -> GenerateRequest {
        let mut r = GenerateRequest::new(prompt).max_tokens(self.n_predict).sampler(self.params());
        r.stop = self.stop.clone();
        r.ignore_eos = self.ignore_eos;
        r
    }

    /// [`Self::request`] for a prompt rendered by the chat template: it also stops where the
    /// template's turn ends in text ([`Engine::chat_stops`]).
    fn chat_request(&self, engine: &Engine, prompt: String) -> GenerateRequest {
        let mut r = self.request(prompt);
        r.stop.extend(engine.chat_stops());
        r
    }
}

/// Streams a generation to stdout; returns the text and why it ended.
fn stream(
    engine: &mut Engine,
    req: GenerateRequest,
    quiet_stats: bool,
) -> Result<(String, FinishReason), String> {
    let mut out = std::io::stdout().lock();
    let mut text = String::new();
    for ev in engine.generate(req).map_err(|e| e.to_string())? {
        match ev.map_err(|e| e.to_string())? {
            Event::Token(t) => {
                text.push_str(&t.text);
                let _ = out.write_all(t.text.as_bytes());
                let _ = out.flush();
            }
            Event::Done(d) => {
                text.push_str(&d.text);
                let _ = out.write_all(d.text.as_bytes());
                let _ = out.flush();
                if !quiet_stats {
                    let t = d.timings;
                    eprintln!(
                        "\n\nprompt: {} tokens in {:.1} ms ({:.1} t/s) | generation: {} tokens in {:.1} ms ({:.1} t/s) | {:?}",
                        t.prompt_tokens,
                        t.prompt_ms,
                        t.prompt_tps(),
                        t.gen_tokens,
                        t.gen_ms,
                        t.gen_tps(),
                        d.finish_reason
                    );
                }
                return Ok((text, d.finish_reason));
            }
        }
    }
    Ok((text, FinishReason::Stop))
}

pub fn run(
    m: &ModelArgs,
    s: &SampleArgs,
    prompt: String,
    chat: bool,
    system: Option<String>,
) -> Result<(), String> {
    let mut engine = m.load()?;
    let prompt = if chat {
        let mut msgs = Vec::new();
        if let Some(sys) = &system {
            msgs.push(("system", sys.as_str()));
        }
        msgs.push(("user", prompt.as_str()));
        engine.chat_prompt(&msgs).map_err(|e| e.to_string())?
    } else {
        prompt
    };
    let req = if chat { s.chat_request(&engine, prompt) } else { s.request(prompt) };
    stream(&mut engine, req, false)?;
    println!();
    Ok(())
}

pub fn chat(m: &ModelArgs, s: &SampleArgs, system: Option<String>) -> Result<(), String> {
    let mut engine = m.load()?;
    let interactive = std::io::stdin().is_terminal();
    let mut messages: Vec<serde_json::Value> = Vec::new();
    if let Some(sys) = system {
        messages.push(serde_json::json!({"role": "system", "content": sys}));
    }
    if interactive {
        eprintln!(
            "ferrite chat: {} — type a message; /reset clears the conversation, /exit or Ctrl-D quits.",
            m.model.display()
        );
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("> ");
            let _ = std::io::stderr().flush();
        }
        let Some(line) = lines.next() else { break };
        let line = line.map_err(|e| e.to_string())?;
        let line = line.trim_end_matches(['\r', '\n']);
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages.retain(|m| m["role"] == "system");
                continue;
            }
            _ => {}
        }
        messages.push(serde_json::json!({"role": "user", "content": line}));
        let req =
            ChatRequest { messages: messages.clone(), add_generation_prompt: true, ..Default::default() };
        let prompt = engine.apply_chat_template(&req).map_err(|e| e.to_string())?;
        let req = s.chat_request(&engine, prompt);
        let (reply, _) = stream(&mut engine, req, !interactive)?;
        println!();
        messages.push(serde_json::json!({"role": "assistant", "content": reply}));
    }
    Ok(())
}
