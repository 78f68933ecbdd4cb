//! Every Prometheus metric the service exports, registered once in a registry of its own
//! (so several apps in one test process do not collide). All names start `embedserve_`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Requests by route, status, tenant and model.
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
    /// One ONNX Runtime run, by model.
    pub inference_seconds: HistogramVec,
    /// Inputs per ONNX Runtime run, by model.
    pub batch_size: HistogramVec,
    /// ONNX Runtime runs that failed, by model and kind (`error` | `panic`), retries included.
    pub failed_runs: IntCounterVec,
    /// Inputs that failed in a run of their own (their requests got an error), by model.
    pub isolated_inputs: IntCounterVec,
    /// Models that stopped serving (their warm-up input failed too) and were unloaded, by model.
    pub model_stops: IntCounterVec,
    /// Tokens processed (after truncation), by tenant and model: the billing figure.
    pub tokens: IntCounterVec,
    /// Inputs embedded, by tenant and model.
    pub embeddings: IntCounterVec,
    /// (query, document) pairs scored by rerank models, by tenant and model.
    pub rerank_pairs: IntCounterVec,
    /// Inputs cut to the model's token limit, by model.
    pub truncated_inputs: IntCounterVec,
    /// Requests refused by a tenant's limits, by tenant and limit.
    pub rate_limited: IntCounterVec,
    /// Cache lookups by model and result (`hit` | `miss`).
    pub cache_lookups: IntCounterVec,
    pub model_evictions: IntCounterVec,
    pub model_resident_bytes: IntGaugeVec,
    /// ONNX Runtime sessions (each with an inference thread) of each loaded model.
    pub model_sessions: IntGaugeVec,
    /// 1 for the variant each model with variants serves (see `ModelSpec::variants`).
    pub model_variant: IntGaugeVec,
    pub cache_resident_bytes: IntGauge,
    pub cache_budget_bytes: IntGauge,
    /// Embedding cache lookups, one per input, by model and result (`hit` | `miss`).
    pub embedding_cache_lookups: IntCounterVec,
    /// Bytes the embedding cache holds.
    pub embedding_cache_bytes: IntGauge,
    /// Vectors the embedding cache dropped to stay within its bytes.
    pub embedding_cache_evictions: IntCounter,
    /// Calls to the embedding cache's shared tier that failed or timed out, by operation.
    pub embedding_cache_shared_failures: IntCounterVec,
    /// Configuration reloads by outcome (`ok` | `rejected`).
    pub config_reloads: IntCounterVec,
    /// Tokens waiting in each model's queue.
    pub queue_tokens: IntGaugeVec,
    pub queue_wait_seconds: HistogramVec,
    /// Padded tokens (longest × count) per ONNX Runtime run.
    pub batch_tokens: HistogramVec,
    /// Work refused or dropped by model and reason (`queue_full`, `tenant_queue_share`,
    /// `client_gone`, `timeout`).
    pub refusals: IntCounterVec,
    /// Model loads by model and outcome (`ok` | `error`).
    pub model_loads: IntCounterVec,
    pub model_load_seconds: HistogramVec,
    /// 1 while the shared store (Redis) answers, 0 while limits fall back to this process.
    pub store_up: IntGauge,
    /// Shared-store calls that failed or timed out, by operation (`limits`, `usage_write`,
    /// `usage_read`, `probe`).
    pub store_failures: IntCounterVec,
    /// Limit decisions by where they were made (`shared` | `local`).
    pub limit_decisions: IntCounterVec,
    /// Usage counters held in memory, not yet written to the shared store.
    pub usage_held: IntGauge,
    /// Requests whose usage was not counted because the held counters were at their bound.
    pub usage_dropped: IntCounter,
}

const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("metric registered once");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("metric registered once");
            g
        };
        let scalar = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("metric registered once");
            g
        };
        let single = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("metric registered once");
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("valid metric");
            registry.register(Box::new(h.clone())).expect("metric registered once");
            h
        };
        Self {
            requests: counter(
                "embedserve_requests_total",
                "HTTP requests by route, status, tenant and model.",
                &["route", "status", "tenant", "model"],
            ),
            request_seconds: histogram(
                "embedserve_request_duration_seconds",
                "HTTP request latency by route.",
                &["route"],
                LATENCY_BUCKETS.to_vec(),
            ),
            inference_seconds: histogram(
                "embedserve_inference_duration_seconds",
                "Duration of one ONNX Runtime run by model.",
                &["model"],
                LATENCY_BUCKETS.to_vec(),
            ),
            batch_size: histogram(
                "embedserve_batch_size",
                "Inputs per ONNX Runtime run by model.",
                &["model"],
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0],
            ),
            failed_runs: counter(
                "embedserve_failed_runs_total",
                "ONNX Runtime runs that failed, by model and kind (error or panic), retries included.",
                &["model", "kind"],
            ),
            isolated_inputs: counter(
                "embedserve_isolated_inputs_total",
                "Inputs that failed in a run of their own; their requests got an error.",
                &["model"],
            ),
            model_stops: counter(
                "embedserve_model_stops_total",
                "Models unloaded because their warm-up input failed after a round of failed runs.",
                &["model"],
            ),
            tokens: counter(
                "embedserve_tokens_total",
                "Tokens processed, after truncation, by tenant and model.",
                &["tenant", "model"],
            ),
            embeddings: counter(
                "embedserve_embeddings_total",
                "Inputs embedded by tenant and model.",
                &["tenant", "model"],
            ),
            rerank_pairs: counter(
                "embedserve_rerank_pairs_total",
                "(query, document) pairs scored by rerank models, by tenant and model.",
                &["tenant", "model"],
            ),
            truncated_inputs: counter(
                "embedserve_truncated_inputs_total",
                "Inputs truncated to the model's token limit.",
                &["model"],
            ),
            model_loads: counter(
                "embedserve_model_loads_total",
                "Model loads by model and outcome.",
                &["model", "outcome"],
            ),
            model_load_seconds: histogram(
                "embedserve_model_load_seconds",
                "Time to load a model (tokenizer and ONNX Runtime session).",
                &["model"],
                vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            ),
            rate_limited: counter(
                "embedserve_rate_limited_total",
                "Requests refused by a tenant's limits, by tenant and limit.",
                &["tenant", "limit"],
            ),
            cache_lookups: counter(
                "embedserve_cache_lookups_total",
                "Session cache lookups by model and result (hit or miss).",
                &["model", "result"],
            ),
            model_evictions: counter(
                "embedserve_model_evictions_total",
                "Models evicted from the session cache.",
                &["model"],
            ),
            model_resident_bytes: gauge(
                "embedserve_model_resident_bytes",
                "Measured resident size of each loaded model (0 when not loaded).",
                &["model"],
            ),
            model_sessions: gauge(
                "embedserve_model_sessions",
                "ONNX Runtime sessions of each loaded model, each with its inference thread (0 when not loaded).",
                &["model"],
            ),
            model_variant: gauge(
                "embedserve_model_variant",
                "1 for the variant a model with variants serves (fp32, int8, ...), 0 for one it no longer serves.",
                &["model", "variant"],
            ),
            cache_resident_bytes: scalar(
                "embedserve_cache_resident_bytes",
                "Resident bytes of all loaded models.",
            ),
            cache_budget_bytes: scalar(
                "embedserve_cache_budget_bytes",
                "The session cache's memory budget (0: unlimited).",
            ),
            embedding_cache_lookups: counter(
                "embedserve_embedding_cache_lookups_total",
                "Embedding cache lookups (one per input) by model and result (hit, shared_hit or miss).",
                &["model", "result"],
            ),
            embedding_cache_bytes: scalar(
                "embedserve_embedding_cache_bytes",
                "Bytes of vectors the embedding cache holds.",
            ),
            embedding_cache_shared_failures: counter(
                "embedserve_embedding_cache_shared_failures_total",
                "Calls to the embedding cache's shared (Redis) tier that failed or timed out, by operation.",
                &["operation"],
            ),
            embedding_cache_evictions: single(
                "embedserve_embedding_cache_evictions_total",
                "Vectors dropped from the embedding cache to stay within its bytes.",
            ),
            config_reloads: counter(
                "embedserve_config_reloads_total",
                "Configuration reloads by outcome: ok, restart_required (applied, but sections that change on restart only differ) or rejected.",
                &["outcome"],
            ),
            queue_tokens: gauge(
                "embedserve_queue_tokens",
                "Tokens waiting in each model's queue.",
                &["model"],
            ),
            queue_wait_seconds: histogram(
                "embedserve_queue_wait_seconds",
                "Time from queueing to the start of a request's batch.",
                &["model"],
                LATENCY_BUCKETS.to_vec(),
            ),
            batch_tokens: histogram(
                "embedserve_batch_tokens",
                "Padded tokens (longest x count) per ONNX Runtime run.",
                &["model"],
                vec![16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0],
            ),
            refusals: counter(
                "embedserve_refusals_total",
                "Work refused or dropped by model and reason (queue_full, tenant_queue_share, client_gone, timeout).",
                &["model", "reason"],
            ),
            store_up: scalar(
                "embedserve_store_up",
                "1 while the shared limit store answers; 0 while limits hold per process.",
            ),
            store_failures: counter(
                "embedserve_store_failures_total",
                "Shared-store calls that failed or timed out, by operation.",
                &["operation"],
            ),
            limit_decisions: counter(
                "embedserve_limit_decisions_total",
                "Rate-limit decisions by where they were made (shared or local).",
                &["store"],
            ),
            usage_held: scalar(
                "embedserve_usage_held",
                "Usage counters held in memory, not yet written to the shared store.",
            ),
            usage_dropped: single(
                "embedserve_usage_dropped_total",
                "Requests whose usage was dropped because the held counters were at their bound.",
            ),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
