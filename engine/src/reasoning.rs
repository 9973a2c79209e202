//! Reasoning models write their thinking between `<think>` and `</think>` before the answer.
//! [`ReasoningSplitter`] separates the two as text streams in, so that an API can send the
//! thinking as `reasoning_content` and the rest as `content` (llama.cpp's and vLLM's
//! `deepseek` reasoning format). Tags split across tokens are held back until they resolve.
//! Mistral's reasoning models (Magistral, Ministral 3 Reasoning) write `[THINK]…[/THINK]`
//! instead; [`ThinkTags::detect`] picks the pair from the chat template.

/// The tags around a thinking block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThinkTags {
    /// Opens the block.
    pub open: &'static str,
    /// Closes it.
    pub close: &'static str,
}

impl ThinkTags {
    /// `<think>…</think>` (DeepSeek-R1, Qwen3, QwQ …).
    pub const THINK: ThinkTags = ThinkTags { open: "<think>", close: "</think>" };
    /// `[THINK]…[/THINK]` (Mistral's; control tokens, which a generation must keep).
    pub const MISTRAL: ThinkTags = ThinkTags { open: "[THINK]", close: "[/THINK]" };

    /// The pair a chat template writes.
    pub fn detect(template: &str) -> ThinkTags {
        if template.contains(Self::MISTRAL.open) && template.contains(Self::MISTRAL.close) {
            Self::MISTRAL
        } else {
            Self::THINK
        }
    }
}

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
    tags: ThinkTags,
}

/// Whether a rendered prompt leaves the model inside a thinking block (DeepSeek-R1's
/// templates end the generation prompt with `<think>\n`), so its output starts as thinking.
pub fn prompt_opens_thinking(prompt: &str, tags: ThinkTags) -> bool {
    prompt.trim_end().ends_with(tags.open)
}

impl ReasoningSplitter {
    /// A splitter for one generation with `<think>` tags; `prompt` is the rendered prompt
    /// it continues.
    pub fn new(format: ReasoningFormat, prompt: &str) -> Self {
        Self::with_tags(format, prompt, ThinkTags::THINK)
    }

    /// A splitter for thinking between `tags`.
    pub fn with_tags(format: ReasoningFormat, prompt: &str, tags: ThinkTags) -> Self {
        let state = match format {
            ReasoningFormat::None => State::Off,
            ReasoningFormat::Deepseek if prompt_opens_thinking(prompt, tags) => State::Thinking,
            ReasoningFormat::Deepseek => State::Start,
        };
        ReasoningSplitter { state, buf: String::new(), tags }
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
                    let open = self.tags.open;
                    if let Some(rest) = t.strip_prefix(open) {
                        self.buf = rest.to_string();
                        self.state = State::Thinking;
                    } else if open.starts_with(t) {
                        return out; // empty or a partial "<think"
                    } else {
                        self.state = State::Answer;
                    }
                }
                State::Thinking => {
                    let close = self.tags.close;
                    if let Some(i) = self.buf.find(close) {
                        out.reasoning.push_str(&self.buf[..i]);
                        self.buf.drain(..i + close.len());
                        self.state = State::Closed;
                    } else {
                        let hold = crate::text::longest_suffix_prefix(&self.buf, close);
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
        run_tags(format, prompt, text, piece, ThinkTags::THINK)
    }

    fn run_tags(format: ReasoningFormat, prompt: &str, text: &str, piece: usize, tags: ThinkTags) -> Split {
        let mut s = ReasoningSplitter::with_tags(format, prompt, tags);
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

    #[test]
    fn mistral_think_tags() {
        for piece in [1, 3, 100] {
            let text = "[THINK]Four, <think> is not mine.[/THINK]\n4";
            let all =
                run_tags(ReasoningFormat::Deepseek, "[INST]2+2?[/INST]", text, piece, ThinkTags::MISTRAL);
            assert_eq!((all.reasoning.as_str(), all.content.as_str()), ("Four, <think> is not mine.", "4"));
        }
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/chat-templates");
        if let Ok(src) = std::fs::read_to_string(dir.join("mistralai-Ministral-3-14B-Reasoning-2512.jinja")) {
            assert_eq!(ThinkTags::detect(&src), ThinkTags::MISTRAL);
        }
        if let Ok(src) = std::fs::read_to_string(dir.join("Qwen-Qwen3-0.6B.jinja")) {
            assert_eq!(ThinkTags::detect(&src), ThinkTags::THINK);
        }
    }
}
