//! Tool calls in generated text. Given `tools`, chat models answer with calls in the format
//! their template taught them; [`ToolCallParser`] takes them out of the content stream as
//! they complete, so that an API can return OpenAI's `tool_calls` instead of raw markup.
//!
//! Formats (picked from the chat template's source by [`ToolFormat::detect`]):
//! - [`ToolFormat::Hermes`]: `<tool_call>{"name": …, "arguments": {…}}</tool_call>`, one or
//!   more (Qwen 2.5/3, QwQ, Hermes 2 Pro/3, SmolLM3, and the fallback for templates that
//!   show no format of their own); small models often drop the tags and answer with the
//!   bare object, which counts (as llama.cpp's parser takes it) when it names an offered tool;
//! - [`ToolFormat::Xml`]: `<tool_call>` around `<function=NAME>` with
//!   `<parameter=P>value</parameter>` elements (the Qwen3-Coder, Qwen3.5, Nemotron 3 and
//!   StepFun 3.5 templates); values are text, typed by the tool's parameter schema (a
//!   `string` stays text; numbers, booleans, objects and arrays parse as JSON);
//! - [`ToolFormat::Llama3Json`]: the whole answer one JSON object `{"name": …, "parameters":
//!   {…}}` naming an offered tool (Llama 3.1/3.2/3.3; the `<|python_tag|>` control token is
//!   not part of the text);
//! - [`ToolFormat::Mistral`]: `[TOOL_CALLS]` then a JSON array of calls (Mistral Nemo) or
//!   `name[ARGS]{…}` / `name[CALL_ID]id[ARGS]{…}` (Mistral Small 3.2, Devstral, Ministral).
//!   The markers are control tokens: a generation that may call tools keeps their text
//!   ([`ToolFormat::markers`]).
//!
//! Text that looks like a call but does not parse stays in the content, as written; only
//! whitespace before, between and after calls is dropped.

use crate::text::longest_suffix_prefix;
use serde_json::{Map, Value};

/// How a model writes tool calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolFormat {
    /// `<tool_call>` JSON `</tool_call>` blocks.
    Hermes,
    /// `<tool_call>` blocks holding `<function=…>` with `<parameter=…>` elements.
    Xml,
    /// The answer is one JSON object with `name` and `parameters`.
    Llama3Json,
    /// `[TOOL_CALLS]` markers.
    Mistral,
}

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";
const MISTRAL_CALLS: &str = "[TOOL_CALLS]";
const MISTRAL_ARGS: &str = "[ARGS]";
const MISTRAL_ID: &str = "[CALL_ID]";
const XML_FUNCTION: &str = "<function=";
const XML_FUNCTION_END: &str = "</function>";
const XML_PARAM: &str = "<parameter=";
const XML_PARAM_END: &str = "</parameter>";
/// Bound on one call's text (a runaway generation is returned as content, not buffered).
const MAX_CALL_BYTES: usize = 1 << 20;

impl ToolFormat {
    /// The format a chat template's source teaches: Mistral's when it writes `[TOOL_CALLS]`,
    /// the XML calls when it writes `<tool_call>` with `<function=` and `<parameter=`,
    /// Llama 3's JSON calls when it speaks of `<|python_tag|>`/`ipython` (and not of
    /// `<tool_call>`), else `<tool_call>` blocks (what the Qwen and Hermes templates ask for,
    /// and llama.cpp's generic choice).
    pub fn detect(template: &str) -> ToolFormat {
        if template.contains(MISTRAL_CALLS) {
            ToolFormat::Mistral
        } else if template.contains(OPEN) && template.contains(XML_FUNCTION) && template.contains(XML_PARAM) {
            ToolFormat::Xml
        } else if !template.contains(OPEN)
            && (template.contains("<|python_tag|>") || template.contains("ipython"))
        {
            ToolFormat::Llama3Json
        } else {
            ToolFormat::Hermes
        }
    }

    /// The marker texts a generation must keep for the parser to see them.
    pub fn markers(self) -> &'static [&'static str] {
        match self {
            ToolFormat::Hermes | ToolFormat::Xml => &[OPEN, CLOSE],
            ToolFormat::Llama3Json => &[],
            ToolFormat::Mistral => &[MISTRAL_CALLS, MISTRAL_ARGS, MISTRAL_ID],
        }
    }

    /// The tags that open a call, each with the one that closes it: Mistral's calls run to
    /// the next `[TOOL_CALLS]` or the end; an XML `<function=` without its `<tool_call>`
    /// (Qwen3-Coder sometimes leaves it out) runs to its `</function>`.
    fn openers(self) -> &'static [(&'static str, Option<&'static str>)] {
        match self {
            ToolFormat::Mistral => &[(MISTRAL_CALLS, None)],
            ToolFormat::Xml => &[(OPEN, Some(CLOSE)), (XML_FUNCTION, Some(XML_FUNCTION_END))],
            _ => &[(OPEN, Some(CLOSE))],
        }
    }
}

/// One parsed call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    /// The function's name.
    pub name: String,
    /// Its arguments as JSON text (an object), as OpenAI's API carries them.
    pub arguments: String,
    /// The id the model gave it (Mistral's), if any.
    pub id: Option<String>,
}

/// What a push made certain: content text and completed calls.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToolSplit {
    /// Plain content.
    pub content: String,
    /// Calls completed by this push.
    pub calls: Vec<ToolCall>,
}

/// Parses one `{"name": …, "arguments"|"parameters": {…}}` object. A `bare` one (no tags
/// around it) must hold its arguments and nothing but a call's keys, so that no key of an
/// object that was not meant as a call is dropped.
fn parse_call(text: &str, bare: bool) -> Option<ToolCall> {
    call_from(&serde_json::from_str(text.trim()).ok()?, bare)
}

/// A call from a parsed `{"name": …, "arguments"|"parameters": {…}, "id"?: …}` value.
fn call_from(v: &Value, bare: bool) -> Option<ToolCall> {
    let obj = v.as_object()?;
    if bare
        && (!obj.contains_key("arguments") && !obj.contains_key("parameters")
            || obj.keys().any(|k| !matches!(k.as_str(), "name" | "arguments" | "parameters" | "type" | "id")))
    {
        return None;
    }
    let name = obj.get("name")?.as_str()?.to_string();
    let args = match obj.get("arguments").or_else(|| obj.get("parameters")) {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::Object(o)) => serde_json::to_string(o).ok()?,
        // Some models write the arguments as a JSON string, as the API carries them.
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(_)) => s.clone(),
            _ => return None,
        },
        Some(_) => return None,
    };
    let id = obj.get("id").and_then(Value::as_str).map(str::to_string);
    (!name.is_empty()).then_some(ToolCall { name, arguments: args, id })
}

/// The first JSON value of `text` (after whitespace) and the text after it.
fn json_prefix(text: &str) -> Option<(Value, &str)> {
    let mut it = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let v = it.next()?.ok()?;
    Some((v, &text[it.byte_offset()..]))
}

/// The body after one `[TOOL_CALLS]`: a JSON array of calls (or one call object), or
/// `name[ARGS]{…}` with an optional `[CALL_ID]id` before `[ARGS]`. Returns the calls and any
/// text after them.
fn parse_mistral(body: &str) -> Option<(Vec<ToolCall>, &str)> {
    let t = body.trim_start();
    if t.starts_with('[') || t.starts_with('{') {
        let (v, rest) = json_prefix(t)?;
        let calls = match &v {
            Value::Array(a) => a.iter().map(|c| call_from(c, false)).collect::<Option<Vec<_>>>()?,
            obj => vec![call_from(obj, false)?],
        };
        return (!calls.is_empty()).then_some((calls, rest));
    }
    let (head, args) = t.split_once(MISTRAL_ARGS)?;
    let (name, id) = match head.split_once(MISTRAL_ID) {
        Some((n, i)) => (n.trim(), Some(i.trim().to_string())),
        None => (head.trim(), None),
    };
    if name.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    let (v, rest) = json_prefix(args)?;
    let arguments = serde_json::to_string(v.as_object()?).ok()?;
    Some((vec![ToolCall { name: name.to_string(), arguments, id }], rest))
}

/// An offered tool as the parser needs it: its name, and the JSON types its parameters
/// take (the XML format writes every value as text).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToolSpec {
    /// The function's name.
    pub name: String,
    /// Each parameter's name and its schema's `type`s (none where the schema names none).
    pub params: Vec<(String, Vec<String>)>,
}

impl ToolSpec {
    /// A tool with no parameter types known.
    pub fn named(name: &str) -> ToolSpec {
        ToolSpec { name: name.to_string(), params: Vec::new() }
    }

    /// The tool of one entry of OpenAI's `tools` (`{"type": "function", "function": {"name",
    /// "parameters": {"properties": {…}}}}`).
    pub fn from_openai(tool: &Value) -> Option<ToolSpec> {
        let f = tool.get("function")?;
        let name = f.get("name")?.as_str()?.to_string();
        let props = f.get("parameters").and_then(|p| p.get("properties")).and_then(Value::as_object);
        let params = props
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                let mut types = Vec::new();
                schema_types(v, &mut types);
                (k.clone(), types)
            })
            .collect();
        Some(ToolSpec { name, params })
    }

    /// A parameter's text as the JSON value its schema asks for: text where the schema
    /// allows a string or names no type; else the JSON the text parses as, when that is a
    /// type the schema allows (booleans also as `True`/`False`); else the text as written.
    fn value(&self, param: &str, text: &str) -> Value {
        let types = self.params.iter().find(|(p, _)| p == param).map_or(&[][..], |(_, t)| t.as_slice());
        if types.is_empty() {
            return Value::String(text.to_string());
        }
        let t = text.trim();
        let parsed = match serde_json::from_str::<Value>(t) {
            Ok(v) => Some(v),
            Err(_) if t.eq_ignore_ascii_case("true") => Some(Value::Bool(true)),
            Err(_) if t.eq_ignore_ascii_case("false") => Some(Value::Bool(false)),
            Err(_) => None,
        };
        let allowed = |v: &Value| {
            types.iter().any(|ty| match ty.as_str() {
                "integer" => v.is_i64() || v.is_u64(),
                "number" => v.is_number(),
                "boolean" => v.is_boolean(),
                "object" => v.is_object(),
                "array" => v.is_array(),
                "null" => v.is_null(),
                _ => false,
            })
        };
        // Where the schema allows a string, text stays text even when it reads as a number
        // ("0042"); only a `null` it also allows is taken as null.
        let string_ok = types.iter().any(|ty| ty == "string");
        match parsed {
            Some(Value::Null) if allowed(&Value::Null) => Value::Null,
            Some(v) if !string_ok && allowed(&v) => v,
            _ => Value::String(text.to_string()),
        }
    }
}

/// The `type`s a JSON schema allows, its `anyOf`/`oneOf` members' included (pydantic
/// writes an optional integer as `anyOf: [{type: integer}, {type: null}]`).
fn schema_types(schema: &Value, out: &mut Vec<String>) {
    match schema.get("type") {
        Some(Value::String(t)) => out.push(t.clone()),
        Some(Value::Array(a)) => out.extend(a.iter().filter_map(|t| t.as_str().map(str::to_string))),
        _ => {}
    }
    for key in ["anyOf", "oneOf"] {
        for member in schema.get(key).and_then(Value::as_array).into_iter().flatten() {
            // One level: the members of real schemas are plain types.
            if let Some(t) = member.get("type").and_then(Value::as_str) {
                out.push(t.to_string());
            }
        }
    }
}

/// Whether `text` (after whitespace) is empty or starts with one of `tags`.
fn next_is(text: &str, tags: &[&str]) -> bool {
    let t = text.trim_start();
    t.is_empty() || tags.iter().any(|tag| t.starts_with(tag))
}

/// Parses `<function=NAME>` elements, each with its `<parameter=P>value</parameter>`
/// elements, up to `</function>`; None unless the body is one or more functions and
/// whitespace. A value ends at the first `</parameter>` followed by another element or the
/// end (so a value may hold markup), or, where the model left the closing tag out, at the
/// next element (one that starts a line first). One newline at each end of a value belongs
/// to the markup.
fn parse_xml_calls(body: &str, tools: &[ToolSpec]) -> Option<Vec<ToolCall>> {
    let mut calls = Vec::new();
    let mut rest = body.trim_start();
    while !rest.is_empty() {
        let (name, r) = rest.strip_prefix(XML_FUNCTION)?.split_once('>')?;
        let name = name.trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return None;
        }
        let unknown = ToolSpec::named(name);
        let spec = tools.iter().find(|t| t.name == name).unwrap_or(&unknown);
        let mut args = Map::new();
        rest = r;
        loop {
            rest = rest.trim_start();
            if rest.is_empty() {
                break;
            }
            if let Some(after) = rest.strip_prefix(XML_FUNCTION_END) {
                rest = after.trim_start();
                break;
            }
            let (param, r) = rest.strip_prefix(XML_PARAM)?.split_once('>')?;
            let param = param.trim();
            if param.is_empty() {
                return None;
            }
            let closed = r
                .match_indices(XML_PARAM_END)
                .map(|(i, _)| i)
                .find(|&i| next_is(&r[i + XML_PARAM_END.len()..], &[XML_PARAM, XML_FUNCTION_END]));
            // An element at the start of a line before that means the closing tag was left out.
            let line_next = ["\n<parameter=", "\n</function>"].iter().filter_map(|t| r.find(t)).min();
            let (value, after) = match (closed, line_next) {
                (Some(c), n) if n.is_none_or(|n| c < n) => (&r[..c], &r[c + XML_PARAM_END.len()..]),
                (_, Some(n)) => (&r[..n + 1], &r[n + 1..]),
                _ => {
                    let end = [r.find(XML_PARAM), r.find(XML_FUNCTION_END)].into_iter().flatten().min();
                    let end = end.unwrap_or(r.len());
                    (&r[..end], &r[end..])
                }
            };
            let value = value.strip_prefix('\n').unwrap_or(value);
            let value = value.strip_suffix('\n').unwrap_or(value);
            args.insert(param.to_string(), spec.value(param, value));
            rest = after;
        }
        let arguments = serde_json::to_string(&args).ok()?;
        calls.push(ToolCall { name: name.to_string(), arguments, id: None });
    }
    (!calls.is_empty()).then_some(calls)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace yet.
    Start,
    /// The answer opened with `{`: held until the end, a call if the whole parses as one.
    Json,
    /// Hermes and Mistral: outside a call.
    Text,
    /// Hermes and Mistral: inside a call, waiting for its end.
    Call,
    /// Plain text from here on.
    Plain,
}

/// Splits a generated content stream into content and tool calls.
#[derive(Clone, Debug)]
pub struct ToolCallParser {
    format: ToolFormat,
    /// The offered tools: a bare JSON answer is a call only if it names one, and XML
    /// values take their parameters' types.
    tools: Vec<ToolSpec>,
    state: State,
    /// Which of the format's [`ToolFormat::openers`] opened the current call.
    opener: usize,
    buf: String,
    /// Whitespace after a call, emitted only if more content follows it.
    gap: String,
    calls: usize,
}

impl ToolCallParser {
    /// A parser for one answer to a request that offered `tools`.
    pub fn new(format: ToolFormat, tools: Vec<ToolSpec>) -> Self {
        ToolCallParser {
            format,
            tools,
            state: State::Start,
            opener: 0,
            buf: String::new(),
            gap: String::new(),
            calls: 0,
        }
    }

    /// The format parsed.
    pub fn format(&self) -> ToolFormat {
        self.format
    }

    /// Calls parsed so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Content text: whitespace is held (dropped if a call follows it or it follows a call
    /// and nothing else does), anything else is emitted with the whitespace before it.
    fn content(&mut self, out: &mut ToolSplit, text: &str) {
        let body = text.trim_end();
        if !body.is_empty() {
            out.content.push_str(&std::mem::take(&mut self.gap));
            out.content.push_str(body);
        }
        self.gap.push_str(&text[body.len()..]);
    }

    /// Adds content text; returns what is now certain.
    pub fn push(&mut self, text: &str) -> ToolSplit {
        self.buf.push_str(text);
        let mut out = ToolSplit::default();
        loop {
            match self.state {
                State::Plain => {
                    let t = std::mem::take(&mut self.buf);
                    self.content(&mut out, &t);
                    return out;
                }
                State::Start => {
                    let t = self.buf.trim_start();
                    if t.is_empty() {
                        return out;
                    }
                    self.state = match self.format {
                        ToolFormat::Mistral => State::Text,
                        _ if t.starts_with('{') => State::Json,
                        ToolFormat::Hermes | ToolFormat::Xml => State::Text,
                        ToolFormat::Llama3Json => State::Plain,
                    };
                }
                State::Json => {
                    if self.buf.len() > MAX_CALL_BYTES {
                        self.state = State::Plain;
                        continue;
                    }
                    return out;
                }
                State::Text => {
                    let openers = self.format.openers();
                    let first = openers
                        .iter()
                        .enumerate()
                        .filter_map(|(k, (open, _))| self.buf.find(open).map(|i| (i, k)))
                        .min();
                    if let Some((i, k)) = first {
                        let before: String = self.buf.drain(..i + openers[k].0.len()).collect();
                        self.content(&mut out, &before[..i]);
                        (self.opener, self.state) = (k, State::Call);
                    } else {
                        let held = openers.iter().map(|(o, _)| longest_suffix_prefix(&self.buf, o)).max();
                        let cut = self.buf.len() - held.unwrap_or(0);
                        let t: String = self.buf.drain(..cut).collect();
                        self.content(&mut out, &t);
                        return out;
                    }
                }
                State::Call => {
                    // A call ends at its closing tag, or (Mistral) where the next one opens.
                    let (open, close) = self.format.openers()[self.opener];
                    let end = match close {
                        None => self.buf.find(open).map(|i| (i, i)),
                        Some(c) => self.close_at(c).map(|i| (i, i + c.len())),
                    };
                    if let Some((i, next)) = end {
                        let body: String = self.buf.drain(..next).collect();
                        self.end_call(&mut out, &body[..i], close.is_some());
                        self.state = State::Text;
                    } else if self.buf.len() > MAX_CALL_BYTES {
                        let body = std::mem::take(&mut self.buf);
                        self.end_call(&mut out, &body, false);
                        self.state = State::Plain;
                    } else {
                        return out;
                    }
                }
            }
        }
    }

    /// Where the current call's closing tag `close` is in the buffer. In XML calls, only a
    /// tag that follows a `</function>` (or one the body holds no function before) closes
    /// a `<tool_call>`, and only one after a `</parameter>` (or in a function without
    /// parameters) closes a `<function=`: a value may hold such text.
    fn close_at(&self, close: &str) -> Option<usize> {
        let mut found = self.buf.match_indices(close).map(|(i, _)| i);
        if self.format != ToolFormat::Xml {
            return found.next();
        }
        found.find(|&i| {
            let before = self.buf[..i].trim_end();
            match close {
                CLOSE => !before.contains(XML_FUNCTION) || before.ends_with(XML_FUNCTION_END),
                _ => !before.contains(XML_PARAM) || before.ends_with(XML_PARAM_END),
            }
        })
    }

    /// A call's body: a call if it parses, else the text as written (tags included).
    fn end_call(&mut self, out: &mut ToolSplit, body: &str, closed: bool) {
        let (open, close) = self.format.openers()[self.opener];
        let parsed = match self.format {
            ToolFormat::Mistral => parse_mistral(body),
            // A bare `<function=…>…</function>`.
            ToolFormat::Xml if open == XML_FUNCTION => {
                parse_xml_calls(&format!("{open}{body}{XML_FUNCTION_END}"), &self.tools).map(|c| (c, ""))
            }
            // JSON inside the tags too: a model may mix the formats it has seen.
            ToolFormat::Xml => parse_xml_calls(body, &self.tools)
                .or_else(|| parse_call(body, false).map(|c| vec![c]))
                .map(|c| (c, "")),
            _ => parse_call(body, false).map(|c| (vec![c], "")),
        };
        match parsed {
            Some((calls, rest)) => {
                self.calls += calls.len();
                out.calls.extend(calls);
                self.gap.clear();
                self.content(out, rest);
            }
            None => {
                let close = if closed { close.unwrap_or_default() } else { "" };
                self.content(out, &format!("{open}{body}{close}"));
            }
        }
    }

    /// Ends the answer: an unfinished call parses if it can (a model may stop before its
    /// closing tag), else returns as content; held text is released.
    pub fn finish(&mut self) -> ToolSplit {
        let mut out = ToolSplit::default();
        let rest = std::mem::take(&mut self.buf);
        match self.state {
            State::Call => self.end_call(&mut out, &rest, false),
            State::Json => {
                match parse_call(&rest, true).filter(|c| self.tools.iter().any(|t| t.name == c.name)) {
                    Some(call) => {
                        out.calls.push(call);
                        self.calls += 1;
                    }
                    None => out.content.push_str(&rest),
                }
            }
            _ => self.content(&mut out, &rest),
        }
        if self.calls == 0 {
            out.content.push_str(&std::mem::take(&mut self.gap));
        }
        self.state = State::Plain;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Streams `text` in pieces of `n` chars to a parser offered three untyped tools;
    /// returns (content, calls).
    fn run(format: ToolFormat, text: &str, n: usize) -> (String, Vec<ToolCall>) {
        run_with(format, ["get_weather", "now", "f"].map(ToolSpec::named).to_vec(), text, n)
    }

    /// [`run`] with the tools given.
    fn run_with(format: ToolFormat, tools: Vec<ToolSpec>, text: &str, n: usize) -> (String, Vec<ToolCall>) {
        let mut p = ToolCallParser::new(format, tools);
        let (mut content, mut calls) = (String::new(), Vec::new());
        let chars: Vec<char> = text.chars().collect();
        for piece in chars.chunks(n) {
            let s = p.push(&piece.iter().collect::<String>());
            content += &s.content;
            calls.extend(s.calls);
        }
        let s = p.finish();
        content += &s.content;
        calls.extend(s.calls);
        (content, calls)
    }

    fn call(name: &str, args: &str) -> ToolCall {
        ToolCall { name: name.into(), arguments: args.into(), id: None }
    }

    #[test]
    fn mistral_calls_in_every_form() {
        let with_id = |n: &str, a: &str, id: &str| ToolCall { id: Some(id.into()), ..call(n, a) };
        let nemo = "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}, \"id\": \"a1b2c3d4e\"}, {\"name\": \"now\", \"arguments\": {}, \"id\": \"zzzzzzzzz\"}]";
        let small =
            "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}[TOOL_CALLS]now[CALL_ID]q1w2e3r4t[ARGS]{}";
        for n in [1, 2, 5, 1000] {
            assert_eq!(
                run(ToolFormat::Mistral, nemo, n),
                (
                    String::new(),
                    vec![
                        with_id("get_weather", r#"{"city":"Paris"}"#, "a1b2c3d4e"),
                        with_id("now", "{}", "zzzzzzzzz")
                    ]
                )
            );
            assert_eq!(
                run(ToolFormat::Mistral, small, n),
                (
                    String::new(),
                    vec![call("get_weather", r#"{"city":"Paris"}"#), with_id("now", "{}", "q1w2e3r4t")]
                )
            );
            // Text before the calls stays; a body that does not parse stays as written.
            let (content, calls) = run(ToolFormat::Mistral, "Sure.[TOOL_CALLS]oops[ARGS]{broken", n);
            assert_eq!((content.as_str(), calls.len()), ("Sure.[TOOL_CALLS]oops[ARGS]{broken", 0));
            assert_eq!(
                run(ToolFormat::Mistral, "{\"a\": [1]} [x]", n),
                ("{\"a\": [1]} [x]".to_string(), vec![])
            );
            let one = "[TOOL_CALLS]{\"name\": \"now\", \"arguments\": {}}";
            assert_eq!(run(ToolFormat::Mistral, one, n), (String::new(), vec![call("now", "{}")]));
        }
    }

    #[test]
    fn hermes_calls_in_any_split() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 2}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>\n";
        for n in 1..12 {
            let (content, calls) = run(ToolFormat::Hermes, text, n);
            assert_eq!(content, "Let me check.", "split {n}");
            assert_eq!(calls, vec![call("get_weather", r#"{"city":"Paris","days":2}"#), call("now", "{}")]);
        }
    }

    #[test]
    fn hermes_leaves_text_that_is_not_a_call() {
        for n in [1, 3, 100] {
            let (content, calls) = run(ToolFormat::Hermes, "a <tool_call>not json</tool_call> b <tool_", n);
            assert_eq!(content, "a <tool_call>not json</tool_call> b <tool_");
            assert!(calls.is_empty());
            let (content, calls) = run(ToolFormat::Hermes, "x < y and <tool", n);
            assert_eq!((content.as_str(), calls.len()), ("x < y and <tool", 0));
        }
        // Text after a call is kept, with the whitespace before it.
        let (content, calls) = run(
            ToolFormat::Hermes,
            "<tool_call>{\"name\":\"f\",\"arguments\":\"{\\\"a\\\":1}\"}</tool_call>\nDone.",
            4,
        );
        assert_eq!((content.as_str(), calls), ("\nDone.", vec![call("f", r#"{"a":1}"#)]));
    }

    #[test]
    fn hermes_bare_object_naming_a_tool() {
        let text = "\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}";
        for n in [1, 5, 100] {
            let (content, calls) = run(ToolFormat::Hermes, text, n);
            assert_eq!((content.as_str(), calls), ("", vec![call("get_weather", r#"{"city":"Paris"}"#)]));
        }
        // Not a call: another name, no arguments (a key would be lost), keys a call lacks.
        for text in [
            "{\"name\": \"Ada\", \"arguments\": {}}",
            "{\"a\": 1} and more",
            "{\"name\": \"get_weather\", \"city\": \"Paris\"}",
            "{\"name\": \"get_weather\", \"arguments\": {}, \"note\": \"x\"}",
        ] {
            assert_eq!(run(ToolFormat::Hermes, text, 4), (text.to_string(), vec![]));
        }
    }

    #[test]
    fn whitespace_around_calls_is_dropped_and_kept_otherwise() {
        let text = "\n\n<tool_call>{\"name\": \"now\"}</tool_call>\n";
        for n in [1, 3, 100] {
            assert_eq!(run(ToolFormat::Hermes, text, n), (String::new(), vec![call("now", "{}")]));
            assert_eq!(run(ToolFormat::Hermes, "  \n ", n), ("  \n ".to_string(), vec![]));
            assert_eq!(run(ToolFormat::Hermes, "\nHi\n\nthere ", n), ("\nHi\n\nthere ".to_string(), vec![]));
        }
    }

    #[test]
    fn hermes_unclosed_call_at_the_end() {
        let (content, calls) =
            run(ToolFormat::Hermes, "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": [1, 2]}}", 5);
        assert_eq!((content.as_str(), calls), ("", vec![call("f", r#"{"x":[1,2]}"#)]));
        let (content, calls) = run(ToolFormat::Hermes, "<tool_call>\n{\"name\": \"f\", \"argu", 5);
        assert_eq!((content.as_str(), calls.len()), ("<tool_call>\n{\"name\": \"f\", \"argu", 0));
    }

    #[test]
    fn llama3_json_answer() {
        let text = " {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}";
        for n in [1, 2, 7, 100] {
            let (content, calls) = run(ToolFormat::Llama3Json, text, n);
            assert_eq!((content.as_str(), calls), ("", vec![call("get_weather", r#"{"city":"Paris"}"#)]));
        }
        let (content, calls) = run(ToolFormat::Llama3Json, "{\"answer\": 4}", 3);
        assert_eq!((content.as_str(), calls.len()), ("{\"answer\": 4}", 0));
        // Only an offered tool's name makes a bare object a call.
        let other = "{\"name\": \"Ada\", \"parameters\": {\"born\": 1815}}";
        assert_eq!(run(ToolFormat::Llama3Json, other, 3), (other.to_string(), vec![]));
        let (content, calls) = run(ToolFormat::Llama3Json, "The answer is {4}.", 3);
        assert_eq!((content.as_str(), calls.len()), ("The answer is {4}.", 0));
    }

    #[test]
    fn xml_calls_typed_by_the_schema() {
        let tools = vec![
            ToolSpec::from_openai(
                &serde_json::json!({"type": "function", "function": {"name": "get_weather",
                "parameters": {"type": "object", "properties": {
                    "city": {"type": "string"}, "days": {"type": "integer"}, "zip": {"type": "string"},
                    "metric": {"type": "boolean"}, "at": {"type": ["array", "null"]},
                    "opts": {"type": "object"}, "note": {"description": "no type"}}}}}),
            )
            .unwrap(),
            ToolSpec::named("now"),
        ];
        let text = "I'll check.\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nNew York\n</parameter>\n<parameter=days>\n3\n</parameter>\n<parameter=zip>\n0042\n</parameter>\n<parameter=metric>\nTrue\n</parameter>\n<parameter=at>\n[1, 2]\n</parameter>\n<parameter=opts>\n{\"a\": {\"b\": null}}\n</parameter>\n<parameter=note>\n  two\nlines \n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=now>\n</function>\n</tool_call>";
        for n in [1, 3, 7, 1000] {
            let (content, calls) = run_with(ToolFormat::Xml, tools.clone(), text, n);
            assert_eq!(content, "I'll check.");
            assert_eq!(calls.len(), 2, "split {n}");
            let args: Value = serde_json::from_str(&calls[0].arguments).unwrap();
            assert_eq!(
                args,
                serde_json::json!({"city": "New York", "days": 3, "zip": "0042", "metric": true,
                    "at": [1, 2], "opts": {"a": {"b": null}}, "note": "  two\nlines "})
            );
            assert_eq!((calls[0].name.as_str(), calls[1].clone()), ("get_weather", call("now", "{}")));
        }
    }

    #[test]
    fn xml_calls_without_closing_tags_or_with_bad_values() {
        let tools = vec![ToolSpec::from_openai(&serde_json::json!({"function": {"name": "f",
            "parameters": {"properties": {"n": {"type": "integer"}, "s": {"type": "string"},
                "opt": {"anyOf": [{"type": "integer"}, {"type": "null"}]}}}}}))
        .unwrap()];
        let parse = |t: &str| {
            parse_xml_calls(t, &tools).map(|c| c.into_iter().map(|c| c.arguments).collect::<Vec<_>>())
        };
        // Unclosed parameters end at the next one; an unclosed function at the end.
        let args = parse("<function=f>\n<parameter=n>\n7\n<parameter=s>\nx</parameter>").unwrap();
        assert_eq!(args, [r#"{"n":7,"s":"x"}"#]);
        // A value that is not the schema's type stays as written; `anyOf` types count.
        let args = parse("<function=f><parameter=n>seven</parameter><parameter=opt>3</parameter></function>");
        assert_eq!(args.unwrap(), [r#"{"n":"seven","opt":3}"#]);
        // Values may hold markup: only a closing tag before the next element ends them.
        let code = "<function=f>\n<parameter=s>\nx = \"<parameter=y>\" + \"</parameter>\" + \"</function>\"\n</parameter>\n</function>";
        let args = parse(code).unwrap();
        let v: Value = serde_json::from_str(&args[0]).unwrap();
        assert_eq!(v["s"], "x = \"<parameter=y>\" + \"</parameter>\" + \"</function>\"");
        // Two functions in one block.
        let two =
            parse("<function=f>\n<parameter=n>\n1\n</parameter>\n</function>\n<function=g>\n</function>")
                .unwrap();
        assert_eq!(two, [r#"{"n":1}"#, "{}"]);
        // A tool not offered: every value is text.
        let c = parse_xml_calls("<function=g><parameter=n>1</parameter></function>", &tools).unwrap();
        assert_eq!((c[0].name.as_str(), c[0].arguments.as_str()), ("g", r#"{"n":"1"}"#));
        // Not calls: no function, a name with spaces, text after the function, stray text.
        for t in [
            "<parameter=n>1</parameter>",
            "<function=a b></function>",
            "<function=f></function> and more",
            "<function=f>\nhello\n</function>",
            "",
        ] {
            assert_eq!(parse(t), None, "{t}");
        }
        // Through the parser, a body that does not parse stays as content, tags included.
        let bad = "<tool_call>\n<function=f>\nhello\n</function>\n</tool_call>";
        assert_eq!(run(ToolFormat::Xml, bad, 4), (bad.to_string(), vec![]));
        // JSON inside the tags is taken too.
        let (content, calls) =
            run(ToolFormat::Xml, "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>", 4);
        assert_eq!((content.as_str(), calls), ("", vec![call("f", "{}")]));
        // A `</tool_call>` inside a value does not end the call; a function without its
        // `<tool_call>` is a call; text around both stays.
        let text = "<tool_call>\n<function=f>\n<parameter=s>\na</tool_call>b\n</parameter>\n</function>\n</tool_call>\
                    Then <function=now>\n</function> done.";
        for n in [1, 3, 1000] {
            let (content, calls) = run(ToolFormat::Xml, text, n);
            assert_eq!(content, "Then done.", "split {n}");
            assert_eq!(calls, vec![call("f", r#"{"s":"a</tool_call>b"}"#), call("now", "{}")], "split {n}");
        }
    }

    #[test]
    fn formats_from_real_templates() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/chat-templates");
        let Ok(_) = std::fs::metadata(&dir) else { return };
        for (file, want) in [
            ("Qwen-Qwen2.5-7B-Instruct.jinja", ToolFormat::Hermes),
            ("Qwen-Qwen3-0.6B.jinja", ToolFormat::Hermes),
            ("NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja", ToolFormat::Hermes),
            ("meta-llama-Llama-3.1-8B-Instruct.jinja", ToolFormat::Llama3Json),
            ("meta-llama-Llama-3.2-3B-Instruct.jinja", ToolFormat::Llama3Json),
            ("meta-llama-Llama-3.3-70B-Instruct.jinja", ToolFormat::Llama3Json),
            ("mistralai-Mistral-Nemo-Instruct-2407.jinja", ToolFormat::Mistral),
            ("Mistral-Small-3.2-24B-Instruct-2506.jinja", ToolFormat::Mistral),
            ("unsloth-mistral-Devstral-Small-2507.jinja", ToolFormat::Mistral),
            ("Qwen3-Coder.jinja", ToolFormat::Xml),
            ("Qwen3.5-4B.jinja", ToolFormat::Xml),
            ("NVIDIA-Nemotron-3-Nano-30B-A3B-BF16.jinja", ToolFormat::Xml),
            ("StepFun3.5-Flash.jinja", ToolFormat::Xml),
        ] {
            let src = std::fs::read_to_string(dir.join(file)).unwrap();
            assert_eq!(ToolFormat::detect(&src), want, "{file}");
        }
    }
}
