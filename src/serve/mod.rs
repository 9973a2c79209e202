//! `ferrite serve`: an OpenAI-compatible HTTP server over the continuous-batching scheduler.
//!
//! The socket is bound first and answers `/health` with 503 while the model loads. Requests
//! are parsed and tokenized on the async side (templates render on blocking threads), then
//! handed to the engine thread ([`worker`]); events come back per request and are sent whole
//! or as SSE chunks. SIGTERM/SIGINT stop new connections, let running requests finish within
//! the grace period, cancel the rest, and exit 0.

mod metrics;
mod openai;
mod worker;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ferrite::reasoning::ReasoningFormat;
use ferrite::{Engine, KvCapacity, Prompter, Scheduler, SchedulerOptions};
use metrics::Metrics;
use openai::{ApiError, Assembler, Ctx, Plan};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use worker::Worker;

/// `ferrite serve` options.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: crate::cli_gen::ModelArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Sequences generating at once (continuous batching).
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// Requests that may wait beyond those; more get 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// KV cache budget in MiB, shared by all sequences (default: room for --parallel full
    /// contexts, at most 2048 MiB, at least one context).
    #[arg(long)]
    pub kv_mem: Option<usize>,
    /// Tokens per forward pass (decode tokens plus prompt chunks).
    #[arg(long, default_value_t = 512)]
    pub batch_tokens: usize,
    /// Require `Authorization: Bearer KEY` on /v1 routes.
    #[arg(long, env = "FERRITE_API_KEY")]
    pub api_key: Option<String>,
    /// Model id the API reports and accepts (default: the file name without .gguf).
    #[arg(long)]
    pub alias: Option<String>,
    /// Where `<think>…</think>` goes: deepseek (to reasoning_content) or none (left in content).
    #[arg(long, default_value = "deepseek")]
    pub reasoning_format: ReasoningFormat,
    /// Largest request body in MiB.
    #[arg(long, default_value_t = 8)]
    pub max_body_mb: usize,
    /// Seconds running requests get to finish after SIGTERM.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace: u64,
}

/// What a ready server holds.
struct Ready {
    worker: Worker,
    prompter: Prompter,
    ctx: Ctx,
}

struct AppState {
    ready: OnceLock<Ready>,
    /// Set on SIGTERM/SIGINT: /health answers 503 while running requests finish.
    stopping: std::sync::atomic::AtomicBool,
    metrics: Arc<Metrics>,
    api_key: Option<String>,
    model_id: String,
    created: u64,
}

type Shared = Arc<AppState>;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, axum::Json(self.body())).into_response();
        if self.status == 429 || self.status == 503 {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn loading() -> ApiError {
    ApiError {
        status: 503,
        kind: "server_error",
        code: Some("model_loading"),
        param: None,
        message: "the model is still loading".into(),
    }
}

/// Runs the server until SIGTERM or SIGINT.
pub fn run(args: ServeArgs) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("ferrite-http")
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    // Signal handlers first: a SIGTERM during loading is a clean stop too.
    let stop_signal = shutdown_signal().map_err(|e| format!("signal handlers: {e}"))?;
    tokio::pin!(stop_signal);
    let model_id = args.alias.clone().unwrap_or_else(|| {
        let name = args.model.model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        name.strip_suffix(".gguf").unwrap_or(&name).to_string()
    });
    let state: Shared = Arc::new(AppState {
        ready: OnceLock::new(),
        stopping: false.into(),
        metrics: Arc::new(Metrics::new(&model_id)),
        api_key: args.api_key.clone(),
        model_id: model_id.clone(),
        created: unix_now(),
    });
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .map_err(|e| format!("cannot listen on {}:{}: {e}", args.host, args.port))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!("ferrite: listening on http://{addr} (loading {})", args.model.model.display());

    // Load on a plain thread; the socket already answers /health with 503.
    let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
    {
        let state = state.clone();
        let args = args.clone();
        std::thread::spawn(move || {
            let r = load(&args, &state);
            let _ = loaded_tx.send(r);
        });
    }

    // A known route with the wrong method: 405 in OpenAI's error shape. Set per router before
    // `route_layer`, so that on /v1 routes the key is still checked first.
    let not_allowed =
        || async { ApiError { status: 405, ..ApiError::invalid("this route does not take that method") } };
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/tokenize", post(tokenize))
        .method_not_allowed_fallback(not_allowed)
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth));
    let open = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .method_not_allowed_fallback(not_allowed);
    let app = Router::new()
        .merge(v1)
        .merge(open)
        .fallback(|| async { ApiError { status: 404, ..ApiError::invalid("no such route") } })
        .layer(DefaultBodyLimit::max(args.max_body_mb << 20))
        .with_state(state.clone());

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, app).with_graceful_shutdown({
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    });
    let server = tokio::spawn(async move { server.await });

    let mut loaded = Some(loaded_rx);
    loop {
        tokio::select! {
            r = async { loaded.as_mut().expect("polled only while pending").await }, if loaded.is_some() => {
                loaded = None;
                match r {
                    Ok(Ok(())) => eprintln!("ferrite: ready: {model_id} on http://{addr}"),
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Err("the loading thread died".into()),
                }
            }
            () = &mut stop_signal => break,
        }
    }
    eprintln!("ferrite: shutting down: no new connections; {} s for running requests", args.shutdown_grace);
    state.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = stop_tx.send(true);
    let grace = Duration::from_secs(args.shutdown_grace);
    let mut server = server;
    if tokio::time::timeout(grace, &mut server).await.is_err() {
        if let Some(r) = state.ready.get() {
            r.worker.cancel_all();
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut server).await;
    }
    eprintln!("ferrite: stopped");
    Ok(())
}

/// Installs the SIGTERM and SIGINT handlers now (not at the first poll) and returns the
/// future that resolves on either.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?);
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}

/// Ctrl-C where there are no Unix signals.
#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

fn load(args: &ServeArgs, state: &Shared) -> Result<(), String> {
    let ma = &args.model;
    // The KV cache: the given budget, else one context per parallel sequence up to 2 GiB;
    // never less than one context.
    let kv = match args.kv_mem {
        Some(mib) => KvCapacity::Bytes(mib << 20),
        None => KvCapacity::Contexts { n: args.parallel.max(1), max_bytes: 2048 << 20 },
    };
    let opts = ferrite::LoadOptions {
        threads: ma.threads,
        ctx: ma.ctx,
        kv: Some(kv),
        backend: ma.backend,
        prefetch: None,
    };
    let engine = Engine::load(&ma.model, &opts).map_err(|e| e.to_string())?;
    if let Some(w) = engine.template_warning() {
        eprintln!("ferrite: warning: {w}");
    }
    if let Some(n) = engine.backend_note() {
        eprintln!("ferrite: {n}");
    }
    for (flag, n) in [("--batch-tokens", args.batch_tokens), ("--parallel", args.parallel)] {
        if n > engine.max_batch_tokens() {
            return Err(format!(
                "{flag} {n} exceeds the {} tokens one forward pass of this model holds on the {} backend",
                engine.max_batch_tokens(),
                engine.backend_name()
            ));
        }
    }
    let per_token = engine.config().kv_bytes_per_token();
    if let KvCapacity::Bytes(b) = kv {
        if b / per_token.max(1) < engine.ctx() {
            eprintln!(
                "ferrite: warning: a KV budget of {} MiB holds less than one context of {} tokens; using one context",
                b >> 20,
                engine.ctx()
            );
        }
    }
    let prompter = engine.prompter();
    let file_name = ma.model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let ctx = Ctx {
        model_id: state.model_id.clone(),
        file_name,
        ctx: engine.ctx(),
        reasoning: args.reasoning_format,
    };
    eprintln!(
        "ferrite: {} on {} with {} threads; context {}, KV cache {} tokens ({} MiB), {} sequences at once",
        engine.config().arch_name,
        engine.backend_name(),
        engine.threads(),
        engine.ctx(),
        engine.kv_tokens(),
        (engine.kv_tokens() * per_token) >> 20,
        args.parallel
    );
    let sched = Scheduler::new(
        engine,
        SchedulerOptions {
            max_running: args.parallel,
            max_waiting: args.queue,
            step_tokens: args.batch_tokens,
        },
    );
    let worker = Worker::spawn(sched, state.metrics.clone());
    let _ = state.ready.set(Ready { worker, prompter, ctx });
    Ok(())
}

async fn auth(State(s): State<Shared>, req: Request, next: Next) -> Response {
    if let Some(key) = &s.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return ApiError {
                status: 401,
                kind: "invalid_request_error",
                code: Some("invalid_api_key"),
                param: None,
                message: "missing or wrong API key (Authorization: Bearer …)".into(),
            }
            .into_response();
        }
    }
    next.run(req).await
}

async fn health(State(s): State<Shared>) -> Response {
    let unavailable = |status: &str| {
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"status": status}))).into_response()
    };
    match s.ready.get() {
        _ if s.stopping.load(std::sync::atomic::Ordering::SeqCst) => unavailable("stopping"),
        Some(r) if !r.worker.alive() => unavailable("engine stopped"),
        Some(_) => (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response(),
        None => {
            let mut r = unavailable("loading");
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
    }
}

async fn metrics_text(State(s): State<Shared>) -> Response {
    // The engine thread copies its scheduler's state in after every step.
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}

async fn models(State(s): State<Shared>) -> Response {
    let meta = s.ready.get().map(|r| json!({"n_ctx": r.ctx.ctx}));
    axum::Json(json!({
        "object": "list",
        "data": [{"id": s.model_id, "object": "model", "created": s.created, "owned_by": "ferrite", "meta": meta}],
    }))
    .into_response()
}

/// `POST /tokenize {"content": "…"}` → `{"tokens": […]}` (llama.cpp's server route): the ids
/// a prompt becomes, with the model's BOS rule and special tokens parsed.
async fn tokenize(
    State(s): State<Shared>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    #[derive(serde::Deserialize)]
    struct Body {
        content: String,
    }
    let r = async {
        let b: Body = openai::parse(&body_bytes(body)?)?;
        let ready = s.ready.get().ok_or_else(loading)?;
        let p = ready.prompter.clone();
        let tokens = tokio::task::spawn_blocking(move || p.tokenize(&b.content))
            .await
            .map_err(|e| ApiError::from_engine(ferrite::EngineError::Invalid(e.to_string())))?;
        Ok::<_, ApiError>(axum::Json(json!({"tokens": tokens})).into_response())
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}

/// The request body, or the error for an unreadable or oversized one.
fn body_bytes(body: Result<Bytes, axum::extract::rejection::BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError { status: 413, ..ApiError::invalid("the request body is too large") }
        } else {
            ApiError::invalid(format!("cannot read the request body: {e}"))
        }
    })
}

type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

async fn chat(State(s): State<Shared>, body: Body) -> Response {
    generate(s, body, openai::plan_chat, "chatcmpl").await
}

async fn completions(State(s): State<Shared>, body: Body) -> Response {
    generate(s, body, openai::plan_completion, "cmpl").await
}

/// Both generation routes: parse, plan (templates are untrusted code with a time bound, so
/// planning runs off the async threads), then respond from the engine's events.
async fn generate<T: for<'de> serde::Deserialize<'de> + Send + 'static>(
    s: Shared,
    body: Body,
    plan: fn(&Ctx, &Prompter, T) -> Result<Plan, ApiError>,
    id_prefix: &str,
) -> Response {
    let started = Instant::now();
    let r = async {
        let req: T = openai::parse(&body_bytes(body)?)?;
        let ready = s.ready.get().ok_or_else(loading)?;
        let (ctx, p) = (ready.ctx.clone(), ready.prompter.clone());
        let plan = tokio::task::spawn_blocking(move || plan(&ctx, &p, req))
            .await
            .map_err(|e| ApiError::from_engine(ferrite::EngineError::Invalid(e.to_string())))??;
        Ok::<_, ApiError>((ready, plan))
    }
    .await;
    match r {
        Ok((ready, plan)) => respond(&s, ready, plan, started, id_prefix).await,
        Err(e) => e.into_response(),
    }
}

/// Per-request latency bookkeeping for the histograms.
struct Clock {
    started: Instant,
    last: Option<Instant>,
}

impl Clock {
    fn token(&mut self, m: &Metrics) {
        let now = Instant::now();
        match self.last {
            None => m.ttft.observe((now - self.started).as_secs_f64()),
            Some(t) => m.itl.observe((now - t).as_secs_f64()),
        }
        self.last = Some(now);
    }
}

async fn respond(s: &Shared, ready: &Ready, plan: Plan, started: Instant, prefix: &str) -> Response {
    let mut events = match ready.worker.submit(plan.seqs.clone()).await {
        Ok(rx) => rx,
        Err(e) => return ApiError::from_engine(e).into_response(),
    };
    let id = format!("{prefix}-{:016x}", rand_id());
    let created = unix_now();
    let mut asm = Assembler::new(&plan, ready.prompter.clone(), ready.ctx.reasoning);
    let metrics = s.metrics.clone();
    let mut clock = Clock { started, last: None };
    if !plan.stream {
        while let Some((i, ev)) = events.recv().await {
            if matches!(ev, ferrite::SeqEvent::Token(_)) {
                clock.token(&metrics);
            }
            asm.push(i, ev);
            if asm.done() {
                break;
            }
        }
        metrics.e2e.observe(started.elapsed().as_secs_f64());
        if let Some(msg) = asm.failure() {
            metrics.success.with_label_values(&["error"]).inc();
            return ApiError {
                status: 500,
                kind: "server_error",
                code: None,
                param: None,
                message: msg.to_string(),
            }
            .into_response();
        }
        if !asm.done() {
            metrics.success.with_label_values(&["error"]).inc();
            return ApiError::from_engine(worker::stopped()).into_response();
        }
        count_finished(&metrics, &asm);
        return axum::Json(asm.response(&id, created, &plan.model, plan.prompt_tokens)).into_response();
    }
    // Streaming: a task turns events into SSE chunks; when the client goes away the chunk
    // channel closes, the task ends, its event receiver drops, and the engine cancels.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(64);
    let object = if plan.kind == openai::Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
    let head = json!({"id": id, "object": object, "created": created, "model": plan.model,
                      "system_fingerprint": concat!("ferrite-", env!("CARGO_PKG_VERSION"))});
    tokio::spawn(async move {
        let mut first = vec![true; asm.choices.len()];
        let send = |v: Value| SseEvent::default().data(v.to_string());
        loop {
            // A client that leaves is noticed at once (queued or in a long prompt too), not
            // at the next chunk: returning drops `events`, and the engine cancels.
            let (i, ev) = tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => ev,
                    None => break,
                },
                () = tx.closed() => return,
            };
            if matches!(ev, ferrite::SeqEvent::Token(_)) {
                clock.token(&metrics);
            }
            let d = asm.push(i, ev);
            if let Some(msg) = asm.choices[i].error.clone() {
                let err =
                    ApiError { status: 500, kind: "server_error", code: None, param: None, message: msg };
                let _ = tx.send(Ok(send(err.body()))).await;
                metrics.success.with_label_values(&["error"]).inc();
                return;
            }
            if let Some(chunk) = asm.chunk(i, &d, first[i], &head) {
                first[i] = false;
                if tx.send(Ok(send(chunk))).await.is_err() {
                    return; // the client left
                }
            }
            if asm.done() {
                break;
            }
        }
        if !asm.done() {
            metrics.e2e.observe(started.elapsed().as_secs_f64());
            let _ = tx.send(Ok(send(ApiError::from_engine(worker::stopped()).body()))).await;
            metrics.success.with_label_values(&["error"]).inc();
            return;
        }
        metrics.e2e.observe(started.elapsed().as_secs_f64());
        count_finished(&metrics, &asm);
        if plan.include_usage {
            let mut u = head.clone();
            u["choices"] = json!([]);
            u["usage"] = asm.usage(plan.prompt_tokens);
            let _ = tx.send(Ok(send(u))).await;
        }
        let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

fn count_finished(m: &Metrics, asm: &Assembler) {
    for c in &asm.choices {
        if let Some(reason) = c.finish_reason() {
            m.success.with_label_values(&[reason]).inc();
        }
    }
}

pub(crate) fn rand_id() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (t ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9)
}
