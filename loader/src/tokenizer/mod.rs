//! The tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata, token-exact with
//! llama.cpp (`src/llama-vocab.cpp`, `src/unicode.cpp`).
//!
//! Two vocabulary kinds are supported: SentencePiece BPE (`llama`: Llama 1/2, Mistral,
//! Gemma, Phi-3 …) and byte-level BPE (`gpt2`: Llama 3, Qwen, SmolLM, DeepSeek, GPT-2 …).
//! Everything llama.cpp decides from the metadata is decided the same way here, including
//! its quirks (default special ids, control tokens recognised by their text, the set of
//! end-of-generation tokens), because the engine is judged by producing llama.cpp's token
//! ids and text. Where this crate deliberately differs, the item says so.
//!
//! A GGUF file is untrusted: malformed metadata is an error (or a warning where llama.cpp
//! tolerates it), never a panic, and encoding any text never panics.
//!
//! ```no_run
//! use ferrite_loader::{GgufFile, StreamDecoder, Tokenizer};
//!
//! let file = GgufFile::open("model.gguf")?;
//! let tok = Tokenizer::from_metadata(file.metadata())?;
//! // BOS as the model wants it; `<|im_start|>` and friends become their control tokens.
//! let ids = tok.encode("<|im_start|>user\nHi!<|im_end|>\n", true, true);
//! // Print generated ids as they come, never half a character at a time.
//! let mut out = StreamDecoder::new(false);
//! for &id in &ids {
//!     print!("{}", out.push(&tok, id));
//! }
//! print!("{}", out.finish());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod bpe;
mod pretokenize;
mod spm;
mod unicode;
mod unicode_data;

use crate::{Array, Metadata, MetadataError, Value};
use std::collections::HashMap;
use std::fmt;
use thiserror::Error;

use self::bpe::Merges;
use self::pretokenize::{PreSpec, PreTokenizer};

/// The largest vocabulary accepted (2^24 tokens): far above any real model, low enough that
/// per-token tables stay small.
pub const MAX_VOCAB: usize = 1 << 24;

/// Why a tokenizer could not be built from metadata.
#[derive(Debug, Error)]
pub enum TokenizerError {
    /// A key is missing or has the wrong type.
    #[error("tokenizer metadata: {0}")]
    Metadata(#[from] MetadataError),
    /// `tokenizer.ggml.model` names a kind this crate does not implement.
    #[error(
        "unsupported tokenizer model {0:?} (supported: \"llama\" (SentencePiece), \"gpt2\" (byte-level BPE))"
    )]
    UnsupportedModel(String),
    /// `tokenizer.ggml.tokens` is empty.
    #[error("tokenizer.ggml.tokens is empty")]
    EmptyVocab,
    /// More tokens than [`MAX_VOCAB`].
    #[error("tokenizer.ggml.tokens has {0} tokens, more than the {MAX_VOCAB} supported")]
    TooManyTokens(usize),
    /// A per-token array is shorter than the token list.
    #[error("{key} has {len} entries for {n_tokens} tokens")]
    ArrayTooShort {
        /// The key.
        key: &'static str,
        /// Its length.
        len: usize,
        /// The number of tokens.
        n_tokens: usize,
    },
    /// Two tokens have the same text (llama.cpp rejects this too).
    #[error("duplicate token {text:?} with ids {first} and {second}")]
    DuplicateToken {
        /// The text.
        text: String,
        /// The first id.
        first: u32,
        /// The second id.
        second: u32,
    },
    /// A flag asks for a special token the vocabulary does not define.
    #[error("{flag} is true, but {id_key} is not set")]
    MissingSpecialToken {
        /// The `add_*_token` key.
        flag: &'static str,
        /// The id key.
        id_key: &'static str,
    },
    /// A pre-tokenizer regex this engine cannot run (a bug in this crate's table).
    #[error("pre-tokenizer regex {pattern:?}: {message}")]
    Regex {
        /// The regex as llama.cpp writes it.
        pattern: String,
        /// What went wrong.
        message: String,
    },
}

/// The algorithm family of a vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerModel {
    /// SentencePiece BPE with scores and byte fallback (`tokenizer.ggml.model = llama`).
    Spm,
    /// Byte-level BPE with merges (`tokenizer.ggml.model = gpt2`).
    Bpe,
}

/// The token types of `tokenizer.ggml.token_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenType {
    /// 0, or a value llama.cpp does not know.
    Undefined,
    /// 1: ordinary text.
    Normal,
    /// 2: the unknown token.
    Unknown,
    /// 3: control tokens (BOS, EOS, chat markers): parsed from text only on request,
    /// rendered only on request.
    Control,
    /// 4: added tokens matched in text before splitting, and always rendered.
    UserDefined,
    /// 5: reserved slots.
    Unused,
    /// 6: `<0xXX>` byte fallback tokens.
    Byte,
}

impl TokenType {
    /// The type for a `tokenizer.ggml.token_type` value.
    pub fn from_gguf(v: i64) -> TokenType {
        match v {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }
}

/// Token attributes as llama.cpp keeps them (`llama_token_attr`): the file's type plus what
/// llama.cpp adds at load (control-looking texts become control, `<unusedN>` control tokens
/// become unused, Phi-3's tokens strip spaces to their right …).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TokenAttr(u16);

impl TokenAttr {
    /// No attribute.
    pub const UNDEFINED: TokenAttr = TokenAttr(0);
    /// The unknown token.
    pub const UNKNOWN: TokenAttr = TokenAttr(1 << 0);
    /// A reserved slot.
    pub const UNUSED: TokenAttr = TokenAttr(1 << 1);
    /// Ordinary text.
    pub const NORMAL: TokenAttr = TokenAttr(1 << 2);
    /// A control token.
    pub const CONTROL: TokenAttr = TokenAttr(1 << 3);
    /// A user-defined (added) token.
    pub const USER_DEFINED: TokenAttr = TokenAttr(1 << 4);
    /// A byte fallback token.
    pub const BYTE: TokenAttr = TokenAttr(1 << 5);
    /// When matched as a special token, whitespace to its left is dropped.
    pub const LSTRIP: TokenAttr = TokenAttr(1 << 7);
    /// When matched as a special token, whitespace to its right is dropped.
    pub const RSTRIP: TokenAttr = TokenAttr(1 << 8);

    /// The raw bits (llama.cpp's values).
    pub fn bits(self) -> u16 {
        self.0
    }
    /// Whether any of `other`'s bits are set.
    pub fn intersects(self, other: TokenAttr) -> bool {
        self.0 & other.0 != 0
    }
    /// Whether all of `other`'s bits are set.
    pub fn contains(self, other: TokenAttr) -> bool {
        self.0 & other.0 == other.0
    }
    fn insert(&mut self, other: TokenAttr) {
        self.0 |= other.0;
    }
    fn remove(&mut self, other: TokenAttr) {
        self.0 &= !other.0;
    }
    fn from_type(t: TokenType) -> TokenAttr {
        match t {
            TokenType::Undefined => TokenAttr::UNDEFINED,
            TokenType::Normal => TokenAttr::NORMAL,
            TokenType::Unknown => TokenAttr::UNKNOWN,
            TokenType::Control => TokenAttr::CONTROL,
            TokenType::UserDefined => TokenAttr::USER_DEFINED,
            TokenType::Unused => TokenAttr::UNUSED,
            TokenType::Byte => TokenAttr::BYTE,
        }
    }
}

impl std::ops::BitOr for TokenAttr {
    type Output = TokenAttr;
    fn bitor(self, rhs: TokenAttr) -> TokenAttr {
        TokenAttr(self.0 | rhs.0)
    }
}

impl fmt::Debug for TokenAttr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(TokenAttr, &str); 9] = [
            (TokenAttr::UNKNOWN, "UNKNOWN"),
            (TokenAttr::UNUSED, "UNUSED"),
            (TokenAttr::NORMAL, "NORMAL"),
            (TokenAttr::CONTROL, "CONTROL"),
            (TokenAttr::USER_DEFINED, "USER_DEFINED"),
            (TokenAttr::BYTE, "BYTE"),
            (TokenAttr::LSTRIP, "LSTRIP"),
            (TokenAttr::RSTRIP, "RSTRIP"),
            (TokenAttr(1 << 6), "NORMALIZED"),
        ];
        let names: Vec<&str> = NAMES.iter().filter(|(a, _)| self.contains(*a)).map(|(_, n)| *n).collect();
        if names.is_empty() {
            f.write_str("UNDEFINED")
        } else {
            f.write_str(&names.join("|"))
        }
    }
}

/// The special token ids of a vocabulary, after llama.cpp's defaults, the GGUF keys and
/// detection by text. `None` where the vocabulary has none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Beginning of sequence.
    pub bos: Option<u32>,
    /// End of sequence.
    pub eos: Option<u32>,
    /// End of turn (`<|eot_id|>`, `<|im_end|>`, `<end_of_turn>` …).
    pub eot: Option<u32>,
    /// End of message (`<|eom_id|>`).
    pub eom: Option<u32>,
    /// Unknown.
    pub unk: Option<u32>,
    /// Separator.
    pub sep: Option<u32>,
    /// Padding.
    pub pad: Option<u32>,
    /// Fill-in-the-middle: prefix.
    pub fim_pre: Option<u32>,
    /// Fill-in-the-middle: suffix.
    pub fim_suf: Option<u32>,
    /// Fill-in-the-middle: middle.
    pub fim_mid: Option<u32>,
    /// Fill-in-the-middle: padding.
    pub fim_pad: Option<u32>,
    /// Fill-in-the-middle: repository name.
    pub fim_rep: Option<u32>,
    /// Fill-in-the-middle: file separator.
    pub fim_sep: Option<u32>,
}

/// Selects one field of [`SpecialTokens`] (tables of keys and texts map to fields).
type SpecialField = fn(&mut SpecialTokens) -> &mut Option<u32>;

/// Token texts, the text→id map and scores.
#[derive(Debug)]
struct Vocab {
    texts: Vec<String>,
    ids: HashMap<String, u32>,
    scores: Vec<f32>,
}

impl Vocab {
    fn id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }
}

/// The algorithm-specific part.
#[derive(Debug)]
enum Kind {
    Spm {
        /// `<0xXX>` (or one-byte) token of each byte.
        byte_tokens: Box<[Option<u32>; 256]>,
    },
    Bpe {
        merges: Box<Merges>,
        pre: PreTokenizer,
        ignore_merges: bool,
    },
}

/// A tokenizer built from GGUF metadata.
pub struct Tokenizer {
    kind: Kind,
    pre_name: String,
    vocab: Vocab,
    attrs: Vec<TokenAttr>,
    special: SpecialTokens,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    /// End-of-generation ids, sorted.
    eog: Vec<u32>,
    /// Control, user-defined and unknown tokens, longest text first: the order llama.cpp
    /// cuts them out of text in.
    special_cache: Vec<u32>,
    /// Every token's rendering (as if `special` were true), concatenated; `piece_at[id]..
    /// piece_at[id + 1]` is token `id`'s.
    pieces: Vec<u8>,
    piece_at: Vec<u32>,
    warnings: Vec<String>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("model", &self.model())
            .field("pre", &self.pre_name)
            .field("n_vocab", &self.n_vocab())
            .field("special", &self.special)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .field("add_space_prefix", &self.add_space_prefix)
            .field("eog", &self.eog)
            .field("warnings", &self.warnings.len())
            .finish_non_exhaustive()
    }
}

const K_MODEL: &str = "tokenizer.ggml.model";
const K_PRE: &str = "tokenizer.ggml.pre";
const K_TOKENS: &str = "tokenizer.ggml.tokens";
const K_SCORES: &str = "tokenizer.ggml.scores";
const K_TYPES: &str = "tokenizer.ggml.token_type";
const K_MERGES: &str = "tokenizer.ggml.merges";
const K_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const K_ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
const K_ADD_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
const K_BOS: &str = "tokenizer.ggml.bos_token_id";
const K_EOS: &str = "tokenizer.ggml.eos_token_id";

/// DeepSeek's end-of-sentence token, `<｜end▁of▁sentence｜>`.
const DEEPSEEK_EOS: &str = "<\u{FF5C}end\u{2581}of\u{2581}sentence\u{FF5C}>";

/// Texts that make a token the EOT when no key names one, in priority order (llama.cpp takes
/// whichever its hash map yields first; the order here makes the choice deterministic).
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    DEEPSEEK_EOS,
    "<end_of_utterance>",
];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<\u{FF5C}fim\u{2581}begin\u{FF5C}>",
    "<PRE>",
    "\u{2581}<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<\u{FF5C}fim\u{2581}hole\u{FF5C}>",
    "<SUF>",
    "\u{2581}<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<\u{FF5C}fim\u{2581}end\u{FF5C}>",
    "<MID>",
    "\u{2581}<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"];
/// Texts that make a token end generation (llama.cpp's list).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    DEEPSEEK_EOS,
    "[e~[",
];

/// A piece of input: text still to tokenize, or a special token cut out of it.
#[derive(Clone, Copy, Debug)]
enum Fragment {
    Text(usize, usize),
    Token(u32),
}

impl Tokenizer {
    /// Builds the tokenizer described by `tokenizer.ggml.*` metadata.
    ///
    /// Follows llama.cpp's `llama_vocab::impl::load`: unknown `tokenizer.ggml.pre` names fall
    /// back to the default pre-tokenizer with a warning (llama.cpp refuses them), and other
    /// things llama.cpp only logs are collected in [`Tokenizer::warnings`].
    pub fn from_metadata(md: &Metadata) -> Result<Tokenizer, TokenizerError> {
        let mut warnings = Vec::new();
        let model_name = md.str(K_MODEL)?;
        let model = match model_name {
            "llama" => TokenizerModel::Spm,
            "gpt2" => TokenizerModel::Bpe,
            other => return Err(TokenizerError::UnsupportedModel(other.to_string())),
        };
        let pre_name = if md.contains(K_PRE) { md.str(K_PRE)?.to_string() } else { String::new() };

        // Vocabulary.
        let tokens = md.str_array(K_TOKENS)?;
        let n = tokens.len();
        if n == 0 {
            return Err(TokenizerError::EmptyVocab);
        }
        if n > MAX_VOCAB {
            return Err(TokenizerError::TooManyTokens(n));
        }
        let scores = read_scores(md, n)?;
        let types = match md.opt(K_TYPES, Metadata::int_array)? {
            Some(t) if t.len() < n => {
                return Err(TokenizerError::ArrayTooShort { key: K_TYPES, len: t.len(), n_tokens: n })
            }
            t => t,
        };
        let mut texts = Vec::with_capacity(n);
        let mut ids = HashMap::with_capacity(n);
        let mut attrs = Vec::with_capacity(n);
        for (i, text) in tokens.iter().enumerate() {
            let text = if text.is_empty() {
                warnings.push(format!("empty token at index {i}"));
                format!("[EMPTY_{i}]")
            } else {
                text.clone()
            };
            if let Some(&first) = ids.get(&text) {
                return Err(TokenizerError::DuplicateToken { text, first, second: i as u32 });
            }
            ids.insert(text.clone(), i as u32);
            texts.push(text);
            attrs.push(match &types {
                Some(t) => TokenAttr::from_type(TokenType::from_gguf(t[i])),
                None => TokenAttr::NORMAL,
            });
        }
        let vocab = Vocab { texts, ids, scores };

        // Per-kind defaults (llama.cpp: SPM adds BOS and a space prefix; BPE neither, unless
        // its pre-tokenizer says so).
        let mut special = SpecialTokens::default();
        let (mut add_bos, mut add_eos, mut add_space_prefix);
        let kind = match model {
            TokenizerModel::Spm => {
                special.bos = Some(1);
                special.eos = Some(2);
                special.unk = Some(0);
                (add_bos, add_eos, add_space_prefix) = (true, false, true);
                let mut byte_tokens = Box::new([None; 256]);
                for (b, slot) in byte_tokens.iter_mut().enumerate() {
                    *slot = vocab
                        .id(&format!("<0x{b:02X}>"))
                        .or_else(|| (b < 0x80).then(|| vocab.id(&(b as u8 as char).to_string())).flatten());
                }
                Kind::Spm { byte_tokens }
            }
            TokenizerModel::Bpe => {
                let spec = if pre_name.is_empty() {
                    warnings.push("missing tokenizer.ggml.pre, using the default pre-tokenizer; generation quality may be degraded".into());
                    PreSpec::DEFAULT
                } else if let Some(spec) = PreSpec::for_name(&pre_name) {
                    spec
                } else {
                    warnings.push(format!("unknown pre-tokenizer {pre_name:?}, using the default one; tokens may differ from the model's own tokenizer"));
                    PreSpec::DEFAULT
                };
                if !spec.no_default_bos {
                    special.bos = Some(11);
                }
                special.eos = Some(11);
                (add_bos, add_eos, add_space_prefix) = (spec.add_bos, false, false);
                let pre = PreTokenizer::new(spec.regexes)
                    .map_err(|(pattern, message)| TokenizerError::Regex { pattern, message })?;
                let (merges, stats) = Merges::new(&vocab, md.str_array(K_MERGES)?);
                if stats.malformed > 0 {
                    warnings.push(format!("{} merges without a space ignored", stats.malformed));
                }
                if stats.outside_vocab > 0 {
                    warnings.push(format!("{} merges name strings that are not tokens", stats.outside_vocab));
                }
                Kind::Bpe { merges: Box::new(merges), pre, ignore_merges: spec.ignore_merges }
            }
        };
        if let Some(v) = md.opt(K_ADD_PREFIX, Metadata::bool)? {
            add_space_prefix = v;
        }

        // Special ids: defaults out of range are dropped, keys out of range are ignored.
        let key_ids: [(&str, SpecialField); 16] = [
            (K_BOS, |s| &mut s.bos),
            (K_EOS, |s| &mut s.eos),
            ("tokenizer.ggml.eot_token_id", |s| &mut s.eot),
            ("tokenizer.ggml.eom_token_id", |s| &mut s.eom),
            ("tokenizer.ggml.unknown_token_id", |s| &mut s.unk),
            ("tokenizer.ggml.seperator_token_id", |s| &mut s.sep),
            ("tokenizer.ggml.padding_token_id", |s| &mut s.pad),
            ("tokenizer.ggml.fim_pre_token_id", |s| &mut s.fim_pre),
            ("tokenizer.ggml.fim_suf_token_id", |s| &mut s.fim_suf),
            ("tokenizer.ggml.fim_mid_token_id", |s| &mut s.fim_mid),
            ("tokenizer.ggml.fim_pad_token_id", |s| &mut s.fim_pad),
            ("tokenizer.ggml.fim_rep_token_id", |s| &mut s.fim_rep),
            ("tokenizer.ggml.fim_sep_token_id", |s| &mut s.fim_sep),
            ("tokenizer.ggml.prefix_token_id", |s| &mut s.fim_pre),
            ("tokenizer.ggml.suffix_token_id", |s| &mut s.fim_suf),
            ("tokenizer.ggml.middle_token_id", |s| &mut s.fim_mid),
        ];
        for (key, field) in key_ids {
            let slot = field(&mut special);
            if slot.is_some_and(|id| id as usize >= n) {
                warnings.push(format!(
                    "default {key} = {} is out of the vocabulary, disabled",
                    slot.unwrap_or(0)
                ));
                *slot = None;
            }
            if let Some(id) = md.opt(key, Metadata::u32)? {
                if (id as usize) < n {
                    *slot = Some(id);
                } else {
                    warnings.push(format!("{key} = {id} is out of the vocabulary ({n} tokens), ignored"));
                }
            }
        }
        if let Some(v) = md.opt(K_ADD_BOS, Metadata::bool)? {
            add_bos = v;
        }
        if let Some(v) = md.opt(K_ADD_EOS, Metadata::bool)? {
            add_eos = v;
        }
        if add_bos && special.bos.is_none() {
            return Err(TokenizerError::MissingSpecialToken { flag: K_ADD_BOS, id_key: K_BOS });
        }
        if add_eos && special.eos.is_none() {
            return Err(TokenizerError::MissingSpecialToken { flag: K_ADD_EOS, id_key: K_EOS });
        }

        let mut tok = Tokenizer {
            kind,
            pre_name,
            vocab,
            attrs,
            special,
            add_bos,
            add_eos,
            add_space_prefix,
            eog: Vec::new(),
            special_cache: Vec::new(),
            pieces: Vec::new(),
            piece_at: Vec::new(),
            warnings,
        };
        tok.detect_special_tokens();
        tok.build_eog();
        tok.build_special_cache();
        tok.build_pieces();
        tok.apply_model_attrs(md);
        Ok(tok)
    }

    /// Marks a token found by its text as control, as llama.cpp does (with a warning).
    fn force_control(&mut self, id: u32) {
        let attr = &mut self.attrs[id as usize];
        if !attr.contains(TokenAttr::CONTROL) {
            attr.insert(TokenAttr::CONTROL);
            let text = &self.vocab.texts[id as usize];
            self.warnings.push(format!(
                "control-looking token {id} {text:?} was not control-type; treated as control"
            ));
        }
    }

    /// EOT/EOM/FIM tokens by text where no key named them; `<unusedN>` control tokens.
    fn detect_special_tokens(&mut self) {
        let lists: [(&[&str], SpecialField); 8] = [
            (EOT_TEXTS, |s| &mut s.eot),
            (&["<|eom_id|>"], |s| &mut s.eom),
            (FIM_PRE_TEXTS, |s| &mut s.fim_pre),
            (FIM_SUF_TEXTS, |s| &mut s.fim_suf),
            (FIM_MID_TEXTS, |s| &mut s.fim_mid),
            (FIM_PAD_TEXTS, |s| &mut s.fim_pad),
            (FIM_REP_TEXTS, |s| &mut s.fim_rep),
            (&["<|file_sep|>"], |s| &mut s.fim_sep),
        ];
        for (texts, field) in lists {
            if field(&mut self.special).is_some() {
                continue;
            }
            if let Some(id) = texts.iter().find_map(|t| self.vocab.id(t)) {
                *field(&mut self.special) = Some(id);
                self.force_control(id);
            }
        }
        for (attr, text) in self.attrs.iter_mut().zip(&self.vocab.texts) {
            if attr.contains(TokenAttr::CONTROL) && text.contains("unused") {
                attr.insert(TokenAttr::UNUSED);
            }
        }
    }

    /// The end-of-generation set, as llama.cpp builds it.
    fn build_eog(&mut self) {
        let mut eog: Vec<u32> = Vec::new();
        let s = &self.special;
        eog.extend([s.fim_pad, s.fim_rep, s.fim_sep].into_iter().flatten());
        let by_text: Vec<u32> = EOG_TEXTS.iter().filter_map(|t| self.vocab.id(t)).collect();
        for id in by_text {
            eog.push(id);
            self.force_control(id);
        }
        // gpt-oss: these are rendered, never hidden.
        for t in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(id) = self.vocab.id(t) {
                self.attrs[id as usize] = TokenAttr::USER_DEFINED;
            }
        }
        let s = &self.special;
        eog.extend([s.eos, s.eot, s.eom].into_iter().flatten());
        eog.sort_unstable();
        eog.dedup();

        let has = |eog: &[u32], t: &str| self.vocab.id(t).filter(|id| eog.binary_search(id).is_ok());
        // o200k_harmony and solar-open: `<|end|>` ends a message, not the generation.
        if let Some(end) = has(&eog, "<|end|>") {
            let harmony = has(&eog, "<|return|>").is_some() && has(&eog, "<|call|>").is_some();
            let solar = has(&eog, "<|calls|>").is_some() && has(&eog, "<|flush|>").is_some();
            if harmony || solar {
                eog.retain(|&id| id != end);
                self.attrs[end as usize] = TokenAttr::USER_DEFINED;
            }
        }
        // Gemma 4 and PaddleOCR: `</s>` is text there.
        if has(&eog, "<|tool_response>").is_some() {
            if let Some(s_id) = has(&eog, "</s>") {
                eog.retain(|&id| id != s_id);
                self.attrs[s_id as usize] = TokenAttr::NORMAL;
            }
        }
        self.eog = eog;
    }

    fn build_special_cache(&mut self) {
        let mask = TokenAttr::CONTROL | TokenAttr::USER_DEFINED | TokenAttr::UNKNOWN;
        let mut cache: Vec<u32> =
            (0..self.attrs.len() as u32).filter(|&id| self.attrs[id as usize].intersects(mask)).collect();
        // Longest first; llama.cpp's sort is unstable, ties keep id order here.
        cache.sort_by_key(|&id| std::cmp::Reverse(self.vocab.texts[id as usize].len()));
        self.special_cache = cache;
    }

    /// Renders every token once (llama.cpp's token-to-piece cache).
    fn build_pieces(&mut self) {
        let mut pieces = Vec::with_capacity(self.vocab.texts.iter().map(String::len).sum());
        let mut piece_at = Vec::with_capacity(self.vocab.texts.len() + 1);
        let bpe = matches!(self.kind, Kind::Bpe { .. });
        for (text, &attr) in self.vocab.texts.iter().zip(&self.attrs) {
            piece_at.push(pieces.len() as u32);
            if attr.intersects(TokenAttr::UNKNOWN | TokenAttr::CONTROL | TokenAttr::USER_DEFINED) {
                pieces.extend_from_slice(text.as_bytes());
            } else if attr.contains(TokenAttr::NORMAL) {
                if bpe {
                    // Back from GPT-2's byte alphabet. llama.cpp renders a character outside
                    // it as "[UNK_BYTE_0x…]"; its own UTF-8 is kept here instead.
                    for c in text.chars() {
                        match unicode::char_to_byte(c) {
                            Some(b) => pieces.push(b),
                            None => pieces.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                        }
                    }
                } else {
                    let mut rest = text.as_str();
                    while let Some(i) = rest.find('\u{2581}') {
                        pieces.extend_from_slice(&rest.as_bytes()[..i]);
                        pieces.push(b' ');
                        rest = &rest[i + '\u{2581}'.len_utf8()..];
                    }
                    pieces.extend_from_slice(rest.as_bytes());
                }
            } else if attr.contains(TokenAttr::BYTE) {
                match parse_byte_token(text) {
                    Some(b) => pieces.push(b),
                    None => pieces.extend_from_slice(text.as_bytes()),
                }
            }
            // Unused and undefined tokens render as nothing, as in llama.cpp.
        }
        piece_at.push(pieces.len() as u32);
        self.pieces = pieces;
        self.piece_at = piece_at;
    }

    /// Attributes llama.cpp sets by model name: Phi-3's special tokens swallow the spaces to
    /// their right; some embedding models' mask tokens the spaces to their left.
    fn apply_model_attrs(&mut self, md: &Metadata) {
        let string = |key: &str| match md.get(key) {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        let name = string("general.name").to_lowercase();
        let arch = string("general.architecture");
        let pre = &self.pre_name;
        let set = |tok: &mut Tokenizer, text: &str, attr: TokenAttr, on: bool| {
            if let Some(id) = tok.vocab.id(text) {
                let a = &mut tok.attrs[id as usize];
                if on {
                    a.insert(attr);
                } else {
                    a.remove(attr);
                }
            }
        };
        if ["jina-v2-de", "jina-v2-es", "jina-v2-code"].iter().any(|p| pre.contains(p))
            || ["nomic-bert-moe", "jina-bert-v3"].iter().any(|a| arch.contains(a))
        {
            set(self, "<mask>", TokenAttr::LSTRIP, true);
        } else if name.contains("phi-3") || name.contains("phi3") {
            for i in 0..self.special_cache.len() {
                let id = self.special_cache[i];
                self.attrs[id as usize].insert(TokenAttr::RSTRIP);
            }
            set(self, "</s>", TokenAttr::RSTRIP, true);
            for t in ["<unk>", "<s>", "<|endoftext|>"] {
                set(self, t, TokenAttr::RSTRIP, false);
            }
        } else if name.contains("modern-bert") {
            set(self, "[MASK]", TokenAttr::LSTRIP, true);
        }
    }

    /// Tokenizes `text`.
    ///
    /// `add_special` adds BOS/EOS as the model's flags ask ([`Tokenizer::add_bos`],
    /// [`Tokenizer::add_eos`]). `parse_special` turns control-token texts written in `text`
    /// (`<|im_start|>` …) into those tokens; without it they are tokenized as plain text.
    /// User-defined tokens are always matched, as in llama.cpp (and Hugging Face).
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let fragments = self.partition(text, parse_special);
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.special.bos);
        }
        match &self.kind {
            Kind::Spm { byte_tokens } => {
                // A space prefix goes before the text at the start and after each special
                // token (llama.cpp's `is_prev_special`).
                let mut prev_special = true;
                let mut buf = String::new();
                for f in fragments {
                    match f {
                        Fragment::Text(a, b) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.push('\u{2581}');
                            }
                            for c in text[a..b].chars() {
                                buf.push(if c == ' ' { '\u{2581}' } else { c });
                            }
                            spm::tokenize(&self.vocab, byte_tokens, self.special.unk, &buf, &mut out);
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
            Kind::Bpe { merges, pre, ignore_merges } => {
                for f in fragments {
                    match f {
                        Fragment::Text(a, b) => {
                            let piece = &text[a..b];
                            for (wa, wb) in pre.split(piece) {
                                merges.word(&self.vocab, &piece.as_bytes()[wa..wb], *ignore_merges, &mut out);
                            }
                        }
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.special.eos);
        }
        out
    }

    /// Cuts special tokens out of `text` (llama.cpp's `tokenizer_st_partition`): each token,
    /// longest first, splits every remaining text fragment at its occurrences, left to right.
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut frags = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Fragment::Text(0, text.len()));
        let filter = PairFilter::new(text.as_bytes());
        let hidden = TokenAttr::CONTROL | TokenAttr::UNKNOWN;
        let mut next = Vec::new();
        for &id in &self.special_cache {
            let attr = self.attrs[id as usize];
            if !parse_special && attr.intersects(hidden) {
                continue;
            }
            let needle = self.vocab.texts[id as usize].as_str();
            if !filter.may_contain(needle.as_bytes()) {
                continue;
            }
            next.clear();
            let mut changed = false;
            for &f in &frags {
                let Fragment::Text(mut start, end) = f else {
                    next.push(f);
                    continue;
                };
                // `needle` and `text` are both UTF-8, so matches fall on char boundaries.
                while let Some(m) = text[start..end].find(needle).map(|i| start + i) {
                    changed = true;
                    let mut left_end = m;
                    if attr.contains(TokenAttr::LSTRIP) {
                        while left_end > start && is_c_space(text.as_bytes()[left_end - 1]) {
                            left_end -= 1;
                        }
                    }
                    if left_end > start {
                        next.push(Fragment::Text(start, left_end));
                    }
                    next.push(Fragment::Token(id));
                    start = m + needle.len();
                    if attr.contains(TokenAttr::RSTRIP) {
                        while start < end && is_c_space(text.as_bytes()[start]) {
                            start += 1;
                        }
                    }
                }
                if start < end {
                    next.push(Fragment::Text(start, end));
                }
            }
            if changed {
                std::mem::swap(&mut frags, &mut next);
            }
        }
        frags
    }

    /// The bytes token `id` renders as (llama.cpp's `token_to_piece`): control and unknown
    /// tokens render as nothing unless `special`; SentencePiece's U+2581 becomes a space,
    /// `<0xXX>` its byte, GPT-2's byte alphabet its bytes. Empty for an out-of-range id.
    ///
    /// A piece can be part of a UTF-8 character; use [`StreamDecoder`] to print pieces as
    /// they come.
    pub fn token_to_piece(&self, id: u32, special: bool) -> &[u8] {
        let i = id as usize;
        let Some(&attr) = self.attrs.get(i) else { return &[] };
        if !special && attr.intersects(TokenAttr::UNKNOWN | TokenAttr::CONTROL) {
            return &[];
        }
        &self.pieces[self.piece_at[i] as usize..self.piece_at[i + 1] as usize]
    }

    /// The text of `ids`, with control tokens hidden: [`Tokenizer::detokenize`] with
    /// `special = false`.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.detokenize(ids, false)
    }

    /// The text of `ids` as llama.cpp's `common_detokenize` renders it: the pieces in order,
    /// control tokens only if `special`, and — for vocabularies that add a space prefix —
    /// one leading space of the first token dropped, so that
    /// `decode(encode(x, false, false)) == x` (for SentencePiece, unless `x` contains U+2581
    /// itself). Invalid UTF-8 is replaced by U+FFFD.
    ///
    /// Unlike llama.cpp, Hugging Face's `clean_up_tokenization_spaces` (which drops the space
    /// before `.`, `,`, `'s` … for some vocabularies) is not applied: it would make the text
    /// differ from what streaming the same tokens prints.
    pub fn detokenize(&self, ids: &[u32], special: bool) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for (i, &id) in ids.iter().enumerate() {
            let mut piece = self.token_to_piece(id, special);
            if i == 0 && self.add_space_prefix {
                if let Some(rest) = piece.strip_prefix(b" ") {
                    piece = rest;
                }
            }
            bytes.extend_from_slice(piece);
        }
        match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// Number of tokens in the vocabulary.
    pub fn n_vocab(&self) -> usize {
        self.vocab.texts.len()
    }
    /// SentencePiece or byte-level BPE.
    pub fn model(&self) -> TokenizerModel {
        match self.kind {
            Kind::Spm { .. } => TokenizerModel::Spm,
            Kind::Bpe { .. } => TokenizerModel::Bpe,
        }
    }
    /// `tokenizer.ggml.pre` as the file has it (empty when absent).
    pub fn pre(&self) -> &str {
        &self.pre_name
    }
    /// All special token ids.
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }
    /// Beginning-of-sequence token.
    pub fn bos(&self) -> Option<u32> {
        self.special.bos
    }
    /// End-of-sequence token.
    pub fn eos(&self) -> Option<u32> {
        self.special.eos
    }
    /// End-of-turn token.
    pub fn eot(&self) -> Option<u32> {
        self.special.eot
    }
    /// Unknown token.
    pub fn unk(&self) -> Option<u32> {
        self.special.unk
    }
    /// Whether generation stops at `id`: EOS, EOT, EOM, FIM pad/repo/separator, and tokens
    /// whose text is one of llama.cpp's end markers (`<|im_end|>`, `<end_of_turn>`, …).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }
    /// The end-of-generation ids, sorted.
    pub fn eog_tokens(&self) -> &[u32] {
        &self.eog
    }
    /// Whether `encode(…, add_special = true, …)` starts with BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }
    /// Whether `encode(…, add_special = true, …)` ends with EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }
    /// Whether SentencePiece text gets a leading space (and decoding drops it).
    pub fn add_space_prefix(&self) -> bool {
        self.add_space_prefix
    }
    /// The vocabulary text of a token (SentencePiece's U+2581 and GPT-2's byte alphabet as
    /// stored).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.vocab.texts.get(id as usize).map(String::as_str)
    }
    /// A token's score (0 where the file has none).
    pub fn token_score(&self, id: u32) -> Option<f32> {
        self.vocab.scores.get(id as usize).copied()
    }
    /// A token's attributes after llama.cpp's adjustments.
    pub fn token_attr(&self, id: u32) -> Option<TokenAttr> {
        self.attrs.get(id as usize).copied()
    }
    /// A token's type after llama.cpp's adjustments: a token that is both control and
    /// something else reports control.
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        let a = self.token_attr(id)?;
        Some(if a.contains(TokenAttr::CONTROL) {
            TokenType::Control
        } else if a.contains(TokenAttr::USER_DEFINED) {
            TokenType::UserDefined
        } else if a.contains(TokenAttr::BYTE) {
            TokenType::Byte
        } else if a.contains(TokenAttr::UNKNOWN) {
            TokenType::Unknown
        } else if a.contains(TokenAttr::NORMAL) {
            TokenType::Normal
        } else if a.contains(TokenAttr::UNUSED) {
            TokenType::Unused
        } else {
            TokenType::Undefined
        })
    }
    /// The token whose vocabulary text is exactly `text`.
    pub fn find_token(&self, text: &str) -> Option<u32> {
        self.vocab.id(text)
    }
    /// What llama.cpp would have logged as a warning while loading this vocabulary.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

/// `tokenizer.ggml.scores`: f32 or i32, at least one per token; normalized so that sorting
/// by score is total and matches C++'s `<` (-0.0 equals 0.0, NaN sorts last).
fn read_scores(md: &Metadata, n: usize) -> Result<Vec<f32>, TokenizerError> {
    let Some(value) = md.get(K_SCORES) else { return Ok(vec![0.0; n]) };
    let scores: Vec<f32> = match value {
        Value::Array(Array::F32(v)) => v.clone(),
        Value::Array(Array::I32(v)) => v.iter().map(|&x| x as f32).collect(),
        other => {
            return Err(MetadataError::WrongType {
                key: K_SCORES.to_string(),
                expected: "array of f32 or i32",
                found: other.type_name(),
            }
            .into())
        }
    };
    if scores.len() < n {
        return Err(TokenizerError::ArrayTooShort { key: K_SCORES, len: scores.len(), n_tokens: n });
    }
    Ok(scores[..n]
        .iter()
        .map(|&s| {
            if s.is_nan() {
                f32::NEG_INFINITY
            } else if s == 0.0 {
                0.0
            } else {
                s
            }
        })
        .collect())
}

/// `<0xXX>` → the byte.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// C's `isspace` in the C locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

/// The set of adjacent byte pairs in a text: a special token can only occur in the text if
/// all of its pairs do. Lets encoding skip most of a large special-token list (Gemma has
/// 6000+ control tokens) without a search each.
struct PairFilter {
    bits: Vec<u64>,
}

impl PairFilter {
    fn new(text: &[u8]) -> PairFilter {
        let mut bits = vec![0u64; 1 << 10];
        for w in text.windows(2) {
            let k = (w[0] as usize) << 8 | w[1] as usize;
            bits[k >> 6] |= 1 << (k & 63);
        }
        PairFilter { bits }
    }

    fn may_contain(&self, needle: &[u8]) -> bool {
        needle.windows(2).all(|w| {
            let k = (w[0] as usize) << 8 | w[1] as usize;
            self.bits[k >> 6] & (1 << (k & 63)) != 0
        })
    }
}

/// Turns token ids into text as they are generated, never splitting a UTF-8 character.
///
/// A token's piece can end inside a character (byte-fallback and byte-level vocabularies
/// spell emoji and CJK as several tokens); the incomplete tail is held back until the next
/// piece completes it. Bytes that can never become valid UTF-8 are replaced by U+FFFD, so
/// the concatenated output equals [`Tokenizer::detokenize`]'s lossy text of the same ids
/// (without its first-token space stripping).
#[derive(Clone, Debug, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
    special: bool,
}

impl StreamDecoder {
    /// A decoder that renders control tokens only if `special`.
    pub fn new(special: bool) -> StreamDecoder {
        StreamDecoder { pending: Vec::new(), special }
    }

    /// Adds a token; returns the text that is now complete (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> String {
        let piece = tokenizer.token_to_piece(id, self.special);
        self.push_bytes(piece)
    }

    /// Adds raw bytes; returns the text that is now complete (possibly empty).
    pub fn push_bytes(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut pos = 0;
        while pos < self.pending.len() {
            match std::str::from_utf8(&self.pending[pos..]) {
                Ok(s) => {
                    out.push_str(s);
                    pos = self.pending.len();
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // `valid` bytes were just checked to be UTF-8.
                    out.push_str(std::str::from_utf8(&self.pending[pos..pos + valid]).unwrap_or_default());
                    match e.error_len() {
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            pos += valid;
                            break;
                        }
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            pos += valid + bad;
                        }
                    }
                }
            }
        }
        self.pending.drain(..pos);
        out
    }

    /// Bytes held back, waiting for the rest of a character.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// Ends the stream: returns what was held back (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}
