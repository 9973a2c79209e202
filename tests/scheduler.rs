//! Continuous batching keeps every sequence exactly what it would be alone: sequences run
//! together, preempted and recomputed for lack of KV blocks, or started from another's cached
//! prefix produce the same greedy tokens as a single-sequence generation, and every block is
//! free again at the end.

mod common;

use ferrite::{
    BatchRequest, Engine, Event, GenerateRequest, KvCapacity, LoadOptions, Prompt, SamplerParams, Scheduler,
    SchedulerOptions, SeqEvent,
};
use std::collections::BTreeMap;

const GEN: usize = 40;

fn engine(kv_tokens: usize) -> Engine {
    let path = common::model("SmolLM2-135M-Instruct.Q4_1.gguf", true).unwrap();
    let opts = LoadOptions {
        threads: Some(2),
        ctx: Some(96),
        kv: Some(KvCapacity::Tokens(kv_tokens)),
        ..Default::default()
    };
    Engine::load(path, &opts).unwrap()
}

fn prompts(e: &Engine) -> Vec<Vec<u32>> {
    [
        "The capital of France is",
        "Once upon a time, a small robot",
        "def fibonacci(n):",
        "List three colors: red,",
    ]
    .iter()
    .map(|p| e.tokenize(p))
    .collect()
}

fn request(prompt: &[u32]) -> BatchRequest {
    BatchRequest {
        prompt: prompt.to_vec(),
        max_tokens: GEN,
        sampler: SamplerParams::greedy(),
        stop: Vec::new(),
        ignore_eos: true,
        json_object: false,
        keep_tokens: Vec::new(),
    }
}

/// Runs the scheduler to the end; returns each request's tokens and the `Done` it got.
fn drain(s: &mut Scheduler) -> BTreeMap<u64, (Vec<u32>, usize)> {
    let mut out: BTreeMap<u64, (Vec<u32>, usize)> = BTreeMap::new();
    while s.step(&mut |id, ev| {
        match ev {
            SeqEvent::Token(t) => out.entry(id).or_default().0.push(t.id),
            SeqEvent::Done(d) => out.entry(id).or_default().1 = d.timings.prompt_cached,
            SeqEvent::Failed(m) => panic!("request {id} failed: {m}"),
        }
        true
    }) {}
    out
}

#[test]
fn batched_preempted_and_prefix_shared_sequences_match_single_runs() {
    let mut single = engine(96);
    let ps = prompts(&single);
    let reference: Vec<Vec<u32>> = ps
        .iter()
        .map(|p| {
            let req = GenerateRequest {
                prompt: Prompt::Tokens(p.clone()),
                ignore_eos: true,
                ..GenerateRequest::new("")
            }
            .max_tokens(GEN);
            single
                .generate(req)
                .unwrap()
                .filter_map(|e| match e.unwrap() {
                    Event::Token(t) => Some(t.id),
                    Event::Done(_) => None,
                })
                .collect()
        })
        .collect();
    drop(single);

    // All four at once.
    let mut s = Scheduler::new(engine(4 * 96), SchedulerOptions::default());
    for (i, p) in ps.iter().enumerate() {
        s.add(i as u64, request(p)).unwrap();
    }
    let got = drain(&mut s);
    for (i, r) in reference.iter().enumerate() {
        assert_eq!(&got[&(i as u64)].0, r, "request {i} in a batch of four");
    }
    let st = s.stats();
    assert_eq!((st.running, st.waiting, st.kv_blocks_used), (0, 0, 0));
    assert_eq!(st.preemptions, 0);

    // A cache of three blocks for four sequences that each grow to two blocks: sequences are
    // preempted and recomputed, and still produce the same tokens.
    let mut s = Scheduler::new(engine(96), SchedulerOptions::default());
    for (i, p) in ps.iter().enumerate() {
        s.add(i as u64, request(p)).unwrap();
    }
    let got = drain(&mut s);
    for (i, r) in reference.iter().enumerate() {
        assert_eq!(&got[&(i as u64)].0, r, "request {i} with preemption");
    }
    let st = s.stats();
    assert!(st.preemptions > 0, "the small cache forced no preemption: {st:?}");
    assert_eq!(st.kv_blocks_used, 0);

    // The same long prompt twice, one after the other: the second starts from the first's
    // cached blocks and generates the same tokens.
    let mut s = Scheduler::new(engine(4 * 96), SchedulerOptions::default());
    let long: Vec<u32> = ps.iter().flatten().copied().cycle().take(70).collect();
    s.add(10, request(&long)).unwrap();
    let first = drain(&mut s);
    s.add(11, request(&long)).unwrap();
    let second = drain(&mut s);
    assert_eq!(first[&10].1, 0);
    assert_eq!(second[&11].1, 64, "two whole blocks come from the prefix cache");
    assert_eq!(first[&10].0, second[&11].0);
    let st = s.stats();
    assert_eq!((st.prefix_queries, st.prefix_hits), (140, 64));
    assert_eq!(st.kv_blocks_used, 0);
    assert!(st.kv_blocks_cached >= 2, "finished sequences leave their blocks cached");

    // Cancelling frees blocks at once; a full queue refuses.
    let mut s = Scheduler::new(
        engine(4 * 96),
        SchedulerOptions { max_running: 1, max_waiting: 1, ..Default::default() },
    );
    s.add(1, request(&ps[0])).unwrap();
    s.step(&mut |_, _| true);
    s.add(2, request(&ps[1])).unwrap();
    assert!(matches!(s.add(3, request(&ps[2])), Err(ferrite::EngineError::Overloaded { .. })));
    assert!(s.stats().kv_blocks_used > 0);
    assert!(s.cancel(1) && s.cancel(2));
    assert_eq!(s.stats().kv_blocks_used, 0);
    assert!(!s.is_busy());

    // A burst that arrives while idle: the free running slots count as room too.
    let mut s = Scheduler::new(
        engine(4 * 96),
        SchedulerOptions { max_running: 2, max_waiting: 1, ..Default::default() },
    );
    for id in 1..=3 {
        s.add(id, request(&ps[0])).unwrap();
    }
    assert!(matches!(s.add(4, request(&ps[1])), Err(ferrite::EngineError::Overloaded { .. })));
    for id in 1..=3 {
        assert!(s.cancel(id));
    }
}

/// `ferrite bench --parallel` runs sequences of its own through the same cache: they are all
/// gone afterwards, and a cache too small for the test is a clear error, not a failure half
/// way.
#[test]
fn batched_bench_leaves_the_cache_free() {
    let mut e = engine(4 * 96);
    let s = e.bench_tg_parallel(4, 40, 3, 1).unwrap();
    assert_eq!((s.n_gen, s.n_depth, s.n_parallel, s.samples_s.len()), (4, 40, 3, 1));
    let err = e.bench_tg_parallel(90, 0, 8, 1).unwrap_err().to_string();
    assert!(err.contains("8 sequences of 90 tokens need"), "{err}");
    let st = Scheduler::new(e, SchedulerOptions::default()).stats();
    assert_eq!(st.kv_blocks_used, 0);
}
