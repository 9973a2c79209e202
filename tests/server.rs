//! `ferrite serve` end to end: real servers on loopback, driven by the official `openai`
//! Python client (tests/server/test_openai.py: every endpoint, streaming, stop strings,
//! seeds, logprobs, JSON mode and each error case with its status), a bounded load test
//! (tests/server/load.py: 8 concurrent streams against one, no failed request, prefix-cache
//! hits on a shared system prompt, KV blocks free at the end; the speed ratio is printed, not
//! asserted, since CI machines are shared), and SIGTERM: in-flight work finishes and the process exits 0.
//!
//! Needs the Python environment of `scripts/py-env.sh` (target/pyenv with `openai`).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    url: String,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `ferrite serve` on a free port and waits until /health says 200.
fn start(model: &PathBuf, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .arg("serve")
        .arg(model)
        .args(["--port", "0", "-t", "2"])
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ferrite serve");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("server exited before listening").unwrap();
        eprintln!("[server] {line}");
        if let Some(rest) = line.strip_prefix("ferrite: listening on http://") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Keep echoing the server's log.
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(|l| eprintln!("[server] {l}")));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, _) = http(&addr, "GET", "/health", "");
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "health while loading");
        assert!(Instant::now() < deadline, "the server did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server { child, url: format!("http://{addr}"), addr }
}

/// A minimal HTTP/1.1 request; returns (status, body).
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else { return (0, String::new()) };
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer test-key\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}

fn python() -> PathBuf {
    let p = common::root().join("target/pyenv/bin/python");
    assert!(p.exists(), "{} is missing: run scripts/py-env.sh (it installs the openai client)", p.display());
    p
}

fn run_py(args: &[&str], envs: &[(&str, &str)]) {
    let out = Command::new(python())
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(common::root())
        .output()
        .expect("run python");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "{} failed", args[0]);
}

#[test]
fn openai_client_load_test_and_sigterm() {
    let model = common::model("SmolLM2-135M-Instruct.Q4_1.gguf", true).unwrap();
    let main = start(&model, &["--api-key", "test-key", "--parallel", "8", "--ctx", "1024"]);
    let limits = start(&model, &["--ctx", "256", "--parallel", "1", "--queue", "1", "--max-body-mb", "1"]);
    let queue = start(&model, &["--ctx", "2048", "--parallel", "1", "--queue", "1"]);

    run_py(
        &["tests/server/test_openai.py"],
        &[
            ("FERRITE_URL", &main.url),
            ("FERRITE_KEY", "test-key"),
            ("FERRITE_LIMITS_URL", &limits.url),
            ("FERRITE_QUEUE_URL", &queue.url),
        ],
    );
    drop(queue);
    run_py(
        &[
            "tests/server/load.py",
            "--url",
            &main.url,
            "--key",
            "test-key",
            "--streams",
            "8",
            "--tokens",
            "64",
            "--min-hit-rate",
            "0.4",
        ],
        &[],
    );

    // SIGTERM with a request in flight: it completes, then the process exits 0.
    let addr = main.addr.clone();
    let inflight = std::thread::spawn(move || {
        http(
            &addr,
            "POST",
            "/v1/completions",
            r#"{"prompt": "Once upon a time", "max_tokens": 48, "ignore_eos": true}"#,
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut main = main;
    let pid = main.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let (status, body) = inflight.join().unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 48);
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(s) = main.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(code.success(), "exit status after SIGTERM: {code:?}");
    // New connections are refused once it is gone.
    assert_eq!(http(&main.addr, "GET", "/health", "").0, 0);
}

/// Tool calling end to end with a model trained for it: Qwen2.5-Coder-0.5B, offered a weather
/// tool, calls it (greedy), and the conversation with the call and the tool's answer renders
/// and generates. Ignored in CI (the model is not fetched there): `scripts/fetch-models.sh
/// qwen05`, then `cargo test --release --test server -- --ignored qwen05`.
#[test]
#[ignore]
fn qwen05_calls_an_offered_tool() {
    let Some(model) = common::model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", false) else { return };
    let s = start(&model, &["--api-key", "test-key"]);
    let tools = serde_json::json!([{"type": "function", "function": {"name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let mut messages =
        serde_json::json!([{"role": "user", "content": "What is the weather like in Paris today?"}]);
    let body = serde_json::json!({"messages": messages, "tools": tools, "temperature": 0, "max_tokens": 64});
    let (status, text) = http(&s.addr, "POST", "/v1/chat/completions", &body.to_string());
    assert_eq!(status, 200, "{text}");
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    let choice = &r["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{text}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    let args: serde_json::Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, serde_json::json!({"city": "Paris"}));
    let msgs = messages.as_array_mut().unwrap();
    msgs.push(choice["message"].clone());
    msgs.push(serde_json::json!({"role": "tool", "tool_call_id": call["id"], "content": "{\"temp_c\": 18}"}));
    let body = serde_json::json!({"messages": messages, "tools": tools, "temperature": 0, "max_tokens": 32});
    let (status, text) = http(&s.addr, "POST", "/v1/chat/completions", &body.to_string());
    assert_eq!(status, 200, "{text}");
}
