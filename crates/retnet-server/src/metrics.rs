//! Counters and gauges for `GET /metrics` (Prometheus text format), shared by the HTTP layer
//! and the scheduler through atomics.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Every number `/metrics` reports.
#[derive(Default)]
pub struct Metrics {
    /// Completion requests accepted into the queue.
    pub requests: AtomicU64,
    /// Requests answered with an error (bad parameters, unknown model, queue full, failures).
    pub request_errors: AtomicU64,
    /// Requests turned away because the queue was full.
    pub rejected_queue_full: AtomicU64,
    /// Requests whose client went away before the end.
    pub disconnects: AtomicU64,
    /// Prompt tokens of accepted requests.
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens fed through the model (prompt tokens minus cache hits).
    pub prefill_tokens: AtomicU64,
    /// Tokens generated.
    pub generated_tokens: AtomicU64,
    /// Generated tokens per second over the last measuring window (f64 bits).
    pub tokens_per_second: AtomicU64,
    /// Sequences in the running batch.
    pub batch_occupancy: AtomicU64,
    /// Requests waiting for a batch slot.
    pub queue_length: AtomicU64,
    /// Requests that resumed from a cached prefix state.
    pub cache_hits: AtomicU64,
    /// Fresh prompts with no cached prefix.
    pub cache_misses: AtomicU64,
    /// Prompt tokens skipped thanks to the cache.
    pub cache_hit_tokens: AtomicU64,
    /// Bytes of cached states.
    pub cache_bytes: AtomicU64,
    /// Cached states.
    pub cache_entries: AtomicU64,
    /// Sessions kept.
    pub sessions: AtomicU64,
    /// Scheduler steps run.
    pub steps: AtomicU64,
}

impl Metrics {
    /// Stores an f64 gauge.
    pub fn set_f64(gauge: &AtomicU64, value: f64) {
        gauge.store(value.to_bits(), Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self, backend: &str, max_batch: usize, queue_capacity: usize) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP retnet_{name} {help}");
            let _ = writeln!(out, "# TYPE retnet_{name} {kind}");
            let _ = writeln!(out, "retnet_{name} {value}");
        };
        let n = |a: &AtomicU64| a.load(Relaxed).to_string();
        let c = "counter";
        let g = "gauge";
        metric(
            "requests_total",
            c,
            "Completion requests accepted.",
            n(&self.requests),
        );
        metric(
            "request_errors_total",
            c,
            "Requests answered with an error.",
            n(&self.request_errors),
        );
        metric(
            "requests_rejected_queue_full_total",
            c,
            "Requests refused with 503 because the queue was full.",
            n(&self.rejected_queue_full),
        );
        metric(
            "client_disconnects_total",
            c,
            "Requests whose client went away before the end.",
            n(&self.disconnects),
        );
        metric(
            "prompt_tokens_total",
            c,
            "Prompt tokens of accepted requests.",
            n(&self.prompt_tokens),
        );
        metric(
            "prefill_tokens_total",
            c,
            "Prompt tokens fed through the model (cache hits excluded).",
            n(&self.prefill_tokens),
        );
        metric(
            "generated_tokens_total",
            c,
            "Tokens generated.",
            n(&self.generated_tokens),
        );
        metric(
            "generated_tokens_per_second",
            g,
            "Generated tokens per second over the last few seconds.",
            format!(
                "{:.3}",
                f64::from_bits(self.tokens_per_second.load(Relaxed))
            ),
        );
        metric(
            "batch_occupancy",
            g,
            "Sequences in the running batch.",
            n(&self.batch_occupancy),
        );
        metric(
            "batch_capacity",
            g,
            "Largest batch (--max-batch).",
            max_batch.to_string(),
        );
        metric(
            "queue_length",
            g,
            "Requests waiting for a batch slot.",
            n(&self.queue_length),
        );
        metric(
            "queue_capacity",
            g,
            "Longest queue (--queue).",
            queue_capacity.to_string(),
        );
        metric(
            "prefix_cache_hits_total",
            c,
            "Requests that resumed from a cached prefix state.",
            n(&self.cache_hits),
        );
        metric(
            "prefix_cache_misses_total",
            c,
            "Fresh prompts with no cached prefix.",
            n(&self.cache_misses),
        );
        metric(
            "prefix_cache_hit_tokens_total",
            c,
            "Prompt tokens skipped thanks to the cache.",
            n(&self.cache_hit_tokens),
        );
        metric(
            "prefix_cache_bytes",
            g,
            "Bytes of cached states.",
            n(&self.cache_bytes),
        );
        metric(
            "prefix_cache_entries",
            g,
            "Cached states.",
            n(&self.cache_entries),
        );
        metric("sessions", g, "Sessions kept.", n(&self.sessions));
        metric(
            "scheduler_steps_total",
            c,
            "Scheduler steps run.",
            n(&self.steps),
        );
        let _ = writeln!(
            out,
            "# HELP retnet_backend_info The backend the model runs on."
        );
        let _ = writeln!(out, "# TYPE retnet_backend_info gauge");
        let _ = writeln!(out, "retnet_backend_info{{backend=\"{backend}\"}} 1");
        out
    }
}
