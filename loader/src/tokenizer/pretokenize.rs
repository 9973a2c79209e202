//! Splitting text into words before BPE, as llama.cpp's `unicode_regex_split` does.
//!
//! Each `tokenizer.ggml.pre` name selects a list of regexes; each regex further splits the
//! pieces the previous one produced, and both its matches and the text between them become
//! pieces. Two regexes (GPT-2's and Llama 3's) are run by hand-written splitters in
//! llama.cpp, and those splitters, not the regexes, define the reference behaviour (they
//! differ from the regex on codepoints such as the end of a piece); they are ported here.
//! Every other regex runs on a "collapsed" copy of the text, as llama.cpp runs it: each
//! non-ASCII codepoint is replaced by one placeholder per Unicode category and `\p{..}` by a
//! class of that placeholder and the category's ASCII members, so that the categories come
//! from llama.cpp's Unicode table and not the regex engine's.

use super::unicode::{Flags, L, M, N, P, S};
use fancy_regex::Regex;

/// GPT-2's regex; llama.cpp runs it with a hand-written splitter.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama 3's regex, in the form llama.cpp writes it (case-insensitive group spelled out);
/// also run by a hand-written splitter.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's regex as tokenizer.json writes it; llama.cpp maps it to the same splitter.
const LLAMA3_ORIGINAL: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's regex: Llama 3's with single digits. llama.cpp runs it as a regex.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const BAILINGMOE: &str = r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";
const SEED_CODER: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+";
const MINICPM5: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// CJK ideographs, U+0800..U+4E00 and Hangul (DeepSeek's `[一-龥ࠀ-一가-퟿]+`).
const DEEPSEEK_CJK: &str = "[\u{4E00}-\u{9FA5}\u{0800}-\u{4E00}\u{AC00}-\u{D7FF}]+";
/// DeepSeek LLM's cased-letter class (Unicode Lu/Ll/Lt ranges, written with escapes so that
/// no editor normalizes U+2126 OHM SIGN and friends into other codepoints).
const DEEPSEEK_LETTERS: &str = "\\s?[A-Za-z\u{B5}\u{C0}-\u{D6}\u{D8}-\u{F6}\u{F8}-\u{1BA}\u{1BC}-\u{1BF}\u{1C4}-\u{293}\u{295}-\u{2AF}\u{370}-\u{373}\u{376}\u{377}\u{37B}-\u{37D}\u{37F}\u{386}\u{388}-\u{38A}\u{38C}\u{38E}-\u{3A1}\u{3A3}-\u{3F5}\u{3F7}-\u{481}\u{48A}-\u{52F}\u{531}-\u{556}\u{10A0}-\u{10C5}\u{13A0}-\u{13F5}\u{13F8}-\u{13FD}\u{1C90}-\u{1CBA}\u{1CBD}-\u{1CBF}\u{1D00}-\u{1D2B}\u{1D6B}-\u{1D77}\u{1D79}-\u{1D9A}\u{1E00}-\u{1F15}\u{1F18}-\u{1F1D}\u{1F20}-\u{1F45}\u{1F48}-\u{1F4D}\u{1F50}-\u{1F57}\u{1F59}\u{1F5B}\u{1F5D}\u{1F5F}-\u{1F7D}\u{1F80}-\u{1FB4}\u{1FB6}-\u{1FBC}\u{1FBE}\u{1FC2}-\u{1FC4}\u{1FC6}-\u{1FCC}\u{1FD0}-\u{1FD3}\u{1FD6}-\u{1FDB}\u{1FE0}-\u{1FEC}\u{1FF2}-\u{1FF4}\u{1FF6}-\u{1FFC}\u{2102}\u{2107}\u{210A}-\u{2113}\u{2115}\u{2119}-\u{211D}\u{2124}\u{2126}\u{2128}\u{212A}-\u{212D}\u{212F}-\u{2134}\u{2139}\u{213C}-\u{213F}\u{2145}-\u{2149}\u{214E}\u{2183}\u{2184}\u{2C00}-\u{2C7B}\u{2C7E}-\u{2CE4}\u{2CEB}-\u{2CEE}\u{2CF2}\u{2CF3}\u{A640}-\u{A66D}\u{A680}-\u{A69B}\u{A722}-\u{A76F}\u{A771}-\u{A787}\u{A78B}-\u{A78E}\u{AB70}-\u{ABBF}\u{FB00}-\u{FB06}\u{FB13}-\u{FB17}\u{FF21}-\u{FF3A}\u{FF41}-\u{FF5A}\u{10400}-\u{1044F}\u{104B0}-\u{104D3}\u{104D8}-\u{104FB}\u{10C80}-\u{10CB2}\u{10CC0}-\u{10CF2}\u{118A0}-\u{118DF}\u{1E900}-\u{1E943}]+";
/// BLOOM/Poro: anything up to whitespace or sentence punctuation (`…。，、।۔،`).
const BLOOM: &str = " ?[^(\\s|.,!?\u{2026}\u{3002}\u{FF0C}\u{3001}\u{0964}\u{06D4}\u{060C})]+";

const DEFAULT_REGEXES: &[&str] = &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"];

/// What a `tokenizer.ggml.pre` name sets besides its regexes (llama.cpp's defaults per
/// pre-tokenizer; GGUF keys override `add_bos`).
#[derive(Clone, Copy, Debug)]
pub(super) struct PreSpec {
    pub(super) regexes: &'static [&'static str],
    /// Use a word's token directly when the whole word is in the vocabulary.
    pub(super) ignore_merges: bool,
    pub(super) add_bos: bool,
    /// The BOS default is "none" (ChatGLM), not llama.cpp's BPE default of 11.
    pub(super) no_default_bos: bool,
}

impl PreSpec {
    pub(super) const DEFAULT: PreSpec = PreSpec::new(DEFAULT_REGEXES);

    const fn new(regexes: &'static [&'static str]) -> PreSpec {
        PreSpec { regexes, ignore_merges: false, add_bos: false, no_default_bos: false }
    }

    /// The spec for a `tokenizer.ggml.pre` name, `None` for names this crate does not know.
    pub(super) fn for_name(name: &str) -> Option<PreSpec> {
        let llama3 = PreSpec { ignore_merges: true, add_bos: true, ..PreSpec::new(&[LLAMA3]) };
        Some(match name {
            "default" => PreSpec::DEFAULT,
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
            | "lfm2" | "jina-v5-nano" => llama3,
            "dbrx" | "smaug-bpe" => PreSpec::new(&[LLAMA3]),
            "deepseek-llm" => PreSpec::new(&[
                "[\r\n]",
                DEEPSEEK_LETTERS,
                "\\s?[!-/:-~\u{FF01}-\u{FF0F}\u{FF1A}-\u{FF5E}\u{2018}-\u{201F}\u{3000}-\u{3002}]+",
                r"\s+$",
                DEEPSEEK_CJK,
                r"\p{N}+",
            ]),
            "deepseek-coder" => {
                PreSpec::new(&["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", DEEPSEEK_CJK, r"\p{N}"])
            }
            "deepseek-v3" | "hunyuan-dense" | "joyai-llm" | "hy_v4" => PreSpec::new(&[
                r"\p{N}{1,3}",
                "[\u{4E00}-\u{9FA5}\u{3040}-\u{309F}\u{30A0}-\u{30FF}]+",
                "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
            ]),
            "falcon" => PreSpec::new(&[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"]),
            "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling"
            | "exaone4" | "jina-es" | "jina-de" | "jina-v2-es" | "jina-v2-de" | "jina-v1-en"
            | "jina-v2-code" | "roberta-bpe" | "gigachat" | "a.x-4.0" | "mellum"
            | "modern-bert" => PreSpec::new(&[GPT2]),
            "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone"
            | "minerva-7b" | "mellum2" => PreSpec::new(&[r"\p{N}", GPT2]),
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2"
            | "hunyuan" | "solar-open" | "grok-2" => PreSpec::new(&[QWEN2]),
            "qwen35" => PreSpec::new(&[QWEN35]),
            "poro-chat" | "bloom" | "gpt3-finnish" => PreSpec::new(&[BLOOM]),
            "viking" => PreSpec::new(&[BLOOM, r"\p{N}"]),
            "glm4" | "chatglm-bpe" => PreSpec { no_default_bos: true, ..PreSpec::new(&[LLAMA3]) },
            "tekken" => PreSpec { ignore_merges: true, add_bos: true, ..PreSpec::new(&[TEKKEN]) },
            "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => PreSpec::new(&[GPT4O]),
            "bailingmoe" | "bailingmoe2" | "llada-moe" => PreSpec::new(&[BAILINGMOE]),
            "seed-coder" => PreSpec::new(&[SEED_CODER]),
            "minicpm5" => {
                PreSpec { ignore_merges: true, ..PreSpec::new(&[r"\p{N}{1,3}", MINICPM5]) }
            }
            "chameleon" => PreSpec {
                add_bos: true,
                ..PreSpec::new(&[
                    "<sentinel:[0-9]+>",
                    "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
                    "([\\t\\n]|    |  )",
                    r"\p{N}",
                    r"[\p{P}!-/:-@\[-`{-~]",
                    GPT2,
                ])
            },
            _ => return None,
        })
    }
}

/// One splitting pass.
#[derive(Debug)]
enum Step {
    Gpt2,
    Llama3,
    /// A regex over the collapsed text (`collapsed`) or over the text with non-ASCII
    /// whitespace replaced by U+000B (llama.cpp's `wregex` path).
    Regex {
        re: Box<Regex>,
        collapsed: bool,
    },
}

/// A compiled list of splitting passes.
#[derive(Debug)]
pub(super) struct PreTokenizer {
    steps: Vec<Step>,
}

/// Placeholders for the collapsed text: one per category llama.cpp distinguishes, all
/// outside ASCII (Private Use Area, so they can't be confused with anything a regex names).
const PH_OTHER: char = '\u{E0D0}';
const PH_NUMBER: char = '\u{E0D1}';
const PH_LETTER: char = '\u{E0D2}';
const PH_PUNCT: char = '\u{E0D3}';
const PH_MARK: char = '\u{E0D4}';
const PH_SYMBOL: char = '\u{E0D5}';

/// ASCII `\s`: what `std::regex` matches in the classic locale.
const SPACE_CLASS: &str = "\\t\\n\\x0B\\x0C\\r ";

impl PreTokenizer {
    /// Compiles a regex list; an error names the regex that this engine can't run.
    pub(super) fn new(regexes: &[&str]) -> Result<PreTokenizer, (String, String)> {
        let mut steps = Vec::with_capacity(regexes.len());
        for &pattern in regexes {
            let step = if pattern == GPT2 {
                Step::Gpt2
            } else if pattern == LLAMA3 || pattern == LLAMA3_ORIGINAL {
                Step::Llama3
            } else {
                let collapsed = uses_categories(pattern);
                let translated = translate(pattern, collapsed).map_err(|e| (pattern.to_string(), e))?;
                let re = Regex::new(&translated).map_err(|e| (pattern.to_string(), e.to_string()))?;
                Step::Regex { re: Box::new(re), collapsed }
            };
            steps.push(step);
        }
        Ok(PreTokenizer { steps })
    }

    /// Splits `text` into words; returns their byte ranges, in order, covering `text`.
    pub(super) fn split(&self, text: &str) -> Vec<(usize, usize)> {
        let cpts: Vec<char> = text.chars().collect();
        let n = cpts.len();
        let mut byte_at: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        byte_at.push(text.len());

        let mut flags: Option<Vec<Flags>> = None;
        let mut collapsed: Option<Transformed> = None;
        let mut plain: Option<Transformed> = None;

        let mut segs: Vec<(usize, usize)> = vec![(0, n)];
        for step in &self.steps {
            let mut out = Vec::with_capacity(segs.len() * 2);
            match step {
                Step::Gpt2 | Step::Llama3 => {
                    let fl = flags.get_or_insert_with(|| cpts.iter().map(|&c| Flags::of(c)).collect());
                    let split = if matches!(step, Step::Gpt2) { split_gpt2 } else { split_llama3 };
                    for &(a, b) in &segs {
                        split(&cpts, fl, a, b, &mut out);
                    }
                }
                Step::Regex { re, collapsed: true } => {
                    let t = collapsed.get_or_insert_with(|| Transformed::new(&cpts, collapse_char));
                    for &(a, b) in &segs {
                        split_regex(re, t, a, b, &mut out);
                    }
                }
                Step::Regex { re, collapsed: false } => {
                    let t = plain.get_or_insert_with(|| Transformed::new(&cpts, plain_char));
                    for &(a, b) in &segs {
                        split_regex(re, t, a, b, &mut out);
                    }
                }
            }
            segs = out;
        }
        segs.into_iter().filter(|&(a, b)| b > a).map(|(a, b)| (byte_at[a], byte_at[b])).collect()
    }
}

/// Whether llama.cpp runs a regex on the collapsed text: it names a category it knows.
fn uses_categories(pattern: &str) -> bool {
    ["\\p{N}", "\\p{L}", "\\p{P}", "\\p{M}", "\\p{S}", "\\p{Lu}", "\\p{Ll}", "\\p{Lt}", "\\p{Lm}", "\\p{Lo}"]
        .iter()
        .any(|c| pattern.contains(c))
}

/// The text a regex runs on, one char per codepoint of the original, with the byte offset of
/// each char so that matches map back to codepoint positions.
struct Transformed {
    text: String,
    byte_at: Vec<usize>,
}

impl Transformed {
    fn new(cpts: &[char], map: fn(char) -> char) -> Transformed {
        let mut text = String::with_capacity(cpts.len());
        let mut byte_at = Vec::with_capacity(cpts.len() + 1);
        for &c in cpts {
            byte_at.push(text.len());
            text.push(map(c));
        }
        byte_at.push(text.len());
        Transformed { text, byte_at }
    }

    fn cpt_index(&self, byte: usize) -> usize {
        // `byte` is always a char boundary of `text`, i.e. one of `byte_at`.
        self.byte_at.partition_point(|&b| b < byte)
    }
}

fn collapse_char(c: char) -> char {
    if c.is_ascii() {
        return c;
    }
    let f = Flags::of(c);
    if f.is_whitespace() {
        return '\u{0B}';
    }
    match f.category() {
        N => PH_NUMBER,
        L => PH_LETTER,
        P => PH_PUNCT,
        M => PH_MARK,
        S => PH_SYMBOL,
        _ => PH_OTHER,
    }
}

fn plain_char(c: char) -> char {
    if !c.is_ascii() && Flags::of(c).is_whitespace() {
        '\u{0B}'
    } else {
        c
    }
}

/// Splits codepoints `a..b` of `t` by `re`: matches and the gaps between them become pieces.
fn split_regex(re: &Regex, t: &Transformed, a: usize, b: usize, out: &mut Vec<(usize, usize)>) {
    let base = t.byte_at[a];
    let hay = &t.text[base..t.byte_at[b]];
    let mut piece_start = 0;
    let mut pos = 0;
    while pos <= hay.len() {
        // An error is fancy-regex's backtracking limit: leave the rest as one piece.
        let Ok(Some(m)) = re.find_from_pos(hay, pos) else { break };
        if m.start() > piece_start {
            out.push((t.cpt_index(base + piece_start), t.cpt_index(base + m.start())));
        }
        if m.end() > m.start() {
            out.push((t.cpt_index(base + m.start()), t.cpt_index(base + m.end())));
            pos = m.end();
        } else {
            // An empty match splits here; search on from the next codepoint.
            pos = m.end() + hay[m.end()..].chars().next().map_or(1, char::len_utf8);
        }
        piece_start = m.end();
    }
    if piece_start < hay.len() {
        out.push((t.cpt_index(base + piece_start), b));
    }
}

/// llama.cpp's translation of a regex for the collapsed text, plus the rewrites that make
/// `std::regex` (ECMAScript) syntax mean the same to fancy-regex: ASCII-only `\s \d \w \b`,
/// and `[ & ~` literal inside classes (Rust reads them as nesting and set operators).
fn translate(pattern: &str, collapsed: bool) -> Result<String, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() * 2);
    let mut inside = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' {
            let Some(&e) = chars.get(i + 1) else { return Err("trailing backslash".into()) };
            i += 2;
            match e {
                'p' if chars.get(i) == Some(&'{') => {
                    let close = chars[i..].iter().position(|&c| c == '}').ok_or("unclosed \\p{")?;
                    let name: String = chars[i + 1..i + close].iter().collect();
                    i += close + 1;
                    if !collapsed {
                        return Err(format!("unsupported class \\p{{{name}}}"));
                    }
                    let class = category_class(&name).ok_or(format!("unsupported class \\p{{{name}}}"))?;
                    if inside {
                        out.push_str(&class);
                    } else {
                        out.push('[');
                        out.push_str(&class);
                        out.push(']');
                    }
                }
                's' | 'd' | 'w' => {
                    let class = match e {
                        's' => SPACE_CLASS,
                        'd' => "0-9",
                        _ => "0-9A-Za-z_",
                    };
                    if inside {
                        out.push_str(class);
                    } else {
                        out.push('[');
                        out.push_str(class);
                        out.push(']');
                    }
                }
                'S' | 'D' | 'W' => {
                    if inside {
                        return Err(format!("\\{e} inside a class"));
                    }
                    let class = match e {
                        'S' => SPACE_CLASS,
                        'D' => "0-9",
                        _ => "0-9A-Za-z_",
                    };
                    out.push_str("[^");
                    out.push_str(class);
                    out.push(']');
                }
                'b' | 'B' if !inside => {
                    out.push_str("(?-u:\\");
                    out.push(e);
                    out.push(')');
                }
                _ => {
                    out.push('\\');
                    out.push(e);
                }
            }
            continue;
        }
        if inside {
            match c {
                ']' => {
                    inside = false;
                    out.push(']');
                }
                '[' | '&' | '~' => {
                    out.push('\\');
                    out.push(c);
                }
                _ => out.push(c),
            }
        } else {
            match c {
                '[' => {
                    inside = true;
                    out.push('[');
                    if chars.get(i + 1) == Some(&'^') {
                        out.push('^');
                        i += 1;
                    }
                }
                '.' => out.push_str("[^\\n\\r\u{2028}\u{2029}]"),
                _ => out.push(c),
            }
        }
        i += 1;
    }
    Ok(out)
}

/// The collapsed-text class for a category name: its placeholder and its ASCII members
/// (llama.cpp's `k_ucat_cpt` and `k_ucat_map`; it maps every `\p{L?}` to all letters).
fn category_class(name: &str) -> Option<String> {
    let (ph, ascii) = match name {
        "N" => (PH_NUMBER, "0-9"),
        "L" | "Lu" | "Ll" | "Lt" | "Lm" | "Lo" => (PH_LETTER, "A-Za-z"),
        "P" => (PH_PUNCT, "!-#%-*,-/:-;?-@\\[-\\]_\\{\\}"),
        "M" => (PH_MARK, ""),
        // `~` is missing from llama.cpp's list, so `\p{S}` doesn't match it there either.
        "S" => (PH_SYMBOL, "\\$\\+<->\\^`\\|"),
        _ => return None,
    };
    Some(format!("{ph}{ascii}"))
}

/// Past-the-end marker of the hand-written splitters.
const OUT_OF_RANGE: u32 = u32::MAX;

/// Adds pieces for a hand-written splitter; mirrors llama.cpp's `_add_token`.
struct Pieces<'a> {
    out: &'a mut Vec<(usize, usize)>,
    prev_end: usize,
}

impl Pieces<'_> {
    /// Ends a piece at `end`; returns its length.
    fn add(&mut self, end: usize) -> usize {
        let len = end - self.prev_end;
        if len > 0 {
            self.out.push((self.prev_end, end));
        }
        self.prev_end = end;
        len
    }
}

/// llama.cpp's `unicode_regex_split_custom_gpt2` over codepoints `ini..end`:
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
fn split_gpt2(cpts: &[char], fl: &[Flags], ini: usize, end: usize, out: &mut Vec<(usize, usize)>) {
    let cpt = |p: usize| if p >= ini && p < end { cpts[p] as u32 } else { OUT_OF_RANGE };
    let flags = |p: usize| if p >= ini && p < end { fl[p] } else { Flags::NONE };
    let mut pieces = Pieces { out, prev_end: ini };
    let mut pos = ini;
    while pos < end {
        let c = cpt(pos);
        let f = flags(pos);

        if c == '\'' as u32 && pos + 1 < end {
            let next = cpt(pos + 1);
            if [b's', b't', b'm', b'd'].iter().any(|&x| next == x as u32) {
                pos += pieces.add(pos + 2);
                continue;
            }
            if pos + 2 < end {
                let pair = (next, cpt(pos + 2));
                if [(b'r', b'e'), (b'v', b'e'), (b'l', b'l')]
                    .iter()
                    .any(|&(x, y)| pair == (x as u32, y as u32))
                {
                    pos += pieces.add(pos + 3);
                    continue;
                }
            }
        }

        let space = c == ' ' as u32;
        let mut f2 = if space { flags(pos + 1) } else { f };
        if f2.is_letter() {
            pos += space as usize;
            while f2.is_letter() {
                pos += 1;
                f2 = flags(pos);
            }
            pieces.add(pos);
            continue;
        }
        if f2.is_number() {
            pos += space as usize;
            while f2.is_number() {
                pos += 1;
                f2 = flags(pos);
            }
            pieces.add(pos);
            continue;
        }
        let other = |f: Flags| !(f.is_whitespace() || f.is_letter() || f.is_number()) && f.any();
        if other(f2) {
            pos += space as usize;
            while other(f2) {
                pos += 1;
                f2 = flags(pos);
            }
            pieces.add(pos);
            continue;
        }

        let mut num_ws = 0;
        while flags(pos + num_ws).is_whitespace() {
            num_ws += 1;
        }
        if num_ws > 1 && cpt(pos + num_ws) != OUT_OF_RANGE {
            pos += num_ws - 1;
            pieces.add(pos);
            continue;
        }
        if num_ws > 0 {
            pos += num_ws;
            pieces.add(pos);
            continue;
        }
        pos += 1;
        pieces.add(pos);
    }
}

/// llama.cpp's `unicode_regex_split_custom_llama3` over codepoints `ini..end`:
/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`.
fn split_llama3(cpts: &[char], fl: &[Flags], ini: usize, end: usize, out: &mut Vec<(usize, usize)>) {
    let cpt = |p: usize| if p >= ini && p < end { cpts[p] as u32 } else { OUT_OF_RANGE };
    let flags = |p: usize| if p >= ini && p < end { fl[p] } else { Flags::NONE };
    // Only ASCII letters lower-case to the letters compared below (checked against
    // llama.cpp's lowercase table), so ASCII lower-casing is exact here.
    let lower = |c: u32| if (b'A' as u32..=b'Z' as u32).contains(&c) { c + 32 } else { c };
    let is_cr_lf = |c: u32| c == '\r' as u32 || c == '\n' as u32;
    let mut pieces = Pieces { out, prev_end: ini };
    let mut pos = ini;
    while pos < end {
        let c = cpt(pos);
        let f = flags(pos);

        if c == '\'' as u32 && pos + 1 < end {
            let next = lower(cpt(pos + 1));
            if [b's', b't', b'm', b'd'].iter().any(|&x| next == x as u32) {
                pos += pieces.add(pos + 2);
                continue;
            }
            if pos + 2 < end {
                let pair = (next, lower(cpt(pos + 2)));
                if [(b'r', b'e'), (b'v', b'e'), (b'l', b'l')]
                    .iter()
                    .any(|&(x, y)| pair == (x as u32, y as u32))
                {
                    pos += pieces.add(pos + 3);
                    continue;
                }
            }
        }

        // [^\r\n\p{L}\p{N}]?\p{L}+
        if !(is_cr_lf(c) || f.is_number()) && (f.is_letter() || flags(pos + 1).is_letter()) {
            pos += 1;
            while flags(pos).is_letter() {
                pos += 1;
            }
            pieces.add(pos);
            continue;
        }

        // \p{N}{1,3}
        if f.is_number() {
            let mut group = pos;
            while flags(pos).is_number() {
                pos += 1;
                if pos - group >= 3 {
                    pieces.add(pos);
                    group = pos;
                }
            }
            pieces.add(pos);
            continue;
        }

        // <space>?[^\s\p{L}\p{N}]+[\r\n]*  (llama.cpp tests the first codepoint's flags for
        // "is a codepoint", which every in-range codepoint is)
        let space = c == ' ' as u32;
        let mut f2 = if space { flags(pos + 1) } else { f };
        let other = |f: Flags| !(f.is_whitespace() || f.is_letter() || f.is_number());
        if other(f2) && f.any() {
            pos += space as usize;
            while other(f2) && f2.any() {
                pos += 1;
                f2 = flags(pos);
            }
            while is_cr_lf(cpt(pos)) {
                pos += 1;
            }
            pieces.add(pos);
            continue;
        }

        let mut num_ws = 0;
        let mut last_end_r_or_n = 0;
        while flags(pos + num_ws).is_whitespace() {
            if is_cr_lf(cpt(pos + num_ws)) {
                last_end_r_or_n = pos + num_ws + 1;
            }
            num_ws += 1;
        }
        // \s*[\r\n]+
        if last_end_r_or_n > 0 {
            pos = last_end_r_or_n;
            pieces.add(pos);
            continue;
        }
        // \s+(?!\S)
        if num_ws > 1 && cpt(pos + num_ws) != OUT_OF_RANGE {
            pos += num_ws - 1;
            pieces.add(pos);
            continue;
        }
        // \s+
        if num_ws > 0 {
            pos += num_ws;
            pieces.add(pos);
            continue;
        }
        pos += 1;
        pieces.add(pos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(p: &PreTokenizer, text: &str) -> Vec<String> {
        p.split(text).into_iter().map(|(a, b)| text[a..b].to_string()).collect()
    }

    #[test]
    fn every_known_pre_tokenizer_compiles() {
        let names = [
            "default",
            "llama-bpe",
            "dbrx",
            "deepseek-llm",
            "deepseek-coder",
            "deepseek-v3",
            "falcon",
            "gpt-2",
            "starcoder",
            "qwen2",
            "qwen35",
            "bloom",
            "viking",
            "glm4",
            "tekken",
            "gpt-4o",
            "bailingmoe",
            "seed-coder",
            "minicpm5",
            "chameleon",
        ];
        for name in names {
            let spec = PreSpec::for_name(name).unwrap();
            if let Err((re, e)) = PreTokenizer::new(spec.regexes) {
                panic!("{name}: {re:?}: {e}");
            }
        }
    }

    #[test]
    fn gpt2_splitter() {
        let p = PreTokenizer::new(&[GPT2]).unwrap();
        assert_eq!(
            words(&p, "Hello world's  end 123!!"),
            ["Hello", " world", "'s", " ", " end", " 123", "!!"]
        );
        assert_eq!(words(&p, "a   "), ["a", "   "]);
    }

    #[test]
    fn llama3_splitter() {
        let p = PreTokenizer::new(&[LLAMA3]).unwrap();
        assert_eq!(words(&p, "I'VE 12345 x\n\n  y"), ["I", "'VE", " ", "123", "45", " x", "\n\n", " ", " y"]);
    }

    #[test]
    fn qwen2_regex_on_collapsed_text() {
        let p = PreTokenizer::new(&[QWEN2]).unwrap();
        assert_eq!(words(&p, "élève 42  x"), ["élève", " ", "4", "2", " ", " x"]);
        assert_eq!(words(&p, "日本語。"), ["日本語", "。"]);
    }
}
