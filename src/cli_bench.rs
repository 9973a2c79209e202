//! `ferrite bench`: llama-bench's measurements and output fields, plus the memory-bandwidth
//! floor for token generation and peak memory. Several models give a side-by-side table.

use crate::cli_info::human_bytes;
use ferrite::bench::{memory_bandwidth, peak_rss_bytes, BenchSample};
use ferrite::{BackendKind, Engine, KvCapacity, LoadOptions};
use serde_json::json;
use std::path::PathBuf;

/// One row of the report.
struct Row {
    model: PathBuf,
    arch: String,
    size: u64,
    params: u64,
    threads: usize,
    backend: &'static str,
    /// Tokens per forward pass of the prompt (llama-bench's n_batch and n_ubatch).
    batch: usize,
    sample: BenchSample,
    bandwidth: f64,
    bytes_per_token: u64,
    peak_rss: Option<u64>,
    /// Seconds spent repacking weights at load, and the kernel variant.
    repack_s: f64,
    variant: Option<&'static str>,
    /// The GPU's name (empty on the CPU) and the layers it runs.
    gpu: String,
    gpu_layers: usize,
    /// When the test ran (RFC 3339, UTC).
    time: String,
}

impl Row {
    fn test(&self) -> String {
        let t = if self.sample.n_gen > 0 && self.sample.n_parallel > 1 {
            format!("tg{} x{}", self.sample.n_gen, self.sample.n_parallel)
        } else if self.sample.n_gen > 0 {
            format!("tg{}", self.sample.n_gen)
        } else {
            format!("pp{}", self.sample.n_prompt)
        };
        if self.sample.n_depth > 0 {
            format!("{t} @ d{}", self.sample.n_depth)
        } else {
            t
        }
    }

    /// Generation floor: tokens per second if every weight byte were read once per token
    /// at the measured bandwidth (single-sequence generation only: a batched step reads the
    /// weights once for all its tokens and is bound by arithmetic instead).
    fn floor_ts(&self) -> Option<f64> {
        (self.sample.n_gen > 0 && self.sample.n_parallel == 1 && self.bytes_per_token > 0)
            .then(|| self.bandwidth / self.bytes_per_token as f64)
    }

    fn json(&self) -> serde_json::Value {
        let ns: Vec<u64> = self.sample.samples_s.iter().map(|s| (s * 1e9) as u64).collect();
        let nsf: Vec<f64> = ns.iter().map(|&x| x as f64).collect();
        let floor = self.floor_ts();
        json!({
            "build_commit": env!("FERRITE_BUILD_COMMIT"),
            "build_number": env!("FERRITE_BUILD_NUMBER").parse::<u64>().unwrap_or(0),
            "cpu_info": ferrite::bench::cpu_info(),
            "gpu_info": self.gpu,
            "model_filename": self.model.display().to_string(),
            "model_type": self.arch,
            "model_size": self.size,
            "model_n_params": self.params,
            "backends": self.backend.to_uppercase(),
            "n_batch": self.batch,
            "n_ubatch": self.batch,
            "n_threads": self.threads,
            "type_k": "f16",
            "type_v": "f16",
            "n_gpu_layers": self.gpu_layers,
            "flash_attn": true,
            "use_mmap": true,
            "embeddings": false,
            "n_prompt": self.sample.n_prompt,
            "n_gen": self.sample.n_gen,
            "n_depth": self.sample.n_depth,
            "n_parallel": self.sample.n_parallel,
            "test_time": self.time,
            "avg_ns": ferrite::bench::mean(&nsf) as u64,
            "stddev_ns": ferrite::bench::stddev(&nsf) as u64,
            "avg_ts": self.sample.avg_ts(),
            "stddev_ts": self.sample.stddev_ts(),
            "samples_ns": ns,
            "samples_ts": self.sample.samples_ts(),
            "bandwidth_gbs": self.bandwidth / 1e9,
            "bytes_per_token": self.bytes_per_token,
            "floor_ts": floor,
            "floor_fraction": floor.map(|f| self.sample.avg_ts() / f),
            "peak_rss_bytes": self.peak_rss,
            "repack_ms": self.repack_s * 1e3,
            "kernel_variant": self.variant,
        })
    }
}

/// The current time as llama-bench's `test_time` writes it: RFC 3339, UTC, whole seconds.
fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Parses "512" or "0,512,4096".
pub fn list(s: &str) -> Result<Vec<usize>, String> {
    s.split(',').map(|x| x.trim().parse::<usize>().map_err(|_| format!("not a number list: {s}"))).collect()
}

/// What to measure: every combination of these, per model.
pub struct Tests {
    pub n_prompt: Vec<usize>,
    pub n_gen: Vec<usize>,
    pub depths: Vec<usize>,
    pub threads: Vec<usize>,
    /// Sequences per tg test (1: plain generation).
    pub parallel: Vec<usize>,
    pub reps: usize,
}

pub fn run(models: &[PathBuf], tests: &Tests, backend: BackendKind, output: &str) -> Result<(), String> {
    let Tests { n_prompt, n_gen, depths, threads, parallel, reps } = tests;
    let reps = *reps;
    if !matches!(output, "md" | "json" | "csv") {
        return Err(format!("unknown output format {output} (md, json, csv)"));
    }
    if reps == 0 {
        return Err("-r must be at least 1".into());
    }
    if parallel.contains(&0) {
        return Err("--parallel takes sequence counts of 1 or more".into());
    }
    let most_parallel = parallel.iter().copied().max().unwrap_or(1);
    let mut bandwidths = Vec::new();
    for &t in threads {
        eprintln!("measuring memory bandwidth with {t} thread(s)…");
        bandwidths.push(memory_bandwidth(t));
    }
    let mut rows = Vec::new();
    for model in models {
        for (ti, &t) in threads.iter().enumerate() {
            // Reset the peak-RSS mark so that each model reports its own (Linux).
            let _ = std::fs::write("/proc/self/clear_refs", "5");
            let max_tokens =
                depths.iter().max().unwrap_or(&0) + n_prompt.iter().chain(n_gen).max().unwrap_or(&0);
            let ctx = max_tokens.max(16);
            let opts = LoadOptions {
                threads: Some(t),
                ctx: Some(ctx),
                // Room for every sequence of the widest --parallel test.
                kv: (most_parallel > 1)
                    .then_some(KvCapacity::Contexts { n: most_parallel, max_bytes: usize::MAX }),
                backend,
                ..Default::default()
            };
            let mut engine = Engine::load(model, &opts).map_err(|e| format!("{}: {e}", model.display()))?;
            let file = engine.file().clone();
            let prep = engine.prepare_stats();
            if prep.matrices > 0 {
                eprintln!(
                    "{}: repacked {} matrices ({}) for {} in {:.0} ms",
                    model.display(),
                    prep.matrices,
                    human_bytes(prep.bytes as u64),
                    prep.variant.unwrap_or("?"),
                    prep.seconds * 1e3
                );
            }
            for &d in depths {
                let mut samples = Vec::new();
                for &p in n_prompt.iter().filter(|&&p| p > 0) {
                    eprintln!("{}: pp{p} @ d{d}, {t} thread(s)…", model.display());
                    let time = now();
                    samples.push((engine.bench_pp(p, d, reps).map_err(|e| e.to_string())?, time));
                }
                for &g in n_gen.iter().filter(|&&g| g > 0) {
                    for &par in parallel {
                        eprintln!("{}: tg{g} x{par} @ d{d}, {t} thread(s)…", model.display());
                        let time = now();
                        let sample = engine.bench_tg_parallel(g, d, par, reps).map_err(|e| e.to_string())?;
                        samples.push((sample, time));
                    }
                }
                let gpu = engine.device_name();
                let gpu_layers = if gpu.is_empty() { 0 } else { engine.config().n_layers };
                for (sample, time) in samples {
                    rows.push(Row {
                        model: model.clone(),
                        arch: engine.config().arch_name.clone(),
                        size: file.header().tensor_bytes(),
                        params: file.header().n_params(),
                        threads: t,
                        backend: engine.backend_name(),
                        batch: ferrite::api::PREFILL_CHUNK.min(engine.max_batch_tokens()),
                        sample,
                        bandwidth: bandwidths[ti],
                        bytes_per_token: engine.bytes_per_token(),
                        peak_rss: peak_rss_bytes(),
                        repack_s: prep.seconds,
                        variant: prep.variant,
                        gpu: gpu.clone(),
                        gpu_layers,
                        time,
                    });
                }
            }
        }
    }
    match output {
        "json" => {
            let v: Vec<serde_json::Value> = rows.iter().map(Row::json).collect();
            println!("{}", serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
        }
        "csv" => {
            println!("model_filename,model_type,model_size,model_n_params,backends,n_threads,n_prompt,n_gen,n_depth,avg_ts,stddev_ts,bandwidth_gbs,floor_ts,floor_fraction,peak_rss_bytes,n_parallel");
            for r in &rows {
                let floor = r.floor_ts();
                println!(
                    "{},{},{},{},{},{},{},{},{},{:.3},{:.3},{:.2},{},{},{},{}",
                    r.model.display(),
                    r.arch,
                    r.size,
                    r.params,
                    r.backend.to_uppercase(),
                    r.threads,
                    r.sample.n_prompt,
                    r.sample.n_gen,
                    r.sample.n_depth,
                    r.sample.avg_ts(),
                    r.sample.stddev_ts(),
                    r.bandwidth / 1e9,
                    floor.map(|f| format!("{f:.2}")).unwrap_or_default(),
                    floor.map(|f| format!("{:.3}", r.sample.avg_ts() / f)).unwrap_or_default(),
                    r.peak_rss.map(|x| x.to_string()).unwrap_or_default(),
                    r.sample.n_parallel
                );
            }
        }
        _ => {
            println!("| model | size | params | backend | threads | test | t/s | floor t/s | of floor | peak RSS |");
            println!("| --- | ---: | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: |");
            for r in &rows {
                let floor = r.floor_ts();
                println!(
                    "| {} | {} | {:.2} B | {} | {} | {} | {:.2} ± {:.2} | {} | {} | {} |",
                    r.model
                        .file_name()
                        .map_or(r.model.display().to_string(), |n| n.to_string_lossy().into_owned()),
                    human_bytes(r.size),
                    r.params as f64 / 1e9,
                    r.backend,
                    r.threads,
                    r.test(),
                    r.sample.avg_ts(),
                    r.sample.stddev_ts(),
                    floor.map(|f| format!("{f:.1}")).unwrap_or_else(|| "-".into()),
                    floor
                        .map(|f| format!("{:.0}%", 100.0 * r.sample.avg_ts() / f))
                        .unwrap_or_else(|| "-".into()),
                    r.peak_rss.map(human_bytes).unwrap_or_else(|| "-".into())
                );
            }
            if let Some(b) = bandwidths.first() {
                println!(
                    "\nmemory bandwidth: {} (median of 5 passes summing 2 GiB; threads {:?}); floor = bandwidth ÷ weight bytes read per token",
                    threads
                        .iter()
                        .zip(&bandwidths)
                        .map(|(t, b)| format!("{:.1} GB/s @ {t}t", b / 1e9))
                        .collect::<Vec<_>>()
                        .join(", "),
                    threads
                );
                let _ = b;
            }
            for line in batched_gains(&rows) {
                println!("{line}");
            }
        }
    }
    Ok(())
}

/// For each batched tg row, its throughput over the same model's single-sequence tg at the
/// same length, depth and threads: what continuous batching gains on this machine.
fn batched_gains(rows: &[Row]) -> Vec<String> {
    let same = |a: &Row, b: &Row| {
        a.model == b.model
            && a.threads == b.threads
            && a.sample.n_gen == b.sample.n_gen
            && a.sample.n_depth == b.sample.n_depth
    };
    rows.iter()
        .filter(|r| r.sample.n_gen > 0 && r.sample.n_parallel > 1)
        .filter_map(|r| {
            let one =
                rows.iter().find(|o| o.sample.n_parallel == 1 && o.sample.n_prompt == 0 && same(o, r))?;
            let name = r
                .model
                .file_name()
                .map_or(r.model.display().to_string(), |n| n.to_string_lossy().into_owned());
            Some(format!(
                "{name}: {} = {:.2}× {} ({} thread(s))",
                r.test(),
                r.sample.avg_ts() / one.sample.avg_ts(),
                one.test(),
                r.threads
            ))
        })
        .collect()
}
