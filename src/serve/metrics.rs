//! Prometheus metrics under vLLM's names, so that routers written for vLLM (llm-d, KServe,
//! the Gateway API inference extension) read ferrite's load and cache state unchanged.

use ferrite::SchedulerStats;
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};
use std::sync::Mutex;

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    running: prometheus::Gauge,
    waiting: prometheus::Gauge,
    kv_usage: prometheus::Gauge,
    prefix_queries: IntCounter,
    prefix_hits: IntCounter,
    preemptions: IntCounter,
    prompt_tokens: IntCounter,
    generation_tokens: IntCounter,
    /// Time from a request's arrival to its first token.
    pub ttft: Histogram,
    /// Time between consecutive tokens of one request.
    pub itl: Histogram,
    /// Arrival to last token.
    pub e2e: Histogram,
    /// Finished requests by reason (`stop`, `length`, `abort`, `error`).
    pub success: IntCounterVec,
    /// The cumulative scheduler counters last copied into the Prometheus counters.
    last: Mutex<SchedulerStats>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
    80.0,
];

impl Metrics {
    /// The metrics of a server for `model_name` (a constant label on every series).
    pub fn new(model_name: &str) -> Self {
        let labels = std::collections::HashMap::from([("model_name".to_string(), model_name.to_string())]);
        let registry = Registry::new_custom(None, Some(labels)).expect("valid labels");
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
            r.register(Box::new(m.clone())).expect("unique metric names");
            m
        }
        let gauge =
            |name: &str, help: &str| reg(&registry, prometheus::Gauge::new(name, help).expect("valid"));
        let counter = |name: &str, help: &str| reg(&registry, IntCounter::new(name, help).expect("valid"));
        let hist = |name: &str, help: &str| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            reg(&registry, Histogram::with_opts(opts).expect("valid"))
        };
        Metrics {
            running: gauge("vllm:num_requests_running", "Number of requests in model execution batches."),
            waiting: gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed."),
            kv_usage: gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."),
            prefix_queries: counter(
                "vllm:prefix_cache_queries_total",
                "Prefix cache queries, in terms of number of queried tokens.",
            ),
            prefix_hits: counter(
                "vllm:prefix_cache_hits_total",
                "Prefix cache hits, in terms of number of cached tokens.",
            ),
            preemptions: counter("vllm:num_preemptions_total", "Cumulative number of preemptions."),
            prompt_tokens: counter("vllm:prompt_tokens_total", "Number of prefill tokens processed."),
            generation_tokens: counter(
                "vllm:generation_tokens_total",
                "Number of generation tokens processed.",
            ),
            ttft: hist("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds."),
            itl: hist("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds."),
            e2e: hist("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds."),
            success: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new("vllm:request_success_total", "Count of finished requests."),
                    &["finished_reason"],
                )
                .expect("valid"),
            ),
            registry,
            last: Mutex::new(SchedulerStats::default()),
        }
    }

    /// Copies the scheduler's gauges and the growth of its counters.
    pub fn observe(&self, s: &SchedulerStats) {
        self.running.set(s.running as f64);
        self.waiting.set(s.waiting as f64);
        self.kv_usage.set(s.kv_blocks_used as f64 / s.kv_blocks_total.max(1) as f64);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        self.prefix_queries.inc_by(s.prefix_queries - last.prefix_queries);
        self.prefix_hits.inc_by(s.prefix_hits - last.prefix_hits);
        self.preemptions.inc_by(s.preemptions - last.preemptions);
        self.prompt_tokens.inc_by(s.prompt_tokens_computed - last.prompt_tokens_computed);
        self.generation_tokens.inc_by(s.generated_tokens - last.generated_tokens);
        *last = *s;
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding");
        String::from_utf8(buf).unwrap_or_default()
    }
}
