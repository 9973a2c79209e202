//! The OpenAI wire format: request bodies parsed strictly (wrong types and out-of-range
//! values are 400s, never ignored), engine requests built from them, and responses — whole or
//! as SSE chunks — assembled from the engine's events.

use ferrite::loader::chat::ChatRequest;
use ferrite::reasoning::{ReasoningFormat, ReasoningSplitter};
use ferrite::tool_calls::{ToolCallParser, ToolFormat, ToolSpec};
use ferrite::{BatchRequest, EngineError, FinishReason, Prompter, SamplerParams, SeqEvent, TokenEvent};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// An error as OpenAI's API reports it.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// `error.type`.
    pub kind: &'static str,
    /// `error.code`.
    pub code: Option<&'static str>,
    /// `error.param`.
    pub param: Option<String>,
    /// `error.message`.
    pub message: String,
}

impl ApiError {
    /// 400 invalid_request_error.
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            kind: "invalid_request_error",
            code: None,
            param: None,
            message: message.into(),
        }
    }

    /// 400 about one parameter.
    pub fn param(param: &str, message: impl Into<String>) -> Self {
        ApiError { param: Some(param.into()), ..Self::invalid(message) }
    }

    /// The error body.
    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }

    /// An engine error, with the status it deserves.
    pub fn from_engine(e: EngineError) -> Self {
        match e {
            EngineError::ContextOverflow { .. } => ApiError {
                code: Some("context_length_exceeded"),
                param: Some("messages".into()),
                ..Self::invalid(e.to_string())
            },
            EngineError::Overloaded { .. } => ApiError {
                status: 429,
                kind: "rate_limit_error",
                code: Some("server_busy"),
                param: None,
                message: e.to_string(),
            },
            EngineError::BackendUnavailable { .. } => ApiError {
                status: 503,
                kind: "server_error",
                code: Some("engine_unavailable"),
                param: None,
                message: e.to_string(),
            },
            EngineError::Invalid(_) | EngineError::BadToken { .. } | EngineError::Template(_) => {
                Self::invalid(e.to_string())
            }
            _ => ApiError {
                status: 500,
                kind: "server_error",
                code: None,
                param: None,
                message: e.to_string(),
            },
        }
    }
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Fields shared by both endpoints.
#[derive(Debug, Default, Deserialize)]
pub struct Common {
    model: Option<String>,
    max_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i64>,
    min_p: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
    seed: Option<i64>,
    stop: Option<Value>,
    n: Option<i64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    response_format: Option<Value>,
    ignore_eos: Option<bool>,
    /// Refused unless empty: not applied yet, and never silently ignored.
    logit_bias: Option<Value>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatBody {
    messages: Vec<Value>,
    #[serde(flatten)]
    common: Common,
    max_completion_tokens: Option<i64>,
    logprobs: Option<bool>,
    top_logprobs: Option<i64>,
    tools: Option<Value>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
    chat_template_kwargs: Option<Map<String, Value>>,
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionBody {
    prompt: Value,
    #[serde(flatten)]
    common: Common,
    logprobs: Option<i64>,
    echo: Option<bool>,
    suffix: Option<Value>,
    best_of: Option<i64>,
}

/// Parses a JSON body into `T`, with OpenAI-style 400s.
pub fn parse<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::invalid(format!("invalid request body: {e}")))
}

/// Which endpoint a response is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Chat completions.
    Chat,
    /// Text completions.
    Completion,
}

/// A validated request, ready for the engine.
#[derive(Debug)]
pub struct Plan {
    /// The endpoint.
    pub kind: Kind,
    /// One engine request per choice.
    pub seqs: Vec<BatchRequest>,
    /// Prompt tokens per distinct prompt (usage counts each once).
    pub prompt_tokens: usize,
    /// Stream as SSE.
    pub stream: bool,
    /// Send a usage chunk at the end of a stream.
    pub include_usage: bool,
    /// Top log-probabilities wanted (None: no logprobs).
    pub logprobs: Option<usize>,
    /// The rendered prompt of each choice (reasoning detection).
    pub prompts: Vec<String>,
    /// The model's name as the request gave it.
    pub model: String,
    /// Tool calls are parsed out of the content (the request offered tools).
    pub tools: Option<ToolFormat>,
    /// The offered tools.
    pub tool_specs: Vec<ToolSpec>,
}

/// What the server knows when it plans a request.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The model's public id.
    pub model_id: String,
    /// The file name, also accepted as the model.
    pub file_name: String,
    /// Context length.
    pub ctx: usize,
    /// Reasoning output split.
    pub reasoning: ReasoningFormat,
}

fn check_model(c: &Ctx, model: &Option<String>) -> Result<String, ApiError> {
    match model.as_deref() {
        None | Some("") => Ok(c.model_id.clone()),
        Some(m) if m == c.model_id || m == c.file_name => Ok(m.to_string()),
        Some(m) => Err(ApiError {
            status: 404,
            kind: "invalid_request_error",
            code: Some("model_not_found"),
            param: Some("model".into()),
            message: format!("The model `{m}` does not exist. This server serves `{}`.", c.model_id),
        }),
    }
}

fn stop_strings(v: &Option<Value>) -> Result<Vec<String>, ApiError> {
    let list = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str().map(str::to_string).ok_or_else(|| ApiError::param("stop", "stop must be strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ApiError::param("stop", "stop must be a string or a list of strings")),
    };
    if list.len() > 16 || list.iter().any(|s| s.len() > 1024) {
        return Err(ApiError::param("stop", "at most 16 stop strings of at most 1024 bytes"));
    }
    Ok(list)
}

fn sampler(c: &Common) -> Result<SamplerParams, ApiError> {
    let t = c.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&t) {
        return Err(ApiError::param("temperature", "temperature must be between 0 and 2"));
    }
    let top_p = c.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::param("top_p", "top_p must be in (0, 1]"));
    }
    let min_p = c.min_p.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&min_p) {
        return Err(ApiError::param("min_p", "min_p must be in [0, 1]"));
    }
    let top_k = c.top_k.unwrap_or(0);
    if top_k < 0 {
        return Err(ApiError::param("top_k", "top_k must be 0 (off) or positive"));
    }
    for (name, v) in [("presence_penalty", c.presence_penalty), ("frequency_penalty", c.frequency_penalty)] {
        if v.is_some_and(|v| !(-2.0..=2.0).contains(&v)) {
            return Err(ApiError::param(name, format!("{name} must be between -2 and 2")));
        }
    }
    let rep = c.repetition_penalty.unwrap_or(1.0);
    if !(rep > 0.0 && rep.is_finite()) {
        return Err(ApiError::param("repetition_penalty", "repetition_penalty must be positive"));
    }
    let seed = match c.seed {
        Some(s) => s as u64,
        None => {
            use std::time::{SystemTime, UNIX_EPOCH};
            static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
            now ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, std::sync::atomic::Ordering::Relaxed)
        }
    };
    Ok(SamplerParams {
        temperature: t,
        top_k: top_k as usize,
        top_p,
        min_p,
        repeat_penalty: rep,
        presence_penalty: c.presence_penalty.unwrap_or(0.0),
        frequency_penalty: c.frequency_penalty.unwrap_or(0.0),
        penalty_last_n: 64,
        seed,
        n_logprobs: 0,
    })
}

fn json_mode(v: &Option<Value>) -> Result<bool, ApiError> {
    let Some(v) = v else { return Ok(false) };
    match v.get("type").and_then(Value::as_str) {
        Some("text") => Ok(false),
        Some("json_object") => Ok(true),
        Some("json_schema") => Err(ApiError::param(
            "response_format",
            "response_format json_schema is not supported yet; use {\"type\": \"json_object\"}",
        )),
        _ => Err(ApiError::param("response_format", "response_format.type must be text or json_object")),
    }
}

/// Builds the engine requests for `prompts` (token lists) under the shared options.
#[allow(clippy::too_many_arguments)]
fn plan(
    c: &Ctx,
    kind: Kind,
    common: &Common,
    max_tokens: Option<(i64, &'static str)>,
    prompts: Vec<(String, Vec<u32>)>,
    logprobs: Option<usize>,
) -> Result<Plan, ApiError> {
    let model = check_model(c, &common.model)?;
    let n = common.n.unwrap_or(1);
    if !(1..=16).contains(&n) {
        return Err(ApiError::param("n", "n must be between 1 and 16"));
    }
    if let Some((m, param)) = max_tokens {
        if m <= 0 {
            return Err(ApiError::param(param, format!("{param} must be at least 1")));
        }
    }
    if common.logit_bias.as_ref().is_some_and(|b| !(b.is_null() || b.as_object().is_some_and(Map::is_empty)))
    {
        return Err(ApiError::param("logit_bias", "logit_bias is not supported"));
    }
    if common.stream_options.is_some() && common.stream != Some(true) {
        return Err(ApiError::param("stream_options", "stream_options is only allowed when stream is true"));
    }
    let stop = stop_strings(&common.stop)?;
    let json = json_mode(&common.response_format)?;
    if json && !stop.is_empty() {
        // A stop string could end the object before it closes: the output must parse.
        return Err(ApiError::param(
            "stop",
            "stop cannot be combined with response_format json_object (generation ends when the object closes)",
        ));
    }
    let mut base = sampler(common)?;
    base.n_logprobs = logprobs.unwrap_or(0);
    let mut seqs = Vec::new();
    let mut texts = Vec::new();
    let mut prompt_tokens = 0;
    for (text, tokens) in prompts {
        if tokens.is_empty() {
            return Err(ApiError::invalid("the prompt is empty"));
        }
        let room = c.ctx.saturating_sub(tokens.len());
        let max = match max_tokens {
            Some((m, param)) if tokens.len() + m as usize > c.ctx => {
                return Err(ApiError {
                    code: Some("context_length_exceeded"),
                    ..ApiError::param(
                        param,
                        format!(
                        "This model's maximum context length is {} tokens. However, you requested {} tokens \
                             ({} in the prompt, {m} for the completion).",
                        c.ctx,
                        tokens.len() + m as usize,
                        tokens.len()
                    ),
                    )
                })
            }
            Some((m, _)) => m as usize,
            None => room,
        };
        if room == 0 {
            return Err(ApiError::from_engine(EngineError::ContextOverflow {
                prompt: tokens.len(),
                ctx: c.ctx,
            }));
        }
        prompt_tokens += tokens.len();
        for i in 0..n as u64 {
            let mut s = base.clone();
            s.seed = s.seed.wrapping_add(i);
            seqs.push(BatchRequest {
                prompt: tokens.clone(),
                max_tokens: max,
                sampler: s,
                stop: stop.clone(),
                ignore_eos: common.ignore_eos.unwrap_or(false),
                json_object: json,
                keep_tokens: Vec::new(),
            });
            texts.push(text.clone());
        }
    }
    Ok(Plan {
        kind,
        seqs,
        prompt_tokens,
        stream: common.stream.unwrap_or(false),
        include_usage: common.stream_options.as_ref().is_some_and(|o| o.include_usage),
        logprobs,
        prompts: texts,
        model,
        tools: None,
        tool_specs: Vec::new(),
    })
}

/// Plans a chat request: messages normalised (content parts joined), template rendered.
pub fn plan_chat(c: &Ctx, p: &Prompter, body: ChatBody) -> Result<Plan, ApiError> {
    if body.messages.is_empty() {
        return Err(ApiError::param("messages", "messages must not be empty"));
    }
    let mut messages = Vec::with_capacity(body.messages.len());
    for (i, m) in body.messages.into_iter().enumerate() {
        let Value::Object(mut m) = m else {
            return Err(ApiError::param("messages", format!("messages[{i}] must be an object")));
        };
        if !m.get("role").is_some_and(Value::is_string) {
            return Err(ApiError::param("messages", format!("messages[{i}].role must be a string")));
        }
        let content = match m.remove("content") {
            None | Some(Value::Null) => Value::Null,
            Some(Value::String(s)) => Value::String(s),
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for part in parts {
                    match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str))
                    {
                        (Some("text"), Some(t)) => text.push_str(t),
                        (Some(t), _) => {
                            return Err(ApiError::param(
                                "messages",
                                format!(
                                "messages[{i}]: content parts of type {t:?} are not supported (text only)"
                            ),
                            ))
                        }
                        _ => {
                            return Err(ApiError::param(
                                "messages",
                                format!("messages[{i}]: malformed content part"),
                            ))
                        }
                    }
                }
                Value::String(text)
            }
            Some(_) => {
                return Err(ApiError::param(
                    "messages",
                    format!("messages[{i}].content must be a string or parts"),
                ))
            }
        };
        m.insert("content".into(), content);
        match m.get("tool_calls") {
            None | Some(Value::Null) => {}
            Some(calls) => check_tool_calls(i, calls)?,
        }
        messages.push(Value::Object(m));
    }
    let tools = tool_plan(&body.tools, &body.tool_choice, body.parallel_tool_calls)?;
    if tools && json_mode(&body.common.response_format)? {
        return Err(ApiError::param(
            "response_format",
            "response_format json_object cannot be combined with tools: the answer is constrained to \
             one JSON object, so no tool call could be written (or set tool_choice \"none\")",
        ));
    }
    let logprobs = match (body.logprobs.unwrap_or(false), body.top_logprobs) {
        (_, Some(k)) if !(0..=20).contains(&k) => {
            return Err(ApiError::param("top_logprobs", "top_logprobs must be between 0 and 20"))
        }
        (true, k) => Some(k.unwrap_or(0) as usize),
        (false, Some(k)) if k > 0 => {
            return Err(ApiError::param("top_logprobs", "top_logprobs needs logprobs: true"))
        }
        (false, _) => None,
    };
    let specs = if tools { tool_specs(&body.tools) } else { Vec::new() };
    let mut req = ChatRequest::new(messages);
    req.add_generation_prompt = true;
    if tools {
        req.tools = body.tools;
    }
    if let Some(kw) = body.chat_template_kwargs {
        req.extra = kw;
    }
    let text = render_chat(p, req)?;
    let tokens = p.tokenize(&text);
    // As OpenAI's API: max_completion_tokens replaces the deprecated max_tokens.
    let max = (body.max_completion_tokens.map(|m| (m, "max_completion_tokens")))
        .or(body.common.max_tokens.map(|m| (m, "max_tokens")));
    let mut plan = plan(c, Kind::Chat, &body.common, max, vec![(text, tokens)], logprobs)?;
    plan.tools = tools.then(|| p.tool_format());
    // Thinking tags (where the reasoning is split out) and tool-call markers stay in the text.
    let mut keep = if c.reasoning == ReasoningFormat::None { Vec::new() } else { p.think_tokens() };
    keep.extend(plan.tools.map(|f| p.tool_tokens(f)).unwrap_or_default());
    let stops = p.chat_stops();
    for s in &mut plan.seqs {
        s.keep_tokens = keep.clone();
        // (A JSON answer ends where its object closes.)
        if !s.json_object {
            s.stop.extend(stops.iter().cloned());
        }
    }
    plan.tool_specs = specs;
    Ok(plan)
}

/// A tool call's id: Mistral's own where it wrote a usable one (9 alphanumerics, not yet
/// used in this answer), else a fresh one; Mistral's templates check for 9 characters when
/// the call comes back in the conversation, so its fresh ids are 9 alphanumerics.
fn call_id(format: ToolFormat, given: Option<String>, taken: &[Value]) -> String {
    let mistral = format == ToolFormat::Mistral;
    match given {
        Some(id)
            if mistral
                && id.len() == 9
                && id.bytes().all(|b| b.is_ascii_alphanumeric())
                && !taken.iter().any(|c| c["id"] == id.as_str()) =>
        {
            id
        }
        _ if mistral => {
            const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
            let mut r = super::rand_id();
            (0..9)
                .map(|_| {
                    let c = ALNUM[(r % 62) as usize] as char;
                    r /= 62;
                    c
                })
                .collect()
        }
        _ => format!("call_{:016x}{:08x}", super::rand_id(), super::rand_id() as u32),
    }
}

/// The offered tools of checked `tools`.
fn tool_specs(tools: &Option<Value>) -> Vec<ToolSpec> {
    let list = tools.as_ref().and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    list.iter().filter_map(ToolSpec::from_openai).collect()
}

/// Checks `tools`, `tool_choice` and `parallel_tool_calls`; true when the model is offered
/// the tools (and its calls are parsed out of the answer).
fn tool_plan(
    tools: &Option<Value>,
    choice: &Option<Value>,
    parallel: Option<bool>,
) -> Result<bool, ApiError> {
    let list = match tools {
        None | Some(Value::Null) => &Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::param("tools", "tools must be an array")),
    };
    for (i, t) in list.iter().enumerate() {
        let name = t.get("function").and_then(|f| f.get("name")).and_then(Value::as_str);
        if t.get("type").and_then(Value::as_str) != Some("function") || name.is_none_or(str::is_empty) {
            return Err(ApiError::param(
                "tools",
                format!("tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": …}}}}"),
            ));
        }
    }
    if parallel == Some(false) {
        return Err(ApiError::param(
            "parallel_tool_calls",
            "parallel_tool_calls: false is not supported (the model's calls are not constrained)",
        ));
    }
    match choice {
        None | Some(Value::Null) => Ok(!list.is_empty()),
        Some(Value::String(s)) if s == "auto" => Ok(!list.is_empty()),
        Some(Value::String(s)) if s == "none" => Ok(false),
        Some(Value::String(s)) if s == "required" => Err(ApiError::param(
            "tool_choice",
            "tool_choice \"required\" is not supported yet (calls are not constrained); use \"auto\"",
        )),
        Some(Value::Object(_)) => Err(ApiError::param(
            "tool_choice",
            "a named tool_choice is not supported yet (calls are not constrained); use \"auto\"",
        )),
        Some(_) => {
            Err(ApiError::param("tool_choice", "tool_choice must be \"none\", \"auto\" or \"required\""))
        }
    }
}

/// An assistant message's `tool_calls`: an array of `{"function": {"name": …}}` objects.
fn check_tool_calls(i: usize, calls: &Value) -> Result<(), ApiError> {
    let ok = calls.as_array().is_some_and(|a| {
        a.iter().all(|c| c.get("function").and_then(|f| f.get("name")).is_some_and(Value::is_string))
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::param(
            "messages",
            format!("messages[{i}].tool_calls must be an array of function calls"),
        ))
    }
}

/// Past calls' `function.arguments` (JSON strings in the API) as the objects they encode.
/// Returns false when there was nothing to convert.
fn arguments_as_objects(messages: &mut [Value]) -> bool {
    let mut changed = false;
    let calls = messages.iter_mut().filter_map(|m| m.get_mut("tool_calls")?.as_array_mut()).flatten();
    for f in calls.filter_map(|c| c.get_mut("function")?.as_object_mut()) {
        if let Some(Value::String(a)) = f.get("arguments") {
            if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(a) {
                f.insert("arguments".into(), v);
                changed = true;
            }
        }
    }
    changed
}

/// Renders a chat, adapting tool-call turns to what the template can read, as llama.cpp
/// does: past calls' arguments as objects first (most templates write `arguments | tojson`
/// or iterate `arguments | items`), else as the strings the API sent (templates that join
/// them as text, e.g. DeepSeek-R1's); then, for templates written without tools in mind
/// that join a null `content`, with null contents as "".
fn render_chat(p: &Prompter, mut req: ChatRequest) -> Result<String, ApiError> {
    let original = req.messages.clone();
    if arguments_as_objects(&mut req.messages) {
        if let Ok(t) = p.apply_chat_template(&req) {
            return Ok(t);
        }
        req.messages = original;
    }
    let err = match p.apply_chat_template(&req) {
        Ok(t) => return Ok(t),
        Err(e) => e,
    };
    let mut blanked = false;
    for c in req.messages.iter_mut().filter_map(|m| m.get_mut("content")).filter(|c| c.is_null()) {
        *c = Value::String(String::new());
        blanked = true;
    }
    if !blanked {
        return Err(ApiError::from_engine(err));
    }
    p.apply_chat_template(&req).map_err(ApiError::from_engine)
}

/// Plans a completions request: a string, a list of strings, a token list or lists of them.
pub fn plan_completion(c: &Ctx, p: &Prompter, body: CompletionBody) -> Result<Plan, ApiError> {
    if body.echo == Some(true) {
        return Err(ApiError::param("echo", "echo is not supported"));
    }
    if body.suffix.as_ref().is_some_and(|s| !s.is_null()) {
        return Err(ApiError::param("suffix", "suffix is not supported"));
    }
    if body.best_of.is_some_and(|b| b != 1) {
        return Err(ApiError::param("best_of", "best_of is not supported (use n)"));
    }
    let logprobs = match body.logprobs {
        Some(k) if !(0..=20).contains(&k) => {
            return Err(ApiError::param("logprobs", "logprobs must be between 0 and 20"))
        }
        k => k.map(|k| k as usize),
    };
    let ids = |v: &[Value]| -> Option<Vec<u32>> {
        v.iter().map(|x| x.as_u64().and_then(|t| u32::try_from(t).ok())).collect()
    };
    let bad = || ApiError::param("prompt", "prompt must be a string, a list of strings, or token ids");
    let prompts: Vec<(String, Vec<u32>)> = match &body.prompt {
        Value::String(s) => vec![(s.clone(), p.tokenize(s))],
        Value::Array(a) if a.is_empty() => return Err(ApiError::param("prompt", "the prompt is empty")),
        Value::Array(a) if a.iter().all(Value::is_string) => {
            a.iter().map(|s| s.as_str().unwrap_or_default()).map(|s| (s.to_string(), p.tokenize(s))).collect()
        }
        Value::Array(a) if a.iter().all(Value::is_number) => {
            let t = ids(a).ok_or_else(bad)?;
            vec![(p.tokenizer().detokenize(&t, true), t)]
        }
        Value::Array(a) if a.iter().all(Value::is_array) => a
            .iter()
            .map(|x| {
                let t = ids(x.as_array().map_or(&[][..], Vec::as_slice)).ok_or_else(bad)?;
                Ok((p.tokenizer().detokenize(&t, true), t))
            })
            .collect::<Result<_, ApiError>>()?,
        _ => return Err(bad()),
    };
    let n_vocab = p.tokenizer().n_vocab();
    if prompts.iter().flat_map(|(_, t)| t).any(|&t| t as usize >= n_vocab) {
        return Err(ApiError::param("prompt", format!("token ids must be below {n_vocab}")));
    }
    let common = &body.common;
    plan(
        c,
        Kind::Completion,
        common,
        Some((common.max_tokens.unwrap_or(16), "max_tokens")),
        prompts,
        logprobs,
    )
}

/// One choice being assembled.
#[derive(Debug)]
pub struct Choice {
    content: String,
    reasoning: String,
    splitter: ReasoningSplitter,
    /// Present when the request offered tools.
    tools: Option<ToolCallParser>,
    /// Parsed calls, as the response's `message.tool_calls` lists them.
    tool_calls: Vec<Value>,
    tokens: usize,
    cached: usize,
    logprobs: Vec<Value>,
    /// Completions-style logprobs: tokens, their logprobs, tops, offsets.
    tokens_text: Vec<String>,
    token_logprobs: Vec<f32>,
    top: Vec<Value>,
    offsets: Vec<usize>,
    finish: Option<&'static str>,
    /// A failure message, if the engine failed this choice.
    pub error: Option<String>,
}

/// Text deltas produced by one event.
#[derive(Debug, Default)]
pub struct Delta {
    /// Reasoning text.
    pub reasoning: String,
    /// Answer text.
    pub content: String,
    /// Tool calls completed by this event (streaming `delta.tool_calls` entries).
    pub tool_calls: Vec<Value>,
    /// This token's logprob entry (chat format) or (completions format) its pieces.
    pub logprobs: Option<Value>,
    /// The finish reason, on the last event.
    pub finish: Option<&'static str>,
}

/// Assembles the response of one request from its events.
#[derive(Debug)]
pub struct Assembler {
    /// The plan.
    pub plan_kind: Kind,
    /// Choices.
    pub choices: Vec<Choice>,
    logprobs: Option<usize>,
    prompter: Prompter,
}

fn piece(p: &Prompter, id: u32) -> (String, Vec<u8>) {
    let bytes = p.tokenizer().token_to_piece(id, true).to_vec();
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

impl Assembler {
    /// An assembler for a plan.
    pub fn new(plan: &Plan, prompter: Prompter, reasoning: ReasoningFormat) -> Self {
        let reasoning = if plan.kind == Kind::Chat { reasoning } else { ReasoningFormat::None };
        Assembler {
            plan_kind: plan.kind,
            choices: plan
                .prompts
                .iter()
                .map(|p| {
                    let tags = prompter.think_tags();
                    let mut c = Choice::new(ReasoningSplitter::with_tags(reasoning, p, tags));
                    c.tools = plan.tools.map(|f| ToolCallParser::new(f, plan.tool_specs.clone()));
                    c
                })
                .collect(),
            logprobs: plan.logprobs,
            prompter,
        }
    }

    fn token_logprobs(&self, c: &mut Choice, t: &TokenEvent) -> Option<Value> {
        self.logprobs?;
        let (text, bytes) = piece(&self.prompter, t.id);
        match self.plan_kind {
            Kind::Chat => {
                let top: Vec<Value> = t
                    .top_logprobs
                    .iter()
                    .map(|&(id, lp)| {
                        let (s, b) = piece(&self.prompter, id);
                        json!({"token": s, "logprob": lp, "bytes": b})
                    })
                    .collect();
                let v = json!({"token": text, "logprob": t.logprob, "bytes": bytes, "top_logprobs": top});
                c.logprobs.push(v.clone());
                Some(v)
            }
            Kind::Completion => {
                let top: Map<String, Value> =
                    t.top_logprobs.iter().map(|&(id, lp)| (piece(&self.prompter, id).0, json!(lp))).collect();
                let offset = c.offsets.last().copied().unwrap_or(0)
                    + c.tokens_text.last().map_or(0, |s: &String| s.len());
                c.tokens_text.push(text.clone());
                c.token_logprobs.push(t.logprob);
                c.top.push(Value::Object(top.clone()));
                c.offsets.push(offset);
                Some(
                    json!({"tokens": [text], "token_logprobs": [t.logprob], "top_logprobs": [top], "text_offset": [offset]}),
                )
            }
        }
    }

    /// Takes one event of choice `i`; returns the deltas it produced.
    pub fn push(&mut self, i: usize, ev: SeqEvent) -> Delta {
        let placeholder = Choice::new(ReasoningSplitter::new(ReasoningFormat::None, ""));
        let mut c = std::mem::replace(&mut self.choices[i], placeholder);
        let mut d = Delta::default();
        let text = match ev {
            SeqEvent::Token(t) => {
                c.tokens += 1;
                d.logprobs = self.token_logprobs(&mut c, &t);
                t.text
            }
            SeqEvent::Done(done) => {
                c.cached = done.timings.prompt_cached;
                let reason = match done.finish_reason {
                    FinishReason::Stop => "stop",
                    FinishReason::Length => "length",
                };
                c.finish = Some(reason);
                let mut s = c.splitter.push(&done.text);
                let f = c.splitter.finish();
                s.reasoning += &f.reasoning;
                s.content += &f.content;
                c.reasoning += &s.reasoning;
                d.reasoning = s.reasoning;
                c.answer(&s.content, true, &mut d);
                d.finish = c.api_finish();
                self.choices[i] = c;
                return d;
            }
            SeqEvent::Failed(msg) => {
                c.error = Some(msg);
                c.finish = Some("error");
                d.finish = Some("error");
                self.choices[i] = c;
                return d;
            }
        };
        let s = c.splitter.push(&text);
        c.reasoning += &s.reasoning;
        d.reasoning = s.reasoning;
        c.answer(&s.content, false, &mut d);
        self.choices[i] = c;
        d
    }

    /// Whether every choice has ended.
    pub fn done(&self) -> bool {
        self.choices.iter().all(|c| c.finish.is_some())
    }

    /// The first failure, if any.
    pub fn failure(&self) -> Option<&str> {
        self.choices.iter().find_map(|c| c.error.as_deref())
    }

    /// `usage`.
    pub fn usage(&self, prompt_tokens: usize) -> Value {
        let completion: usize = self.choices.iter().map(|c| c.tokens).sum();
        let cached = self.choices.iter().map(|c| c.cached).max().unwrap_or(0);
        json!({
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        })
    }

    /// The whole (non-streaming) response body.
    pub fn response(&self, id: &str, created: u64, model: &str, prompt_tokens: usize) -> Value {
        let choices: Vec<Value> = self
            .choices
            .iter()
            .enumerate()
            .map(|(i, c)| match self.plan_kind {
                Kind::Chat => {
                    let mut msg = json!({"role": "assistant", "content": c.content});
                    if !c.reasoning.is_empty() {
                        msg["reasoning_content"] = json!(c.reasoning);
                    }
                    if !c.tool_calls.is_empty() {
                        // As OpenAI: no content beside the calls is null, not "".
                        if c.content.is_empty() {
                            msg["content"] = Value::Null;
                        }
                        msg["tool_calls"] = json!(c.tool_calls);
                    }
                    let lp = self.logprobs.map(|_| json!({"content": c.logprobs}));
                    json!({"index": i, "message": msg, "logprobs": lp, "finish_reason": c.api_finish()})
                }
                Kind::Completion => {
                    let lp = self.logprobs.map(|_| {
                        json!({"tokens": c.tokens_text, "token_logprobs": c.token_logprobs,
                               "top_logprobs": c.top, "text_offset": c.offsets})
                    });
                    json!({"index": i, "text": c.content, "logprobs": lp, "finish_reason": c.finish})
                }
            })
            .collect();
        json!({
            "id": id,
            "object": if self.plan_kind == Kind::Chat { "chat.completion" } else { "text_completion" },
            "created": created,
            "model": model,
            "system_fingerprint": concat!("ferrite-", env!("CARGO_PKG_VERSION")),
            "choices": choices,
            "usage": self.usage(prompt_tokens),
        })
    }

    /// One streaming chunk for choice `i` with delta `d` (None if it carries nothing).
    pub fn chunk(&self, i: usize, d: &Delta, first: bool, head: &Value) -> Option<Value> {
        let mut v = head.clone();
        let choice = match self.plan_kind {
            Kind::Chat => {
                let mut delta = Map::new();
                if first {
                    delta.insert("role".into(), json!("assistant"));
                }
                if !d.reasoning.is_empty() {
                    delta.insert("reasoning_content".into(), json!(d.reasoning));
                }
                if !d.content.is_empty() || (first && d.reasoning.is_empty()) {
                    delta.insert("content".into(), json!(d.content));
                }
                if !d.tool_calls.is_empty() {
                    delta.insert("tool_calls".into(), json!(d.tool_calls));
                }
                if delta.is_empty() && d.finish.is_none() && d.logprobs.is_none() {
                    return None;
                }
                let lp = d.logprobs.as_ref().map(|l| json!({"content": [l]}));
                json!({"index": i, "delta": delta, "logprobs": lp, "finish_reason": d.finish})
            }
            Kind::Completion => {
                if d.content.is_empty() && d.finish.is_none() && d.logprobs.is_none() {
                    return None;
                }
                json!({"index": i, "text": d.content, "logprobs": d.logprobs, "finish_reason": d.finish})
            }
        };
        v["choices"] = json!([choice]);
        Some(v)
    }
}

impl Choice {
    fn new(splitter: ReasoningSplitter) -> Self {
        Choice {
            content: String::new(),
            reasoning: String::new(),
            splitter,
            tools: None,
            tool_calls: Vec::new(),
            tokens: 0,
            cached: 0,
            logprobs: Vec::new(),
            tokens_text: Vec::new(),
            token_logprobs: Vec::new(),
            top: Vec::new(),
            offsets: Vec::new(),
            finish: None,
            error: None,
        }
    }

    /// `stop` or `length` once finished normally.
    pub fn finish_reason(&self) -> Option<&'static str> {
        self.finish.filter(|&f| f != "error")
    }

    /// The finish reason the API reports: `tool_calls` for an answer that stopped after
    /// calling tools.
    fn api_finish(&self) -> Option<&'static str> {
        match self.finish {
            Some("stop") if !self.tool_calls.is_empty() => Some("tool_calls"),
            f => f,
        }
    }

    /// Answer text (after the reasoning split) into the content, through the tool-call
    /// parser when tools were offered; `last` ends the answer.
    fn answer(&mut self, text: &str, last: bool, d: &mut Delta) {
        let Some(parser) = self.tools.as_mut() else {
            self.content += text;
            d.content = text.to_string();
            return;
        };
        let mut s = parser.push(text);
        if last {
            let f = parser.finish();
            s.content += &f.content;
            s.calls.extend(f.calls);
        }
        self.content += &s.content;
        d.content = s.content;
        let format = parser.format();
        for call in s.calls {
            let v = json!({
                "id": call_id(format, call.id, &self.tool_calls),
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            });
            let mut delta = v.clone();
            delta["index"] = json!(self.tool_calls.len());
            d.tool_calls.push(delta);
            self.tool_calls.push(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite::loader::chat::ChatTemplate;
    use ferrite::loader::tokenizer::Tokenizer;
    use ferrite::loader::GgufFile;
    use ferrite::text::TextStream;
    use ferrite::{DoneEvent, Timings};
    use std::path::PathBuf;

    /// SmolLM2's tokenizer with a template from shared/fixtures (None without the model).
    fn prompter(template: &str) -> Option<Prompter> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let model = root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
        if !model.exists() {
            eprintln!("skipped: {} is missing (scripts/fetch-models.sh)", model.display());
            return None;
        }
        let file = GgufFile::open(&model).unwrap();
        let tok = Tokenizer::from_metadata(file.metadata()).unwrap();
        let src =
            std::fs::read_to_string(root.join("../shared/fixtures/chat-templates").join(template)).unwrap();
        Some(Prompter::new(tok, ChatTemplate::new(&src, "", "<|im_end|>").unwrap()))
    }

    fn ctx() -> Ctx {
        Ctx {
            model_id: "m".into(),
            file_name: "m.gguf".into(),
            ctx: 4096,
            reasoning: ReasoningFormat::Deepseek,
        }
    }

    fn weather_request(extra: Value) -> ChatBody {
        let mut body = json!({
            "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "tools": [{"type": "function", "function": {"name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        });
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value(body).unwrap()
    }

    /// Streams `answer` as the engine would (token pieces, then the end); returns the
    /// assembler and the streamed chunks.
    fn generate(p: &Prompter, plan: &Plan, answer: &str) -> (Assembler, Vec<Value>) {
        let mut asm = Assembler::new(plan, p.clone(), ReasoningFormat::Deepseek);
        let mut text = TextStream::new(Vec::new());
        let head = json!({"id": "x"});
        let mut chunks = Vec::new();
        let ids = p.tokenizer().encode(answer, false, true);
        for (k, &id) in ids.iter().enumerate() {
            let (piece, _) = text.push(p.tokenizer(), id);
            let ev = TokenEvent { id, text: piece, logprob: -0.5, top_logprobs: Vec::new() };
            let d = asm.push(0, SeqEvent::Token(ev));
            chunks.extend(asm.chunk(0, &d, k == 0, &head));
        }
        let done =
            DoneEvent { finish_reason: FinishReason::Stop, text: text.finish(), timings: Timings::default() };
        let d = asm.push(0, SeqEvent::Done(done));
        chunks.extend(asm.chunk(0, &d, false, &head));
        (asm, chunks)
    }

    #[test]
    fn tool_calls_are_parsed_out_of_the_answer() {
        let Some(p) = prompter("Qwen-Qwen2.5-7B-Instruct.jinja") else { return };
        let plan = plan_chat(&ctx(), &p, weather_request(json!({}))).unwrap();
        assert_eq!(plan.tools, Some(ToolFormat::Hermes));
        assert!(plan.prompts[0].contains("\"name\": \"get_weather\""), "tools rendered: {}", plan.prompts[0]);
        let answer = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n\
                      <tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Lyon\"}}\n</tool_call>";
        let (asm, chunks) = generate(&p, &plan, answer);
        let r = asm.response("id", 0, "m", plan.prompt_tokens);
        let choice = &r["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], Value::Null);
        let calls = choice["message"]["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 2);
        for (c, city) in calls.iter().zip(["Paris", "Lyon"]) {
            assert_eq!(c["type"], "function");
            assert!(c["id"].as_str().unwrap().starts_with("call_"));
            assert_eq!(c["function"]["name"], "get_weather");
            let args: Value = serde_json::from_str(c["function"]["arguments"].as_str().unwrap()).unwrap();
            assert_eq!(args, json!({"city": city}));
        }
        assert_ne!(calls[0]["id"], calls[1]["id"]);
        // Streamed: no content text, each call once with its index, the same ids, then the reason.
        let deltas: Vec<&Value> = chunks.iter().map(|c| &c["choices"][0]["delta"]).collect();
        assert!(deltas.iter().all(|d| d.get("content").is_none_or(|c| c == "")), "{deltas:?}");
        let streamed: Vec<&Value> =
            deltas.iter().filter_map(|d| d.get("tool_calls")).flat_map(|t| t.as_array().unwrap()).collect();
        assert_eq!(streamed.len(), 2);
        for (k, s) in streamed.iter().enumerate() {
            assert_eq!(s["index"], k);
            assert_eq!(s["id"], calls[k]["id"]);
            assert_eq!(s["function"], calls[k]["function"]);
        }
        assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn xml_tool_calls_typed_and_rendered_back() {
        let Some(p) = prompter("Qwen3-Coder.jinja") else { return };
        let extra = json!({"tools": [{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {
                "city": {"type": "string"}, "days": {"type": "integer"}}}}}]});
        let plan = plan_chat(&ctx(), &p, weather_request(extra.clone())).unwrap();
        assert_eq!(plan.tools, Some(ToolFormat::Xml));
        assert!(plan.prompts[0].contains("<name>get_weather</name>"), "{}", plan.prompts[0]);
        let answer = "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n\
                      <parameter=days>\n2\n</parameter>\n</function>\n</tool_call>";
        let (asm, _) = generate(&p, &plan, answer);
        let msg = asm.response("id", 0, "m", 1)["choices"][0]["message"].clone();
        assert_eq!(msg["content"], Value::Null);
        let args: Value =
            serde_json::from_str(msg["tool_calls"][0]["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"city": "Paris", "days": 2}));
        // The call goes back through the template as the model wrote it.
        let mut body = json!({"messages": [{"role": "user", "content": "Weather in Paris?"}, msg,
            {"role": "tool", "tool_call_id": "x", "content": "18 C"}]});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let prompt = &plan_chat(&ctx(), &p, serde_json::from_value(body).unwrap()).unwrap().prompts[0];
        assert!(prompt.contains(answer), "{prompt}");
    }

    #[test]
    fn kept_control_tokens_reach_the_text() {
        let Some(p) = prompter("Qwen-Qwen2.5-7B-Instruct.jinja") else { return };
        let tok = p.tokenizer();
        let end = tok.find_token("<|im_end|>").unwrap();
        let hi = tok.encode("Hi", false, false);
        let mut plain = TextStream::new(Vec::new());
        let mut kept = TextStream::with_kept(Vec::new(), vec![end]);
        let (mut a, mut b) = (String::new(), String::new());
        for &id in hi.iter().chain([end].iter()) {
            a += &plain.push(tok, id).0;
            b += &kept.push(tok, id).0;
        }
        assert_eq!((a + &plain.finish(), b + &kept.finish()), ("Hi".to_string(), "Hi<|im_end|>".to_string()));
    }

    #[test]
    fn mistral_calls_get_ids_its_template_takes_back() {
        let Some(p) = prompter("mistralai-Mistral-Nemo-Instruct-2407.jinja") else { return };
        let plan = plan_chat(&ctx(), &p, weather_request(json!({}))).unwrap();
        assert_eq!(plan.tools, Some(ToolFormat::Mistral));
        assert!(plan.prompts[0].contains("[AVAILABLE_TOOLS]"), "{}", plan.prompts[0]);
        let answer = "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}]";
        let (asm, _) = generate(&p, &plan, answer);
        let msg = asm.response("id", 0, "m", 1)["choices"][0]["message"].clone();
        let id = msg["tool_calls"][0]["id"].as_str().unwrap().to_string();
        assert!(id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
        // The model's own ids are kept, but never twice in one answer.
        let twice = "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {}, \"id\": \"a1b2c3d4e\"}, \
                     {\"name\": \"get_weather\", \"arguments\": {}, \"id\": \"a1b2c3d4e\"}]";
        let (asm2, _) = generate(&p, &plan, twice);
        let calls = asm2.response("id", 0, "m", 1)["choices"][0]["message"]["tool_calls"].clone();
        assert_eq!(calls[0]["id"], "a1b2c3d4e");
        assert!(calls[1]["id"] != "a1b2c3d4e" && calls[1]["id"].as_str().unwrap().len() == 9, "{calls}");
        // The call and the tool's answer go back through the template, which checks the id.
        let mut back = msg.clone();
        back["content"] = Value::Null;
        let body = weather_request(json!({"messages": [
            {"role": "user", "content": "Weather in Paris?"}, back,
            {"role": "tool", "tool_call_id": id, "content": "18 C"}]}));
        let prompt = &plan_chat(&ctx(), &p, body).unwrap().prompts[0];
        assert!(prompt.contains(&format!("[TOOL_CALLS][{{\"name\": \"get_weather\", \"arguments\": {{\"city\": \"Paris\"}}, \"id\": \"{id}\"}}]")), "{prompt}");
    }

    #[test]
    fn answers_without_calls_and_calls_that_do_not_parse_stay_content() {
        let Some(p) = prompter("Qwen-Qwen2.5-7B-Instruct.jinja") else { return };
        for answer in ["It is sunny in Paris.", "<tool_call>\n{\"name\": get_weather}\n</tool_call>"] {
            let plan = plan_chat(&ctx(), &p, weather_request(json!({}))).unwrap();
            let (asm, chunks) = generate(&p, &plan, answer);
            let r = asm.response("id", 0, "m", plan.prompt_tokens);
            assert_eq!(r["choices"][0]["message"]["content"], answer);
            assert_eq!(r["choices"][0]["finish_reason"], "stop");
            assert!(r["choices"][0]["message"].get("tool_calls").is_none());
            let streamed: String =
                chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
            assert_eq!(streamed, answer);
        }
        // tool_choice "none": the tools are not offered and nothing is parsed.
        let plan = plan_chat(&ctx(), &p, weather_request(json!({"tool_choice": "none"}))).unwrap();
        assert_eq!(plan.tools, None);
        assert!(!plan.prompts[0].contains("get_weather"));
        let answer = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call>";
        let (asm, _) = generate(&p, &plan, answer);
        assert_eq!(asm.response("id", 0, "m", 1)["choices"][0]["message"]["content"], answer);
    }

    #[test]
    fn tool_requests_are_checked() {
        let Some(p) = prompter("Qwen-Qwen2.5-7B-Instruct.jinja") else { return };
        for (extra, param) in [
            (json!({"tool_choice": "required"}), "tool_choice"),
            (
                json!({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
                "tool_choice",
            ),
            (json!({"tool_choice": 3}), "tool_choice"),
            (json!({"parallel_tool_calls": false}), "parallel_tool_calls"),
            (json!({"tools": {"type": "function"}}), "tools"),
            (json!({"tools": [{"type": "function", "function": {}}]}), "tools"),
            (json!({"tools": [{"type": "retrieval"}]}), "tools"),
        ] {
            let e = plan_chat(&ctx(), &p, weather_request(extra.clone())).unwrap_err();
            assert_eq!((e.status, e.param.as_deref()), (400, Some(param)), "{extra}");
        }
        // A conversation that went through a call: the arguments string reaches the template
        // as the object it encodes, and the tool's answer follows.
        let body = weather_request(json!({"messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
        ]}));
        let conversation = body.messages.clone();
        let plan = plan_chat(&ctx(), &p, body).unwrap();
        let prompt = &plan.prompts[0];
        assert!(prompt.contains("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"), "{prompt}");
        assert!(prompt.contains("<tool_response>\n18 C, sunny\n</tool_response>"), "{prompt}");
        // DeepSeek-R1's template joins the arguments as text: it gets the string the API sent.
        let Some(r1) = prompter("deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja") else { return };
        let body = weather_request(json!({"messages": conversation}));
        let prompt = &plan_chat(&ctx(), &r1, body).unwrap().prompts[0];
        assert!(prompt.contains("get_weather\n```json\n{\"city\": \"Paris\"}\n```"), "{prompt}");
        assert!(prompt.contains("18 C, sunny"), "{prompt}");
        // `tool_calls: null` on a plain assistant turn (what clients echo back) is no call.
        let body = weather_request(json!({"messages": [
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!", "tool_calls": null},
            {"role": "user", "content": "Weather in Paris?"}]}));
        assert!(plan_chat(&ctx(), &p, body).unwrap().prompts[0].contains("Hello!"));
        // Tools and a JSON-object answer exclude each other; with tool_choice "none" it is fine.
        let e = plan_chat(&ctx(), &p, weather_request(json!({"response_format": {"type": "json_object"}})));
        assert_eq!(e.unwrap_err().param.as_deref(), Some("response_format"));
        let body =
            weather_request(json!({"response_format": {"type": "json_object"}, "tool_choice": "none"}));
        assert!(plan_chat(&ctx(), &p, body).is_ok());
    }
}
