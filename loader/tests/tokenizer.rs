//! The tokenizer against llama.cpp: its vocabulary test fixtures (every case of every file),
//! the prompts of the reference runs, streaming decode, round trips, malformed metadata,
//! and a property test that encoding never panics.

use ferrite_loader::tokenizer::{SpecialTokens, TokenizerModel};
use ferrite_loader::writer::GgufWriter;
use ferrite_loader::{Array, Gguf, GgufFile, StreamDecoder, TokenType, Tokenizer, TokenizerError, Value};
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

const VOCAB_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/vocab");
const REFERENCE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/reference");
const MODELS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../models");

fn load(path: &Path) -> Tokenizer {
    let file = GgufFile::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Tokenizer::from_metadata(file.metadata()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Fixture vocabularies, loaded once per test binary.
fn fixture(name: &str) -> &'static Tokenizer {
    static CACHE: OnceLock<std::sync::Mutex<Vec<(String, &'static Tokenizer)>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, t)) = cache.iter().find(|(n, _)| n == name) {
        return t;
    }
    let t: &'static Tokenizer =
        Box::leak(Box::new(load(&Path::new(VOCAB_DIR).join(format!("ggml-vocab-{name}.gguf")))));
    cache.push((name.to_string(), t));
    t
}

/// The cases of a fixture, read as llama.cpp's test-tokenizer-0 reads them: inputs separated
/// by "\n__ggml_vocab_test__\n", one line of space-separated ids per input.
fn cases(name: &str) -> Vec<(String, Vec<u32>)> {
    let base = Path::new(VOCAB_DIR).join(format!("ggml-vocab-{name}.gguf"));
    let inp = std::fs::read_to_string(base.with_extension("gguf.inp")).expect("fixture .inp");
    let out = std::fs::read_to_string(base.with_extension("gguf.out")).expect("fixture .out");
    let sep = "\n__ggml_vocab_test__\n";
    let mut inputs = Vec::new();
    let mut pos = 0;
    while pos < inp.len() {
        match inp[pos..].find(sep) {
            Some(i) => {
                inputs.push(inp[pos..pos + i].to_string());
                pos += i + sep.len();
            }
            None => {
                inputs.push(inp[pos..].to_string());
                break;
            }
        }
    }
    let outputs: Vec<Vec<u32>> =
        out.lines().map(|l| l.split_whitespace().map(|t| t.parse().expect("token id")).collect()).collect();
    assert_eq!(inputs.len(), outputs.len(), "{name}: inputs and outputs differ in count");
    inputs.into_iter().zip(outputs).collect()
}

/// Runs every case of a fixture (add_special = false, parse_special = false, as llama.cpp's
/// test does) and fails listing every mismatch.
fn check_fixture(name: &str) {
    let tok = fixture(name);
    let cases = cases(name);
    let mut failures = Vec::new();
    for (text, want) in &cases {
        let got = tok.encode(text, false, false);
        if &got != want {
            failures.push(format!("  {text:?}\n    want {want:?}\n    got  {got:?}"));
        }
    }
    println!("fixture {name}: {}/{} cases pass", cases.len() - failures.len(), cases.len());
    assert!(
        failures.is_empty(),
        "{name}: {} of {} cases fail:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn fixture_llama_spm() {
    check_fixture("llama-spm");
}
#[test]
fn fixture_llama_bpe() {
    check_fixture("llama-bpe");
}
#[test]
fn fixture_qwen2() {
    check_fixture("qwen2");
}
#[test]
fn fixture_gpt_2() {
    check_fixture("gpt-2");
}
#[test]
fn fixture_phi_3() {
    check_fixture("phi-3");
}
#[test]
fn fixture_falcon() {
    check_fixture("falcon");
}
#[test]
fn fixture_starcoder() {
    check_fixture("starcoder");
}
#[test]
fn fixture_deepseek_llm() {
    check_fixture("deepseek-llm");
}
#[test]
fn fixture_deepseek_coder() {
    check_fixture("deepseek-coder");
}

/// Every vocabulary file in the fixture directory has a test above.
#[test]
fn every_fixture_is_tested() {
    let tested = [
        "llama-spm",
        "llama-bpe",
        "qwen2",
        "gpt-2",
        "phi-3",
        "falcon",
        "starcoder",
        "deepseek-llm",
        "deepseek-coder",
    ];
    for entry in std::fs::read_dir(VOCAB_DIR).expect("fixture dir") {
        let name = entry.expect("dir entry").file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_prefix("ggml-vocab-").and_then(|n| n.strip_suffix(".gguf")) {
            assert!(tested.contains(&stem), "fixture {name} has no test");
        }
    }
}

/// The reference runs' prompts: tokenized with special tokens parsed and the model's BOS rule,
/// they must give llama.cpp's ids; the greedy tokens must decode to llama.cpp's text.
fn check_reference(json: &str, required: bool) {
    let path = Path::new(REFERENCE_DIR).join(json);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("reference json")).expect("valid json");
    let model_file = doc["model_file"].as_str().expect("model_file");
    let model_path = PathBuf::from(MODELS_DIR).join(model_file);
    if !model_path.exists() {
        assert!(
            !required,
            "{} is required but missing (fetch it with models/fetch.sh)",
            model_path.display()
        );
        println!("SKIPPED {json}: {} not present", model_path.display());
        return;
    }
    let tok = load(&model_path);
    let cases = doc["cases"].as_array().expect("cases");
    assert!(!cases.is_empty());
    for case in cases {
        let name = case["name"].as_str().unwrap_or("?");
        let prompt = case["prompt"].as_str().expect("prompt");
        let want: Vec<u32> = case["prompt_tokens"]
            .as_array()
            .expect("prompt_tokens")
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect();
        let got = tok.encode(prompt, true, true);
        assert_eq!(got, want, "{json} case {name}: prompt {prompt:?}");

        let greedy: Vec<u32> = case["greedy_tokens"]
            .as_array()
            .expect("greedy")
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect();
        let text = case["greedy_text"].as_str().expect("greedy_text");
        // Generated text is streamed piece by piece (no first-token space stripping).
        let mut stream = StreamDecoder::new(false);
        let mut streamed: String = greedy.iter().map(|&id| stream.push(&tok, id)).collect();
        streamed.push_str(&stream.finish());
        assert_eq!(streamed, text, "{json} case {name}: greedy text");
    }
    println!("reference {json}: {} prompts match", cases.len());
}

#[test]
fn reference_smollm2_q4_1() {
    check_reference("smollm2-q4_1.json", true);
}
#[test]
fn reference_smollm2_variants() {
    for json in ["smollm2-f32.json", "smollm2-f16.json", "smollm2-q8_0.json", "smollm2-q4_0.json"] {
        check_reference(json, false);
    }
}
#[test]
fn reference_qwen05() {
    check_reference("qwen05.json", false);
}
#[test]
fn reference_qwen15() {
    check_reference("qwen15.json", false);
}
#[test]
fn reference_gemma3() {
    check_reference("gemma3.json", false);
}

/// Load time of the big vocabularies (llama.cpp-sized work: maps, merges, piece cache).
#[test]
fn big_vocabularies_load_fast() {
    for (label, path) in [
        ("qwen2 fixture (152k, 151k merges)", Path::new(VOCAB_DIR).join("ggml-vocab-qwen2.gguf")),
        ("llama-bpe fixture (128k, 280k merges)", Path::new(VOCAB_DIR).join("ggml-vocab-llama-bpe.gguf")),
        (
            "qwen2.5-coder-0.5b (152k)",
            PathBuf::from(MODELS_DIR).join("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
        ),
        ("gemma-3-270m (262k)", PathBuf::from(MODELS_DIR).join("gemma-3-270m-q4_k_m.gguf")),
    ] {
        if !path.exists() {
            println!("SKIPPED load time of {label}: {} not present", path.display());
            continue;
        }
        let file = GgufFile::open(&path).expect("open");
        let t0 = Instant::now();
        let tok = Tokenizer::from_metadata(file.metadata()).expect("tokenizer");
        let dt = t0.elapsed();
        println!("load {label}: {:.1} ms ({} tokens)", dt.as_secs_f64() * 1e3, tok.n_vocab());
        assert!(dt.as_secs_f64() < 3.0, "{label} took {dt:?} to load");
    }
}

#[test]
fn special_tokens_and_flags() {
    let spm = fixture("llama-spm");
    assert_eq!(spm.model(), TokenizerModel::Spm);
    assert_eq!((spm.bos(), spm.eos(), spm.unk()), (Some(1), Some(2), Some(0)));
    assert!(spm.add_bos() && !spm.add_eos() && spm.add_space_prefix());
    assert_eq!(spm.encode("Hello", true, false), [1, 15043]);
    assert_eq!(spm.encode("", true, false), [1]);
    assert!(spm.encode("", false, false).is_empty());
    assert_eq!(spm.token_type(1), Some(TokenType::Control));
    assert_eq!(spm.token_type(13), Some(TokenType::Byte));
    assert_eq!(spm.token_type(15043), Some(TokenType::Normal));
    assert_eq!(spm.token_text(15043), Some("\u{2581}Hello"));
    assert_eq!(spm.find_token("\u{2581}Hello"), Some(15043));
    assert_eq!(spm.token_text(u32::MAX), None);
    assert!(spm.is_eog(2) && !spm.is_eog(1));

    let bpe = fixture("llama-bpe");
    assert_eq!(bpe.model(), TokenizerModel::Bpe);
    // llama-bpe: llama.cpp adds BOS by default for this pre-tokenizer.
    assert!(bpe.add_bos());
    assert_eq!(bpe.encode("Hello", true, false), [128000, 9906]);
    let eot = bpe.find_token("<|eot_id|>").expect("eot token");
    assert_eq!(bpe.eot(), Some(eot));
    assert!(bpe.is_eog(eot) && bpe.is_eog(128001));

    let qwen = fixture("qwen2");
    assert!(!qwen.add_bos());
    let im_start = qwen.find_token("<|im_start|>").expect("im_start");
    let im_end = qwen.find_token("<|im_end|>").expect("im_end");
    assert_eq!(qwen.eot(), Some(im_end));
    assert!(qwen.is_eog(im_end) && qwen.is_eog(151643) && !qwen.is_eog(im_start));
    // Control tokens are parsed only on request; otherwise their text is text.
    let parsed = qwen.encode("<|im_start|>user", false, true);
    assert_eq!(parsed[0], im_start);
    assert!(!qwen.encode("<|im_start|>user", false, false).contains(&im_start));
    // User-defined tokens are always matched.
    let pad = qwen.find_token("[PAD151646]").expect("user-defined pad");
    assert_eq!(qwen.encode("a[PAD151646]b", false, false)[1], pad);
    // Rendering: control tokens only on request; user-defined always.
    assert_eq!(qwen.token_to_piece(im_start, false), b"");
    assert_eq!(qwen.token_to_piece(im_start, true), b"<|im_start|>");
    assert_eq!(qwen.token_to_piece(pad, false), b"[PAD151646]");
    assert_eq!(qwen.detokenize(&parsed, true), "<|im_start|>user");
    assert_eq!(qwen.decode(&parsed), "user");
    assert_eq!(qwen.token_to_piece(u32::MAX, true), b"");
}

#[test]
fn spm_space_prefix_after_special_tokens() {
    // Phi-3 (SentencePiece): a space prefix starts the text and follows each special token,
    // and its special tokens swallow the whitespace to their right (llama.cpp's RSTRIP).
    let phi = fixture("phi-3");
    let user = phi.find_token("<|user|>").expect("<|user|>");
    let ids = phi.encode("<|user|>\nHi", true, true);
    assert_eq!(ids[..2], [1, user]);
    assert_eq!(ids[2..], phi.encode("Hi", false, false)[..]);
}

#[test]
fn smollm2_model_flags() {
    let path = PathBuf::from(MODELS_DIR).join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{} is required", path.display());
    let tok = load(&path);
    let special: &SpecialTokens = tok.special_tokens();
    assert_eq!((special.bos, special.eos), (Some(1), Some(2)));
    assert!(!tok.add_bos() && !tok.add_eos() && !tok.add_space_prefix());
    assert_eq!(tok.pre(), "smollm");
    // <|endoftext|>, <|im_end|> and <reponame> (a FIM repo marker) end generation.
    assert_eq!(tok.eog_tokens(), [0, 2, 4]);
    assert_eq!(special.fim_rep, Some(4));
}

/// Byte-fallback SentencePiece spells 🦙 as four byte tokens; the stream decoder prints it
/// only once complete.
#[test]
fn stream_decoder_holds_back_split_characters() {
    let spm = fixture("llama-spm");
    let ids = spm.encode("🦙!", false, false);
    assert_eq!(ids, [29871, 243, 162, 169, 156, 29991]);
    let mut dec = StreamDecoder::new(false);
    let outs: Vec<String> = ids.iter().map(|&id| dec.push(spm, id)).collect();
    assert_eq!(outs, [" ", "", "", "", "🦙", "!"]);
    assert!(dec.pending().is_empty());
    assert_eq!(dec.finish(), "");

    // Byte-level BPE: the same through Qwen's byte tokens, one piece at a time.
    let qwen = fixture("qwen2");
    let text = "日本語🦀🚀 é";
    let ids = qwen.encode(text, false, false);
    let mut dec = StreamDecoder::new(false);
    let mut out = String::new();
    for &id in &ids {
        let piece = dec.push(qwen, id);
        out.push_str(&piece);
        assert!(text.starts_with(&out), "{out:?} is not a prefix of {text:?}");
    }
    out.push_str(&dec.finish());
    assert_eq!(out, text);

    // Truly invalid bytes become U+FFFD; an unfinished character at the end too.
    let mut dec = StreamDecoder::new(false);
    assert_eq!(dec.push_bytes(&[b'a', 0xF0, 0x9F]), "a");
    assert_eq!(dec.push_bytes(b"b"), "\u{FFFD}b");
    assert_eq!(dec.push_bytes(&[0xE6, 0x97]), "");
    assert_eq!(dec.finish(), "\u{FFFD}");
}

const VARIED: &[&str] = &[
    "Hello, world! It's 3.14159 — naïve café, Ærøskøbing.",
    "日本語のテキストも少し。한국어 텍스트. 中文，标点！",
    "Emoji: 🦀🚀🦙 👩‍👩‍👧‍👦 🇫🇷 ✅",
    "Tabs\tand\nnewlines\r\n\n  indented   spaces   ",
    "Ελληνικά, русский, עברית, العربية, हिन्दी, ไทย",
    "Math: ∀x∈ℝ, x² ≥ 0; ∑ᵢ aᵢ ≈ ∫ f(x) dx",
    "Combining: e\u{0301} a\u{0308} \u{200B}zero\u{200D}width \u{FEFF}bom",
    "Control: \u{1}\u{1F}\u{7F}\u{85}\u{A0}\u{2028}\u{3000}end",
    "Code: fn main() { println!(\"{}\", 1 + 2); } // done",
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE I'VE 12345678901234567890",
    "   leading and trailing   ",
    "\u{10FFFF}\u{E000}\u{F8FF}\u{0378}",
];

#[test]
fn bpe_round_trips_varied_unicode() {
    for name in ["llama-bpe", "qwen2", "gpt-2", "falcon", "starcoder", "deepseek-llm", "deepseek-coder"] {
        let tok = fixture(name);
        for text in VARIED {
            let ids = tok.encode(text, false, false);
            assert_eq!(&tok.decode(&ids), text, "{name}: {ids:?}");
        }
    }
}

#[test]
fn spm_round_trips_varied_unicode() {
    for name in ["llama-spm", "phi-3"] {
        let tok = fixture(name);
        for text in VARIED {
            let ids = tok.encode(text, false, false);
            assert_eq!(&tok.decode(&ids), text, "{name}: {ids:?}");
        }
    }
}

#[test]
fn model_round_trips_varied_unicode() {
    for file in [
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "gemma-3-270m-q4_k_m.gguf",
    ] {
        let path = PathBuf::from(MODELS_DIR).join(file);
        if !path.exists() {
            println!("SKIPPED round trip with {file}: not present");
            continue;
        }
        let tok = load(&path);
        for text in VARIED {
            let ids = tok.encode(text, false, false);
            assert_eq!(&tok.decode(&ids), text, "{file}: {ids:?}");
        }
    }
}

/// Metadata of a small byte-level BPE vocabulary: the 256 byte characters plus "ab", "<s>".
fn small_bpe() -> Vec<(&'static str, Value)> {
    let mut tokens: Vec<String> = (0u32..256).map(|b| ferrite_byte_char(b as u8).to_string()).collect();
    tokens.push("ab".into());
    tokens.push("<s>".into());
    let mut types = vec![1i32; 257];
    types.push(3);
    vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("gpt-2".into())),
        ("tokenizer.ggml.tokens", Value::Array(Array::String(tokens))),
        ("tokenizer.ggml.token_type", Value::Array(Array::I32(types))),
        ("tokenizer.ggml.merges", Value::Array(Array::String(vec!["a b".into()]))),
        ("tokenizer.ggml.bos_token_id", Value::U32(257)),
        ("tokenizer.ggml.eos_token_id", Value::U32(257)),
    ]
}

/// GPT-2's byte-to-unicode map (printable Latin-1 as is, the rest from U+0100).
fn ferrite_byte_char(b: u8) -> char {
    let printable = |x: u8| (0x21..=0x7E).contains(&x) || (0xA1..=0xAC).contains(&x) || x >= 0xAE;
    if printable(b) {
        return b as char;
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).expect("valid char")
}

fn build(kvs: Vec<(&str, Value)>) -> Result<Tokenizer, TokenizerError> {
    let mut w = GgufWriter::new();
    for (k, v) in kvs {
        w = w.kv(k, v);
    }
    let gguf = Gguf::parse(&w.to_bytes()).expect("valid gguf");
    Tokenizer::from_metadata(&gguf.metadata)
}

fn with(
    mut kvs: Vec<(&'static str, Value)>,
    key: &'static str,
    value: Option<Value>,
) -> Vec<(&'static str, Value)> {
    kvs.retain(|(k, _)| *k != key);
    if let Some(v) = value {
        kvs.push((key, v));
    }
    kvs
}

#[test]
fn small_vocabulary_works() {
    let tok = build(small_bpe()).expect("valid");
    // Ids 0..256 are the bytes in order, 256 is "ab": "ab" merges, " a" stays two bytes.
    assert_eq!(tok.encode("ab a", false, false), [256, 32, 97]);
    assert_eq!(tok.decode(&tok.encode("ab a\u{1F980}", false, false)), "ab a\u{1F980}");
    assert!(tok.warnings().is_empty(), "{:?}", tok.warnings());
}

#[test]
fn malformed_metadata_is_an_error_not_a_panic() {
    let err = |kvs| build(kvs).expect_err("must fail").to_string();

    assert!(err(with(small_bpe(), "tokenizer.ggml.model", None)).contains("missing key tokenizer.ggml.model"));
    assert!(err(with(small_bpe(), "tokenizer.ggml.model", Some(Value::String("bert".into()))))
        .contains("unsupported tokenizer model \"bert\""));
    assert!(err(with(small_bpe(), "tokenizer.ggml.tokens", Some(Value::Array(Array::String(vec![])))))
        .contains("empty"));
    assert!(err(with(small_bpe(), "tokenizer.ggml.tokens", Some(Value::Array(Array::I32(vec![1, 2])))))
        .contains("expected array of strings"));
    assert!(err(with(small_bpe(), "tokenizer.ggml.token_type", Some(Value::Array(Array::I32(vec![1; 10])))))
        .contains("tokenizer.ggml.token_type has 10 entries for 258 tokens"));
    assert!(err(with(small_bpe(), "tokenizer.ggml.token_type", Some(Value::String("x".into()))))
        .contains("tokenizer.ggml.token_type"));
    assert!(err(with(small_bpe(), "tokenizer.ggml.scores", Some(Value::Array(Array::F32(vec![0.0; 3])))))
        .contains("tokenizer.ggml.scores has 3 entries"));
    assert!(err(with(small_bpe(), "tokenizer.ggml.scores", Some(Value::Array(Array::String(vec![])))))
        .contains("expected array of f32 or i32"));
    assert!(
        err(with(small_bpe(), "tokenizer.ggml.merges", None)).contains("missing key tokenizer.ggml.merges")
    );
    assert!(err(with(small_bpe(), "tokenizer.ggml.bos_token_id", Some(Value::I32(-1))))
        .contains("tokenizer.ggml.bos_token_id"));

    let mut dup = small_bpe();
    if let Some((_, Value::Array(Array::String(t)))) =
        dup.iter_mut().find(|(k, _)| *k == "tokenizer.ggml.tokens")
    {
        t[257] = "ab".into();
    }
    assert!(err(dup).contains("duplicate token \"ab\" with ids 256 and 257"));

    // BPE's default BOS (11) exists here; with a 5-token vocabulary it doesn't, so asking
    // for BOS without naming one fails as in llama.cpp.
    let tiny = vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("gpt-2".into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(Array::String(["a", "b", "c", "d", "e"].map(String::from).to_vec())),
        ),
        ("tokenizer.ggml.merges", Value::Array(Array::String(vec![]))),
        ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
    ];
    assert!(err(tiny).contains("add_bos_token is true, but tokenizer.ggml.bos_token_id is not set"));
}

#[test]
fn tolerated_oddities_are_warnings() {
    // Out-of-range special ids are ignored, merges may name non-tokens, unknown
    // pre-tokenizers fall back to the default one, empty tokens get a placeholder text.
    let mut kvs = with(small_bpe(), "tokenizer.ggml.eos_token_id", Some(Value::U32(1_000_000)));
    kvs = with(kvs, "tokenizer.ggml.pre", Some(Value::String("no-such-pre".into())));
    kvs = with(
        kvs,
        "tokenizer.ggml.merges",
        Some(Value::Array(Array::String(vec!["a b".into(), "x zz".into(), "nospace".into(), "ab c".into()]))),
    );
    if let Some((_, Value::Array(Array::String(t)))) =
        kvs.iter_mut().find(|(k, _)| *k == "tokenizer.ggml.tokens")
    {
        t[0] = String::new();
    }
    let tok = build(kvs).expect("tolerated");
    assert_eq!(tok.eos(), Some(11), "BPE's default EOS stays");
    assert_eq!(tok.token_text(0), Some("[EMPTY_0]"));
    let w = tok.warnings().join("\n");
    for needle in ["out of the vocabulary", "no-such-pre", "without a space", "not tokens", "empty token"] {
        assert!(w.contains(needle), "no warning about {needle}: {w}");
    }
    // "abc": "ab" merges, "abc" is not a token: bytes fall back as llama.cpp does.
    assert_eq!(tok.decode(&tok.encode("abc", false, false)), "abc");
}

fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "\\PC{0,12}",
        Just("<|im_start|>".to_string()),
        Just("<|im_".to_string()),
        Just("start|>".to_string()),
        Just("<s>".to_string()),
        Just("</s>".to_string()),
        Just("<0x0A>".to_string()),
        Just("\u{2581}".to_string()),
        Just("[PAD151646]".to_string()),
        Just("<|endoftext|>".to_string()),
        Just("  \n\t ".to_string()),
        Just("🦙's".to_string()),
        "[ -~]{0,8}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn encode_never_panics_and_bpe_round_trips(parts in proptest::collection::vec(fragment(), 0..8)) {
        let text: String = parts.concat();
        for name in ["qwen2", "llama-bpe", "llama-spm", "phi-3", "deepseek-coder"] {
            let tok = fixture(name);
            for (add, parse) in [(false, false), (true, true), (false, true)] {
                let ids = tok.encode(&text, add, parse);
                prop_assert!(ids.iter().all(|&id| (id as usize) < tok.n_vocab()));
            }
            // Without special-token parsing, byte-level BPE reproduces any text.
            if tok.model() == TokenizerModel::Bpe {
                prop_assert_eq!(tok.decode(&tok.encode(&text, false, false)), text.clone(), "{}", name);
            }
        }
    }
}

#[test]
fn tokenizer_is_shareable_across_threads() {
    fn check<T: Send + Sync>() {}
    check::<Tokenizer>();
    check::<StreamDecoder>();
}
