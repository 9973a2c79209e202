//! The `ferrite` binary's contracts: `info --json` figures (cross-checked against what the
//! `gguf` Python package reports for the same file), and one clear stderr line with a
//! non-zero exit for a bad file.

mod common;

use std::process::Command;

fn ferrite() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferrite"))
}

#[test]
fn info_json_matches_gguf_python() {
    let path = common::model("SmolLM2-135M-Instruct.Q4_1.gguf", true).unwrap();
    let out = ferrite().args(["info", "--json", "--ctx", "2048"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Figures as `gguf.GGUFReader` (gguf 0.19) reports them for this file.
    assert_eq!(v["file_size"], 98_362_432);
    assert_eq!(v["n_params"], 134_515_008);
    assert_eq!(v["n_tensors"], 272);
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["context_length"], 8192);
    assert_eq!(v["n_layers"], 30);
    assert_eq!(v["n_head"], 9);
    assert_eq!(v["n_head_kv"], 3);
    assert_eq!(v["head_dim"], 64);
    assert_eq!(v["tokenizer"]["model"], "gpt2");
    assert_eq!(v["tokenizer"]["vocab_size"], 49152);
    assert_eq!(v["tokenizer"]["merges"], 48900);
    assert_eq!(v["chat_template"], true);
    assert_eq!(v["rope"]["freq_base"], 100000.0);
    let types: Vec<(String, u64, u64)> = v["tensor_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["type"].as_str().unwrap().to_string(),
                t["count"].as_u64().unwrap(),
                t["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        types,
        vec![("Q4_1".into(), 210, 66_355_200), ("Q8_0".into(), 1, 30_081_024), ("F32".into(), 61, 140_544)]
    );
    // KV cache at 2048: 30 layers × 2048 × 3 heads × (64 + 64) × 4 bytes.
    assert_eq!(v["memory"]["kv_cache_bytes"], 30u64 * 2048 * 3 * 128 * 2);
    assert_eq!(v["memory"]["weights_bytes"], 66_355_200u64 + 30_081_024 + 140_544);
}

#[test]
fn info_human_output() {
    let path = common::model("SmolLM2-135M-Instruct.Q4_1.gguf", true).unwrap();
    let out = ferrite().arg("info").arg(&path).output().unwrap();
    assert!(out.status.success());
    let s = String::from_utf8(out.stdout).unwrap();
    for want in [
        "architecture   llama",
        "parameters     134.5 M (272 tensors)",
        "gpt2 (byte-level BPE)",
        "chat template  yes",
    ] {
        assert!(s.contains(want), "missing {want:?} in:\n{s}");
    }
}

#[test]
fn bad_files_give_one_clear_line() {
    let dir = std::env::temp_dir().join(format!("ferrite-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases: [(&str, &[u8], &str); 3] = [
        ("not-gguf.gguf", b"hello world, not a model", "not a GGUF file"),
        ("truncated.gguf", b"GGUF\x03\x00\x00\x00\x01", "truncated"),
        ("empty.gguf", b"", "truncated"),
    ];
    for (name, bytes, want) in cases {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        for args in [&["info"][..], &["info", "--json"][..], &["run", "-p", "hi"][..]] {
            let mut cmd = ferrite();
            cmd.args(&args[..1]);
            cmd.arg(&p);
            cmd.args(&args[1..]);
            let out = cmd.output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{name} {args:?} must fail");
            assert_eq!(err.trim_end().lines().count(), 1, "{name} {args:?}: one line: {err}");
            assert!(err.contains(want) && err.contains("at byte"), "{name} {args:?}: {err}");
            assert!(out.stdout.is_empty());
        }
    }
    let out = ferrite().args(["info", "/nonexistent/model.gguf"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such file"));
    std::fs::remove_dir_all(&dir).ok();
}

/// `--backend cuda` where there is no NVIDIA driver (CI) fails with one clear line, and
/// `--backend auto` runs on what there is; neither panics. On a machine with CUDA the first
/// runs there and prints a continuation.
#[test]
fn backends_fail_clearly_or_fall_back() {
    let path = common::model("SmolLM2-135M-Instruct.Q4_1.gguf", true).unwrap();
    let run = |backend: &str| {
        let out = ferrite()
            .arg("run")
            .arg(&path)
            .args(["-p", "The capital of France is", "-n", "4", "--temp", "0", "--backend", backend])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!err.contains("panicked"), "--backend {backend}: {err}");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), err)
    };
    let (ok, stdout, err) = run("cuda");
    if ok {
        assert!(!stdout.trim().is_empty(), "--backend cuda ran but printed nothing");
    } else {
        assert!(err.contains("backend cuda is not available"), "--backend cuda: {err}");
        assert!(stdout.is_empty(), "--backend cuda printed {stdout:?}");
    }
    let (ok, stdout, err) = run("auto");
    assert!(ok, "--backend auto: {err}");
    // The greedy continuation, as on the CPU backend.
    assert!(stdout.starts_with(" Paris."), "--backend auto printed {stdout:?}");
}

#[test]
fn bench_json_uses_llama_bench_fields() {
    let path = common::model("SmolLM2-135M-Instruct.Q4_1.gguf", true).unwrap();
    let out = ferrite()
        .args(["bench", "-p", "16", "-n", "4", "-r", "2", "-t", "1", "-d", "0,8", "-o", "json"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 4, "pp16 and tg4 at depths 0 and 8");
    for r in rows {
        for key in [
            "model_filename",
            "n_prompt",
            "n_gen",
            "n_depth",
            "n_threads",
            "avg_ts",
            "stddev_ts",
            "samples_ts",
        ] {
            assert!(r.get(key).is_some(), "missing {key}: {r}");
        }
        assert_eq!(r["n_threads"], 1);
        // llama-bench's provenance fields: the commit (7 hex digits here, a git checkout),
        // the CPU, no GPU, an RFC 3339 UTC time.
        let commit = r["build_commit"].as_str().unwrap();
        assert!(commit.len() == 7 && commit.chars().all(|c| c.is_ascii_hexdigit()), "{commit}");
        assert!(r["build_number"].as_u64().unwrap() > 0);
        assert!(!r["cpu_info"].as_str().unwrap().is_empty());
        assert_eq!(r["gpu_info"], "");
        assert_eq!(r["n_gpu_layers"], 0);
        let time = r["test_time"].as_str().unwrap();
        assert!(time.len() == 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T', "{time}");
        assert_eq!(
            r["samples_ts"].as_array().unwrap().len(),
            2,
            "one sample per repetition, warm-up excluded"
        );
        assert!(r["avg_ts"].as_f64().unwrap() > 0.0);
        assert!(r["bandwidth_gbs"].as_f64().unwrap() > 0.0);
        assert!(r["repack_ms"].as_f64().unwrap() >= 0.0, "repack time reported");
        if r["n_gen"] == 4 {
            assert!(r["floor_ts"].as_f64().unwrap() > 0.0 && r["floor_fraction"].as_f64().is_some());
        }
    }
    assert_eq!(rows.iter().filter(|r| r["n_depth"] == 8).count(), 2);
    let bad = ferrite().args(["bench", "-o", "xml"]).arg(&path).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown output format xml"));
}

/// `bench --parallel`: batched generation rows (every sequence's tokens counted, no memory
/// floor), each against the single-sequence row in the markdown report; bad counts refused.
#[test]
fn bench_parallel_reports_batched_generation() {
    let path = common::model("SmolLM2-135M-Instruct.Q4_1.gguf", true).unwrap();
    let bench = |args: &[&str]| ferrite().arg("bench").args(args).arg(&path).output().unwrap();
    let out =
        bench(&["-p", "0", "-n", "4", "-r", "2", "-t", "1", "-d", "0,40", "--parallel", "1,3", "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v.as_array().unwrap();
    let par: Vec<(u64, u64)> =
        rows.iter().map(|r| (r["n_depth"].as_u64().unwrap(), r["n_parallel"].as_u64().unwrap())).collect();
    assert_eq!(par, [(0, 1), (0, 3), (40, 1), (40, 3)], "tg4 x1 and x3 at depths 0 and 40");
    for r in rows {
        assert_eq!(r["n_gen"], 4);
        assert_eq!(r["samples_ts"].as_array().unwrap().len(), 2);
        assert!(r["avg_ts"].as_f64().unwrap() > 0.0);
        // The memory floor is single-sequence generation's.
        assert_eq!(r["floor_ts"].is_null(), r["n_parallel"] != 1, "{r}");
    }
    let md = bench(&["-p", "0", "-n", "4", "-r", "1", "-t", "1", "--parallel", "1,2"]);
    let text = String::from_utf8_lossy(&md.stdout);
    assert!(md.status.success() && text.contains("| tg4 x2 |"), "{text}");
    assert!(text.contains("tg4 x2 = ") && text.contains("× tg4 (1 thread(s))"), "{text}");
    let csv = bench(&["-p", "0", "-n", "2", "-r", "1", "-t", "1", "--parallel", "2", "-o", "csv"]);
    let text = String::from_utf8_lossy(&csv.stdout);
    let (head, row) = text.split_once('\n').unwrap();
    let col = head.split(',').position(|c| c == "n_parallel").expect("n_parallel column");
    assert_eq!(row.trim_end().split(',').nth(col), Some("2"), "{text}");
    let bad = bench(&["--parallel", "0"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--parallel takes sequence counts of 1 or more"));
}

/// `perplexity --checkpoint`: a run stopped part-way (here: the file cut back to one chunk
/// and half a line, as a kill mid-write leaves it) goes on from the chunks the file holds and
/// prints the uninterrupted run's figure; a checkpoint of another run is refused.
#[test]
fn perplexity_checkpoint_resumes_to_the_same_figure() {
    let path = common::model("SmolLM2-135M-Instruct.Q4_1.gguf", true).unwrap();
    let text = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/text/GPL-3");
    let dir = std::env::temp_dir().join(format!("ferrite-ppl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = dir.join("ck.jsonl");
    let _ = std::fs::remove_file(&ck);
    let ppl = |c: &str, checkpoint: bool| {
        let mut cmd = ferrite();
        cmd.arg("perplexity").arg(&path).args(["-c", c, "--chunks", "3", "-t", "2", "-f", text]);
        if checkpoint {
            cmd.arg("--checkpoint").arg(&ck);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, plain, err) = ppl("128", false);
    assert!(ok && plain.starts_with("Final estimate: PPL = "), "{err}");
    let (ok, first, err) = ppl("128", true);
    assert!(ok, "{err}");
    assert_eq!(first, plain, "a checkpoint does not change the figure");
    let lines: Vec<String> = std::fs::read_to_string(&ck).unwrap().lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 4, "a header and one line per chunk");
    // Stopped during chunk 2's write: header, chunk 1, half of chunk 2's line.
    let cut = format!("{}\n{}\n{}", lines[0], lines[1], &lines[2][..lines[2].len() / 2]);
    std::fs::write(&ck, cut).unwrap();
    let (ok, resumed, err) = ppl("128", true);
    assert!(ok, "{err}");
    assert!(err.contains("1 chunks scored before"), "{err}");
    assert_eq!(resumed, plain, "the resumed run's figure is the uninterrupted run's");
    let after = std::fs::read_to_string(&ck).unwrap();
    assert_eq!(after.lines().collect::<Vec<_>>(), lines, "the cut line was replaced, not kept");
    // Another chunk length is another run: refused, the file left alone.
    let (ok, out, err) = ppl("64", true);
    assert!(!ok && out.is_empty(), "{out}");
    assert!(err.contains("belongs to another run") && !err.contains("panicked"), "{err}");
    assert_eq!(std::fs::read_to_string(&ck).unwrap(), after);
    std::fs::remove_dir_all(&dir).unwrap();
}
