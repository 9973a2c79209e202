//! Constrained decoding for `response_format: {"type": "json_object"}`: a byte-level
//! recognizer of JSON text whose top level is an object. A token is allowed when its bytes
//! keep the output a prefix of such a text; the generation ends as soon as the object
//! closes, so what comes out always parses (unless the token budget cuts it short, which the
//! finish reason `length` says).
//!
//! The state is a few bytes and `Copy`, so testing a token is a copy and a walk over its
//! bytes, with no allocation: checking a whole vocabulary is affordable when it is needed.
//! Nesting is bounded (64 levels) and so are runs of whitespace and the length of numbers,
//! so a model cannot stall in padding.

/// Deepest nesting allowed.
pub const MAX_DEPTH: u8 = 64;
/// Longest run of whitespace between tokens.
const MAX_WS: u8 = 32;
/// Longest number literal.
const MAX_NUM: u8 = 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Num {
    /// After '-': a digit must follow.
    Minus,
    /// A leading 0: a fraction, exponent or end follows.
    Zero,
    /// Integer digits.
    Int,
    /// After '.': a digit must follow.
    Dot,
    /// Fraction digits.
    Frac,
    /// After 'e': a sign or digit.
    E,
    /// After the exponent sign: a digit.
    ESign,
    /// Exponent digits.
    Exp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    /// Before the top-level '{'.
    Start,
    /// A value must come (after ':' or ',' in an array).
    Value,
    /// After '[': a value or ']'.
    ValueOrClose,
    /// After '{': a key or '}'.
    KeyOrClose,
    /// After ',' in an object: a key.
    Key,
    /// Inside a string; `esc`: 0 plain, 1 after a backslash, 2..=5 hex digits still due + 1.
    Str { key: bool, esc: u8 },
    /// After a key: ':'.
    Colon,
    /// After a value: ',' or the closing bracket.
    After,
    /// Inside a number of `len` bytes.
    Number { st: Num, len: u8 },
    /// Inside `true`, `false` or `null`: the literal and how many bytes are matched.
    Literal { lit: u8, pos: u8 },
    /// The top-level object is closed.
    Done,
}

const LITERALS: [&[u8]; 3] = [b"true", b"false", b"null"];

/// Where a JSON-object text is, byte by byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsonObjectState {
    /// Bit i set: level i is an object (else an array).
    stack: u64,
    depth: u8,
    st: St,
    ws: u8,
}

impl Default for JsonObjectState {
    fn default() -> Self {
        JsonObjectState { stack: 0, depth: 0, st: St::Start, ws: 0 }
    }
}

impl JsonObjectState {
    /// The state before any output.
    pub fn new() -> Self {
        Self::default()
    }

    /// The top-level object is complete.
    pub fn is_done(&self) -> bool {
        self.st == St::Done
    }

    /// Whether `bytes` may come next; the state is unchanged.
    pub fn allows(&self, bytes: &[u8]) -> bool {
        let mut s = *self;
        s.feed(bytes)
    }

    /// Advances over `bytes`; false (and the state is then meaningless) if they break JSON.
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| self.byte(b))
    }

    fn open(&mut self, object: bool) -> bool {
        if self.depth >= MAX_DEPTH {
            return false;
        }
        if object {
            self.stack |= 1 << self.depth;
        } else {
            self.stack &= !(1 << self.depth);
        }
        self.depth += 1;
        self.st = if object { St::KeyOrClose } else { St::ValueOrClose };
        true
    }

    fn in_object(&self) -> bool {
        self.depth > 0 && self.stack & (1 << (self.depth - 1)) != 0
    }

    fn close(&mut self, object: bool) -> bool {
        if self.depth == 0 || self.in_object() != object {
            return false;
        }
        self.depth -= 1;
        self.st = if self.depth == 0 { St::Done } else { St::After };
        true
    }

    /// A value starts with `b`.
    fn value(&mut self, b: u8) -> bool {
        match b {
            b'{' => self.open(true),
            b'[' => self.open(false),
            b'"' => {
                self.st = St::Str { key: false, esc: 0 };
                true
            }
            b'-' => {
                self.st = St::Number { st: Num::Minus, len: 1 };
                true
            }
            b'0' => {
                self.st = St::Number { st: Num::Zero, len: 1 };
                true
            }
            b'1'..=b'9' => {
                self.st = St::Number { st: Num::Int, len: 1 };
                true
            }
            b't' | b'f' | b'n' => {
                let lit = match b {
                    b't' => 0,
                    b'f' => 1,
                    _ => 2,
                };
                self.st = St::Literal { lit, pos: 1 };
                true
            }
            _ => false,
        }
    }

    fn byte(&mut self, b: u8) -> bool {
        let ws = matches!(b, b' ' | b'\t' | b'\n' | b'\r');
        let between = !matches!(self.st, St::Str { .. } | St::Number { .. } | St::Literal { .. });
        if ws && between {
            self.ws += 1;
            return self.ws <= MAX_WS;
        }
        self.ws = 0;
        match self.st {
            St::Start => b == b'{' && self.open(true),
            St::Value => self.value(b),
            St::ValueOrClose => b == b']' && self.close(false) || self.value(b),
            St::KeyOrClose => match b {
                b'}' => self.close(true),
                b'"' => {
                    self.st = St::Str { key: true, esc: 0 };
                    true
                }
                _ => false,
            },
            St::Key => {
                self.st = St::Str { key: true, esc: 0 };
                b == b'"'
            }
            St::Str { key, esc } => self.string(key, esc, b),
            St::Colon => {
                self.st = St::Value;
                b == b':'
            }
            St::After => match b {
                b',' => {
                    self.st = if self.in_object() { St::Key } else { St::Value };
                    true
                }
                b'}' => self.close(true),
                b']' => self.close(false),
                _ => false,
            },
            St::Number { st, len } => self.number(st, len, b),
            St::Literal { lit, pos } => {
                let word = LITERALS[lit as usize];
                if word[pos as usize] != b {
                    return false;
                }
                let pos = pos + 1;
                self.st = if pos as usize == word.len() { St::After } else { St::Literal { lit, pos } };
                true
            }
            St::Done => false,
        }
    }

    fn string(&mut self, key: bool, esc: u8, b: u8) -> bool {
        let next = match esc {
            0 => match b {
                b'"' => {
                    self.st = if key { St::Colon } else { St::After };
                    return true;
                }
                b'\\' => 1,
                0..=0x1f => return false,
                _ => 0,
            },
            1 => match b {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 0,
                b'u' => 5,
                _ => return false,
            },
            _ => {
                if !b.is_ascii_hexdigit() {
                    return false;
                }
                if esc == 2 {
                    0
                } else {
                    esc - 1
                }
            }
        };
        self.st = St::Str { key, esc: next };
        true
    }

    fn number(&mut self, st: Num, len: u8, b: u8) -> bool {
        let digit = b.is_ascii_digit();
        let next = match (st, b) {
            (Num::Minus, b'0') => Some(Num::Zero),
            (Num::Minus, _) if digit => Some(Num::Int),
            (Num::Int, _) if digit => Some(Num::Int),
            (Num::Zero | Num::Int, b'.') => Some(Num::Dot),
            (Num::Dot | Num::Frac, _) if digit => Some(Num::Frac),
            (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Some(Num::E),
            (Num::E, b'+' | b'-') => Some(Num::ESign),
            (Num::E | Num::ESign | Num::Exp, _) if digit => Some(Num::Exp),
            _ => None,
        };
        match next {
            Some(st) => {
                self.st = St::Number { st, len: len + 1 };
                len < MAX_NUM
            }
            // The number ended (if it may end here): the byte belongs to what follows.
            None if matches!(st, Num::Zero | Num::Int | Num::Frac | Num::Exp) => {
                self.st = St::After;
                self.byte(b)
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(text: &str) -> Option<bool> {
        let mut s = JsonObjectState::new();
        s.feed(text.as_bytes()).then(|| s.is_done())
    }

    #[test]
    fn complete_objects_are_done() {
        for t in [
            r#"{}"#,
            r#"{"a": 1}"#,
            r#" { "a" : [1, -2.5e+3, 0, 0.1, true, false, null, "x\"\u00e9\n"], "b": {"c": {}} }"#,
            r#"{"emoji": "é😀", "neg": -0, "exp": 1E9}"#,
        ] {
            assert_eq!(accepts(t), Some(true), "{t}");
            serde_json::from_str::<serde_json::Value>(t).expect("the test text is JSON");
        }
    }

    #[test]
    fn prefixes_are_allowed_but_not_done() {
        let t = r#"{"key": [1, {"x": "a\u12"#;
        for i in 0..=t.len() {
            assert_eq!(accepts(&t[..i]), Some(false), "{}", &t[..i]);
        }
    }

    #[test]
    fn invalid_texts_are_rejected() {
        for t in [
            "[1]",
            "\"x\"",
            "1",
            "{,}",
            "{\"a\" 1}",
            "{\"a\":}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":-}",
            "{\"a\":tru}x",
            "{\"a\":1]",
            "{\"a\":[1}",
            "{} {}",
            "{\"a\":\"\n\"}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\u12g\"}",
            "{'a':1}",
            "{\"a\":1,}x",
            "{\"a\":nul!",
        ] {
            assert_ne!(accepts(t), Some(true), "{t:?}");
        }
        assert_eq!(accepts("{\"a\":1,}"), None);
        assert_eq!(accepts("{} x"), None);
    }

    #[test]
    fn bounds_hold() {
        let deep = "{\"a\":".to_string() + &"[".repeat(MAX_DEPTH as usize);
        assert_eq!(accepts(&deep), None);
        assert_eq!(accepts(&format!("{{{}", " ".repeat(MAX_WS as usize + 1))), None);
        assert_eq!(accepts(&format!("{{\"a\":{}", "1".repeat(MAX_NUM as usize + 1))), None);
    }

    #[test]
    fn agrees_with_serde_on_random_texts() {
        // Random strings over JSON's alphabet: whatever the recognizer calls done must parse,
        // and every valid object it is given must be accepted.
        let alphabet = b"{}[]\":,-0123456789.eE+ truefalsnul\\/ab";
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut done = 0;
        for _ in 0..200_000 {
            let len = 2 + (x % 12) as usize;
            let mut t = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                t.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            let t = String::from_utf8(t).unwrap();
            let parsed = serde_json::from_str::<serde_json::Value>(&t).is_ok_and(|v| v.is_object());
            let ours = accepts(&t) == Some(true);
            assert_eq!(ours, parsed, "{t:?}");
            done += ours as usize;
        }
        assert!(done > 0, "the random texts never formed an object");
    }
}
