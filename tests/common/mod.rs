//! Shared helpers for end-to-end tests: where models and reference outputs live.

#![allow(dead_code)]

use std::path::PathBuf;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared` beside the repository (override with FERRITE_SHARED).
pub fn shared() -> PathBuf {
    std::env::var_os("FERRITE_SHARED").map(PathBuf::from).unwrap_or_else(|| root().join("../shared"))
}

/// A model file in ./models (override the folder with FERRITE_MODELS). `required`: panic
/// with instructions when absent; otherwise `None` (the caller prints that it skipped).
pub fn model(file: &str, required: bool) -> Option<PathBuf> {
    let dir = std::env::var_os("FERRITE_MODELS").map(PathBuf::from).unwrap_or_else(|| root().join("models"));
    let p = dir.join(file);
    if p.exists() {
        return Some(p);
    }
    if required {
        panic!("{} is missing: run scripts/fetch-models.sh first", p.display());
    }
    eprintln!("skipped: {} is absent (scripts/fetch-models.sh all)", p.display());
    None
}

/// A reference file from ../shared/reference.
pub fn reference(name: &str) -> serde_json::Value {
    let p = shared().join("reference").join(name);
    let s = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&s).unwrap()
}
