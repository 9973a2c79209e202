//! The `ferrite` command line: a thin layer over the engine's public API.

mod cli_bench;
mod cli_gen;
mod cli_info;
mod cli_ppl;
mod serve;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "ferrite", version, about = "Run open LLMs from GGUF files on your own hardware")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show what a GGUF model is and what it needs to run.
    Info {
        /// The GGUF file.
        model: PathBuf,
        /// Context length for the memory estimate (default: the model's training context).
        #[arg(long)]
        ctx: Option<u64>,
        /// Print JSON for machines.
        #[arg(long)]
        json: bool,
        /// Also list every metadata key and every tensor.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Generate text from a prompt, streamed to stdout (speed on stderr).
    Run {
        #[command(flatten)]
        model: cli_gen::ModelArgs,
        /// The prompt.
        #[arg(short = 'p', long)]
        prompt: String,
        /// Wrap the prompt in the model's chat template as a user message.
        #[arg(long)]
        chat: bool,
        /// System prompt (with --chat).
        #[arg(long)]
        system: Option<String>,
        #[command(flatten)]
        sample: cli_gen::SampleArgs,
    },
    /// Multi-turn chat with the model's template (interactive, or one turn per stdin line).
    Chat {
        #[command(flatten)]
        model: cli_gen::ModelArgs,
        /// System prompt.
        #[arg(long)]
        system: Option<String>,
        #[command(flatten)]
        sample: cli_gen::SampleArgs,
    },
    /// Measure prompt and generation speed, as llama-bench does (lists: -p 128,512).
    Bench {
        /// One or more GGUF files (side by side).
        #[arg(required = true)]
        models: Vec<PathBuf>,
        /// Prompt lengths to process (0: none).
        #[arg(short = 'p', long = "n-prompt", default_value = "512")]
        n_prompt: String,
        /// Generation lengths (0: none).
        #[arg(short = 'n', long = "n-gen", default_value = "128")]
        n_gen: String,
        /// Tokens already in the KV cache (e.g. 0,512,4096).
        #[arg(short = 'd', long = "n-depth", default_value = "0")]
        depth: String,
        /// Thread counts (e.g. 1,2).
        #[arg(short = 't', long, default_value_t = default_threads())]
        threads: String,
        /// Repetitions (after one warm-up).
        #[arg(short = 'r', long, default_value_t = 3)]
        reps: usize,
        /// Sequences generating together in tg tests (e.g. 1,8): one token of each per
        /// forward pass, as a continuous-batching server steps; t/s counts them all.
        #[arg(long, default_value = "1")]
        parallel: String,
        /// Output: md, json or csv.
        #[arg(short = 'o', long, default_value = "md")]
        output: String,
        /// Device: auto, cpu, wgpu or cuda.
        #[arg(long, default_value = "auto")]
        backend: ferrite::BackendKind,
    },
    /// Serve the model over an OpenAI-compatible HTTP API (continuous batching, metrics).
    Serve(serve::ServeArgs),
    /// Perplexity of a text file, as llama-perplexity computes it (-c: chunk length, default 512).
    Perplexity {
        #[command(flatten)]
        model: cli_gen::ModelArgs,
        /// The text file.
        #[arg(short = 'f', long)]
        file: PathBuf,
        /// Score at most this many chunks.
        #[arg(long)]
        chunks: Option<usize>,
        /// Keep each scored chunk in this file, and go on from the chunks it holds (a run
        /// that was stopped resumes; the final figure is the uninterrupted run's).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
}

fn default_threads() -> String {
    std::thread::available_parallelism().map_or(1, |n| n.get()).to_string()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info { model, ctx, json, verbose } => cli_info::run(&model, ctx, json, verbose),
        Command::Run { model, prompt, chat, system, sample } => {
            cli_gen::run(&model, &sample, prompt, chat, system)
        }
        Command::Chat { model, system, sample } => cli_gen::chat(&model, &sample, system),
        Command::Bench { models, n_prompt, n_gen, depth, threads, reps, parallel, output, backend } => {
            (|| {
                let tests = cli_bench::Tests {
                    n_prompt: cli_bench::list(&n_prompt)?,
                    n_gen: cli_bench::list(&n_gen)?,
                    depths: cli_bench::list(&depth)?,
                    threads: cli_bench::list(&threads)?,
                    parallel: cli_bench::list(&parallel)?,
                    reps,
                };
                cli_bench::run(&models, &tests, backend, &output)
            })()
        }
        Command::Serve(args) => serve::run(args),
        Command::Perplexity { mut model, file, chunks, checkpoint } => {
            // As in llama-perplexity, -c is the chunk length (and so the context).
            let chunk = *model.ctx.get_or_insert(512);
            cli_ppl::perplexity(&model, &file, chunk, chunks, checkpoint.as_deref())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrite: {e}");
            ExitCode::FAILURE
        }
    }
}
