//! Reasoning output with real templates: the Qwen3 and DeepSeek-R1 templates from
//! `shared/fixtures/chat-templates` render a conversation, and a scripted answer — tokenized
//! with a real vocabulary and streamed token by token through the same text path as a
//! generation — is split into `reasoning_content` and `content`.

mod common;

use ferrite::loader::chat::{ChatRequest, ChatTemplate};
use ferrite::loader::tokenizer::Tokenizer;
use ferrite::loader::GgufFile;
use ferrite::reasoning::{ReasoningFormat, ReasoningSplitter};
use ferrite::text::TextStream;
use serde_json::json;

fn template(name: &str) -> ChatTemplate {
    let p = common::shared().join("fixtures/chat-templates").join(name);
    let src = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    ChatTemplate::new(&src, "<s>", "</s>").unwrap()
}

/// Streams `answer` as tokens after `prompt`; returns (reasoning, content).
fn stream(tok: &Tokenizer, prompt: &str, answer: &str, format: ReasoningFormat) -> (String, String) {
    let mut text = TextStream::new(Vec::new());
    let mut split = ReasoningSplitter::new(format, prompt);
    let (mut reasoning, mut content) = (String::new(), String::new());
    let ids = tok.encode(answer, false, false);
    assert!(ids.len() > 5, "a multi-token stream");
    for id in ids {
        let (piece, _) = text.push(tok, id);
        let s = split.push(&piece);
        reasoning += &s.reasoning;
        content += &s.content;
    }
    let s = split.push(&text.finish());
    reasoning += &s.reasoning;
    content += &s.content;
    let s = split.finish();
    (reasoning + &s.reasoning, content + &s.content)
}

#[test]
fn qwen3_and_deepseek_r1_thinking_is_split() {
    let model = common::model("SmolLM2-135M-Instruct.Q4_1.gguf", true).unwrap();
    let file = GgufFile::open(&model).unwrap();
    let tok = Tokenizer::from_metadata(file.metadata()).unwrap();
    let conv = vec![json!({"role": "user", "content": "What is 2+2?"})];
    let render = |t: &ChatTemplate, extra: Option<(&str, bool)>| {
        let mut req = ChatRequest::new(conv.clone());
        req.add_generation_prompt = true;
        if let Some((k, v)) = extra {
            req.extra.insert(k.into(), json!(v));
        }
        t.render(&req).unwrap()
    };

    // DeepSeek-R1: the generation prompt opens the thinking block; the model writes no <think>.
    // (The Qwen-32B template's copy closes the block unless `enable_thinking` is set.)
    for (name, kw) in [
        ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", Some(("enable_thinking", true))),
        ("deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja", None),
    ] {
        let prompt = render(&template(name), kw);
        assert!(prompt.trim_end().ends_with("<think>"), "{name}: {prompt:?}");
        let (r, c) = stream(
            &tok,
            &prompt,
            "Two plus two: add them.\n</think>\n\nThe answer is 4.",
            ReasoningFormat::Deepseek,
        );
        assert_eq!(r, "Two plus two: add them.\n", "{name}");
        assert_eq!(c, "The answer is 4.", "{name}");
        let (r, c) = stream(&tok, &prompt, "Two plus two.\n</think>\n\n4", ReasoningFormat::None);
        assert_eq!((r.as_str(), c.as_str()), ("", "Two plus two.\n</think>\n\n4"));
    }
    let closed = render(&template("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja"), None);
    assert!(closed.ends_with("<think>\n</think>"), "{closed:?}");
    let (r, c) = stream(&tok, &closed, "The answer is 4, no thinking needed.", ReasoningFormat::Deepseek);
    assert_eq!((r.as_str(), c.as_str()), ("", "The answer is 4, no thinking needed."));

    // Qwen3: the model opens the block itself.
    let qwen3 = template("Qwen-Qwen3-0.6B.jinja");
    let prompt = render(&qwen3, None);
    assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt:?}");
    let (r, c) = stream(
        &tok,
        &prompt,
        "<think>\nAdd 2 and 2, that is 4.\n</think>\n\nIt is 4.",
        ReasoningFormat::Deepseek,
    );
    assert_eq!(r, "\nAdd 2 and 2, that is 4.\n");
    assert_eq!(c, "It is 4.");
    // With thinking switched off the template closes an empty block: all is content.
    let prompt = render(&qwen3, Some(("enable_thinking", false)));
    assert!(prompt.contains("<think>\n\n</think>"), "{prompt:?}");
    let (r, c) = stream(&tok, &prompt, "It is 4, and <think> here is just text.", ReasoningFormat::Deepseek);
    assert_eq!((r.as_str(), c.as_str()), ("", "It is 4, and <think> here is just text."));
}
