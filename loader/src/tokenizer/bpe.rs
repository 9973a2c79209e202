//! Byte-level BPE (`tokenizer.ggml.model = gpt2`), as llama.cpp's `llm_tokenizer_bpe_session`.
//!
//! A word's bytes are written in GPT-2's byte-to-unicode alphabet, one symbol per byte, and
//! the adjacent pair with the lowest merge rank is merged until no pair has a rank (ties:
//! leftmost). Merges are looked up by symbol id, not by string: every string a merge names
//! gets an id at load time — its token id, or an id past the vocabulary when the string is
//! not a token (llama.cpp allows such merges; the merged symbol then falls back to bytes).

use super::unicode::BYTE_TO_CHAR;
use super::Vocab;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// Id of a string that is neither a token nor named by a merge.
const NO_ID: u32 = u32::MAX;

/// The merge table, keyed by the ids of the two parts.
#[derive(Debug)]
pub(super) struct Merges {
    /// `(left id << 32 | right id)` → (rank, id of the concatenation).
    ranks: HashMap<u64, (u32, u32)>,
    /// The id of each byte's one-character string.
    byte_ids: [u32; 256],
    n_vocab: u32,
}

/// What loading the merges found that llama.cpp tolerates silently.
#[derive(Debug, Default)]
pub(super) struct MergeStats {
    /// Lines without a space after their first byte (llama.cpp stores them as a pair of
    /// empty strings, which never matches).
    pub(super) malformed: usize,
    /// Merges naming a string that is not a token.
    pub(super) outside_vocab: usize,
}

impl Merges {
    /// Builds the table from `tokenizer.ggml.merges` lines (`"left right"`, rank = index).
    pub(super) fn new(vocab: &Vocab, lines: &[String]) -> (Merges, MergeStats) {
        let n_vocab = vocab.texts.len() as u32;
        let mut extra: HashMap<String, u32> = HashMap::new();
        let mut stats = MergeStats::default();
        let intern = |s: &str, extra: &mut HashMap<String, u32>, stats_outside: &mut bool| -> u32 {
            if let Some(id) = vocab.id(s) {
                return id;
            }
            *stats_outside = true;
            if let Some(&id) = extra.get(s) {
                return id;
            }
            let id = n_vocab + extra.len() as u32;
            extra.insert(s.to_string(), id);
            id
        };

        let mut ranks = HashMap::with_capacity(lines.len());
        let mut joined = String::new();
        for (rank, line) in lines.iter().enumerate() {
            // llama.cpp splits at the first space after the first byte.
            // (A byte search: the first character may be several bytes long.)
            let Some(pos) = line.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1) else {
                stats.malformed += 1;
                continue;
            };
            let (left, right) = (&line[..pos], &line[pos + 1..]);
            joined.clear();
            joined.push_str(left);
            joined.push_str(right);
            let mut outside = false;
            let l = intern(left, &mut extra, &mut outside);
            let r = intern(right, &mut extra, &mut outside);
            let m = intern(&joined, &mut extra, &mut outside);
            stats.outside_vocab += outside as usize;
            // The first occurrence of a pair wins, as with llama.cpp's `emplace`.
            ranks.entry((l as u64) << 32 | r as u64).or_insert((rank as u32, m));
        }

        let mut byte_ids = [NO_ID; 256];
        let mut buf = [0u8; 4];
        for (b, id) in byte_ids.iter_mut().enumerate() {
            let s = BYTE_TO_CHAR[b].encode_utf8(&mut buf);
            *id = vocab.id(s).or_else(|| extra.get(&*s).copied()).unwrap_or(NO_ID);
        }
        (Merges { ranks, byte_ids, n_vocab }, stats)
    }

    fn rank(&self, left: u32, right: u32) -> Option<(u32, u32)> {
        if left == NO_ID || right == NO_ID {
            return None;
        }
        self.ranks.get(&((left as u64) << 32 | right as u64)).copied()
    }

    /// Tokenizes one word (raw bytes) and appends the ids to `out`.
    pub(super) fn word(&self, vocab: &Vocab, word: &[u8], ignore_merges: bool, out: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        if ignore_merges {
            let encoded: String = word.iter().map(|&b| BYTE_TO_CHAR[b as usize]).collect();
            if let Some(id) = vocab.id(&encoded) {
                out.push(id);
                return;
            }
        }

        #[derive(Clone, Copy)]
        struct Symbol {
            id: u32,
            start: u32,
            len: u32,
            prev: u32,
            next: u32,
        }
        const NONE: u32 = u32::MAX;
        let n = word.len() as u32;
        let mut sym: Vec<Symbol> = (0..n)
            .map(|i| Symbol {
                id: self.byte_ids[word[i as usize] as usize],
                start: i,
                len: 1,
                prev: if i == 0 { NONE } else { i - 1 },
                next: if i + 1 == n { NONE } else { i + 1 },
            })
            .collect();

        // (rank, left, right, byte size when queued); the smallest rank, then leftmost, first.
        let mut queue: BinaryHeap<Reverse<(u32, u32, u32, u32)>> = BinaryHeap::new();
        let push = |queue: &mut BinaryHeap<Reverse<(u32, u32, u32, u32)>>, sym: &[Symbol], l: u32, r: u32| {
            if l == NONE || r == NONE {
                return;
            }
            let (a, b) = (sym[l as usize], sym[r as usize]);
            if let Some((rank, _)) = self.rank(a.id, b.id) {
                queue.push(Reverse((rank, l, r, a.len + b.len)));
            }
        };
        for i in 1..n {
            push(&mut queue, &sym, i - 1, i);
        }
        while let Some(Reverse((_, l, r, size))) = queue.pop() {
            let (a, b) = (sym[l as usize], sym[r as usize]);
            // Stale: one side was merged away or grew since the pair was queued.
            if a.len == 0 || b.len == 0 || a.len + b.len != size {
                continue;
            }
            let Some((_, merged)) = self.rank(a.id, b.id) else { continue };
            let left = &mut sym[l as usize];
            left.len += b.len;
            left.id = merged;
            left.next = b.next;
            sym[r as usize].len = 0;
            if b.next != NONE {
                sym[b.next as usize].prev = l;
            }
            let (prev, next) = (sym[l as usize].prev, sym[l as usize].next);
            push(&mut queue, &sym, prev, l);
            push(&mut queue, &sym, l, next);
        }

        let mut cur = 0;
        while cur != NONE {
            let s = sym[cur as usize];
            if s.id < self.n_vocab {
                out.push(s.id);
            } else {
                // Not a token: llama.cpp looks up each byte of the symbol's text as a
                // one-byte token, which only printable ASCII can be (their GPT-2 form is
                // the byte itself).
                for &b in &word[s.start as usize..(s.start + s.len) as usize] {
                    let id = self.byte_ids[b as usize];
                    if (0x21..=0x7E).contains(&b) && id < self.n_vocab {
                        out.push(id);
                    }
                }
            }
            cur = s.next;
        }
    }
}
