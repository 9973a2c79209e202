//! Chat templates against the reference renderings in `shared/fixtures/chat-templates`
//! (Hugging Face transformers' `apply_chat_template`; see EXPECTED.md there), the Python
//! behaviours templates depend on, and the limits that keep an untrusted template from
//! hanging, exhausting memory or overflowing the stack.
//!
//! Expected strings in the smaller tests were produced by Jinja2 3.1 set up the way
//! transformers sets it up (sandbox, trim_blocks, lstrip_blocks, its `tojson`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferrite_loader::chat::{
    message, strftime, RenderLimits, CHATML_WARNING, MAX_NAMESPACE_DEPTH, MAX_TAG_CODE_BYTES,
    MAX_TEMPLATE_BYTES,
};
use ferrite_loader::writer::GgufWriter;
use ferrite_loader::{ChatError, ChatRequest, ChatTemplate, Gguf, Value as MdValue};
use serde_json::{json, Map, Value};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/chat-templates");

/// The day the reference renderings were made: templates that print `strftime_now(...)`
/// show it, so rendering must use the same clock to match byte for byte.
const REFERENCE_DAY: &str = "2026-11-23";

/// 2026-11-23 12:00:00 UTC.
const REFERENCE_SECS: u64 = 1_795_392_000 + 12 * 3600;

/// Reference renderings that cannot match because of a genuine engine difference:
/// (template, conversation, reason). Empty: every reference rendering matches.
const KNOWN_DIFFERENCES: &[(&str, &str, &str)] = &[];

/// Templates the reference refuses for the plain conversation, and the shape of
/// conversation they are meant for (EXPECTED.md: tool-use templates need `tools`,
/// firefunction its `functions` text, Gemma 2 has no system role).
fn shape_for_refused(name: &str) -> Option<ChatRequest> {
    let tools = json!([{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city"}},
                       "required": ["city"]}}}]);
    let mut req = ChatRequest::new(conversation());
    match name {
        "CohereForAI-c4ai-command-r-plus-tool_use.jinja"
        | "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja"
        | "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja" => req.tools = Some(tools),
        "fireworks-ai-llama-3-firefunction-v2.jinja" => {
            req.extra.insert("functions".into(), Value::from(tools.to_string()));
            req.extra.insert("datetime".into(), json!("2026-11-23"));
        }
        "google-gemma-2-2b-it.jinja" => {
            req.messages.remove(0);
        }
        _ => return None,
    }
    Some(req)
}

fn fixtures() -> PathBuf {
    let dir = Path::new(FIXTURES);
    assert!(
        dir.join("expected.json").is_file(),
        "chat template fixtures not found at {} (expected the shared/ folder beside the repository \
         checkout, with fixtures/chat-templates/expected.json)",
        dir.display()
    );
    dir.to_path_buf()
}

fn reference_now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(REFERENCE_SECS)
}

/// System + user + assistant + user.
fn conversation() -> Vec<Value> {
    vec![
        message("system", "You are a helpful assistant."),
        message("user", "Hello!"),
        message("assistant", "Hi! How can I help?"),
        message("user", "What is 2+2?"),
    ]
}

struct Expected {
    render_kwargs: Map<String, Value>,
    conversations: BTreeMap<String, Vec<Value>>,
    /// template file -> conversation -> Ok(text) or Err(the reference's error).
    templates: BTreeMap<String, BTreeMap<String, Result<String, String>>>,
}

fn load_expected(dir: &Path) -> Expected {
    let text = std::fs::read_to_string(dir.join("expected.json")).expect("read expected.json");
    let v: Value = serde_json::from_str(&text).expect("expected.json is JSON");
    let render_kwargs = v["render_kwargs"].as_object().expect("render_kwargs").clone();
    assert_eq!(v["add_generation_prompt"], json!(true));
    let conversations = v["conversations"]
        .as_object()
        .expect("conversations")
        .iter()
        .map(|(k, c)| (k.clone(), c.as_array().expect("conversation is a list").clone()))
        .collect();
    let templates = v["templates"]
        .as_object()
        .expect("templates")
        .iter()
        .map(|(name, convs)| {
            let convs = convs
                .as_object()
                .expect("template entry")
                .iter()
                .map(|(c, r)| {
                    let r = match (r.get("text"), r.get("error")) {
                        (Some(t), _) => Ok(t.as_str().expect("text").to_owned()),
                        (None, Some(e)) => Err(e.as_str().expect("error").to_owned()),
                        _ => panic!("{name}/{c}: neither text nor error"),
                    };
                    (c.clone(), r)
                })
                .collect();
            (name.clone(), convs)
        })
        .collect();
    Expected { render_kwargs, conversations, templates }
}

fn template_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read fixtures dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jinja"))
        .collect();
    files.sort();
    files
}

fn compile(path: &Path, kwargs: &Map<String, Value>) -> ChatTemplate {
    let source = std::fs::read_to_string(path).expect("read template");
    let bos = kwargs["bos_token"].as_str().expect("bos_token");
    let eos = kwargs["eos_token"].as_str().expect("eos_token");
    ChatTemplate::new(&source, bos, eos).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The request the reference rendered: its kwargs other than the special tokens as extras.
fn reference_request(messages: Vec<Value>, kwargs: &Map<String, Value>) -> ChatRequest {
    let mut req = ChatRequest::new(messages);
    req.now = Some(reference_now());
    for (k, v) in kwargs {
        if k != "bos_token" && k != "eos_token" {
            req.extra.insert(k.clone(), v.clone());
        }
    }
    req
}

/// First differing position, with context, for a readable failure.
fn first_difference(got: &str, want: &str) -> String {
    let at = got.bytes().zip(want.bytes()).take_while(|(a, b)| a == b).count();
    let ctx = |s: &str| {
        let lo = (0..=at.saturating_sub(60).min(s.len())).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        let hi = ((at + 60).min(s.len())..=s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(s.len());
        format!("{:?}", &s[lo..hi])
    };
    format!("byte {at}: got {} / want {}", ctx(got), ctx(want))
}

/// A template compiled with the fixtures' special tokens, for the small tests.
fn small(source: &str) -> ChatTemplate {
    ChatTemplate::new(source, "<s>", "</s>").unwrap_or_else(|e| panic!("{source:?}: {e}"))
}

fn render_small(source: &str, extra: Value) -> Result<String, ChatError> {
    let mut req = ChatRequest::new(vec![message("user", "hi"), message("assistant", "yo")]);
    req.extra = extra.as_object().cloned().unwrap_or_default();
    small(source).render(&req)
}

// ---------------------------------------------------------------------------------------
// The reference renderings

#[test]
fn expected_renderings_match_exactly() {
    let dir = fixtures();
    let exp = load_expected(&dir);
    let (mut total, mut matched) = (0, 0);
    let mut failures = Vec::new();
    for (name, convs) in &exp.templates {
        let tmpl = compile(&dir.join(name), &exp.render_kwargs);
        for (conv, want) in convs {
            total += 1;
            let req = reference_request(exp.conversations[conv].clone(), &exp.render_kwargs);
            let failure = match (tmpl.render(&req), want) {
                (Ok(g), Ok(w)) if g == *w => None,
                (Ok(g), Ok(w)) => Some(first_difference(&g, w)),
                // Refused like the reference, and with a message that says why.
                (Err(e), Err(_)) if !e.to_string().trim().is_empty() => None,
                (Err(e), Err(r)) => Some(format!("refused without a message: {e:?} (reference: {r})")),
                (Ok(g), Err(e)) => Some(format!("the reference refuses it ({e}), we rendered {g:?}")),
                (Err(e), Ok(_)) => Some(format!("render failed: {e}")),
            };
            let known = KNOWN_DIFFERENCES.iter().any(|(n, c, _)| n == name && c == conv);
            match failure {
                None => {
                    matched += 1;
                    assert!(!known, "{name} / {conv} is listed as a known difference but matches");
                }
                Some(f) if !known => failures.push(format!("{name} / {conv}: {f}")),
                Some(_) => {}
            }
        }
    }
    eprintln!("chat templates: {matched} of {total} reference renderings match exactly");
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(matched + KNOWN_DIFFERENCES.len(), total);
}

#[test]
fn every_template_renders_a_simple_conversation() {
    let dir = fixtures();
    let exp = load_expected(&dir);
    let files = template_files(&dir);
    assert!(!files.is_empty(), "no *.jinja in {}", dir.display());
    let mut failures = Vec::new();
    let mut alternative = 0;
    for path in &files {
        let name = path.file_name().unwrap().to_str().unwrap();
        let tmpl = compile(path, &exp.render_kwargs);
        let mut req = ChatRequest::new(conversation());
        req.now = Some(reference_now());
        req.extra.insert("date_string".into(), json!("26 Jul 2024"));
        match tmpl.render(&req) {
            Ok(text) => {
                if !text.contains("What is 2+2?") {
                    failures.push(format!("{name}: the last user message is missing from {text:?}"));
                }
            }
            Err(e) => {
                // Only a conversation the reference refuses too, and the template's own
                // shape of conversation must then render.
                let refused = exp
                    .templates
                    .get(name)
                    .and_then(|c| c.get("system_multi_turn"))
                    .is_some_and(Result::is_err);
                match (refused, shape_for_refused(name)) {
                    (true, Some(mut req)) => {
                        req.now = Some(reference_now());
                        alternative += 1;
                        if let Err(e) = tmpl.render(&req) {
                            failures.push(format!("{name}: its own conversation shape fails: {e}"));
                        }
                    }
                    _ => failures.push(format!("{name}: {e}")),
                }
            }
        }
    }
    eprintln!(
        "chat templates: {} of {} templates render (of them {alternative} in the shape they require)",
        files.len() - failures.len(),
        files.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_template_refusal_is_reported_as_such() {
    let dir = fixtures();
    let exp = load_expected(&dir);
    let tmpl = compile(&dir.join("google-gemma-2-2b-it.jinja"), &exp.render_kwargs);
    let err = tmpl.render(&ChatRequest::new(conversation())).unwrap_err();
    assert_eq!(err, ChatError::Raised("System role not supported".into()));
    assert!(err.to_string().contains("System role not supported"), "{err}");
}

#[test]
fn a_template_that_needs_tools_fails_clearly_without_them() {
    let dir = fixtures();
    let exp = load_expected(&dir);
    let tmpl = compile(&dir.join("NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja"), &exp.render_kwargs);
    let err = tmpl.render(&ChatRequest::new(conversation())).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("None is not iterable") && text.contains("chat_template:"), "{text}");
}

// ---------------------------------------------------------------------------------------
// Python behaviour the templates rely on

#[test]
fn values_print_the_way_python_prints_them() {
    let got = render_small(
        "{{ true }}|{{ none }}|{{ 1.0 }}|{{ 1e20 }}|{{ 1.5e-7 }}|{{ 0.1 }}|{{ 2 / 4 }}|{{ 7 // 2 }}|\
         {{ [1, 'a', none, true] }}|{{ {'k': \"it's\", 'n': 2.50} }}|{{ 3 | string }}|{{ false | string }}|\
         {{ [true, none, 1] | join(',') }}|{{ 'abc' | join('-') }}",
        json!({}),
    );
    let want =
        "True|None|1.0|1e+20|1.5e-07|0.1|0.5|3|[1, 'a', None, True]|{'k': \"it's\", 'n': 2.5}|3|False|\
                True,None,1|a-b-c";
    assert_eq!(got.unwrap(), want);
}

#[test]
fn tojson_is_pythons_json_dumps() {
    let x = json!({"b": [1, 2.5, null, true, "x\ny\t\u{1}"], "a": {"é": "ü"}});
    let got = render_small(
        "{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ x | tojson(sort_keys=true, separators=(',', ':')) }}|\
         {{ 'é\u{2028}<&>\\'\"' | tojson }}|{{ 'é😀' | tojson(ensure_ascii=true) }}|{{ [] | tojson(indent=2) }}|\
         {{ {} | tojson }}|{{ [1.0, 100.0, 1e16, 12345678.9, -0.0, 3] | tojson }}",
        json!({ "x": x }),
    );
    let want = concat!(
        r#"{"b": [1, 2.5, null, true, "x\ny\t\u0001"], "a": {"é": "ü"}}|"#,
        "{\n  \"b\": [\n    1,\n    2.5,\n    null,\n    true,\n    \"x\\ny\\t\\u0001\"\n  ],\n  \"a\": {\n    \"é\": \"ü\"\n  }\n}|",
        r#"{"a":{"é":"ü"},"b":[1,2.5,null,true,"x\ny\t\u0001"]}|"#,
        "\"é\u{2028}<&>'\\\"\"|",
        r#""\u00e9\ud83d\ude00"|[]|{}|[1.0, 100.0, 1e+16, 12345678.9, -0.0, 3]"#,
    );
    assert_eq!(got.unwrap(), want);
}

#[test]
fn absent_tools_are_python_none() {
    let got = render_small(
        "{{ tools is none }}|{{ tools is defined }}|{{ tools is iterable }}|{% if tools %}yes{% else %}no{% endif %}|\
         {{ tools | tojson }}|{{ tools }}|{{ tools | selectattr('type', 'equalto', 'function') | list | length }}|\
         {{ tools | default('d') }}|{{ documents is none }}",
        json!({}),
    );
    assert_eq!(got.unwrap(), "True|True|False|no|null|None|0|None|True");
    assert!(render_small("{% for t in tools %}{% endfor %}", json!({})).is_err());
    assert!(render_small("{{ tools | length }}", json!({})).is_err());
}

#[test]
fn python_string_and_dict_methods() {
    let got = render_small(
        "{{ '  a b  '.strip() }}|{{ 'a,b,,c'.split(',') }}|{{ 'a b  c'.split() }}|{{ 'xyx'.lstrip('x') }}|\
         {{ 'Hello'.startswith(('He', 'x')) }}|{{ 'abc'.endswith('c') }}|{{ 'a-b'.replace('-', '+') }}|\
         {{ {'a': 1, 'b': 2}.items() | list }}|{{ {'a': 1}.get('b', 'z') }}|{{ 'x{}y{}'.format(1, 'q') }}|\
         {{ 'ABC'.lower() }}|{{ 'abc'.upper() }}|{{ 'a\\nb'.splitlines() }}|{{ 'hello world'.title() }}",
        json!({}),
    );
    let want =
        "a b|['a', 'b', '', 'c']|['a', 'b', 'c']|yx|True|True|a+b|[('a', 1), ('b', 2)]|z|x1yq|abc|ABC|\
                ['a', 'b']|Hello World";
    assert_eq!(got.unwrap(), want);
}

#[test]
fn generation_tags_render_their_body_with_jinja_whitespace() {
    let src = "{%- for m in messages %}\n  {%- if m.role == 'assistant' %}\n    {% generation -%}\n    A: {{ m.content }}\n    {%- endgeneration %}\n  {% else %}\n    U: {{ m.content }}\n  {% endif %}\n{% endfor %}";
    assert_eq!(render_small(src, json!({})).unwrap(), "    U: hi\nA: yo");
}

#[test]
fn raw_blocks_and_strings_are_left_alone() {
    let src = "{% set ns = namespace(x=1) %}{% raw %}{% set ns.x = 2 %}{{ x }}{%- endraw %}|{{ ns.x }}|\
               {% set ns.x = [ns.x, '%}'] %}{{ ns.x }}|{%set ns . x=3%}{{ ns.x }}";
    assert_eq!(render_small(src, json!({})).unwrap(), "{% set ns.x = 2 %}{{ x }}|1|[1, '%}']|3");
}

#[test]
fn raise_exception_is_a_refusal_with_the_templates_message() {
    let err =
        render_small("{{ raise_exception('Only user and assistant roles are supported!') }}", json!({}));
    assert_eq!(err.unwrap_err(), ChatError::Raised("Only user and assistant roles are supported!".into()));
}

#[test]
fn extras_and_special_tokens_reach_the_template() {
    let got = render_small(
        "{{ bos_token }}|{{ eos_token }}|{{ enable_thinking }}|{{ add_generation_prompt }}|{{ messages | length }}",
        json!({"enable_thinking": false}),
    );
    assert_eq!(got.unwrap(), "<s>|</s>|False|True|2");
    // Extras override the special tokens, as transformers' keyword arguments do.
    assert_eq!(render_small("{{ bos_token }}", json!({"bos_token": "<BOS>"})).unwrap(), "<BOS>");
}

#[test]
fn strftime_now_uses_the_request_clock() {
    assert_eq!(strftime("%Y-%m-%d", REFERENCE_SECS as i64), REFERENCE_DAY);
    let tmpl = small(
        "{{ strftime_now('%Y-%m-%d') }}|{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%B %d, %Y') }}|\
         {{ strftime_now('%A %a %H:%M:%S %j %-d %e %I%p %y %%') }}",
    );
    let mut req = ChatRequest::new(vec![]);
    req.now = Some(reference_now() + Duration::from_secs(3 * 3600 + 4 * 60 + 5));
    assert_eq!(
        tmpl.render(&req).unwrap(),
        "2026-11-23|23 Nov 2026|November 23, 2026|Monday Mon 15:04:05 327 23 23 03PM 26 %"
    );
    // Leap years, the epoch and dates before it.
    assert_eq!(strftime("%F %T %A", 951_782_400), "2000-02-29 00:00:00 Tuesday");
    assert_eq!(strftime("%F %j", 0), "1970-01-01 001");
    assert_eq!(strftime("%F %A", -86_400), "1969-12-31 Wednesday");
    assert_eq!(strftime("%j", 1_735_603_200), "366"); // 2024-12-31
}

#[test]
fn chatml_fallback() {
    let tmpl = ChatTemplate::chatml();
    let mut req = ChatRequest::new(vec![message("system", "S"), message("user", "U")]);
    assert_eq!(
        tmpl.render(&req).unwrap(),
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    );
    req.add_generation_prompt = false;
    assert_eq!(
        tmpl.render(&req).unwrap(),
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
    );
    assert!(CHATML_WARNING.contains("ChatML"));
}

#[test]
fn template_and_special_tokens_from_gguf_metadata() {
    let vocab = ["<unk>", "<s>", "</s>"];
    let token_text = |id: u32| vocab.get(id as usize).map(|s| s.to_string());
    let bytes = GgufWriter::new()
        .kv(
            "tokenizer.chat_template",
            MdValue::String("{{ bos_token }}{{ messages[0].content }}{{ eos_token }}".into()),
        )
        .kv("tokenizer.ggml.bos_token_id", MdValue::U32(1))
        .kv("tokenizer.ggml.eos_token_id", MdValue::U32(2))
        .to_bytes();
    let md = Gguf::parse(&bytes).unwrap().metadata;
    let tmpl = ChatTemplate::from_metadata(&md, token_text).unwrap().expect("has a template");
    assert_eq!((tmpl.bos_token(), tmpl.eos_token()), ("<s>", "</s>"));
    assert_eq!(tmpl.render(&ChatRequest::new(vec![message("user", "x")])).unwrap(), "<s>x</s>");

    let none = Gguf::parse(
        &GgufWriter::new().kv("general.architecture", MdValue::String("llama".into())).to_bytes(),
    );
    assert!(ChatTemplate::from_metadata(&none.unwrap().metadata, token_text).unwrap().is_none());

    let wrong = Gguf::parse(&GgufWriter::new().kv("tokenizer.chat_template", MdValue::U32(3)).to_bytes());
    let err = ChatTemplate::from_metadata(&wrong.unwrap().metadata, token_text).unwrap_err();
    assert!(matches!(err, ChatError::Metadata(_)), "{err}");

    let bad = Gguf::parse(
        &GgufWriter::new().kv("tokenizer.chat_template", MdValue::String("{% if %}".into())).to_bytes(),
    );
    let err = ChatTemplate::from_metadata(&bad.unwrap().metadata, token_text).unwrap_err();
    assert!(matches!(err, ChatError::Syntax(_)), "{err}");
}

// ---------------------------------------------------------------------------------------
// Untrusted templates

#[test]
fn an_endless_loop_runs_out_of_fuel_quickly() {
    let tmpl = small("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}");
    let start = Instant::now();
    let err = tmpl.render(&ChatRequest::new(vec![message("user", "hi")])).unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, ChatError::OutOfFuel { .. }), "{err}");
    assert!(err.to_string().contains("work budget"), "{err}");
    // Unoptimized test builds interpret several times slower than release builds.
    assert!(took < Duration::from_secs(20), "took {took:?}");
    eprintln!("endless loop stopped after {took:?}");
}

#[test]
fn exponential_data_runs_out_of_fuel_before_memory() {
    let tmpl = small(
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
    );
    let err = tmpl.render(&ChatRequest::new(vec![])).unwrap_err();
    assert!(matches!(err, ChatError::OutOfFuel { .. }), "{err}");
}

#[test]
fn the_fuel_budget_grows_with_the_input() {
    let limits = RenderLimits::default();
    let short = ChatRequest::new(vec![message("user", "hi")]);
    let long = ChatRequest::new(vec![message("user", &"x".repeat(100_000))]);
    assert!(limits.fuel_for(&long) >= limits.fuel_for(&short) + 99_000 * limits.fuel_per_input_byte);
    // A long conversation through a template that rebuilds a string per message.
    let quadratic = small(
        "{% set ns = namespace(s='') %}{% for m in messages %}{% set ns.s = ns.s + m.content %}{% endfor %}{{ ns.s | length }}",
    );
    let messages = (0..400).map(|i| message("user", &format!("{i:04}{}", "y".repeat(1000)))).collect();
    assert_eq!(quadratic.render(&ChatRequest::new(messages)).unwrap(), "401600");
}

#[test]
fn output_is_capped() {
    let tmpl = small("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}");
    let err = tmpl.render(&ChatRequest::new(vec![])).unwrap_err();
    assert_eq!(err, ChatError::OutputTooLarge { limit: RenderLimits::default().max_output });
    let limits = RenderLimits { max_output: 10, ..RenderLimits::default() };
    let tmpl = ChatTemplate::with_limits("{{ 'x' * 11 }}", "", "", limits).unwrap();
    assert_eq!(tmpl.render(&ChatRequest::new(vec![])).unwrap_err(), ChatError::OutputTooLarge { limit: 10 });
}

#[test]
fn work_that_fuel_does_not_see_hits_the_timeout() {
    // minijinja charges comparing two lists by their top level: comparing `[a]` with `[b]`
    // costs one item however long `a` and `b` are, so this spins almost for free. The
    // render is given up at the timeout (its thread finishes in the background).
    let limits = RenderLimits { timeout: Duration::from_millis(500), ..RenderLimits::default() };
    let src = "{% set a = [range(20000) | list] %}{% set b = [range(20000) | list] %}\
               {% for i in range(20000) %}{% if a == b %}{% endif %}{% endfor %}";
    let tmpl = ChatTemplate::with_limits(src, "", "", limits).unwrap();
    let start = Instant::now();
    let err = tmpl.render(&ChatRequest::new(vec![])).unwrap_err();
    assert_eq!(err, ChatError::Timeout { limit: limits.timeout });
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
}

/// Renders on a thread with a small stack: the render must not depend on the caller's.
fn render_on_small_stack(source: &'static str) -> Result<String, ChatError> {
    std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || small(source).render(&ChatRequest::new(vec![])))
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn unbounded_recursion_hits_the_recursion_limit() {
    let err = render_on_small_stack("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").unwrap_err();
    assert!(err.to_string().contains("recursion limit"), "{err}");
    let err = render_on_small_stack("{% for x in [1] recursive %}{{ loop([x]) }}{% endfor %}").unwrap_err();
    assert!(err.to_string().contains("recursion limit"), "{err}");
}

#[test]
fn deeply_nested_values_are_refused_not_a_stack_overflow() {
    // Namespaces carry values across loop iterations; nesting them without bound would
    // make minijinja's recursive drop/compare/print overflow the stack and abort.
    let sneaky = [
        "{% set ns = namespace(x=1) %}{% for i in range(100000) %}{% set ns.x = [ns.x] %}{% endfor %}",
        "{% set ns = namespace(x=1) %}{% for i in range(100000) %}{%set ns . x={'a': ns.x}%}{% endfor %}",
        "{% set ns = namespace(x=1) %}{% for i in range(100000) %}{%- set\n ns.x\n= [[[ns.x]]] -%}{% endfor %}",
        "{% set ns = namespace(x=1) %}{% for i in range(100000) %}{% set ns.x, ns.y = [ns.x], '%}' %}{% endfor %}",
        "{% set ns = namespace(x=1) %}{% for i in range(100000) %}{% set (ns.x) = namespace(v=ns.x) %}{% endfor %}",
        "{% set ns = namespace(x=1) %}{% for i in range(100000) %}{% set ns.x = {'a': ns.x}.items() %}{% endfor %}",
    ];
    for src in sneaky {
        let err = render_on_small_stack(src).unwrap_err();
        assert!(err.to_string().contains(&format!("deeper than {MAX_NAMESPACE_DEPTH}")), "{src}: {err}");
    }
    // Nesting within one expression and through recursion is bounded by the parser and
    // the recursion limit; printing and comparing it stays within the render stack.
    let wrap = format!("{}x{}", "[".repeat(60), "]".repeat(60));
    let src = format!(
        "{{% for x in [1] recursive %}}{{% set y = {wrap} %}}{{{{ (y ~ '') | length > 0 }}}}{{{{ y == y }}}}{{{{ loop([y]) }}}}{{% endfor %}}"
    );
    let err = small(&src).render(&ChatRequest::new(vec![])).unwrap_err();
    assert!(err.to_string().contains("recursion limit"), "{err}");
    // Flat accumulation, the pattern real templates use, is fine.
    let ok = render_on_small_stack(
        "{% set ns = namespace(items=[], s='') %}{% for i in range(500) %}{% set ns.items = ns.items + [{'i': i}] %}\
         {% set ns.s = ns.s ~ i %}{% endfor %}{{ ns.items | length }} {{ ns.s | length }}",
    );
    assert_eq!(ok.unwrap(), "500 1390");
}

#[test]
fn hostile_sources_compile_or_fail_cleanly() {
    // minijinja's parser and compiler recurse once per link of these chains; at the limit
    // for one tag they must compile (or fail) on the engine's stack, never overflow it, and
    // past it they are refused.
    let room = MAX_TAG_CODE_BYTES - 32;
    let chains = [
        format!("{{{{ {}1 }}}}", "-".repeat(room)),
        format!("{{{{ {}1 }}}}", "not ".repeat(room / 3)),
        format!("{{{{ 1{} }}}}", "+1".repeat(room / 2)),
        format!("{{{{ x{} }}}}", ".a".repeat(room / 2)),
        format!("{{{{ 'x'{} }}}}", "|trim".repeat(room / 5)),
        format!(
            "{{% set y = [1]{} %}}{{{{ (y ~ '') | length > 0 }}}}{{{{ y == y }}}}",
            "|batch(1)".repeat(room / 9)
        ),
    ];
    for src in &chains {
        let t = ChatTemplate::new(src, "", "").unwrap_or_else(|e| panic!("{e}"));
        let _ = t.render(&ChatRequest::new(vec![]));
    }
    let over = format!("{{{{ {}1 }}}}", "-".repeat(MAX_TAG_CODE_BYTES));
    let err = ChatTemplate::new(&over, "", "").unwrap_err();
    assert!(err.to_string().contains("bytes of code"), "{err}");
    // Long string literals are text, not code.
    let long_text = format!("{{{{ '{}' | length }}}}", "x".repeat(100_000));
    assert_eq!(small(&long_text).render(&ChatRequest::new(vec![])).unwrap(), "100000");
    // Through recursion, each level nesting as deep as one tag allows.
    let recursive = format!(
        "{{% for x in [1] recursive %}}{{% set y = [x]{} %}}{{{{ (y ~ '') | length > 0 }}}}{{{{ y == y }}}}\
         {{{{ [y, y] | sort | length }}}}{{{{ [y] | unique | length }}}}{{{{ loop([y]) }}}}{{% endfor %}}",
        "|batch(1)".repeat((MAX_TAG_CODE_BYTES - 40) / 9)
    );
    let err = small(&recursive).render(&ChatRequest::new(vec![])).unwrap_err();
    let stopped = matches!(err, ChatError::OutOfFuel { .. }) || err.to_string().contains("recursion limit");
    assert!(stopped, "{err}");

    let too_big = "x".repeat(MAX_TEMPLATE_BYTES + 1);
    assert!(matches!(ChatTemplate::new(&too_big, "", ""), Err(ChatError::Syntax(_))));

    let deep_parens = format!("{{{{ {}1{} }}}}", "(".repeat(100_000), ")".repeat(100_000));
    let cases = [
        deep_parens.as_str(),
        "{% include 'x' %}",
        "{% extends 'base' %}",
        "{% import 'm' as m %}",
        "{{ 'unterminated }}",
        "{% raw %}no end",
        "{# no end",
        "{{ {'a': {'b': 1}} }}",
    ];
    for src in cases {
        if let Ok(t) = ChatTemplate::new(src, "", "") {
            let _ = t.render(&ChatRequest::new(vec![]));
        }
    }
    assert_eq!(render_small("{{ {'a': {'b': 1}} }}", json!({})).unwrap(), "{'a': {'b': 1}}");
}
