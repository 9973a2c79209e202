//! Chat templates: the Jinja template a GGUF carries in `tokenizer.chat_template`, rendered
//! the way Hugging Face transformers' `apply_chat_template` renders it.
//!
//! Models are trained on the exact bytes their template produces, so "close" is not good
//! enough: a stray newline or a differently spaced JSON tool schema is a prompt the model
//! never saw. The environment here therefore reproduces what transformers sets up around
//! Jinja2 rather than Jinja's own defaults:
//!
//! * `trim_blocks` and `lstrip_blocks` on, no trailing newline kept;
//! * `tojson` is Python's `json.dumps` (`ensure_ascii=False`, Python's separators and float
//!   formatting, no HTML escaping), not Jinja's HTML-safe variant;
//! * printed values look like Python's `str()` (`True`, `None`, `{'a': 1}`, `1e-05`),
//!   because templates print booleans and dicts and the model saw Python's spelling;
//! * Python string, dict and list methods (`.strip()`, `.startswith()`, `.items()`, …) via
//!   `minijinja-contrib`'s pycompat layer;
//! * `raise_exception(msg)`, `strftime_now(fmt)` and the `{% generation %}` tag;
//! * `tools` and `documents` are always defined (as `None` when absent), as in transformers:
//!   templates written against it test `tools is not none`, and the ones that iterate `tools`
//!   unconditionally fail there too.
//!
//! Known departures from the reference, none of which the 70 templates in the fixtures
//! meet with plain conversations: the `from_json` filter exists (DeepSeek's templates call it
//! on tool-call arguments; Jinja2 has none and fails); `map` returns a list, which `tojson`
//! accepts (Jinja2's generator it refuses); `'…'|safe + text` does not HTML-escape `text`
//! (Jinja2's `Markup` does); `~` and `+` print floats past 1e16 positionally; Python's
//! `%` string formatting and in-place list methods (`.append`, which transformers' sandbox
//! refuses too) are not there.
//!
//! A template from a GGUF file is untrusted input. Compiling and rendering run on a thread
//! with a large stack; rendering has a fuel budget (time and memory), a recursion limit, a
//! cap on how deep values kept in namespaces may nest, an output cap and a wall-clock
//! timeout, and the source a size limit. Each ends the render with a [`ChatError`] that says
//! which limit was hit.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::io;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use minijinja::value::{
    Kwargs, Object, ObjectRepr, Rest, Serde, StringInput, Value as JValue, ValueKind, ValueOrKwargs,
};
use minijinja::{Environment, Error as JError, ErrorKind, State};
use serde_json::{Map, Value as Json};
use thiserror::Error;

use crate::value::Metadata;
use crate::MetadataError;

/// Metadata key holding the template.
pub const CHAT_TEMPLATE_KEY: &str = "tokenizer.chat_template";

/// The ChatML template used when a model carries none. It is the most common chat format
/// among open models, so it is the least bad guess, but a guess all the same.
pub const CHATML_TEMPLATE: &str = "{%- for message in messages -%}\n\
{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}\n\
{%- endfor -%}\n\
{%- if add_generation_prompt -%}\n\
{{- '<|im_start|>assistant\\n' -}}\n\
{%- endif -%}";

/// What a caller should tell the user when it falls back to [`ChatTemplate::chatml`].
pub const CHATML_WARNING: &str = "the model has no chat template (tokenizer.chat_template); \
falling back to ChatML (<|im_start|>role ... <|im_end|>), which may not be the format the \
model was trained on";

/// Default fuel every render gets, whatever its input. One fuel is about one template
/// instruction or 64 bytes of data produced; the richest real templates need a few thousand
/// for a short conversation, and an endless loop burns this in well under a second.
pub const DEFAULT_BASE_FUEL: u64 = 2_000_000;

/// Default extra fuel per byte of input (messages, tools, extras). Work grows with the
/// conversation, and some templates are quadratic in it (they rebuild a string per
/// message), so a fixed budget would either refuse long conversations or let a hostile
/// template run long on short ones.
pub const DEFAULT_FUEL_PER_INPUT_BYTE: u64 = 16;

/// Default cap on the rendered prompt: far beyond any context window, small enough that a
/// hostile template cannot make the server allocate without bound.
pub const DEFAULT_MAX_OUTPUT: usize = 16 << 20;

/// Default recursion limit (macro calls, recursive loops, nested blocks). minijinja counts
/// a macro call as several levels; real templates recurse only through small JSON-schema
/// printers.
pub const DEFAULT_RECURSION_LIMIT: usize = 100;

/// Largest template source accepted (real ones are a few KiB to a few tens of KiB).
pub const MAX_TEMPLATE_BYTES: usize = 1 << 20;

/// Most code one tag (`{{ … }}` or `{% … %}`) may hold, counting bytes outside string
/// literals and whitespace. minijinja's parser and compiler recurse once per link of some
/// expression chains (`- - - 1`, `not not x`, `x|f|f|f`) without a limit of their own, and
/// one expression can nest a value that deep, so this bounds the stack both need. The
/// longest tag in 70 real templates has about 200.
pub const MAX_TAG_CODE_BYTES: usize = 4096;

/// Default wall-clock limit of a render: real ones take milliseconds, a long conversation
/// through a quadratic template well under a second.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Stack of the thread templates are compiled and rendered on. minijinja compiles some
/// expression chains and drops, compares and prints nested values recursively, so a hostile
/// template could overflow any fixed stack and abort the process: this one holds what the
/// bounds allow (a [`MAX_TAG_CODE_BYTES`] chain, the recursion limit times what one
/// expression can nest, and [`MAX_NAMESPACE_DEPTH`] for values carried across loop
/// iterations) with a margin, in unoptimized builds too. It is address space: only the
/// pages a render touches are committed.
const ENGINE_STACK: usize = 256 << 20;

/// Deepest nesting a value assigned to a namespace attribute may have. Namespaces are the
/// only state a template carries from one loop iteration to the next, so without this a
/// loop like `{% set ns.x = [ns.x] %}` nests without bound (fuel allows millions of
/// levels). Real templates keep flat lists, strings and flags there.
pub const MAX_NAMESPACE_DEPTH: usize = 128;

/// Deepest nesting `tojson` and Python-style printing follow: far beyond real data, well
/// within the render stack.
const MAX_VALUE_DEPTH: usize = 512;

/// Name under which the template is stored in its environment.
const TEMPLATE_NAME: &str = "chat_template";

/// A chat template could not be compiled or rendered.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ChatError {
    /// The template source is not valid Jinja (or is larger than [`MAX_TEMPLATE_BYTES`]).
    #[error("chat template does not compile: {0}")]
    Syntax(String),
    /// The template refused the conversation with `raise_exception(message)`: the request
    /// does not fit what the model supports (e.g. a system role it has no place for).
    #[error("chat template refused the conversation: {0}")]
    Raised(String),
    /// The template failed while rendering (an undefined attribute, a type error, …).
    #[error("chat template failed: {0}")]
    Render(String),
    /// The template used up its fuel budget: it loops or does far too much work.
    #[error("chat template exceeded its work budget of {fuel} fuel (endless loop or runaway template)")]
    OutOfFuel {
        /// The budget this render had.
        fuel: u64,
    },
    /// The render took longer than [`RenderLimits::timeout`].
    #[error("chat template took longer than {limit:?} (runaway template)")]
    Timeout {
        /// The time limit.
        limit: Duration,
    },
    /// The rendered prompt would be larger than the output cap.
    #[error("chat template output exceeds {limit} bytes")]
    OutputTooLarge {
        /// The cap in bytes.
        limit: usize,
    },
    /// A metadata key the template needs has the wrong type.
    #[error("chat template metadata: {0}")]
    Metadata(#[from] MetadataError),
}

/// Resource bounds for rendering an untrusted template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RenderLimits {
    /// Fuel every render gets (see [`DEFAULT_BASE_FUEL`]).
    pub base_fuel: u64,
    /// Fuel added per byte of input (see [`DEFAULT_FUEL_PER_INPUT_BYTE`]).
    pub fuel_per_input_byte: u64,
    /// Largest rendered prompt, in bytes.
    pub max_output: usize,
    /// Recursion limit of the template engine (minijinja caps it at 500).
    pub recursion_limit: usize,
    /// Wall-clock limit of a render (see [`ChatTemplate::render`]).
    pub timeout: Duration,
}

impl Default for RenderLimits {
    fn default() -> Self {
        RenderLimits {
            base_fuel: DEFAULT_BASE_FUEL,
            fuel_per_input_byte: DEFAULT_FUEL_PER_INPUT_BYTE,
            max_output: DEFAULT_MAX_OUTPUT,
            recursion_limit: DEFAULT_RECURSION_LIMIT,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl RenderLimits {
    /// The fuel budget for a request: the base plus the per-byte allowance.
    pub fn fuel_for(&self, req: &ChatRequest) -> u64 {
        let bytes = req.messages.iter().map(json_weight).sum::<u64>()
            + req.tools.as_ref().map_or(0, json_weight)
            + req.extra.iter().map(|(k, v)| k.len() as u64 + json_weight(v)).sum::<u64>();
        self.base_fuel.saturating_add(self.fuel_per_input_byte.saturating_mul(bytes))
    }
}

/// Roughly the size of a value as JSON text: string bytes plus a few per scalar and entry.
/// Walked with an explicit stack: the value comes from the API layer, however deep.
fn json_weight(v: &Json) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        total += match v {
            Json::String(s) => s.len() as u64 + 2,
            Json::Array(a) => {
                stack.extend(a.iter());
                2 + a.len() as u64
            }
            Json::Object(m) => {
                stack.extend(m.values());
                2 + m.keys().map(|k| k.len() as u64 + 4).sum::<u64>()
            }
            _ => 5,
        };
    }
    total
}

/// One conversation to render.
///
/// Messages are JSON values rather than a fixed struct because templates read whatever
/// fields a model's format has (`tool_calls`, `reasoning_content`, `name`, content parts,
/// …); whatever the API layer accepted reaches the template unchanged, keys in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChatRequest {
    /// The conversation, oldest first; each usually `{"role": …, "content": …}`.
    pub messages: Vec<Json>,
    /// Append the header of an assistant turn so the model writes the reply.
    pub add_generation_prompt: bool,
    /// Tool (function) schemas, as in the OpenAI API; `None` renders as `tools = None`.
    pub tools: Option<Json>,
    /// Further template variables (`enable_thinking`, `reasoning_effort`, `documents`, …).
    /// They are set last, so they can also override `bos_token`/`eos_token`.
    pub extra: Map<String, Json>,
    /// The time `strftime_now` reports; `None` is the current time. Fixing it makes a
    /// rendering reproducible (tests, prompt caches).
    pub now: Option<SystemTime>,
}

impl ChatRequest {
    /// A request for `messages` with the generation prompt on and nothing else set.
    pub fn new(messages: Vec<Json>) -> Self {
        ChatRequest { messages, add_generation_prompt: true, ..Default::default() }
    }
}

/// A `{"role": role, "content": content}` message.
pub fn message(role: &str, content: &str) -> Json {
    let mut m = Map::new();
    m.insert("role".into(), Json::from(role));
    m.insert("content".into(), Json::from(content));
    Json::Object(m)
}

/// A compiled chat template with the special-token texts it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
    limits: RenderLimits,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source_len", &self.source().len())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("limits", &self.limits)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles `source` with the default [`RenderLimits`].
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate, ChatError> {
        Self::with_limits(source, bos_token, eos_token, RenderLimits::default())
    }

    /// Compiles `source` with explicit resource bounds.
    pub fn with_limits(
        source: &str,
        bos_token: &str,
        eos_token: &str,
        limits: RenderLimits,
    ) -> Result<ChatTemplate, ChatError> {
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(ChatError::Syntax(format!(
                "the template is {} bytes, more than the {MAX_TEMPLATE_BYTES} accepted",
                source.len()
            )));
        }
        let env = on_engine_stack(|| {
            let mut env = Environment::new();
            configure(&mut env, &limits);
            env.add_template_owned(TEMPLATE_NAME, prepare_source(source)?)
                .map_err(|e| ChatError::Syntax(describe(&e)))?;
            Ok(env)
        })?;
        Ok(ChatTemplate {
            env,
            source: source.to_owned(),
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
            limits,
        })
    }

    /// The ChatML fallback for models without a template (show [`CHATML_WARNING`]).
    pub fn chatml() -> ChatTemplate {
        Self::new(CHATML_TEMPLATE, "", "<|im_end|>").expect("the built-in ChatML template compiles")
    }

    /// The template of a GGUF file: `Ok(None)` when it has none. `token_text` maps a token
    /// id to its text (the tokenizer's vocabulary) for `bos_token`/`eos_token`; an id that
    /// is absent or unknown gives an empty string, as a tokenizer without that token would.
    pub fn from_metadata(
        md: &Metadata,
        token_text: impl Fn(u32) -> Option<String>,
    ) -> Result<Option<ChatTemplate>, ChatError> {
        let Some(source) = md.opt(CHAT_TEMPLATE_KEY, |m, k| m.str(k).map(str::to_owned))? else {
            return Ok(None);
        };
        let text = |key: &str| -> Result<String, ChatError> {
            Ok(md.opt(key, Metadata::u32)?.and_then(&token_text).unwrap_or_default())
        };
        let bos = text("tokenizer.ggml.bos_token_id")?;
        let eos = text("tokenizer.ggml.eos_token_id")?;
        Self::new(&source, &bos, &eos).map(Some)
    }

    /// The template source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The text `bos_token` renders as.
    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    /// The text `eos_token` renders as.
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// The resource bounds renders run under.
    pub fn limits(&self) -> RenderLimits {
        self.limits
    }

    /// Renders a conversation into the prompt text.
    ///
    /// The render runs on a thread of its own, with a stack large enough for anything the
    /// limits let a template build, and is given up after [`RenderLimits::timeout`]: fuel
    /// bounds nearly all the work a template can do, but minijinja charges a comparison or
    /// hash of nested values by their top level only, so a hostile template can still spin
    /// without spending fuel. Such a thread cannot be stopped from outside; it is left to
    /// finish in the background while the caller gets [`ChatError::Timeout`].
    pub fn render(&self, req: &ChatRequest) -> Result<String, ChatError> {
        let fuel = self.limits.fuel_for(req);
        // Fuel is a setting of the environment; a clone shares the compiled template and
        // the registered functions (all reference-counted) and costs a few allocations.
        let mut env = self.env.clone();
        env.set_fuel(Some(fuel));
        let ctx = self.context(req);
        let max_output = self.limits.max_output;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("chat-template".into())
            .stack_size(ENGINE_STACK)
            .spawn(move || {
                // The receiver may have given up already; nothing is left to tell then.
                let _ = tx.send(render_in(&env, ctx, fuel, max_output));
            })
            .map_err(|e| ChatError::Render(format!("cannot start the template thread: {e}")))?;
        match rx.recv_timeout(self.limits.timeout) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(ChatError::Timeout { limit: self.limits.timeout }),
            Err(RecvTimeoutError::Disconnected) => {
                Err(ChatError::Render("the template engine panicked".into()))
            }
        }
    }

    /// The template's variables, as transformers passes them: `messages`, `tools` and
    /// `documents` (`None` when absent), `add_generation_prompt`, the special tokens, then
    /// the extras, which may override any of them.
    fn context(&self, req: &ChatRequest) -> JValue {
        let mut ctx: Vec<(String, JValue)> = vec![
            ("messages".into(), JValue::from(Serde(&req.messages))),
            ("add_generation_prompt".into(), JValue::from(req.add_generation_prompt)),
            ("bos_token".into(), JValue::from(self.bos_token.as_str())),
            ("eos_token".into(), JValue::from(self.eos_token.as_str())),
            ("tools".into(), req.tools.as_ref().map_or_else(py_none, |t| JValue::from(Serde(t)))),
            ("documents".into(), py_none()),
        ];
        for (k, v) in &req.extra {
            ctx.retain(|(name, _)| name != k);
            ctx.push((k.clone(), JValue::from(Serde(v))));
        }
        let now = unix_secs(req.now.unwrap_or_else(SystemTime::now));
        ctx.push((NOW_VAR.to_string(), JValue::from(now)));
        JValue::from_pairs(ctx)
    }
}

/// One render, on the engine thread.
fn render_in(
    env: &Environment<'static>,
    ctx: JValue,
    fuel: u64,
    max_output: usize,
) -> Result<String, ChatError> {
    let tmpl = env.get_template(TEMPLATE_NAME).map_err(|e| ChatError::Syntax(describe(&e)))?;
    let mut out = CappedWriter { buf: Vec::new(), limit: max_output, overflowed: false };
    let result = tmpl.render_captured_to(ctx, &mut out).map(|_| ());
    match result {
        Ok(()) => String::from_utf8(out.buf).map_err(|e| ChatError::Render(e.to_string())),
        Err(_) if out.overflowed => Err(ChatError::OutputTooLarge { limit: max_output }),
        Err(e) => Err(classify(&e, fuel)),
    }
}

/// Runs `f` on a thread with an [`ENGINE_STACK`]-sized stack, so that no template can
/// overflow the caller's (possibly small) stack (compiling: rendering has its own thread).
/// A panic in the engine becomes an error.
fn on_engine_stack<T: Send>(f: impl FnOnce() -> Result<T, ChatError> + Send) -> Result<T, ChatError> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("chat-template".into())
            .stack_size(ENGINE_STACK)
            .spawn_scoped(scope, f)
            .map_err(|e| ChatError::Render(format!("cannot start the template thread: {e}")))?
            .join()
            .unwrap_or_else(|_| Err(ChatError::Render("the template engine panicked".into())))
    })
}

/// Maps an engine error to the variant that tells the caller what to do about it.
fn classify(e: &JError, fuel: u64) -> ChatError {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = src {
        if let Some(r) = err.downcast_ref::<Raised>() {
            return ChatError::Raised(r.0.clone());
        }
        if err.downcast_ref::<JError>().is_some_and(|j| j.kind() == ErrorKind::OutOfFuel) {
            return ChatError::OutOfFuel { fuel };
        }
        src = err.source();
    }
    ChatError::Render(describe(e))
}

/// Python's `None` as transformers passes it for absent `tools` and `documents`.
///
/// minijinja's own `none` iterates as an empty list, where Python's raises `TypeError`;
/// templates that need tools loop over `tools` unconditionally and must fail without them
/// (the reference refuses them), and `tools is iterable` must be false. This object is
/// falsy, prints as `None`, serializes as `null`, passes the (overridden) `none` test and
/// cannot be iterated, measured or indexed.
#[derive(Debug)]
struct PyNone;

impl Object for PyNone {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn is_true(self: &Arc<Self>) -> bool {
        false
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("None")
    }
}

fn py_none() -> JValue {
    JValue::from_object(PyNone)
}

fn is_py_none(v: &JValue) -> bool {
    v.is_none() || v.downcast_object_ref::<PyNone>().is_some()
}

/// A message from `raise_exception`, carried through the engine's error as its source so
/// that [`ChatTemplate::render`] can tell a deliberate refusal from a broken template.
#[derive(Debug)]
struct Raised(String);

impl fmt::Display for Raised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

/// Context variable carrying the render's clock to `strftime_now`. A function registered on
/// the environment cannot see the request, so the time travels in the context under a name
/// no template uses.
const NOW_VAR: &str = "__ferrite_now_unix";

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// An engine error as one line plus the template line it happened on.
fn describe(e: &JError) -> String {
    // minijinja's message already names the template line ("... (in chat_template:12)").
    // `PyNone` is a "plain object" to minijinja; say what it stands for.
    let mut s = e.to_string().replace("plain object is not iterable", "None is not iterable");
    let mut src = std::error::Error::source(e);
    while let Some(err) = src {
        let _ = write!(s, ": {err}");
        src = err.source();
    }
    s
}

/// Sets up an environment the way transformers sets up Jinja2 for chat templates.
fn configure(env: &mut Environment<'static>, limits: &RenderLimits) {
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .keep_trailing_newline(false)
        .build()
        .expect("default delimiters are valid");
    env.set_syntax(syntax);
    env.set_recursion_limit(limits.recursion_limit);
    // Untrusted templates get no loader: `include`/`import`/`extends` find nothing.
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(|out, _state, value| {
        let mut s = String::new();
        py_str(&mut s, value, 0)?;
        out.write_str(&s).map_err(|_| JError::new(ErrorKind::WriteFailure, "cannot write output"))
    });
    // Jinja2's tests, where minijinja's differ: `none` must also match the non-iterable
    // None above, and None is not iterable in Python.
    env.add_test("none", |v: &JValue| is_py_none(v));
    env.add_test("iterable", |v: &JValue| !is_py_none(v) && v.try_iter().is_ok());
    env.add_filter("select", select);
    env.add_filter("reject", reject);
    env.add_filter("selectattr", selectattr);
    env.add_filter("rejectattr", rejectattr);
    env.add_filter("map", map);
    env.add_filter("tojson", tojson);
    env.add_filter("string", |v: &JValue| -> Result<JValue, JError> {
        if v.kind() == ValueKind::String {
            return Ok(v.clone());
        }
        let mut s = String::new();
        py_str(&mut s, v, 0)?;
        Ok(JValue::from(s))
    });
    env.add_filter("join", join);
    env.add_filter("from_json", from_json);
    env.add_test(DEPTH_GUARD, depth_ok);
    env.add_function("raise_exception", |msg: Option<JValue>| -> Result<JValue, JError> {
        let msg = match msg {
            Some(m) => {
                let mut s = String::new();
                py_str(&mut s, &m, 0)?;
                s
            }
            None => String::new(),
        };
        Err(JError::new(ErrorKind::InvalidOperation, msg.clone()).with_source(Raised(msg)))
    });
    env.add_function("strftime_now", |state: &State, fmt: &str| -> Result<JValue, JError> {
        let now =
            state.lookup(NOW_VAR).and_then(|v| v.as_i64()).unwrap_or_else(|| unix_secs(SystemTime::now()));
        Ok(JValue::from(strftime(fmt, now)))
    });
}

/// Test checked after every assignment to a namespace attribute (see [`prepare_source`]).
const DEPTH_GUARD: &str = "__ferrite_depth_ok";

/// Rewrites a template's statements where minijinja needs help to behave like transformers'
/// Jinja2 or to stay within bounds; text, expressions, comments and raw blocks are copied
/// unchanged, and so are line breaks (error messages name the right lines). The scan
/// mirrors minijinja's lexer (string literals, bracket balance, comment and raw-block ends),
/// so it sees exactly the statements minijinja will compile: a statement it missed would
/// escape the depth guard.
///
/// * `{% generation %}…{% endgeneration %}`: transformers' tag marking the assistant's
///   tokens for training masks, which renders its body unchanged. minijinja has no custom
///   tags, so it becomes `{% if true %}…{% endif %}`, which renders the same and keeps the
///   tag's whitespace control (`{%-`, `-%}`) and trim/lstrip behaviour.
/// * `{% set ns.attr = expr %}` is followed by `{% if ns.attr is __ferrite_depth_ok %}{% endif %}`
///   (the set tag's trailing whitespace control moves to the last tag), which fails once
///   the value nests deeper than [`MAX_NAMESPACE_DEPTH`]. A test rather than a filter
///   around `expr`, because minijinja charges fuel for every string a filter receives and
///   returns, which would triple the cost of templates that grow a string this way. Only
///   `set` can assign to an attribute; `for` and `with` targets are plain names.
fn prepare_source(source: &str) -> Result<String, ChatError> {
    let mut out = String::with_capacity(source.len() + 256);
    let mut rest = source;
    loop {
        let Some(open) = find_tag_open(rest) else {
            out.push_str(rest);
            return Ok(out);
        };
        out.push_str(&rest[..open]);
        rest = &rest[open..];
        let close = match rest.as_bytes()[1] {
            b'#' => {
                let skip = 2 + usize::from(matches!(rest.as_bytes().get(2), Some(b'-' | b'+')));
                rest.get(skip..).and_then(|r| r.find("#}")).map(|i| skip + i + 2)
            }
            b'{' => tag_end(rest, "}}"),
            _ => tag_end(rest, "%}"),
        };
        let Some(close) = close else {
            // Unterminated: leave it to the parser to report.
            out.push_str(rest);
            return Ok(out);
        };
        let tag = &rest[..close];
        if !tag.starts_with("{#") && code_bytes(tag) > MAX_TAG_CODE_BYTES {
            let line = source[..source.len() - rest.len()].matches('\n').count() + 1;
            return Err(ChatError::Syntax(format!(
                "a tag on line {line} holds more than {MAX_TAG_CODE_BYTES} bytes of code"
            )));
        }
        rest = &rest[close..];
        if !tag.starts_with("{%") {
            out.push_str(tag);
            continue;
        }
        let body = &tag[2..tag.len() - 2];
        let lead = &body[..usize::from(body.starts_with(['-', '+']))];
        let trail = &body[body.len() - usize::from(body.len() > lead.len() && body.ends_with(['-', '+']))..];
        let inner = body[lead.len()..body.len() - trail.len()].trim();
        let (keyword, args) = split_keyword(inner);
        match keyword {
            "raw" if args.is_empty() => {
                // Copy up to and including the `{% endraw %}` tag untouched.
                let end = find_endraw(rest).unwrap_or(rest.len());
                out.push_str(tag);
                out.push_str(&rest[..end]);
                rest = &rest[end..];
            }
            "generation" | "endgeneration" if args.is_empty() => {
                let replacement = if keyword == "generation" { "if true" } else { "endif" };
                let newlines = "\n".repeat(body.matches('\n').count());
                let _ = write!(out, "{{%{lead} {replacement}{newlines} {trail}%}}");
            }
            "set" => {
                let targets: Vec<String> = split_assignment(args)
                    .map(|(target, _)| {
                        target
                            .split([',', '(', ')'])
                            .map(|t| t.split_whitespace().collect::<String>())
                            .filter(|t| t.contains('.'))
                            .collect()
                    })
                    .unwrap_or_default();
                if targets.is_empty() {
                    out.push_str(tag);
                    continue;
                }
                out.push_str(&tag[..tag.len() - 2 - trail.len()]);
                out.push_str("%}{% if ");
                let checks: Vec<String> = targets.iter().map(|t| format!("{t} is {DEPTH_GUARD}")).collect();
                out.push_str(&checks.join(" and "));
                let _ = write!(out, " %}}{{% endif {trail}%}}");
            }
            _ => out.push_str(tag),
        }
    }
}

/// Position of the next `{{`, `{%` or `{#`.
fn find_tag_open(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    (0..bytes.len().saturating_sub(1))
        .find(|&i| bytes[i] == b'{' && matches!(bytes[i + 1], b'{' | b'%' | b'#'))
}

/// End (exclusive) of the tag starting at `s[0]`: the first `close` outside string literals
/// with brackets balanced, as minijinja's lexer finds it.
fn tag_end(s: &str, close: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 2;
    let mut balance = 0isize;
    while i < bytes.len() {
        match bytes[i] {
            q @ (b'\'' | b'"') => {
                // A string literal: up to the matching quote, backslash escapes skipped.
                i += 1;
                while i < bytes.len() && bytes[i] != q {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'(' | b'[' | b'{' => balance += 1,
            b')' | b']' | b'}' if balance != 0 || !s[i..].starts_with(close) => balance -= 1,
            _ if balance == 0 && s[i..].starts_with(close) => return Some(i + close.len()),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Bytes of a tag outside string literals and whitespace.
fn code_bytes(tag: &str) -> usize {
    let bytes = tag.as_bytes();
    let (mut i, mut n) = (0, 0);
    while i < bytes.len() {
        match bytes[i] {
            q @ (b'\'' | b'"') => {
                i += 1;
                while i < bytes.len() && bytes[i] != q {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b if b.is_ascii_whitespace() => {}
            _ => n += 1,
        }
        i += 1;
    }
    n
}

/// Start of the text after the next `{% endraw %}` tag (whitespace control allowed), the way
/// minijinja ends a raw block.
fn find_endraw(s: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = s[from..].find("{%").map(|i| i + from) {
        let mut p = &s[at + 2..];
        p = p.strip_prefix(['-', '+']).unwrap_or(p);
        p = p.trim_start_matches(|c: char| c.is_ascii_whitespace());
        if let Some(after) = p.strip_prefix("endraw") {
            let after = after.trim_start_matches(|c: char| c.is_ascii_whitespace());
            let after = after.strip_prefix(['-', '+']).unwrap_or(after);
            if let Some(tail) = after.strip_prefix("%}") {
                return Some(s.len() - tail.len());
            }
        }
        from = at + 2;
    }
    None
}

/// A statement's keyword and the text after it.
fn split_keyword(inner: &str) -> (&str, &str) {
    let end = inner.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(inner.len());
    (&inner[..end], inner[end..].trim())
}

/// `target = value` of a `set` statement; `None` for the block form (`{% set x %}`).
fn split_assignment(args: &str) -> Option<(&str, &str)> {
    let bytes = args.as_bytes();
    let at = (0..bytes.len()).find(|&i| {
        bytes[i] == b'='
            && bytes.get(i + 1) != Some(&b'=')
            && !matches!(i.checked_sub(1).map(|j| bytes[j]), Some(b'=' | b'!' | b'<' | b'>'))
    })?;
    let target = args[..at].trim();
    // A target is names, dots, commas and parentheses; anything else means the `=` was
    // not the assignment's (e.g. a keyword argument in a block set's filter).
    let simple = target
        .chars()
        .all(|c| c.is_alphanumeric() || c.is_whitespace() || matches!(c, '_' | '.' | ',' | '(' | ')'));
    (simple && !target.is_empty()).then(|| (target, args[at + 1..].trim()))
}

/// The test behind namespace assignments: true unless the value nests deeper than
/// [`MAX_NAMESPACE_DEPTH`], which is an error. The walk uses an explicit stack. It pays one
/// fuel per container it enters, as a sub-value shared by several containers is walked
/// once per path (a template doubling a structure runs out of fuel, not time), and one per
/// 64 scalars, so that re-checking a flat list a template appends to stays cheap.
fn depth_ok(state: &State, value: &JValue) -> Result<bool, JError> {
    fn is_container(v: &JValue) -> bool {
        match v.kind() {
            ValueKind::Seq | ValueKind::Map | ValueKind::Iterable => true,
            // Namespaces (and other objects that enumerate) can hold values too.
            ValueKind::Plain => v.as_object().is_some_and(|o| o.try_iter().is_some()),
            _ => false,
        }
    }
    let mut stack = Vec::new();
    if is_container(value) {
        stack.push((value.clone(), 1usize));
    }
    let mut scalars = 0u64;
    while let Some((v, depth)) = stack.pop() {
        state.consume_fuel(1)?;
        if depth > MAX_NAMESPACE_DEPTH {
            return Err(JError::new(
                ErrorKind::InvalidOperation,
                format!("value assigned to a namespace nests deeper than {MAX_NAMESPACE_DEPTH} levels"),
            ));
        }
        let keyed = matches!(v.kind(), ValueKind::Map | ValueKind::Plain);
        for item in v.try_iter()? {
            let child = if keyed { v.get_item(&item).unwrap_or_default() } else { item };
            if is_container(&child) {
                stack.push((child, depth + 1));
            } else {
                scalars += 1;
                if scalars.is_multiple_of(64) {
                    state.consume_fuel(1)?;
                }
            }
        }
    }
    Ok(true)
}

/// Writes output to memory, refusing to grow past `limit`.
struct CappedWriter {
    buf: Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl io::Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > self.limit {
            self.overflowed = true;
            return Err(io::Error::other("chat template output cap reached"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Python-compatible value printing

fn too_deep() -> JError {
    JError::new(ErrorKind::InvalidOperation, "value nested too deeply to print")
}

/// Python's `str(value)`: what Jinja2 prints for `{{ value }}`.
fn py_str(out: &mut String, v: &JValue, depth: usize) -> Result<(), JError> {
    match v.kind() {
        ValueKind::Undefined => Ok(()),
        ValueKind::String => {
            out.push_str(v.as_str().unwrap_or_default());
            Ok(())
        }
        _ => py_repr(out, v, depth),
    }
}

/// Python's `repr(value)`: how values look inside a printed list or dict.
fn py_repr(out: &mut String, v: &JValue, depth: usize) -> Result<(), JError> {
    if depth > MAX_VALUE_DEPTH {
        return Err(too_deep());
    }
    match v.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if v.is_true() { "True" } else { "False" }),
        ValueKind::Number => py_number(out, v, false),
        ValueKind::String => py_str_repr(out, v.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            // `dict.items()` yields tuples, which Python prints in parentheses.
            let (open, close) = if v.is_tuple() { ('(', ')') } else { ('[', ']') };
            out.push(open);
            let mut n = 0;
            for item in v.try_iter()? {
                if n > 0 {
                    out.push_str(", ");
                }
                py_repr(out, &item, depth + 1)?;
                n += 1;
            }
            if n == 1 && v.is_tuple() {
                out.push(',');
            }
            out.push(close);
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                let val = v.get_item(&key)?;
                py_repr(out, &key, depth + 1)?;
                out.push_str(": ");
                py_repr(out, &val, depth + 1)?;
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{v}");
        }
    }
    Ok(())
}

/// A Python string literal, quoted and escaped the way `repr` does.
fn py_str_repr(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// A number as Python prints it; `json` selects JSON's spellings of non-finite floats.
fn py_number(out: &mut String, v: &JValue, json: bool) {
    if v.is_integer() {
        let _ = write!(out, "{v}");
        return;
    }
    match f64::try_from(v.clone()) {
        Ok(f) => py_float(out, f, json),
        Err(_) => {
            let _ = write!(out, "{v}");
        }
    }
}

/// Python's `repr(float)`: the shortest digits that round-trip, positional for decimal
/// exponents in [-4, 16), scientific (`1e-05`, `1.5e+16`) outside, always with a `.0` or
/// an exponent so that it reads back as a float.
fn py_float(out: &mut String, f: f64, json: bool) {
    if f.is_nan() {
        out.push_str(if json { "NaN" } else { "nan" });
        return;
    }
    if f.is_infinite() {
        let s = match (f > 0.0, json) {
            (true, true) => "Infinity",
            (false, true) => "-Infinity",
            (true, false) => "inf",
            (false, false) => "-inf",
        };
        out.push_str(s);
        return;
    }
    // `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if neg {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp < 0 {
            out.push_str("0.");
            for _ in 0..(-exp - 1) {
                out.push('0');
            }
            out.push_str(&digits);
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                for _ in digits.len()..int_len {
                    out.push('0');
                }
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
}

// ---------------------------------------------------------------------------------------
// Filters

/// How `json.dumps` lays out its output.
struct JsonStyle {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`, arguments positional or by keyword in that order.
fn tojson(value: &JValue, positional: Rest<JValue>, kwargs: Kwargs) -> Result<JValue, JError> {
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if positional.len() > NAMES.len() {
        return Err(JError::new(ErrorKind::TooManyArguments, "tojson takes at most 4 arguments"));
    }
    let arg = |i: usize| -> Result<Option<JValue>, JError> {
        match positional.get(i) {
            Some(v) => Ok(Some(v.clone())),
            None => kwargs.get::<Option<JValue>>(NAMES[i]),
        }
    };
    let ensure_ascii = arg(0)?.is_some_and(|v| v.is_true());
    let sort_keys = arg(3)?.is_some_and(|v| v.is_true());
    let indent = match arg(1)? {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or_default().to_owned()),
        // Python: `' ' * indent`; `True` counts as 1, a negative count as 0.
        Some(v) if v.kind() == ValueKind::Bool => Some(if v.is_true() { " ".into() } else { String::new() }),
        Some(v) => {
            let n = v.as_i64().ok_or_else(|| {
                JError::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: indent must be an integer or string, not {}", v.kind()),
                )
            })?;
            Some(" ".repeat(usize::try_from(n.clamp(0, 64)).unwrap_or(0)))
        }
    };
    let (item_sep, key_sep) = match arg(2)? {
        Some(v) if !v.is_none() && !v.is_undefined() => {
            let parts: Vec<JValue> = v.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] if a.as_str().is_some() && b.as_str().is_some() => {
                    (a.as_str().unwrap_or_default().to_owned(), b.as_str().unwrap_or_default().to_owned())
                }
                _ => {
                    return Err(JError::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair of strings",
                    ))
                }
            }
        }
        _ => ((if indent.is_some() { "," } else { ", " }).to_owned(), ": ".to_owned()),
    };
    kwargs.assert_all_used()?;
    let style = JsonStyle { ensure_ascii, indent, item_sep, key_sep, sort_keys };
    let mut out = String::new();
    write_json(&mut out, value, &style, 0)?;
    Ok(JValue::from(out))
}

fn not_serializable(kind: &str) -> JError {
    JError::new(ErrorKind::InvalidOperation, format!("Object of type {kind} is not JSON serializable"))
}

fn json_newline(out: &mut String, style: &JsonStyle, depth: usize) {
    if let Some(indent) = &style.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(indent);
        }
    }
}

/// One value as `json.dumps` writes it.
fn write_json(out: &mut String, v: &JValue, style: &JsonStyle, depth: usize) -> Result<(), JError> {
    if depth > MAX_VALUE_DEPTH {
        return Err(too_deep());
    }
    if is_py_none(v) {
        out.push_str("null");
        return Ok(());
    }
    match v.kind() {
        ValueKind::Undefined => return Err(not_serializable("Undefined")),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => py_number(out, v, true),
        ValueKind::String => json_str(out, v.as_str().unwrap_or_default(), style.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<JValue> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                json_newline(out, style, depth + 1);
                write_json(out, item, style, depth + 1)?;
            }
            json_newline(out, style, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in v.try_iter()? {
                let val = v.get_item(&key)?;
                entries.push((json_key(&key)?, val));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if style.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            out.push('{');
            for (i, (key, val)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                json_newline(out, style, depth + 1);
                json_str(out, key, style.ensure_ascii);
                out.push_str(&style.key_sep);
                write_json(out, val, style, depth + 1)?;
            }
            json_newline(out, style, depth);
            out.push('}');
        }
        ValueKind::Bytes => return Err(not_serializable("bytes")),
        _ => return Err(not_serializable(&v.kind().to_string())),
    }
    Ok(())
}

/// A dict key as `json.dumps` converts it: strings as they are, scalars by their JSON
/// spelling, anything else an error.
fn json_key(key: &JValue) -> Result<String, JError> {
    let mut s = String::new();
    match key.kind() {
        ValueKind::String => s.push_str(key.as_str().unwrap_or_default()),
        ValueKind::Number => py_number(&mut s, key, true),
        ValueKind::Bool => s.push_str(if key.is_true() { "true" } else { "false" }),
        ValueKind::None => s.push_str("null"),
        k => {
            return Err(JError::new(
                ErrorKind::InvalidOperation,
                format!("keys must be str, int, float, bool or None, not {k}"),
            ))
        }
    }
    Ok(s)
}

/// A JSON string literal with Python's escaping: control characters, `"` and `\` always,
/// non-ASCII as `\uXXXX` (UTF-16, lowercase hex) only with `ensure_ascii`.
fn json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && !c.is_ascii() => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Jinja2's `join`, with non-string items printed the Python way (`True`, not `true`).
/// With an `attribute`, or on a string, it defers to minijinja's, which resolves
/// attribute paths.
fn join(
    state: &mut State,
    value: &JValue,
    joiner: Option<JValue>,
    attribute: Option<JValue>,
    kwargs: Kwargs,
) -> Result<JValue, JError> {
    let joiner = match joiner {
        Some(j) => Some(j),
        None => kwargs.get::<Option<JValue>>("d")?,
    };
    let attribute = match attribute {
        Some(a) => Some(a),
        None => kwargs.get::<Option<JValue>>("attribute")?,
    };
    kwargs.assert_all_used()?;
    let attribute = attribute.filter(|a| !a.is_none() && !a.is_undefined());
    if attribute.is_some() || value.kind() == ValueKind::String {
        let joiner = joiner.as_ref().map(|j| StringInput::new(state, j)).transpose()?;
        let attribute = attribute.map(|a| a.to_string());
        let no_kwargs = Kwargs::from_iter(std::iter::empty::<(&str, JValue)>());
        return minijinja::filters::join(state, value, joiner, attribute.as_deref(), no_kwargs);
    }
    let mut sep = String::new();
    if let Some(j) = &joiner {
        py_str(&mut sep, j, 0)?;
    }
    if value.is_undefined() || value.is_none() {
        return Ok(JValue::from(""));
    }
    let mut out = String::new();
    for (i, item) in value.try_iter()?.enumerate() {
        // The separator repeats per item, so the result is not bounded by the input.
        state.consume_fuel(1 + sep.len() as u64 / 64)?;
        if i > 0 {
            out.push_str(&sep);
        }
        py_str(&mut out, &item, 0)?;
    }
    Ok(JValue::from(out))
}

// Jinja2's select/reject/selectattr/rejectattr/map start with `if value:` and so yield
// nothing for a falsy value; templates rely on that for `tools | selectattr(...)` without
// tools. minijinja's would refuse the non-iterable `PyNone`, so these hand it an empty list.

type Filtered = Result<Vec<JValue>, JError>;

fn or_empty(value: JValue) -> JValue {
    if is_py_none(&value) {
        JValue::from(Vec::<JValue>::new())
    } else {
        value
    }
}

fn select(
    state: &mut State,
    value: JValue,
    test: Option<Cow<'_, str>>,
    args: Rest<ValueOrKwargs>,
) -> Filtered {
    minijinja::filters::select(state, or_empty(value), test, args)
}

fn reject(
    state: &mut State,
    value: JValue,
    test: Option<Cow<'_, str>>,
    args: Rest<ValueOrKwargs>,
) -> Filtered {
    minijinja::filters::reject(state, or_empty(value), test, args)
}

fn selectattr(
    state: &mut State,
    value: JValue,
    attr: Cow<'_, str>,
    test: Option<Cow<'_, str>>,
    args: Rest<ValueOrKwargs>,
) -> Filtered {
    minijinja::filters::selectattr(state, or_empty(value), attr, test, args)
}

fn rejectattr(
    state: &mut State,
    value: JValue,
    attr: Cow<'_, str>,
    test: Option<Cow<'_, str>>,
    args: Rest<ValueOrKwargs>,
) -> Filtered {
    minijinja::filters::rejectattr(state, or_empty(value), attr, test, args)
}

fn map(state: &mut State, value: JValue, args: Rest<ValueOrKwargs>) -> Filtered {
    minijinja::filters::map(state, or_empty(value), args)
}

/// `from_json`: parses a JSON string into a value. Not a Jinja2 builtin, but DeepSeek's
/// templates call it on tool-call arguments, which the OpenAI API sends as JSON text.
fn from_json(value: &str) -> Result<JValue, JError> {
    serde_json::from_str::<Json>(value)
        .map(|j| JValue::from(Serde(j)))
        .map_err(|e| JError::new(ErrorKind::InvalidOperation, format!("from_json: invalid JSON: {e}")))
}

// ---------------------------------------------------------------------------------------
// strftime

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// Civil date of a day count since 1970-01-01 (proleptic Gregorian; H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// C `strftime` for a UTC time, the directives chat templates use: `%Y %y %m %d %e %j %B
/// %b %h %A %a %u %w %H %I %M %S %p %F %T %D %Z %z %%`, and glibc's `%-d`-style flag that
/// drops padding. Unknown directives are copied as they are. UTC because transformers' local
/// time would make the prompt depend on the server's timezone setting.
pub fn strftime(fmt: &str, unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let wd = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday; 0 = Monday.
    const CUM: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = CUM[m as usize - 1] + d + u32::from(m > 2 && is_leap(y));
    let hour12 = if hh % 12 == 0 { 12 } else { hh % 12 };

    let mut out = String::new();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let no_pad = chars.peek() == Some(&'-');
        if no_pad {
            chars.next();
        }
        let num = |out: &mut String, v: i64, width: usize| {
            if no_pad {
                let _ = write!(out, "{v}");
            } else {
                let _ = write!(out, "{v:0width$}");
            }
        };
        match chars.next() {
            Some('Y') => {
                let _ = write!(out, "{y}");
            }
            Some('y') => num(&mut out, y.rem_euclid(100), 2),
            Some('m') => num(&mut out, i64::from(m), 2),
            Some('d') => num(&mut out, i64::from(d), 2),
            Some('e') => {
                if no_pad {
                    let _ = write!(out, "{d}");
                } else {
                    let _ = write!(out, "{d:>2}");
                }
            }
            Some('j') => num(&mut out, i64::from(yday), 3),
            Some('B') => out.push_str(MONTHS[m as usize - 1]),
            Some('b') | Some('h') => out.push_str(&MONTHS[m as usize - 1][..3]),
            Some('A') => out.push_str(WEEKDAYS[wd]),
            Some('a') => out.push_str(&WEEKDAYS[wd][..3]),
            Some('u') => {
                let _ = write!(out, "{}", wd + 1);
            }
            Some('w') => {
                let _ = write!(out, "{}", (wd + 1) % 7);
            }
            Some('H') => num(&mut out, hh, 2),
            Some('I') => num(&mut out, hour12, 2),
            Some('M') => num(&mut out, mm, 2),
            Some('S') => num(&mut out, ss, 2),
            Some('p') => out.push_str(if hh < 12 { "AM" } else { "PM" }),
            Some('F') => {
                let _ = write!(out, "{y}-{m:02}-{d:02}");
            }
            Some('T') => {
                let _ = write!(out, "{hh:02}:{mm:02}:{ss:02}");
            }
            Some('D') => {
                let _ = write!(out, "{m:02}/{d:02}/{:02}", y.rem_euclid(100));
            }
            Some('Z') => out.push_str("UTC"),
            Some('z') => out.push_str("+0000"),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                if no_pad {
                    out.push('-');
                }
                out.push(other);
            }
            None => {
                out.push('%');
                if no_pad {
                    out.push('-');
                }
            }
        }
    }
    out
}
