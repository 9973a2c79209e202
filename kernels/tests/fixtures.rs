//! Dequantization against reference fixtures: `shared/fixtures/quant/T.bin` holds raw ggml
//! blocks of type T and `T.f32` the values ggml produces for them (little-endian f32).
//! Every value must match bit for bit.

use std::path::{Path, PathBuf};

use ferrite_kernels::quant::QuantType;
use serde_json::Value;

/// The types the fixture set must cover; a missing one is a failure, not a skip.
const EXPECTED: [&str; 17] = [
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
    "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0",
];

fn fixtures_dir() -> PathBuf {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/quant"));
    assert!(
        dir.join("index.json").is_file(),
        "quant fixtures not found at {} (expected shared/ checked out beside the repository)",
        dir.display()
    );
    dir.to_path_buf()
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn field(entry: &Value, name: &str, key: &str) -> usize {
    entry[key].as_u64().unwrap_or_else(|| panic!("{name}: index.json lacks integer {key}")) as usize
}

#[test]
fn dequantize_matches_fixtures_bit_for_bit() {
    let dir = fixtures_dir();
    let index: Value = serde_json::from_slice(&read(&dir.join("index.json"))).expect("index.json");
    let index = index.as_object().expect("index.json is an object");
    for name in EXPECTED {
        assert!(index.contains_key(name), "index.json has no entry for {name}");
    }

    for (name, entry) in index {
        let ty = QuantType::from_name(name).unwrap_or_else(|| panic!("fixture type {name} unsupported"));
        assert_eq!(ty.ggml_id() as usize, field(entry, name, "ggml_type_id"), "{name}: ggml id");
        assert_eq!(ty.block_elems(), field(entry, name, "block_elems"), "{name}: block_elems");
        assert_eq!(ty.block_bytes(), field(entry, name, "block_bytes"), "{name}: block_bytes");

        let bytes = read(&dir.join(format!("{name}.bin")));
        let expected = read(&dir.join(format!("{name}.f32")));
        let n = field(entry, name, "values");
        assert_eq!(bytes.len(), field(entry, name, "bytes"), "{name}: .bin size");
        assert_eq!(expected.len(), 4 * n, "{name}: .f32 size");
        assert_eq!(ty.row_bytes(n), Ok(bytes.len()), "{name}: bytes for {n} values");

        let mut out = vec![0.0f32; n];
        ty.dequantize_row(&bytes, &mut out).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mismatches: Vec<_> = expected
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .zip(&out)
            .enumerate()
            .filter(|(_, (want, got))| *want != got.to_bits())
            .collect();
        if let Some(&(i, (want, got))) = mismatches.first() {
            let (count, got_bits, want_f) = (mismatches.len(), got.to_bits(), f32::from_bits(want));
            panic!(
                "{name}: {count} of {n} values differ; first at {i}: \
                 got {got:e} ({got_bits:#010x}), want {want_f:e} ({want:#010x})"
            );
        }
    }
}

/// The fixture bytes also dequantize correctly from every misaligned start (the block views
/// are zero-copy at alignment 1).
#[test]
fn dequantize_is_alignment_independent() {
    let dir = fixtures_dir();
    for name in ["Q4_K", "Q6_K", "F32"] {
        let ty = QuantType::from_name(name).unwrap();
        let bytes = read(&dir.join(format!("{name}.bin")));
        let n = bytes.len() / ty.block_bytes() * ty.block_elems();
        let mut want = vec![0.0; n];
        ty.dequantize_row(&bytes, &mut want).unwrap();
        for off in 1..4 {
            let mut shifted = vec![0u8; off];
            shifted.extend_from_slice(&bytes);
            let mut got = vec![0.0; n];
            ty.dequantize_row(&shifted[off..], &mut got).unwrap();
            assert!(want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()), "{name} @ +{off}");
        }
    }
}
