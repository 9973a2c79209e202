//! `ferrite info`: prints `ModelInfo` for people or, with `--json`, for machines.

use ferrite::loader::GgufFile;
use ferrite::ModelInfo;
use std::fmt::Write as _;
use std::path::Path;

/// Bytes as a short human figure (binary units).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = n as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < UNITS.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{x:.2} {}", UNITS[u])
    }
}

fn human_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2} B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1} M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1} K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

fn opt<T: ToString>(x: &Option<T>) -> String {
    x.as_ref().map_or("-".to_string(), T::to_string)
}

pub fn run(path: &Path, ctx: Option<u64>, json: bool, verbose: bool) -> Result<(), String> {
    let file = GgufFile::open(path).map_err(|e| e.to_string())?;
    let info = ModelInfo::from_gguf(&file, ctx);
    if json {
        let mut v = serde_json::to_value(&info).map_err(|e| e.to_string())?;
        if !verbose {
            v.as_object_mut().map(|o| o.remove("metadata"));
        }
        println!("{}", serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
        return Ok(());
    }
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(
        w,
        "file           {} ({}, GGUF v{})",
        info.file,
        human_bytes(info.file_size),
        info.gguf_version
    );
    let _ = writeln!(
        w,
        "architecture   {}{}",
        opt(&info.architecture),
        if info.supported { "" } else { "  (not supported by ferrite)" }
    );
    let _ = writeln!(w, "name           {}", opt(&info.name));
    let _ = writeln!(w, "parameters     {} ({} tensors)", human_count(info.n_params), info.n_tensors);
    let _ = writeln!(w, "tensor types");
    for t in &info.tensor_types {
        let pct = 100.0 * t.bytes as f64 / info.memory.weights_bytes.max(1) as f64;
        let _ =
            writeln!(w, "  {:<8} {:>4} tensors  {:>11}  {:5.1}%", t.ty, t.count, human_bytes(t.bytes), pct);
    }
    let _ = writeln!(w, "context        {}", opt(&info.context_length));
    let _ = writeln!(w, "layers         {}", opt(&info.n_layers));
    let _ = writeln!(
        w,
        "embedding      {}  (ffn {})",
        opt(&info.embedding_length),
        opt(&info.feed_forward_length)
    );
    let _ = writeln!(
        w,
        "heads          {} query, {} kv, head dim {}{}",
        opt(&info.n_head),
        opt(&info.n_head_kv),
        opt(&info.head_dim),
        match info.head_dim_v {
            Some(v) if Some(v) != info.head_dim => format!(" (values {v})"),
            _ => String::new(),
        }
    );
    if let Some(sw) = info.sliding_window {
        let _ = writeln!(w, "sliding window {sw}");
    }
    let r = &info.rope;
    let _ = writeln!(
        w,
        "rope           base {}{}, {} dims, {}{}",
        opt(&r.freq_base),
        r.freq_base_swa.map(|b| format!(" (sliding layers {b})")).unwrap_or_default(),
        opt(&r.dimension_count),
        r.style.as_deref().unwrap_or("-"),
        match (&r.scaling_type, r.scaling_factor) {
            (Some(t), Some(f)) => format!(", scaling {t} ×{f}"),
            (Some(t), None) => format!(", scaling {t}"),
            _ => String::new(),
        }
    );
    let t = &info.tokenizer;
    let _ = writeln!(
        w,
        "tokenizer      {} (pre {}), {} tokens{}",
        match t.model.as_deref() {
            Some("llama") => "llama (SentencePiece)",
            Some("gpt2") => "gpt2 (byte-level BPE)",
            Some(other) => other,
            None => "-",
        },
        t.pre.as_deref().unwrap_or("-"),
        t.vocab_size,
        if t.merges > 0 { format!(", {} merges", t.merges) } else { String::new() }
    );
    let _ = writeln!(w, "chat template  {}", if info.chat_template { "yes" } else { "no" });
    let m = &info.memory;
    let _ = writeln!(
        w,
        "memory @ {:<6} {} = weights {} + KV cache {} (f16 values held as f32)",
        m.ctx,
        human_bytes(m.total_bytes),
        human_bytes(m.weights_bytes),
        human_bytes(m.kv_cache_bytes)
    );
    if verbose {
        let _ = writeln!(w, "metadata");
        for (k, v) in &info.metadata {
            let _ = writeln!(w, "  {k} = {v}");
        }
        let _ = writeln!(w, "tensors");
        for t in file.tensors() {
            let _ = writeln!(w, "  {:<40} {:<6} {:?}  {}", t.name, t.ty, t.dims, human_bytes(t.n_bytes));
        }
    }
    print!("{s}");
    Ok(())
}
