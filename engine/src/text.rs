//! Generated text as a stream: token pieces joined without splitting UTF-8 characters, and
//! stop strings cut out — text that could still turn into a stop string is held back until
//! the next token decides it. Every generation path (the single-sequence iterator and the
//! batch scheduler) goes through here.

use ferrite_loader::tokenizer::{StreamDecoder, Tokenizer};

/// Turns sampled tokens into the text a client may see.
#[derive(Clone, Debug, Default)]
pub struct TextStream {
    decoder: StreamDecoder,
    pending: String,
    stop: Vec<String>,
    /// Control tokens whose text is kept (tool-call markers such as Mistral's `[TOOL_CALLS]`).
    keep: Vec<u32>,
}

impl TextStream {
    /// A stream that ends before any of `stop` (empty strings are ignored).
    pub fn new(stop: Vec<String>) -> Self {
        TextStream {
            decoder: StreamDecoder::new(false),
            pending: String::new(),
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            keep: Vec::new(),
        }
    }

    /// A stream that also writes the text of the control tokens in `keep`.
    pub fn with_kept(stop: Vec<String>, keep: Vec<u32>) -> Self {
        TextStream { keep, ..Self::new(stop) }
    }

    /// Adds a token. Returns the text now safe to emit and whether a stop string completed
    /// (then the text is what came before it, and the stream is over).
    pub fn push(&mut self, tokenizer: &Tokenizer, token: u32) -> (String, bool) {
        let piece = if self.keep.contains(&token) {
            self.decoder.push_bytes(tokenizer.token_to_piece(token, true))
        } else {
            self.decoder.push(tokenizer, token)
        };
        self.pending.push_str(&piece);
        for s in &self.stop {
            if let Some(i) = self.pending.find(s.as_str()) {
                let out = self.pending[..i].to_string();
                self.pending.clear();
                return (out, true);
            }
        }
        let hold = self.stop.iter().map(|s| longest_suffix_prefix(&self.pending, s)).max().unwrap_or(0);
        let cut = self.pending.len() - hold;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    /// Ends the stream: what was held back (a partial stop string that never completed, an
    /// incomplete character as U+FFFD).
    pub fn finish(&mut self) -> String {
        let mut text = std::mem::take(&mut self.pending);
        text.push_str(&self.decoder.finish());
        text
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop` (at a char boundary):
/// text to hold back while a tag or stop string may still complete.
pub(crate) fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = stop.len().saturating_sub(1).min(text.len());
    (1..=max)
        .rev()
        .find(|&n| text.is_char_boundary(text.len() - n) && stop.starts_with(&text[text.len() - n..]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_prefix() {
        assert_eq!(longest_suffix_prefix("hello wo", "world"), 2);
        assert_eq!(longest_suffix_prefix("hello", "world"), 0);
        assert_eq!(longest_suffix_prefix("abc", "abc"), 0, "a whole match is not held back");
        assert_eq!(longest_suffix_prefix("xé", "éa"), 2);
    }
}
