//! `ferrite perplexity`, and its checkpoint file: a run on a slow backend (hours on a software
//! GPU) can stop and go on where it stopped, with the same final figure.

use crate::cli_gen::ModelArgs;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// First line of a checkpoint: what the scores belong to. A resume must match all of it.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Header {
    ferrite_perplexity: u32,
    model: String,
    model_bytes: u64,
    backend: String,
    n_ctx: usize,
    n_tokens: usize,
    /// FNV-1a of the token ids: the same text through the same tokenizer.
    tokens_fnv: String,
}

/// One scored chunk: the log-probability of each scored token, in order.
#[derive(Serialize, Deserialize)]
struct Chunk {
    chunk: usize,
    logprobs: Vec<f32>,
}

fn fnv1a(tokens: &[u32]) -> u64 {
    tokens
        .iter()
        .flat_map(|t| t.to_le_bytes())
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Reads a checkpoint: the chunks it holds (in order from the first) and the byte length of
/// its complete lines. A last line cut short by a kill is dropped; anything else malformed,
/// or a header for another run, is an error (never silently scored over).
fn read_checkpoint(path: &Path, want: &Header) -> Result<(Vec<Vec<f32>>, u64), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bad = |what: String| format!("checkpoint {}: {what}", path.display());
    let mut lines = text.split_inclusive('\n');
    let mut good = 0u64;
    let Some(first) = lines.next().filter(|l| l.ends_with('\n')) else {
        return Ok((Vec::new(), 0));
    };
    let header: Header = serde_json::from_str(first)
        .map_err(|e| bad(format!("line 1 is not a ferrite perplexity header: {e}")))?;
    if header != *want {
        return Err(bad(format!(
            "it belongs to another run ({header:?}); this run is {want:?}. Remove it or name another file"
        )));
    }
    good += first.len() as u64;
    let mut done = Vec::new();
    for (i, line) in lines.enumerate() {
        if !line.ends_with('\n') {
            break; // cut short while being written
        }
        let c: Chunk = serde_json::from_str(line).map_err(|e| bad(format!("line {}: {e}", i + 2)))?;
        if c.chunk != done.len() + 1 {
            return Err(bad(format!("line {} holds chunk {}, expected {}", i + 2, c.chunk, done.len() + 1)));
        }
        done.push(c.logprobs);
        good += line.len() as u64;
    }
    Ok((done, good))
}

pub fn perplexity(
    m: &ModelArgs,
    file: &PathBuf,
    n_ctx: usize,
    max_chunks: Option<usize>,
    checkpoint: Option<&Path>,
) -> Result<(), String> {
    let mut engine = m.load()?;
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let t0 = std::time::Instant::now();
    let mut tokens = engine.tokenizer().encode(&text, true, false);
    if let Some(c) = max_chunks {
        tokens.truncate(tokens.len().min(c * n_ctx));
    }
    eprintln!(
        "perplexity: {} tokens, {} chunks of {n_ctx}, {} threads, backend {}",
        tokens.len(),
        tokens.len() / n_ctx,
        engine.threads(),
        engine.backend_name()
    );
    let (done, mut out) = match checkpoint {
        None => (Vec::new(), None),
        Some(path) => {
            let header = Header {
                ferrite_perplexity: 1,
                model: m.model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                model_bytes: std::fs::metadata(&m.model).map_err(|e| e.to_string())?.len(),
                backend: engine.backend_name().to_string(),
                n_ctx,
                n_tokens: tokens.len(),
                tokens_fnv: format!("{:016x}", fnv1a(&tokens)),
            };
            let (done, good) = if path.exists() { read_checkpoint(path, &header)? } else { (Vec::new(), 0) };
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            // Drop a line cut short by a kill before appending.
            f.set_len(good).map_err(|e| format!("{}: {e}", path.display()))?;
            if good == 0 {
                let line = serde_json::to_string(&header).expect("header serializes") + "\n";
                f.write_all(line.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            if !done.is_empty() {
                eprintln!("perplexity: {} chunks scored before, from {}", done.len(), path.display());
            }
            (done, Some((f, path)))
        }
    };
    let mut write_err = None;
    let r = engine
        .perplexity_resume(&tokens, n_ctx, &done, |i, _n, ppl, lps| {
            eprint!("[{i}]{ppl:.4},");
            let _ = std::io::stderr().flush();
            if let Some((f, path)) = out.as_mut() {
                let line = serde_json::to_string(&Chunk { chunk: i, logprobs: lps.to_vec() })
                    .expect("chunk serializes")
                    + "\n";
                if let Err(e) = f.write_all(line.as_bytes()).and_then(|_| f.sync_data()) {
                    write_err.get_or_insert(format!("{}: {e}", path.display()));
                }
            }
        })
        .map_err(|e| e.to_string())?;
    let before: usize = done.iter().map(Vec::len).sum();
    let resumed = if before > 0 { format!(" ({before} of them before)") } else { String::new() };
    eprintln!("\n{} tokens scored{resumed} in {:.1} s", r.scored, t0.elapsed().as_secs_f64());
    println!("Final estimate: PPL = {:.4} +/- {:.5}", r.ppl, r.stderr);
    match write_err {
        Some(e) => Err(format!("the checkpoint could not be written: {e}")),
        None => Ok(()),
    }
}
