//! Codepoint classes and GPT-2's byte-to-unicode table, as llama.cpp's `unicode.cpp` has them.
//!
//! The pre-splitters must classify codepoints exactly as llama.cpp does, or word boundaries
//! (and so token ids) drift on exotic text. The category table comes from the same Unicode
//! version as llama.cpp's (see `gen_unicode_data.py`); whitespace is Unicode's White_Space
//! set, which is what llama.cpp's generator took from Python's `regex` `\s`.

use super::unicode_data::RANGES;

/// Category bits, one per general-category group (llama.cpp's `unicode_cpt_flags`).
pub(super) const U: u8 = 0x01; // unassigned
pub(super) const N: u8 = 0x02; // \p{N}
pub(super) const L: u8 = 0x04; // \p{L}
pub(super) const Z: u8 = 0x08; // \p{Z}
pub(super) const M: u8 = 0x10; // \p{M}
pub(super) const P: u8 = 0x20; // \p{P}
pub(super) const S: u8 = 0x40; // \p{S}
pub(super) const C: u8 = 0x80; // \p{C} other than unassigned

/// Flags of one codepoint: the category bit plus [`Flags::WHITESPACE`].
///
/// `Flags::NONE` (all clear) is what llama.cpp's splitters see past the end of a segment;
/// every real codepoint has exactly one category bit set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Flags(u16);

impl Flags {
    pub(super) const NONE: Flags = Flags(0);
    const WHITESPACE: u16 = 0x100;

    pub(super) fn of(c: char) -> Flags {
        let cp = c as u32;
        let cat = if cp < 0x80 {
            ASCII[cp as usize]
        } else {
            // Last range whose start is <= cp; RANGES[0] starts at 0, so idx >= 1.
            let idx = RANGES.partition_point(|&(start, _)| start <= cp);
            RANGES[idx - 1].1
        };
        let ws = if is_whitespace(cp) { Flags::WHITESPACE } else { 0 };
        Flags(cat as u16 | ws)
    }

    pub(super) fn category(self) -> u8 {
        (self.0 & 0xFF) as u8
    }
    pub(super) fn is_letter(self) -> bool {
        self.0 & L as u16 != 0
    }
    pub(super) fn is_number(self) -> bool {
        self.0 & N as u16 != 0
    }
    pub(super) fn is_whitespace(self) -> bool {
        self.0 & Flags::WHITESPACE != 0
    }
    /// Whether any flag is set, i.e. whether this is a real codepoint (not past the end).
    pub(super) fn any(self) -> bool {
        self.0 != 0
    }
}

/// Categories of the ASCII range, so the common case needs no search.
static ASCII: [u8; 128] = {
    let mut t = [0u8; 128];
    let mut i = 0;
    while i < 128 {
        t[i] = ascii_category(i as u8);
        i += 1;
    }
    t
};

const fn ascii_category(b: u8) -> u8 {
    match b {
        0x00..=0x1F | 0x7F => C,
        b' ' => Z,
        b'0'..=b'9' => N,
        b'A'..=b'Z' | b'a'..=b'z' => L,
        b'$' | b'+' | b'<' | b'=' | b'>' | b'^' | b'`' | b'|' | b'~' => S,
        _ => P,
    }
}

/// Unicode White_Space (25 codepoints).
pub(super) fn is_whitespace(cp: u32) -> bool {
    matches!(
        cp,
        0x09..=0x0D
            | 0x20
            | 0x85
            | 0xA0
            | 0x1680
            | 0x2000..=0x200A
            | 0x2028
            | 0x2029
            | 0x202F
            | 0x205F
            | 0x3000
    )
}

/// GPT-2's reversible byte-to-codepoint map: printable Latin-1 bytes map to themselves, the
/// other 68 bytes to U+0100.. in byte order. Byte-level BPE vocabularies are written in it.
pub(super) static BYTE_TO_CHAR: [char; 256] = {
    let mut t = ['\0'; 256];
    let mut n = 0u32;
    let mut b = 0usize;
    while b < 256 {
        let printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        let cp = if printable {
            b as u32
        } else {
            n += 1;
            255 + n
        };
        t[b] = match char::from_u32(cp) {
            Some(c) => c,
            None => '\0', // unreachable: every value is below U+0144
        };
        b += 1;
    }
    t
};

/// The inverse of [`BYTE_TO_CHAR`]; `None` for codepoints outside the map.
pub(super) fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    match cp {
        0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF => Some(cp as u8),
        0x100..=0x143 => Some(SHIFTED_BYTES[(cp - 0x100) as usize]),
        _ => None,
    }
}

/// The bytes that [`BYTE_TO_CHAR`] moves to U+0100.., in order.
static SHIFTED_BYTES: [u8; 68] = {
    let mut t = [0u8; 68];
    let mut n = 0;
    let mut b = 0usize;
    while b < 256 {
        if BYTE_TO_CHAR[b] as u32 >= 0x100 {
            t[n] = b as u8;
            n += 1;
        }
        b += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_bijection() {
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = BYTE_TO_CHAR[b as usize];
            assert!(seen.insert(c));
            assert_eq!(char_to_byte(c), Some(b));
        }
        assert_eq!(BYTE_TO_CHAR[b' ' as usize], 'Ġ');
        assert_eq!(BYTE_TO_CHAR[b'\n' as usize], 'Ċ');
        assert_eq!(char_to_byte('A'), Some(b'A'));
        assert_eq!(char_to_byte('中'), None);
    }

    #[test]
    fn categories_match_llama_cpp_table() {
        assert_eq!(Flags::of('a').category(), L);
        assert_eq!(Flags::of('7').category(), N);
        assert_eq!(Flags::of('$').category(), S);
        assert_eq!(Flags::of('!').category(), P);
        assert!(Flags::of(' ').is_whitespace());
        assert!(Flags::of('\u{3000}').is_whitespace());
        assert!(!Flags::of('\u{1C}').is_whitespace());
        assert_eq!(Flags::of('é').category(), L);
        assert_eq!(Flags::of('\u{0301}').category(), M);
        assert_eq!(Flags::of('½').category(), N);
        assert_eq!(Flags::of('🦙').category(), S);
        assert_eq!(Flags::of('\u{0378}').category(), U);
        assert_eq!(Flags::of('\u{E000}').category(), C);
        // Unicode 15.1: CJK extension I is assigned.
        assert_eq!(Flags::of('\u{2EBF0}').category(), L);
        assert_eq!(Flags::of('\u{10FFFF}').category(), U);
        for c in ['a', ' ', '\u{0378}', '\u{10FFFF}'] {
            assert!(Flags::of(c).any());
        }
    }
}
