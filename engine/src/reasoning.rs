//! Reasoning models write their thinking between `<think>` and `</think>` before the answer.
//! [`ReasoningSplitter`] separates the two as text streams in, so that an API can send the
//! thinking as `reasoning_content` and the rest as `content` (llama.cpp's and vLLM's
//! `deepseek` reasoning format). Tags split across tokens are held back until they resolve.

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// How thinking is reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReasoningFormat {
    /// Left in the content as the model wrote it.
    None,
    /// `<think>…</think>` goes to the reasoning stream, tags removed.
    #[default]
    Deepseek,
}

impl std::str::FromStr for ReasoningFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(ReasoningFormat::None),
            "deepseek" => Ok(ReasoningFormat::Deepseek),
            _ => Err(format!("unknown reasoning format {s} (none, deepseek)")),
        }
    }
}

/// Text split into thinking and answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Split {
    /// Thinking.
    pub reasoning: String,
    /// The answer.
    pub content: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace yet: the output may still open with `<think>`.
    Start,
    Thinking,
    /// Just after `</think>`: whitespace before the answer is dropped.
    Closed,
    Answer,
    /// Format `none`: everything is content.
    Off,
}

/// Splits a generated text stream into reasoning and content.
#[derive(Clone, Debug)]
pub struct ReasoningSplitter {
    state: State,
    buf: String,
}

/// Whether a rendered prompt leaves the model inside a thinking block (DeepSeek-R1's
/// templates end the generation prompt with `<think>\n`), so its output starts as thinking.
pub fn prompt_opens_thinking(prompt: &str) -> bool {
    let p = prompt.trim_end();
    p.ends_with(OPEN)
}

impl ReasoningSplitter {
    /// A splitter for one generation; `prompt` is the rendered prompt it continues.
    pub fn new(format: ReasoningFormat, prompt: &str) -> Self {
        let state = match format {
            ReasoningFormat::None => State::Off,
            ReasoningFormat::Deepseek if prompt_opens_thinking(prompt) => State::Thinking,
            ReasoningFormat::Deepseek => State::Start,
        };
        ReasoningSplitter { state, buf: String::new() }
    }

    /// Adds generated text; returns what is now certain of each part.
    pub fn push(&mut self, text: &str) -> Split {
        self.buf.push_str(text);
        let mut out = Split::default();
        loop {
            match self.state {
                State::Off | State::Answer => {
                    out.content.push_str(&self.buf);
                    self.buf.clear();
                    return out;
                }
                State::Start => {
                    let t = self.buf.trim_start();
                    if let Some(rest) = t.strip_prefix(OPEN) {
                        self.buf = rest.to_string();
                        self.state = State::Thinking;
                    } else if OPEN.starts_with(t) {
                        return out; // empty or a partial "<think"
                    } else {
                        self.state = State::Answer;
                    }
                }
                State::Thinking => {
                    if let Some(i) = self.buf.find(CLOSE) {
                        out.reasoning.push_str(&self.buf[..i]);
                        self.buf.drain(..i + CLOSE.len());
                        self.state = State::Closed;
                    } else {
                        let hold = (1..CLOSE.len().min(self.buf.len() + 1))
                            .rev()
                            .find(|&n| {
                                self.buf.is_char_boundary(self.buf.len() - n)
                                    && CLOSE.starts_with(&self.buf[self.buf.len() - n..])
                            })
                            .unwrap_or(0);
                        let cut = self.buf.len() - hold;
                        out.reasoning.push_str(&self.buf[..cut]);
                        self.buf.drain(..cut);
                        return out;
                    }
                }
                State::Closed => {
                    let t = self.buf.trim_start();
                    if t.is_empty() {
                        self.buf.clear();
                        return out;
                    }
                    self.buf = t.to_string();
                    self.state = State::Answer;
                }
            }
        }
    }

    /// Ends the stream: whatever was held back (an unfinished thinking block stays reasoning).
    pub fn finish(&mut self) -> Split {
        let rest = std::mem::take(&mut self.buf);
        match self.state {
            State::Thinking => Split { reasoning: rest, content: String::new() },
            State::Closed => Split::default(),
            _ => Split { reasoning: String::new(), content: rest },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(format: ReasoningFormat, prompt: &str, text: &str, piece: usize) -> Split {
        let mut s = ReasoningSplitter::new(format, prompt);
        let mut all = Split::default();
        let chars: Vec<char> = text.chars().collect();
        for c in chars.chunks(piece) {
            let p = s.push(&c.iter().collect::<String>());
            all.reasoning += &p.reasoning;
            all.content += &p.content;
        }
        let p = s.finish();
        all.reasoning += &p.reasoning;
        all.content += &p.content;
        all
    }

    #[test]
    fn splits_at_every_piece_size() {
        for piece in 1..12 {
            let s = run(ReasoningFormat::Deepseek, "", "<think>\nhmm, 2<3\n</think>\n\nIt is 4.", piece);
            assert_eq!((s.reasoning.as_str(), s.content.as_str()), ("\nhmm, 2<3\n", "It is 4."));
            let s = run(ReasoningFormat::Deepseek, "x<think>\n", "a </thin b</think> c", piece);
            assert_eq!((s.reasoning.as_str(), s.content.as_str()), ("a </thin b", "c"));
            let s = run(ReasoningFormat::Deepseek, "", "no <think> here", piece);
            assert_eq!((s.reasoning.as_str(), s.content.as_str()), ("", "no <think> here"));
            let s = run(ReasoningFormat::Deepseek, "", "<thinking", piece);
            assert_eq!((s.reasoning.as_str(), s.content.as_str()), ("", "<thinking"));
            let s = run(ReasoningFormat::Deepseek, "<think>", "cut off mid-thought </th", piece);
            assert_eq!((s.reasoning.as_str(), s.content.as_str()), ("cut off mid-thought </th", ""));
            let s = run(ReasoningFormat::None, "<think>", "<think>a</think>b", piece);
            assert_eq!((s.reasoning.as_str(), s.content.as_str()), ("", "<think>a</think>b"));
        }
    }
}
