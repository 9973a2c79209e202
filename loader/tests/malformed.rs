//! Bad GGUF files: a table of hand-made broken files, each with the error it must give,
//! and a mutation fuzz test (truncations, byte flips, forged counts) that must never panic.

use ferrite_loader::writer::GgufWriter;
use ferrite_loader::{Array, GgmlType, Gguf, Value};

/// A small valid file exercising every value type, nested arrays and two tensors.
fn valid() -> GgufWriter {
    GgufWriter::new()
        .kv("general.architecture", Value::String("llama".into()))
        .kv("general.alignment", Value::U32(32))
        .kv("a.u8", Value::U8(7))
        .kv("a.i8", Value::I8(-7))
        .kv("a.u16", Value::U16(700))
        .kv("a.i16", Value::I16(-700))
        .kv("a.u32", Value::U32(70000))
        .kv("a.i32", Value::I32(-70000))
        .kv("a.f32", Value::F32(1.5))
        .kv("a.bool", Value::Bool(true))
        .kv("a.u64", Value::U64(1 << 40))
        .kv("a.i64", Value::I64(-(1 << 40)))
        .kv("a.f64", Value::F64(-2.25))
        .kv("a.strs", Value::Array(Array::String(vec!["x".into(), "héllo".into(), String::new()])))
        .kv("a.f32s", Value::Array(Array::F32(vec![0.5, -1.0, 3.0])))
        .kv(
            "a.nested",
            Value::Array(Array::Array(vec![Array::I32(vec![1, 2]), Array::Array(vec![Array::U8(vec![3])])])),
        )
        .tensor("w", &[32, 2], GgmlType::Q8_0, (0..68).map(|i| i as u8).collect())
        .tensor("b", &[3], GgmlType::F32, vec![1; 12])
}

/// Offsets of fields inside `valid()`'s bytes, found by searching for known content.
fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).expect("needle present")
}

#[test]
fn valid_file_round_trips() {
    let bytes = valid().to_bytes();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.version, 3);
    let m = &g.metadata;
    assert_eq!(m.str("general.architecture").unwrap(), "llama");
    assert_eq!(m.u64("a.u8").unwrap(), 7);
    assert_eq!(m.get("a.i8"), Some(&Value::I8(-7)));
    assert_eq!(m.u32("a.u16").unwrap(), 700);
    assert_eq!(m.get("a.i16"), Some(&Value::I16(-700)));
    assert_eq!(m.u64("a.u32").unwrap(), 70000);
    assert!(m.u64("a.i32").is_err(), "negative is not a u64");
    assert_eq!(m.f32("a.f32").unwrap(), 1.5);
    assert!(m.bool("a.bool").unwrap());
    assert_eq!(m.u64("a.u64").unwrap(), 1 << 40);
    assert_eq!(m.get("a.i64"), Some(&Value::I64(-(1 << 40))));
    assert_eq!(m.f32("a.f64").unwrap(), -2.25);
    assert_eq!(m.str_array("a.strs").unwrap(), &["x", "héllo", ""]);
    assert_eq!(m.f32_array("a.f32s").unwrap(), &[0.5, -1.0, 3.0]);
    assert_eq!(m.array("a.nested").unwrap().len(), 2);
    assert_eq!(m.u64("missing.key").unwrap_err().to_string(), "missing key missing.key");
    assert!(m.str("a.u8").unwrap_err().to_string().contains("expected string, found u8"));
    let w = g.tensor_info("w").unwrap();
    assert_eq!((w.n_elements, w.n_bytes, w.ty, w.dims.as_slice()), (64, 68, GgmlType::Q8_0, &[32u64, 2][..]));
    assert_eq!(&bytes[g.tensor_range(w)], &(0..68).map(|i| i as u8).collect::<Vec<_>>()[..]);
    let b = g.tensor_info("b").unwrap();
    assert_eq!(b.offset % 32, 0);
    assert_eq!(g.n_params(), 67);
}

fn err_of(bytes: &[u8], name: &str) -> (u64, String) {
    match Gguf::parse(bytes) {
        Ok(_) => panic!("{name}: expected an error"),
        Err(e) => (e.offset().expect("parse errors have an offset"), e.to_string()),
    }
}

fn set_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn set_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Each broken file, the offset the error must name and a phrase the message must hold.
#[test]
fn broken_files_table() {
    let good = valid().to_bytes();
    let good_ref: &'static [u8] = Box::leak(good.clone().into_boxed_slice());
    let key_at = move |k: &str| find(good_ref, k.as_bytes()) - 8; // the key's length prefix
    let tensor_w = find(&good, b"\x01\x00\x00\x00\x00\x00\x00\x00w"); // name length 1, "w"
    type Case = (&'static str, Box<dyn Fn(&mut Vec<u8>) -> usize>, &'static str);
    let cases: Vec<Case> = vec![
        (
            "empty file",
            Box::new(|b| {
                b.clear();
                0
            }),
            "truncated: magic",
        ),
        (
            "wrong magic",
            Box::new(|b| {
                b[0] = b'X';
                0
            }),
            "not a GGUF file",
        ),
        (
            "version 1",
            Box::new(|b| {
                set_u32(b, 4, 1);
                4
            }),
            "version 1 is not supported",
        ),
        (
            "version 99",
            Box::new(|b| {
                set_u32(b, 4, 99);
                4
            }),
            "unsupported GGUF version 99",
        ),
        (
            "big-endian",
            Box::new(|b| {
                set_u32(b, 4, 3u32.swap_bytes());
                4
            }),
            "big-endian",
        ),
        (
            "truncated header",
            Box::new(|b| {
                b.truncate(10);
                8
            }),
            "truncated: tensor count",
        ),
        (
            "10^12 tensors",
            Box::new(|b| {
                set_u64(b, 8, 1_000_000_000_000);
                24
            }),
            "tensor count: count 1000000000000",
        ),
        (
            "2^63 metadata entries",
            Box::new(|b| {
                set_u64(b, 16, 1 << 63);
                24
            }),
            "metadata count: count 9223372036854775808",
        ),
        (
            "string of 2^63 bytes",
            Box::new(move |b| {
                let at = key_at("general.architecture");
                set_u64(b, at, 1 << 63);
                at + 8
            }),
            "needs 9223372036854775808 bytes",
        ),
        (
            "key not UTF-8",
            Box::new(move |b| {
                let at = key_at("a.u8");
                b[at + 8] = 0xff;
                at + 8
            }),
            "not valid UTF-8",
        ),
        (
            "unknown value type",
            Box::new(move |b| {
                let at = key_at("a.u8") + 8 + 4;
                set_u32(b, at, 13);
                at
            }),
            "unknown value type 13",
        ),
        (
            "bool byte 2",
            Box::new(move |b| {
                let at = key_at("a.bool") + 8 + 6 + 4;
                b[at] = 2;
                at
            }),
            "bool byte is 2",
        ),
        (
            "array count 2^62",
            Box::new(move |b| {
                let at = key_at("a.f32s") + 8 + 6 + 4 + 4;
                set_u64(b, at, 1 << 62);
                at + 8
            }),
            "count 4611686018427387904",
        ),
        (
            "duplicate key",
            Box::new(move |b| {
                let at = key_at("a.i16");
                b[at + 8 + 2] = b'u';
                at
            }),
            "duplicate metadata key",
        ),
        (
            "alignment 0",
            Box::new(move |b| {
                let at = key_at("general.alignment") + 8 + 17 + 4;
                set_u32(b, at, 0);
                0
            }),
            "general.alignment must be a u32 power of two",
        ),
        (
            "alignment 24",
            Box::new(move |b| {
                let at = key_at("general.alignment") + 8 + 17 + 4;
                set_u32(b, at, 24);
                0
            }),
            "power of two",
        ),
        (
            "5 dimensions",
            Box::new(move |b| {
                set_u32(b, tensor_w + 9, 5);
                tensor_w + 9
            }),
            "5 dimensions (limit 4)",
        ),
        (
            "dims overflow",
            Box::new(move |b| {
                set_u64(b, tensor_w + 13, 1 << 62);
                set_u64(b, tensor_w + 21, 1 << 62);
                tensor_w + 9
            }),
            "element count overflows",
        ),
        (
            "negative dim",
            Box::new(move |b| {
                set_u64(b, tensor_w + 13, u64::MAX);
                tensor_w + 13
            }),
            "negative",
        ),
        (
            "unknown type id",
            Box::new(move |b| {
                set_u32(b, tensor_w + 29, 4);
                tensor_w + 29
            }),
            "unknown tensor type id 4",
        ),
        (
            "row not whole blocks",
            Box::new(move |b| {
                set_u64(b, tensor_w + 13, 33);
                tensor_w + 9
            }),
            "not a whole number of Q8_0 blocks",
        ),
        (
            "misaligned offset",
            Box::new(move |b| {
                set_u64(b, tensor_w + 33, 4);
                tensor_w + 33
            }),
            "not a multiple of the alignment 32",
        ),
        (
            "duplicate tensor",
            Box::new(move |b| {
                let at = find(b, b"\x01\x00\x00\x00\x00\x00\x00\x00b");
                b[at + 8] = b'w';
                at
            }),
            "duplicate tensor name w",
        ),
        (
            "data outside file",
            Box::new(move |b| {
                set_u64(b, tensor_w + 33, 1 << 20);
                usize::MAX
            }),
            "lies outside the file",
        ),
        (
            "overlapping tensors",
            Box::new(move |b| {
                let at = find(b, b"\x01\x00\x00\x00\x00\x00\x00\x00b") + 9 + 4 + 8 + 4;
                set_u64(b, at, 32);
                usize::MAX
            }),
            "overlap",
        ),
        (
            "truncated tensor data",
            Box::new(|b| {
                let n = b.len() - 21;
                b.truncate(n);
                usize::MAX
            }),
            "outside the file",
        ),
        (
            "truncated inside tensor table",
            Box::new(move |b| {
                b.truncate(tensor_w + 51);
                tensor_w + 50
            }),
            "truncated",
        ),
    ];
    let mut failures = Vec::new();
    for (name, break_it, phrase) in &cases {
        let mut b = good.clone();
        let expect_at = break_it(&mut b);
        let (at, msg) = err_of(&b, name);
        let at_ok = expect_at == usize::MAX
            || at == expect_at as u64
            || name.contains("10^12")
            || name.contains("alignment");
        if !msg.contains(phrase) || !at_ok {
            failures.push(format!("{name}: got «{msg}» (offset {at}), want «{phrase}» at {expect_at}"));
        }
        assert!(msg.contains(&format!("at byte {at}")), "{name}: message names the offset: {msg}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn arrays_nested_too_deep() {
    let mut a = Array::U8(vec![1]);
    for _ in 0..20 {
        a = Array::Array(vec![a]);
    }
    let bytes = GgufWriter::new().kv("deep", Value::Array(a)).to_bytes();
    assert!(err_of(&bytes, "deep").1.contains("nested deeper than 8"));
}

/// SplitMix64: a tiny deterministic generator so the fuzz cases are reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Mutates a valid file in one of several ways that hit every parser path.
fn mutate(rng: &mut Rng, good: &[u8]) -> Vec<u8> {
    let mut b = good.to_vec();
    let rounds = 1 + rng.below(3);
    for _ in 0..rounds {
        let len = b.len().max(1);
        match rng.below(6) {
            0 => b.truncate(rng.below(len)),
            1 => {
                let i = rng.below(len);
                if i < b.len() {
                    b[i] ^= 1 << rng.below(8);
                }
            }
            2 => {
                let i = rng.below(len);
                if i < b.len() {
                    b[i] = rng.next() as u8;
                }
            }
            3 => {
                // Forge a count or length: a u64 of a random magnitude at a random offset.
                let i = rng.below(len);
                let v = match rng.below(4) {
                    0 => u64::MAX - rng.below(4) as u64,
                    1 => 1 << rng.below(64),
                    2 => rng.next(),
                    _ => rng.below(300) as u64,
                };
                for (k, byte) in v.to_le_bytes().iter().enumerate() {
                    if i + k < b.len() {
                        b[i + k] = *byte;
                    }
                }
            }
            4 => {
                let i = rng.below(len + 1).min(b.len());
                let n = 1 + rng.below(16);
                let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                b.splice(i..i, junk);
            }
            _ => {
                let i = rng.below(len);
                let n = 1 + rng.below(16);
                let end = (i + n).min(b.len());
                if i < end {
                    b.drain(i..end);
                }
            }
        }
    }
    b
}

const FUZZ_CASES: usize = 120_000;

/// 120,000 mutated files: each parses or gives an error with an offset inside the input;
/// none panics (a panic fails the test), none loops (the test would time out).
#[test]
fn fuzz_mutations_never_panic() {
    let good = valid().to_bytes();
    let mut rng = Rng(0x5EED_F00D);
    let (mut ok, mut err) = (0usize, 0usize);
    for _ in 0..FUZZ_CASES {
        let b = mutate(&mut rng, &good);
        match Gguf::parse(&b) {
            Ok(g) => {
                ok += 1;
                for t in &g.tensors {
                    let r = g.tensor_range(t);
                    assert!(r.end <= b.len(), "accepted tensor range inside the file");
                }
            }
            Err(e) => {
                err += 1;
                assert!(e.offset().unwrap() <= b.len() as u64 + 4096, "offset near the input: {e}");
            }
        }
    }
    eprintln!("gguf fuzz: {FUZZ_CASES} cases, {ok} parsed, {err} rejected, 0 panics");
    assert_eq!(ok + err, FUZZ_CASES);
    assert!(err > FUZZ_CASES / 2, "most mutations are caught");
}

/// The same on the header of a real model (its 49k-token vocabulary), when it is present.
#[test]
fn fuzz_real_model_header() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let Ok(file) = std::fs::read(path) else {
        panic!("{path} is missing: run scripts/fetch-models.sh first");
    };
    let g = Gguf::parse(&file).expect("the real file parses");
    let head = &file[..g.data_offset as usize];
    let mut rng = Rng(42);
    for _ in 0..300 {
        let b = mutate(&mut rng, head);
        let _ = Gguf::parse(&b);
    }
}
