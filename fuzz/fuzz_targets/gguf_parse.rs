//! Coverage-guided fuzzing of the GGUF parser: any input parses or errors, never panics.
//! Run: `cargo install cargo-fuzz && cargo +nightly fuzz run gguf_parse` (from the repo root).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = ferrite_loader::Gguf::parse(data) {
        for t in &g.tensors {
            assert!(g.tensor_range(t).end <= data.len());
        }
    }
});
