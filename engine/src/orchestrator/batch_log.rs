//! SGLang-style batch lines in the server log: one per step that prefills (new sequences,
//! prompt tokens computed and reused from the prefix cache, the cache's hit rate so far) and
//! one per [`DECODE_LOG_INTERVAL`] decode-only steps with the generation throughput since the
//! last one. Both carry KV usage and the running/queued counts.

use std::fmt;
use std::time::Instant;

/// Decode-only steps between two decode lines.
pub const DECODE_LOG_INTERVAL: u64 = 40;

/// Load figures every line carries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// KV slots in use (evictable cached prefixes count as free).
    pub kv_used: usize,
    /// KV slots in total.
    pub kv_capacity: usize,
    /// Sequences running.
    pub running: usize,
    /// Requests waiting for admission.
    pub queued: usize,
}

impl Load {
    /// Fraction of the KV cache in use.
    fn usage(&self) -> f64 {
        self.kv_used as f64 / self.kv_capacity.max(1) as f64
    }
}

impl fmt::Display for Load {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "token usage: {:.2}, #running-req: {}, #queue-req: {}",
            self.usage(),
            self.running,
            self.queued
        )
    }
}

/// One step that computed prompt tokens.
///
/// ```
/// use mllm_engine::orchestrator::batch_log::{Load, PrefillLine};
/// let load = Load { kv_used: 512, kv_capacity: 8192, running: 3, queued: 1 };
/// let line = PrefillLine { new_seqs: 1, new_tokens: 96, cached_tokens: 32, hit_rate: 0.25, load };
/// assert_eq!(
///     line.to_string(),
///     "Prefill batch. #new-seq: 1, #new-token: 96, #cached-token: 32, cache hit rate: 25.0%, \
///      token usage: 0.06, #running-req: 3, #queue-req: 1"
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrefillLine {
    /// Sequences admitted this step.
    pub new_seqs: usize,
    /// Prompt tokens computed this step (all chunks, new and continued).
    pub new_tokens: usize,
    /// Prompt tokens of the admitted sequences found in the prefix cache.
    pub cached_tokens: usize,
    /// The prefix cache's hit rate over all lookups so far, in [0, 1].
    pub hit_rate: f64,
    /// Load after the step.
    pub load: Load,
}

impl fmt::Display for PrefillLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Prefill batch. #new-seq: {}, #new-token: {}, #cached-token: {}, cache hit rate: {:.1}%, {}",
            self.new_seqs,
            self.new_tokens,
            self.cached_tokens,
            self.hit_rate * 100.0,
            self.load
        )
    }
}

/// Counts decode-only steps and yields a line every [`DECODE_LOG_INTERVAL`] of them.
#[derive(Debug)]
pub struct DecodeLog {
    steps: u64,
    tokens: u64,
    since: Instant,
}

impl Default for DecodeLog {
    fn default() -> Self {
        Self {
            steps: 0,
            tokens: 0,
            since: Instant::now(),
        }
    }
}

impl DecodeLog {
    /// Records a decode-only step that generated `tokens`; every [`DECODE_LOG_INTERVAL`]-th
    /// call returns the line to log.
    ///
    /// ```
    /// use mllm_engine::orchestrator::batch_log::{DecodeLog, Load, DECODE_LOG_INTERVAL};
    /// let mut log = DecodeLog::default();
    /// let load = Load { kv_used: 100, kv_capacity: 1000, running: 4, queued: 0 };
    /// let lines: Vec<String> = (0..DECODE_LOG_INTERVAL).filter_map(|_| log.record(4, load)).collect();
    /// assert_eq!(lines.len(), 1);
    /// assert!(lines[0].starts_with("Decode batch. #running-req: 4, #token: 100, token usage: 0.10"));
    /// ```
    pub fn record(&mut self, tokens: usize, load: Load) -> Option<String> {
        self.steps += 1;
        self.tokens += tokens as u64;
        if self.steps < DECODE_LOG_INTERVAL {
            return None;
        }
        let secs = self.since.elapsed().as_secs_f64().max(1e-9);
        let line = format!(
            "Decode batch. #running-req: {}, #token: {}, token usage: {:.2}, gen throughput (token/s): {:.2}, #queue-req: {}",
            load.running,
            load.kv_used,
            load.usage(),
            self.tokens as f64 / secs,
            load.queued
        );
        *self = Self::default();
        Some(line)
    }
}
