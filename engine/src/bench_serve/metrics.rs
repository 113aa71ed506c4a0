//! Per-request measurements and the run's summary: throughput and the TTFT, TPOT, ITL and
//! end-to-end latency distributions (mean and p50/p90/p99, linearly interpolated like
//! `numpy.percentile`).

use std::collections::BTreeMap;

use serde::Serialize;

/// What one successful request measured.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RequestStats {
    /// Prompt tokens (the server's count).
    pub input_tokens: usize,
    /// Generated tokens (the server's count).
    pub output_tokens: usize,
    /// Seconds from sending to the first streamed output.
    pub ttft_s: f64,
    /// Seconds from sending to the end of the stream.
    pub e2e_s: f64,
    /// Seconds between consecutive streamed outputs.
    pub itl_s: Vec<f64>,
}

impl RequestStats {
    /// Time per output token after the first, in seconds (`None` for one token).
    ///
    /// ```
    /// use mllm_engine::bench_serve::RequestStats;
    /// let r = RequestStats { output_tokens: 5, ttft_s: 1.0, e2e_s: 3.0, ..Default::default() };
    /// assert_eq!(r.tpot_s(), Some(0.5));
    /// ```
    pub fn tpot_s(&self) -> Option<f64> {
        (self.output_tokens > 1).then(|| (self.e2e_s - self.ttft_s) / (self.output_tokens - 1) as f64)
    }
}

/// How one request ended: measured, or the error that stopped it.
pub type Outcome = Result<RequestStats, String>;

/// Mean and percentiles of one latency, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Distribution {
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Distribution {
    /// Summarizes `samples` (any order); `None` when empty.
    ///
    /// ```
    /// use mllm_engine::bench_serve::Distribution;
    /// let d = Distribution::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
    /// assert_eq!((d.mean, d.p50, d.max), (2.5, 2.5, 4.0));
    /// assert!(Distribution::of(&[]).is_none());
    /// ```
    pub fn of(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        Some(Self {
            mean: v.iter().sum::<f64>() / v.len() as f64,
            p50: percentile(&v, 50.0),
            p90: percentile(&v, 90.0),
            p99: percentile(&v, 99.0),
            max: v[v.len() - 1],
        })
    }
}

/// The `q`-th percentile (0..=100) of sorted, non-empty `v`, interpolating between ranks.
///
/// ```
/// use mllm_engine::bench_serve::percentile;
/// assert_eq!(percentile(&[10.0, 20.0, 30.0], 75.0), 25.0);
/// ```
pub fn percentile(v: &[f64], q: f64) -> f64 {
    let rank = (q / 100.0).clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (rank - lo as f64)
}

/// The run's results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Requests that finished.
    pub completed: usize,
    /// Requests that failed.
    pub failed: usize,
    /// Failure messages and how often each came (empty when all succeeded).
    pub errors: BTreeMap<String, usize>,
    /// Wall-clock seconds of the run.
    pub duration_s: f64,
    /// Prompt tokens of the finished requests.
    pub total_input_tokens: usize,
    /// Generated tokens of the finished requests.
    pub total_output_tokens: usize,
    /// Finished requests per second.
    pub request_throughput: f64,
    /// Prompt tokens per second.
    pub input_throughput: f64,
    /// Generated tokens per second.
    pub output_throughput: f64,
    /// Prompt and generated tokens per second.
    pub total_throughput: f64,
    /// Requests in flight on average (sum of latencies over the duration).
    pub mean_concurrency: f64,
    /// Time to first token, ms.
    pub ttft_ms: Option<Distribution>,
    /// Time per output token after the first, ms.
    pub tpot_ms: Option<Distribution>,
    /// Inter-token latency (gaps between streamed outputs), ms.
    pub itl_ms: Option<Distribution>,
    /// End-to-end latency, ms.
    pub e2e_ms: Option<Distribution>,
}

impl Summary {
    /// Summarizes the outcomes of a run that took `duration_s` seconds.
    ///
    /// ```
    /// use mllm_engine::bench_serve::{RequestStats, Summary};
    /// let ok = RequestStats { input_tokens: 10, output_tokens: 4, ttft_s: 0.1, e2e_s: 0.4, itl_s: vec![0.1; 3] };
    /// let s = Summary::new(&[Ok(ok), Err("HTTP 429".into())], 2.0);
    /// assert_eq!((s.completed, s.failed, s.output_throughput), (1, 1, 2.0));
    /// assert_eq!(s.errors["HTTP 429"], 1);
    /// ```
    pub fn new(outcomes: &[Outcome], duration_s: f64) -> Self {
        let ok: Vec<&RequestStats> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
        let mut errors = BTreeMap::new();
        for e in outcomes.iter().filter_map(|o| o.as_ref().err()) {
            *errors.entry(e.clone()).or_insert(0) += 1;
        }
        let input: usize = ok.iter().map(|r| r.input_tokens).sum();
        let output: usize = ok.iter().map(|r| r.output_tokens).sum();
        let per_s = |x: f64| if duration_s > 0.0 { x / duration_s } else { 0.0 };
        let ms = |v: Vec<f64>| Distribution::of(&v.iter().map(|s| s * 1e3).collect::<Vec<_>>());
        Self {
            completed: ok.len(),
            failed: outcomes.len() - ok.len(),
            errors,
            duration_s,
            total_input_tokens: input,
            total_output_tokens: output,
            request_throughput: per_s(ok.len() as f64),
            input_throughput: per_s(input as f64),
            output_throughput: per_s(output as f64),
            total_throughput: per_s((input + output) as f64),
            mean_concurrency: per_s(ok.iter().map(|r| r.e2e_s).sum()),
            ttft_ms: ms(ok.iter().map(|r| r.ttft_s).collect()),
            tpot_ms: ms(ok.iter().filter_map(|r| r.tpot_s()).collect()),
            itl_ms: ms(ok.iter().flat_map(|r| r.itl_s.iter().copied()).collect()),
            e2e_ms: ms(ok.iter().map(|r| r.e2e_s).collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn percentiles_of_one_to_hundred() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let d = Distribution::of(&v).unwrap();
        // numpy.percentile(range(1, 101), [50, 90, 99]) = 50.5, 90.1, 99.01
        assert!(close(d.mean, 50.5) && close(d.p50, 50.5) && close(d.p90, 90.1) && close(d.p99, 99.01));
        assert_eq!(d.max, 100.0);
    }

    #[test]
    fn percentiles_of_one_sample_and_unsorted_input() {
        let d = Distribution::of(&[7.0]).unwrap();
        assert_eq!((d.p50, d.p90, d.p99, d.max), (7.0, 7.0, 7.0, 7.0));
        let d = Distribution::of(&[5.0, 1.0, 4.0, 2.0, 3.0]).unwrap();
        // ranks 0..4: p90 sits at 3.6 → 4 + 0.6 * (5 - 4).
        assert!(close(d.p50, 3.0) && close(d.p90, 4.6) && close(d.p99, 4.96));
    }

    #[test]
    fn summary_of_known_requests() {
        let r = |out, ttft, e2e| RequestStats {
            input_tokens: 100,
            output_tokens: out,
            ttft_s: ttft,
            e2e_s: e2e,
            itl_s: vec![0.01; out.saturating_sub(1)],
        };
        let outcomes = vec![Ok(r(11, 0.1, 0.2)), Ok(r(1, 0.3, 0.3)), Err("boom".to_string())];
        let s = Summary::new(&outcomes, 0.5);
        assert_eq!(
            (s.completed, s.failed, s.total_input_tokens, s.total_output_tokens),
            (2, 1, 200, 12)
        );
        assert!(close(s.output_throughput, 24.0) && close(s.total_throughput, 424.0));
        assert!(close(s.request_throughput, 4.0) && close(s.mean_concurrency, 1.0));
        // One-token requests have no TPOT: only (0.2 - 0.1) / 10 s = 10 ms.
        let tpot = s.tpot_ms.unwrap();
        assert!(close(tpot.p50, 10.0) && close(tpot.max, 10.0));
        assert!(close(s.ttft_ms.unwrap().mean, 200.0));
        assert!(close(s.itl_ms.unwrap().p99, 10.0));
    }

    #[test]
    fn all_failed_has_no_distributions() {
        let s = Summary::new(&[Err("x".into()), Err("x".into())], 1.0);
        assert_eq!((s.completed, s.failed, s.errors["x"]), (0, 2, 2));
        assert!(s.ttft_ms.is_none() && s.tpot_ms.is_none() && s.output_throughput == 0.0);
    }
}
