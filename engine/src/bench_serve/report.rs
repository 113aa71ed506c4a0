//! The human-readable result table (the JSON record carries the same numbers).

use std::fmt::Write;

use super::metrics::{Distribution, Summary};

/// The table for `summary`, under a title line naming the run.
///
/// ```
/// use mllm_engine::bench_serve::{render_table, Summary};
/// let t = render_table("demo", &Summary::new(&[Err("refused".into())], 1.0));
/// assert!(t.contains("Failed requests:") && t.contains("refused"));
/// ```
pub fn render_table(title: &str, s: &Summary) -> String {
    let mut out = String::new();
    let line = "=".repeat(56);
    let _ = writeln!(out, "{line}\n{title:^56}\n{line}");
    let mut row = |name: &str, value: String| {
        let _ = writeln!(out, "{:<40}{value:>16}", format!("{name}:"));
    };
    row("Successful requests", s.completed.to_string());
    row("Failed requests", s.failed.to_string());
    row("Benchmark duration (s)", format!("{:.2}", s.duration_s));
    row("Total input tokens", s.total_input_tokens.to_string());
    row("Total generated tokens", s.total_output_tokens.to_string());
    row("Request throughput (req/s)", format!("{:.2}", s.request_throughput));
    row("Input token throughput (tok/s)", format!("{:.2}", s.input_throughput));
    row("Output token throughput (tok/s)", format!("{:.2}", s.output_throughput));
    row("Total token throughput (tok/s)", format!("{:.2}", s.total_throughput));
    row("Mean concurrency", format!("{:.2}", s.mean_concurrency));
    let dists = [
        ("Time to First Token", "TTFT", &s.ttft_ms),
        ("Time per Output Token (excl. 1st token)", "TPOT", &s.tpot_ms),
        ("Inter-token Latency", "ITL", &s.itl_ms),
        ("End-to-End Latency", "E2E", &s.e2e_ms),
    ];
    for (heading, short, d) in dists {
        let _ = writeln!(out, "{:-^56}", format!(" {heading} "));
        let Some(Distribution {
            mean,
            p50,
            p90,
            p99,
            max,
        }) = d
        else {
            let _ = writeln!(out, "{:<40}{:>16}", "(no data)", "-");
            continue;
        };
        for (stat, v) in [("Mean", mean), ("P50", p50), ("P90", p90), ("P99", p99), ("Max", max)] {
            let _ = writeln!(out, "{:<40}{:>16.2}", format!("{stat} {short} (ms):"), v);
        }
    }
    for (msg, count) in &s.errors {
        let _ = writeln!(out, "error ({count}x): {msg}");
    }
    let _ = writeln!(out, "{line}");
    out
}
