//! Server metrics in Prometheus text format: counters, gauges the scheduler updates each step,
//! and TTFT / TPOT histograms.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A fixed-bucket histogram of seconds.
#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        for (c, b) in self.counts.iter_mut().zip(BUCKETS) {
            if v <= b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (c, b) in self.counts.iter().zip(BUCKETS) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

/// Shared metrics; cheap to update from any thread.
///
/// ```
/// use mllm_engine::orchestrator::Metrics;
/// let m = Metrics::default();
/// m.observe_ttft(0.02);
/// m.set_gauges(1, 2, 10, 100);
/// let text = m.render();
/// assert!(text.contains("mllm_num_running_reqs 1"));
/// assert!(text.contains("mllm_time_to_first_token_seconds_count 1"));
/// ```
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests received (each `n` choice counts once).
    pub requests_total: AtomicU64,
    /// Requests that ended with an error.
    pub request_errors_total: AtomicU64,
    /// Prompt tokens of admitted sequences.
    pub prompt_tokens_total: AtomicU64,
    /// Generated tokens.
    pub generation_tokens_total: AtomicU64,
    /// Sequences retracted for lack of KV slots.
    pub retractions_total: AtomicU64,
    /// Prompt tokens whose KV came from the prefix cache.
    pub cached_tokens_total: AtomicU64,
    running: AtomicU64,
    queued: AtomicU64,
    kv_used: AtomicU64,
    kv_capacity: AtomicU64,
    ttft: Mutex<Histogram>,
    tpot: Mutex<Histogram>,
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Sets the scheduler gauges.
    pub fn set_gauges(&self, running: usize, queued: usize, kv_used: usize, kv_capacity: usize) {
        self.running.store(running as u64, Ordering::Relaxed);
        self.queued.store(queued as u64, Ordering::Relaxed);
        self.kv_used.store(kv_used as u64, Ordering::Relaxed);
        self.kv_capacity.store(kv_capacity as u64, Ordering::Relaxed);
    }

    /// KV slots in use.
    pub fn kv_used(&self) -> u64 {
        self.kv_used.load(Ordering::Relaxed)
    }

    /// Running sequences.
    pub fn running(&self) -> u64 {
        self.running.load(Ordering::Relaxed)
    }

    /// Waiting sequences.
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Records a time to first token.
    pub fn observe_ttft(&self, secs: f64) {
        self.ttft.lock().unwrap_or_else(|e| e.into_inner()).observe(secs);
    }

    /// Records a time per output token (after the first).
    pub fn observe_tpot(&self, secs: f64) {
        self.tpot.lock().unwrap_or_else(|e| e.into_inner()).observe(secs);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let counters = [
            ("mllm_requests_total", "Requests received.", &self.requests_total),
            (
                "mllm_request_errors_total",
                "Requests that failed.",
                &self.request_errors_total,
            ),
            (
                "mllm_prompt_tokens_total",
                "Prompt tokens processed.",
                &self.prompt_tokens_total,
            ),
            (
                "mllm_generation_tokens_total",
                "Tokens generated.",
                &self.generation_tokens_total,
            ),
            (
                "mllm_retractions_total",
                "Sequences retracted for KV space.",
                &self.retractions_total,
            ),
            (
                "mllm_cached_tokens_total",
                "Prompt tokens served from the prefix cache.",
                &self.cached_tokens_total,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", load(v));
        }
        let used = load(&self.kv_used);
        let cap = load(&self.kv_capacity);
        let usage = if cap > 0 { used as f64 / cap as f64 } else { 0.0 };
        let gauges = [
            (
                "mllm_num_running_reqs",
                "Sequences running.",
                load(&self.running) as f64,
            ),
            ("mllm_num_queue_reqs", "Sequences waiting.", load(&self.queued) as f64),
            ("mllm_kv_used_tokens", "KV slots in use.", used as f64),
            ("mllm_kv_capacity_tokens", "KV slots in total.", cap as f64),
            ("mllm_token_usage", "Fraction of KV slots in use.", usage),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        self.ttft.lock().unwrap_or_else(|e| e.into_inner()).render(
            &mut out,
            "mllm_time_to_first_token_seconds",
            "Time to first token.",
        );
        self.tpot.lock().unwrap_or_else(|e| e.into_inner()).render(
            &mut out,
            "mllm_time_per_output_token_seconds",
            "Time per output token after the first.",
        );
        out
    }
}
