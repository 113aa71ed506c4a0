//! Per-request token sampling.
//!
//! Each request carries its own [`SamplingParams`] and a [`SequenceState`] (token history for the
//! penalties, and a seeded [`Rng`]). A [`Sampler`] turns one logits row per request into a
//! [`SampleOutput`]: the chosen token id and, when asked for, logprobs.
//!
//! # Processing order
//!
//! Like vLLM / Hugging Face, each row goes through:
//!
//! 1. **penalties**: repetition (HF semantics, over prompt + output tokens: positive logits are
//!    divided by the penalty, negative ones multiplied), then frequency and presence (OpenAI
//!    semantics, over output tokens only: `l -= frequency * count + presence * (count > 0)`);
//! 2. **temperature**: `l /= temperature` (skipped for greedy decoding);
//! 3. **top-k**, 4. **top-p** (nucleus), 5. **min-p** truncation;
//! 6. **sample** from the softmax of the surviving logits (or argmax when greedy).
//!
//! # Logprobs
//!
//! Logprobs are those of the *processed* distribution (vLLM's default): the log-softmax of the
//! logits after penalties and temperature, but *before* top-k / top-p / min-p truncation, so that
//! `exp` of the logprobs of all `V` tokens sums to 1. For greedy requests (temperature 0) the
//! temperature step is skipped, i.e. the logprobs are the log-softmax of the penalized logits.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rayon::prelude::*;
use thiserror::Error;

/// Temperatures below this are treated as greedy decoding (as in vLLM).
pub const GREEDY_TEMPERATURE_EPS: f32 = 1e-5;

/// Errors from parameter validation or from sampling.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SamplingError {
    /// A sampling parameter is out of its allowed range.
    #[error("invalid sampling parameter `{param}` = {value}: must be {expected}")]
    InvalidParam {
        /// The parameter's name, e.g. `"top_p"`.
        param: &'static str,
        /// The offending value, formatted.
        value: String,
        /// The allowed range, in words.
        expected: &'static str,
    },
    /// A logits row contains NaN.
    #[error("logits row {row} contains NaN at token {token}")]
    NanLogit {
        /// Index of the row in the batch.
        row: usize,
        /// First token id with a NaN logit.
        token: usize,
    },
    /// A logits row contains `+inf`, which makes the softmax undefined.
    #[error("logits row {row} contains +inf at token {token}")]
    InfiniteLogit {
        /// Index of the row in the batch.
        row: usize,
        /// First token id with a `+inf` logit.
        token: usize,
    },
    /// Every logit of the row is `-inf` (all tokens masked), or the row is empty.
    #[error("logits row {row} has no finite logit (empty row or every token masked)")]
    NoFiniteLogit {
        /// Index of the row in the batch.
        row: usize,
    },
    /// The vocabulary is too large for `u32` token ids.
    #[error("logits row {row} has {vocab} entries, more than u32 token ids can address")]
    VocabTooLarge {
        /// Index of the row in the batch.
        row: usize,
        /// The row length.
        vocab: usize,
    },
    /// The numbers of logits rows and request states differ.
    #[error("batch has {rows} logits rows but {states} request states")]
    BatchMismatch {
        /// Number of logits rows.
        rows: usize,
        /// Number of request states.
        states: usize,
    },
}

/// Per-request sampling parameters (OpenAI / vLLM style).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `0` means greedy decoding (argmax, ties → lowest id). Must be `>= 0`
    /// and finite.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; `0` or `-1` disables it. Must be `>= -1`.
    pub top_k: i32,
    /// Nucleus sampling: keep the smallest set of most likely tokens whose probability mass
    /// reaches `top_p`; `1.0` disables it. Must be in `(0, 1]`.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the most likely token's; `0`
    /// disables it. Must be in `[0, 1]`.
    pub min_p: f32,
    /// HF repetition penalty over prompt + output tokens; `1` disables it. Must be `> 0`.
    pub repetition_penalty: f32,
    /// OpenAI frequency penalty over output tokens (scaled by count); `0` disables it. Must be
    /// in `[-2, 2]`.
    pub frequency_penalty: f32,
    /// OpenAI presence penalty over output tokens (once per distinct token); `0` disables it.
    /// Must be in `[-2, 2]`.
    pub presence_penalty: f32,
    /// RNG seed: the same seed (and inputs) gives the same tokens. `None` seeds from a
    /// process-wide counter mixed with the clock.
    pub seed: Option<u64>,
    /// Return the chosen token's logprob plus the top-N `(id, logprob)` list; `None` returns no
    /// logprobs. N is clamped to the vocabulary size.
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    /// Plain sampling at temperature 1 with every filter and penalty off.
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: None,
            logprobs: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding (temperature 0), everything else default.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Whether these parameters select greedy decoding (temperature below
    /// [`GREEDY_TEMPERATURE_EPS`]).
    pub fn is_greedy(&self) -> bool {
        self.temperature < GREEDY_TEMPERATURE_EPS
    }

    /// Greedy with no penalties and no logprobs: the token is the raw logits' argmax, so a
    /// backend may pick it without handing the logits to the sampler.
    ///
    /// ```
    /// use mllm_engine::executor::sampler::SamplingParams;
    /// assert!(SamplingParams::greedy().is_plain_greedy());
    /// let p = SamplingParams { logprobs: Some(1), ..SamplingParams::greedy() };
    /// assert!(!p.is_plain_greedy());
    /// ```
    pub fn is_plain_greedy(&self) -> bool {
        self.is_greedy() && self.is_plain()
    }

    /// No penalties and no logprobs: the token depends only on the raw logits row, the
    /// temperature, the truncation filters and a random draw, so a backend can sample it where
    /// the logits are (the GPU) instead of handing them to this sampler.
    ///
    /// ```
    /// use mllm_engine::executor::sampler::SamplingParams;
    /// assert!(SamplingParams { top_p: 0.9, ..Default::default() }.is_plain());
    /// assert!(!SamplingParams { repetition_penalty: 1.1, ..Default::default() }.is_plain());
    /// ```
    pub fn is_plain(&self) -> bool {
        self.is_unpenalized() && self.logprobs.is_none()
    }

    /// No repetition, frequency or presence penalty: the processed row is the raw logits row,
    /// divided by the temperature unless greedy, whatever the request generated before.
    ///
    /// ```
    /// use mllm_engine::executor::sampler::SamplingParams;
    /// assert!(SamplingParams { logprobs: Some(3), ..Default::default() }.is_unpenalized());
    /// assert!(!SamplingParams { presence_penalty: 0.5, ..Default::default() }.is_unpenalized());
    /// ```
    pub fn is_unpenalized(&self) -> bool {
        self.repetition_penalty == 1.0 && self.frequency_penalty == 0.0 && self.presence_penalty == 0.0
    }

    /// Checks every parameter's range; the error names the first offending parameter.
    pub fn validate(&self) -> Result<(), SamplingError> {
        fn bad(param: &'static str, value: impl std::fmt::Display, expected: &'static str) -> SamplingError {
            SamplingError::InvalidParam {
                param,
                value: value.to_string(),
                expected,
            }
        }
        let t = self.temperature;
        if !(t.is_finite() && t >= 0.0) {
            return Err(bad("temperature", t, "finite and >= 0"));
        }
        if self.top_k < -1 {
            return Err(bad("top_k", self.top_k, ">= -1 (0 or -1 disable it)"));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(bad("top_p", self.top_p, "in (0, 1]"));
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return Err(bad("min_p", self.min_p, "in [0, 1]"));
        }
        let r = self.repetition_penalty;
        if !(r.is_finite() && r > 0.0) {
            return Err(bad("repetition_penalty", r, "finite and > 0"));
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return Err(bad("frequency_penalty", self.frequency_penalty, "in [-2, 2]"));
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) {
            return Err(bad("presence_penalty", self.presence_penalty, "in [-2, 2]"));
        }
        Ok(())
    }

    fn top_k_active(&self, vocab: usize) -> Option<usize> {
        (self.top_k > 0 && (self.top_k as usize) < vocab).then_some(self.top_k as usize)
    }
}

/// A small, fast, non-cryptographic PRNG: xoshiro256** (Blackman & Vigna), with its 256-bit
/// state expanded from a 64-bit seed by splitmix64, as its authors recommend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator fully determined by `seed`.
    pub fn from_seed(seed: u64) -> Self {
        let mut x = seed;
        let s = [
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
        ];
        // splitmix64 is a bijection of distinct counters, so the state is never all zero.
        Self { s }
    }

    /// A generator seeded from a process-wide counter mixed with the current time: distinct
    /// for every call within the process.
    pub fn from_entropy() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut c = n;
        Self::from_seed(nanos ^ splitmix64(&mut c))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniform `f64` in `[0, 1)` (53 random bits).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Per-request sampling state: parameters, token history (for penalties) and the RNG.
#[derive(Debug, Clone)]
pub struct SequenceState {
    params: SamplingParams,
    prompt_len: usize,
    tokens: Vec<u32>,
    /// Tokens seen in prompt + output (repetition penalty).
    seen: HashSet<u32>,
    /// Occurrence counts of output tokens (frequency / presence penalties).
    output_counts: HashMap<u32, u32>,
    rng: Rng,
}

impl SequenceState {
    /// A greedy state with a fixed seed and no history, for a logits row whose sample is
    /// dropped (a prompt chunk that is not a sequence's last): sampling it touches no
    /// request's RNG or penalty counts.
    ///
    /// ```
    /// use mllm_engine::executor::sampler::SequenceState;
    /// assert!(SequenceState::placeholder().params().is_greedy());
    /// ```
    pub fn placeholder() -> Self {
        let params = SamplingParams {
            seed: Some(0),
            ..SamplingParams::greedy()
        };
        Self::new(params, &[]).expect("greedy parameters are valid")
    }

    /// Validates `params` and starts a request with the given prompt tokens. The RNG is seeded
    /// from `params.seed`, or from [`Rng::from_entropy`] when it is `None`.
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Result<Self, SamplingError> {
        params.validate()?;
        let rng = params.seed.map_or_else(Rng::from_entropy, Rng::from_seed);
        Ok(Self {
            params,
            prompt_len: prompt.len(),
            tokens: prompt.to_vec(),
            seen: prompt.iter().copied().collect(),
            output_counts: HashMap::new(),
            rng,
        })
    }

    /// The request's sampling parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The prompt tokens.
    pub fn prompt_tokens(&self) -> &[u32] {
        &self.tokens[..self.prompt_len]
    }

    /// The tokens generated so far.
    pub fn output_tokens(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }

    /// A fresh 64-bit seed from the request's RNG (seeded requests get a reproducible
    /// sequence), for a backend that draws its random numbers elsewhere (the GPU sampler).
    pub fn next_seed(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// Records a generated token ([`Sampler::sample`] does this for the token it picks).
    pub fn push_output(&mut self, token: u32) {
        self.tokens.push(token);
        self.seen.insert(token);
        *self.output_counts.entry(token).or_insert(0) += 1;
    }

    /// Applies repetition, frequency and presence penalties to `logits` in place. Token ids in
    /// the history that are `>= logits.len()` are ignored.
    pub fn apply_penalties(&self, logits: &mut [f32]) {
        let p = &self.params;
        let r = p.repetition_penalty;
        if r != 1.0 {
            for &t in &self.seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / r } else { *l * r };
                }
            }
        }
        let (f, pr) = (p.frequency_penalty, p.presence_penalty);
        if f != 0.0 || pr != 0.0 {
            for (&t, &count) in &self.output_counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= f * count as f32 + pr;
                }
            }
        }
    }
}

/// The result of sampling one request's row.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleOutput {
    /// The chosen token id.
    pub token: u32,
    /// The chosen token's logprob in the processed distribution (see the module docs); `Some`
    /// iff [`SamplingParams::logprobs`] is `Some`.
    pub logprob: Option<f32>,
    /// The top-N `(token id, logprob)` pairs, most likely first (ties → lowest id); `Some` iff
    /// [`SamplingParams::logprobs`] is `Some`.
    pub top_logprobs: Option<Vec<(u32, f32)>>,
}

/// Samples one token per request from a batch of logits rows.
///
/// Rows are processed in parallel (rayon) when the batch holds more than one request. Each row
/// is overwritten with its processed logits (after penalties and, unless greedy, temperature;
/// before truncation). The chosen token is appended to the request's output history.
///
/// ```
/// use mllm_engine::executor::sampler::{Sampler, SamplingParams, SequenceState};
///
/// let params =
///     SamplingParams { temperature: 0.7, top_k: 50, seed: Some(7), logprobs: Some(2), ..Default::default() };
/// let mut states = vec![
///     SequenceState::new(params, &[1, 2])?,
///     SequenceState::new(SamplingParams::greedy(), &[3])?,
/// ];
/// let mut row0 = vec![0.1_f32, 2.0, -1.0, 0.5];
/// let mut row1 = vec![0.0_f32, 1.0, 3.0, 3.0];
/// let out = Sampler::new().sample(&mut [&mut row0[..], &mut row1[..]], &mut states)?;
/// assert_eq!(out[1].token, 2); // greedy, ties → lowest id
/// assert_eq!(out[0].top_logprobs.as_ref().unwrap().len(), 2);
/// assert_eq!(states[0].output_tokens(), &[out[0].token]);
/// # Ok::<(), mllm_engine::executor::sampler::SamplingError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Sampler;

impl Sampler {
    /// A sampler.
    pub fn new() -> Self {
        Self
    }

    /// Samples a token for each `(row, state)` pair; see the type-level docs. Fails on the
    /// first bad row (NaN / `+inf` logits, no finite logit) or a batch size mismatch.
    pub fn sample(
        &self,
        logits: &mut [&mut [f32]],
        states: &mut [SequenceState],
    ) -> Result<Vec<SampleOutput>, SamplingError> {
        if logits.len() != states.len() {
            return Err(SamplingError::BatchMismatch {
                rows: logits.len(),
                states: states.len(),
            });
        }
        if logits.len() > 1 {
            logits
                .par_iter_mut()
                .zip(states.par_iter_mut())
                .enumerate()
                .map(|(i, (row, st))| sample_row(i, row, st))
                .collect()
        } else {
            logits
                .iter_mut()
                .zip(states.iter_mut())
                .enumerate()
                .map(|(i, (row, st))| sample_row(i, row, st))
                .collect()
        }
    }

    /// Like [`Sampler::sample`], for a contiguous `[batch, vocab]` logits buffer.
    pub fn sample_flat(
        &self,
        logits: &mut [f32],
        vocab: usize,
        states: &mut [SequenceState],
    ) -> Result<Vec<SampleOutput>, SamplingError> {
        if vocab == 0 {
            return if logits.is_empty() && states.is_empty() {
                Ok(Vec::new())
            } else {
                Err(SamplingError::NoFiniteLogit { row: 0 })
            };
        }
        if !logits.len().is_multiple_of(vocab) || logits.len() / vocab != states.len() {
            return Err(SamplingError::BatchMismatch {
                rows: logits.len() / vocab,
                states: states.len(),
            });
        }
        let mut rows: Vec<&mut [f32]> = logits.chunks_mut(vocab).collect();
        self.sample(&mut rows, states)
    }
}

/// Checks a row for NaN / +inf / all -inf.
fn check_row(row_idx: usize, row: &[f32]) -> Result<(), SamplingError> {
    if row.len() > u32::MAX as usize {
        return Err(SamplingError::VocabTooLarge {
            row: row_idx,
            vocab: row.len(),
        });
    }
    let mut any_finite = false;
    for (i, &l) in row.iter().enumerate() {
        if l.is_nan() {
            return Err(SamplingError::NanLogit { row: row_idx, token: i });
        }
        if l == f32::INFINITY {
            return Err(SamplingError::InfiniteLogit { row: row_idx, token: i });
        }
        any_finite |= l.is_finite();
    }
    if any_finite {
        Ok(())
    } else {
        Err(SamplingError::NoFiniteLogit { row: row_idx })
    }
}

/// Argmax, ties → lowest id. `row` has at least one finite value and no NaN.
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &l) in row.iter().enumerate().skip(1) {
        if l > row[best] {
            best = i;
        }
    }
    best
}

/// `(logit, id)` ordering: higher logit first, then lower id.
fn desc(a: &(f32, u32), b: &(f32, u32)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// The tokens surviving top-k → top-p → min-p on processed logits `row` (no NaN/+inf, at least
/// one finite), as `(logit, id)` pairs; the order is deterministic but unspecified.
fn filtered_candidates(row: &[f32], params: &SamplingParams) -> Vec<(f32, u32)> {
    let mut cands: Vec<(f32, u32)> = row
        .iter()
        .enumerate()
        .filter(|(_, l)| **l > f32::NEG_INFINITY)
        .map(|(i, &l)| (l, i as u32))
        .collect();
    let mut sorted = false;

    // top-k: partial selection, O(V).
    if let Some(k) = params.top_k_active(cands.len()) {
        cands.select_nth_unstable_by(k - 1, desc);
        cands.truncate(k);
    }

    // top-p: shrink to a prefix that surely contains the nucleus, then sort only that.
    if params.top_p < 1.0 && cands.len() > 1 {
        let m = cands.iter().map(|c| c.0).fold(f32::NEG_INFINITY, f32::max);
        let z: f64 = cands.iter().map(|c| ((c.0 - m) as f64).exp()).sum();
        let target = params.top_p as f64 * z;
        for ratio in [1e-2_f64, 1e-4, 1e-6, 1e-9] {
            let lt = m as f64 + ratio.ln();
            let mass: f64 = cands
                .iter()
                .filter(|c| c.0 as f64 >= lt)
                .map(|c| ((c.0 - m) as f64).exp())
                .sum();
            if mass >= target {
                // {l >= lt} is a prefix of the descending order whose mass reaches top_p, so
                // the nucleus lies inside it.
                cands.retain(|c| c.0 as f64 >= lt);
                break;
            }
        }
        cands.sort_unstable_by(desc);
        sorted = true;
        let mut cum = 0.0;
        let mut keep = cands.len();
        for (i, c) in cands.iter().enumerate() {
            if cum >= target {
                keep = i;
                break;
            }
            cum += ((c.0 - m) as f64).exp();
        }
        cands.truncate(keep.max(1));
    }

    // min-p: p_i / p_max = exp(l_i - l_max), invariant under renormalisation.
    if params.min_p > 0.0 && cands.len() > 1 {
        let m = if sorted {
            cands[0].0
        } else {
            cands.iter().map(|c| c.0).fold(f32::NEG_INFINITY, f32::max)
        };
        let min_p = params.min_p as f64;
        cands.retain(|c| ((c.0 - m) as f64).exp() >= min_p);
    }
    cands
}

/// Draws one candidate with probability proportional to `exp(logit)`.
fn draw(cands: &[(f32, u32)], rng: &mut Rng) -> u32 {
    let m = cands.iter().map(|c| c.0).fold(f32::NEG_INFINITY, f32::max);
    let total: f64 = cands.iter().map(|c| ((c.0 - m) as f64).exp()).sum();
    let mut u = rng.next_f64() * total;
    for c in cands {
        let w = ((c.0 - m) as f64).exp();
        if u < w {
            return c.1;
        }
        u -= w;
    }
    // Rounding fell off the end: take the last candidate with non-zero weight.
    cands
        .iter()
        .rev()
        .find(|c| ((c.0 - m) as f64).exp() > 0.0)
        .unwrap_or(&cands[0])
        .1
}

/// Log-sum-exp of a row with at least one finite value, accumulated in f64.
fn log_sum_exp(row: &[f32]) -> f64 {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    m + row.iter().map(|&l| (l as f64 - m).exp()).sum::<f64>().ln()
}

/// The top-`n` `(id, logprob)` pairs of `row`, most likely first (ties → lowest id).
fn top_logprobs(row: &[f32], lse: f64, n: usize) -> Vec<(u32, f32)> {
    let n = n.min(row.len());
    if n == 0 {
        return Vec::new();
    }
    let mut all: Vec<(f32, u32)> = row.iter().enumerate().map(|(i, &l)| (l, i as u32)).collect();
    if n < all.len() {
        all.select_nth_unstable_by(n - 1, desc);
        all.truncate(n);
    }
    all.sort_unstable_by(desc);
    all.into_iter().map(|(l, i)| (i, (l as f64 - lse) as f32)).collect()
}

fn sample_row(row_idx: usize, row: &mut [f32], state: &mut SequenceState) -> Result<SampleOutput, SamplingError> {
    check_row(row_idx, row)?;
    state.apply_penalties(row);
    let params = &state.params;
    let greedy = params.is_greedy();
    if !greedy && params.temperature != 1.0 {
        let t = params.temperature;
        row.iter_mut().for_each(|l| *l /= t);
    }
    // Penalties or temperature can overflow to ±inf; re-check the processed row.
    check_row(row_idx, row)?;

    let token = if greedy {
        argmax(row) as u32
    } else {
        let cands = filtered_candidates(row, params);
        draw(&cands, &mut state.rng)
    };

    let (logprob, top) = match params.logprobs {
        Some(n) => {
            let lse = log_sum_exp(row);
            (
                Some((row[token as usize] as f64 - lse) as f32),
                Some(top_logprobs(row, lse, n)),
            )
        }
        None => (None, None),
    };
    state.push_output(token);
    Ok(SampleOutput {
        token,
        logprob,
        top_logprobs: top,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(params: SamplingParams, prompt: &[u32]) -> SequenceState {
        SequenceState::new(params, prompt).unwrap()
    }

    fn sample_one(row: &[f32], st: &mut SequenceState) -> SampleOutput {
        let mut r = row.to_vec();
        Sampler::new()
            .sample(&mut [&mut r[..]], std::slice::from_mut(st))
            .unwrap()
            .remove(0)
    }

    fn seeded(seed: u64) -> SamplingParams {
        SamplingParams {
            seed: Some(seed),
            ..Default::default()
        }
    }

    const ROW: [f32; 8] = [0.3, -1.2, 2.5, 0.9, 2.4, -0.1, 1.7, 0.0];

    #[test]
    fn greedy_is_argmax_with_lowest_id_ties() {
        let mut st = state(SamplingParams::greedy(), &[]);
        assert_eq!(sample_one(&ROW, &mut st).token, 2);
        assert_eq!(sample_one(&[1.0, 3.0, 3.0, f32::NEG_INFINITY], &mut st).token, 1);
        assert_eq!(sample_one(&[f32::NEG_INFINITY, -5.0, -5.0], &mut st).token, 1);
    }

    #[test]
    fn tiny_temperature_equals_greedy() {
        let p = SamplingParams {
            temperature: 1e-4,
            seed: Some(3),
            ..Default::default()
        };
        let mut st = state(p, &[]);
        for _ in 0..200 {
            assert_eq!(sample_one(&ROW, &mut st).token, 2);
        }
    }

    #[test]
    fn top_k_one_equals_greedy() {
        let mut st = state(
            SamplingParams {
                top_k: 1,
                seed: Some(5),
                ..Default::default()
            },
            &[],
        );
        for _ in 0..200 {
            assert_eq!(sample_one(&ROW, &mut st).token, 2);
        }
    }

    #[test]
    fn top_k_keeps_exactly_k_best() {
        let p = SamplingParams {
            top_k: 3,
            ..Default::default()
        };
        let mut ids: Vec<u32> = filtered_candidates(&ROW, &p).iter().map(|c| c.1).collect();
        ids.sort();
        assert_eq!(ids, vec![2, 4, 6]);
    }

    #[test]
    fn tiny_top_p_keeps_only_the_max() {
        let p = SamplingParams {
            top_p: 1e-6,
            seed: Some(9),
            ..Default::default()
        };
        assert_eq!(filtered_candidates(&ROW, &p), vec![(2.5, 2)]);
        let mut st = state(p, &[]);
        for _ in 0..200 {
            assert_eq!(sample_one(&ROW, &mut st).token, 2);
        }
    }

    #[test]
    fn top_p_nucleus_is_exact_on_large_vocab() {
        // probs 0.5, 0.3, 0.15, then a long tail sharing 0.05.
        let v = 150_000;
        let mut row = vec![(0.05f64 / (v - 3) as f64).ln() as f32; v];
        row[10] = 0.5f64.ln() as f32;
        row[20] = 0.3f64.ln() as f32;
        row[30] = 0.15f64.ln() as f32;
        let ids = |top_p: f32| {
            let p = SamplingParams {
                top_p,
                ..Default::default()
            };
            let mut ids: Vec<u32> = filtered_candidates(&row, &p).iter().map(|c| c.1).collect();
            ids.sort();
            ids
        };
        assert_eq!(ids(0.45), vec![10]);
        assert_eq!(ids(0.6), vec![10, 20]);
        assert_eq!(ids(0.9), vec![10, 20, 30]);
        let wide = ids(0.96); // 0.95 + ~30k tail tokens of ~3.3e-7 each
        assert!(
            wide.len() > 20_000 && wide.len() < 40_000 && [10, 20, 30].iter().all(|t| wide.contains(t)),
            "{}",
            wide.len()
        );
    }

    #[test]
    fn min_p_filter_is_exact() {
        let probs = [0.5f64, 0.3, 0.15, 0.05];
        let row: Vec<f32> = probs.iter().map(|p| p.ln() as f32).collect();
        let ids = |min_p: f32| {
            let p = SamplingParams {
                min_p,
                ..Default::default()
            };
            let mut ids: Vec<u32> = filtered_candidates(&row, &p).iter().map(|c| c.1).collect();
            ids.sort();
            ids
        };
        assert_eq!(ids(0.25), vec![0, 1, 2]); // threshold 0.125
        assert_eq!(ids(0.5), vec![0, 1]); // threshold 0.25
        assert_eq!(ids(0.09), vec![0, 1, 2, 3]); // threshold 0.045
        assert_eq!(ids(1.0), vec![0]);
        let mut st = state(
            SamplingParams {
                min_p: 0.25,
                seed: Some(1),
                ..Default::default()
            },
            &[],
        );
        for _ in 0..2000 {
            assert_ne!(sample_one(&row, &mut st).token, 3);
        }
    }

    #[test]
    fn repetition_penalty_hf_semantics() {
        let p = SamplingParams {
            repetition_penalty: 2.0,
            ..SamplingParams::greedy()
        };
        let mut st = state(p, &[0, 1]);
        st.push_output(2);
        let mut row = [4.0f32, -3.0, 1.0, 5.0];
        st.apply_penalties(&mut row);
        assert_eq!(row, [2.0, -6.0, 0.5, 5.0]);
    }

    #[test]
    fn frequency_and_presence_penalties_openai_semantics() {
        let p = SamplingParams {
            frequency_penalty: 0.5,
            presence_penalty: 1.5,
            ..SamplingParams::greedy()
        };
        // Prompt tokens are not penalised by frequency / presence.
        let mut st = state(p, &[0, 0, 3]);
        for t in [1, 1, 1, 2] {
            st.push_output(t);
        }
        let mut row = [1.0f32, 1.0, 1.0, 1.0];
        st.apply_penalties(&mut row);
        // token 1: 1 - 0.5*3 - 1.5 = -2; token 2: 1 - 0.5 - 1.5 = -1.
        assert_eq!(row, [1.0, -2.0, -1.0, 1.0]);
    }

    #[test]
    fn all_penalties_and_temperature_through_sampler() {
        let p = SamplingParams {
            temperature: 0.5,
            repetition_penalty: 2.0,
            frequency_penalty: 1.0,
            presence_penalty: 0.5,
            seed: Some(0),
            ..Default::default()
        };
        let mut st = state(p, &[0]);
        st.push_output(1);
        let mut row = [4.0f32, -1.0, 2.0];
        Sampler::new()
            .sample(&mut [&mut row[..]], std::slice::from_mut(&mut st))
            .unwrap();
        // token 0: 4/2 = 2 → /0.5 = 4; token 1: -1*2 - 1 - 0.5 = -3.5 → -7; token 2: 2 → 4.
        assert_eq!(row, [4.0, -7.0, 4.0]);
    }

    #[test]
    fn same_seed_same_tokens_different_seeds_differ() {
        let row: Vec<f32> = (0..64).map(|i| ((i * 37 % 64) as f32) * 0.05).collect();
        let run = |seed: u64| {
            let mut st = state(seeded(seed), &[]);
            (0..100).map(|_| sample_one(&row, &mut st).token).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
        // Unseeded requests get distinct streams.
        let mut a = state(SamplingParams::default(), &[]);
        let mut b = state(SamplingParams::default(), &[]);
        let sa: Vec<u32> = (0..100).map(|_| sample_one(&row, &mut a).token).collect();
        let sb: Vec<u32> = (0..100).map(|_| sample_one(&row, &mut b).token).collect();
        assert_ne!(sa, sb);
    }

    #[test]
    fn batch_parallel_matches_sequential() {
        let rows: Vec<Vec<f32>> = (0..8)
            .map(|r| (0..1000).map(|i| ((i * (r + 7)) % 97) as f32 * 0.1).collect())
            .collect();
        let params = |r: usize| SamplingParams {
            seed: Some(r as u64),
            top_k: 50,
            top_p: 0.9,
            ..Default::default()
        };
        let mut batch_states: Vec<_> = (0..8).map(|r| state(params(r), &[])).collect();
        let mut batch_rows = rows.clone();
        let mut refs: Vec<&mut [f32]> = batch_rows.iter_mut().map(|r| &mut r[..]).collect();
        let batch = Sampler::new().sample(&mut refs, &mut batch_states).unwrap();
        for (r, out) in batch.iter().enumerate() {
            let mut st = state(params(r), &[]);
            assert_eq!(sample_one(&rows[r], &mut st).token, out.token);
        }
        let mut flat: Vec<f32> = rows.concat();
        let mut flat_states: Vec<_> = (0..8).map(|r| state(params(r), &[])).collect();
        let flat_out = Sampler::new().sample_flat(&mut flat, 1000, &mut flat_states).unwrap();
        assert_eq!(flat_out, batch);
    }

    #[test]
    fn empirical_distribution_matches_softmax() {
        let row = [1.0f32, 2.0, 0.5, -1.0];
        let z: f64 = row.iter().map(|&l| (l as f64).exp()).sum();
        let exact: Vec<f64> = row.iter().map(|&l| (l as f64).exp() / z).collect();
        let mut st = state(seeded(12345), &[]);
        let mut counts = [0usize; 4];
        let n = 20_000;
        for _ in 0..n {
            counts[sample_one(&row, &mut st).token as usize] += 1;
        }
        for (c, p) in counts.iter().zip(&exact) {
            let freq = *c as f64 / n as f64;
            assert!((freq - p).abs() < 0.015, "freq {freq} vs exact {p}");
        }
    }

    #[test]
    fn logprobs_sum_to_one_and_match_naive_log_softmax() {
        let row: Vec<f32> = (0..100).map(|i| ((i * 13 % 100) as f32) * 0.07 - 3.0).collect();
        let t = 0.8f32;
        let p = SamplingParams {
            temperature: t,
            logprobs: Some(row.len()),
            seed: Some(2),
            ..Default::default()
        };
        let mut st = state(p, &[]);
        let out = sample_one(&row, &mut st);
        let top = out.top_logprobs.unwrap();
        assert_eq!(top.len(), row.len());
        let sum: f64 = top.iter().map(|&(_, lp)| (lp as f64).exp()).sum();
        assert!((sum - 1.0).abs() < 1e-5, "sum {sum}");
        // Naive log-softmax of logits / t.
        let scaled: Vec<f64> = row.iter().map(|&l| (l / t) as f64).collect();
        let lse = scaled.iter().map(|l| l.exp()).sum::<f64>().ln();
        for w in top.windows(2) {
            assert!(w[0].1 >= w[1].1);
        }
        for &(id, lp) in &top {
            assert!((lp as f64 - (scaled[id as usize] - lse)).abs() < 1e-5);
        }
        let chosen = out.logprob.unwrap() as f64;
        assert!((chosen - (scaled[out.token as usize] - lse)).abs() < 1e-5);

        // Top-2 only; logprobs = Some(0) gives the chosen logprob and no list.
        let mut st = state(
            SamplingParams {
                logprobs: Some(2),
                ..SamplingParams::greedy()
            },
            &[],
        );
        let out = sample_one(&[0.0, 1.0, 2.0], &mut st);
        let ids: Vec<u32> = out.top_logprobs.unwrap().iter().map(|x| x.0).collect();
        assert_eq!(ids, vec![2, 1]);
        let mut st = state(
            SamplingParams {
                logprobs: Some(0),
                ..SamplingParams::greedy()
            },
            &[],
        );
        let out = sample_one(&[0.0, 1.0, 2.0], &mut st);
        assert_eq!(out.top_logprobs, Some(vec![]));
        assert!(out.logprob.is_some());
        let mut st = state(SamplingParams::greedy(), &[]);
        let out = sample_one(&[0.0, 1.0, 2.0], &mut st);
        assert_eq!((out.logprob, out.top_logprobs), (None, None));
    }

    #[test]
    fn validation_errors_name_the_parameter() {
        let cases: Vec<(SamplingParams, &str)> = vec![
            (
                SamplingParams {
                    temperature: -0.1,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    temperature: f32::NAN,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    temperature: f32::INFINITY,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    top_k: -2,
                    ..Default::default()
                },
                "top_k",
            ),
            (
                SamplingParams {
                    top_p: 0.0,
                    ..Default::default()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    top_p: 1.01,
                    ..Default::default()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    min_p: -0.1,
                    ..Default::default()
                },
                "min_p",
            ),
            (
                SamplingParams {
                    min_p: 1.5,
                    ..Default::default()
                },
                "min_p",
            ),
            (
                SamplingParams {
                    repetition_penalty: 0.0,
                    ..Default::default()
                },
                "repetition_penalty",
            ),
            (
                SamplingParams {
                    frequency_penalty: 2.5,
                    ..Default::default()
                },
                "frequency_penalty",
            ),
            (
                SamplingParams {
                    presence_penalty: -2.1,
                    ..Default::default()
                },
                "presence_penalty",
            ),
        ];
        for (p, name) in cases {
            let err = p.validate().unwrap_err();
            assert!(
                matches!(&err, SamplingError::InvalidParam { param, .. } if *param == name),
                "{err:?}"
            );
            assert!(err.to_string().contains(name), "{err}");
            assert!(SequenceState::new(p, &[]).is_err());
        }
        let ok = SamplingParams {
            top_k: -1,
            top_p: 1.0,
            min_p: 1.0,
            frequency_penalty: -2.0,
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
    }

    #[test]
    fn nan_and_bad_rows_are_errors() {
        let mut st = vec![state(SamplingParams::greedy(), &[]), state(seeded(1), &[])];
        let mut a = [0.0f32, 1.0];
        let mut b = [0.0f32, f32::NAN];
        let err = Sampler::new()
            .sample(&mut [&mut a[..], &mut b[..]], &mut st)
            .unwrap_err();
        assert_eq!(err, SamplingError::NanLogit { row: 1, token: 1 });
        assert!(err.to_string().contains("NaN"));
        let mut c = [f32::NEG_INFINITY; 3];
        let err = Sampler::new().sample(&mut [&mut c[..]], &mut st[..1]).unwrap_err();
        assert_eq!(err, SamplingError::NoFiniteLogit { row: 0 });
        let mut d = [f32::INFINITY, 0.0];
        let err = Sampler::new().sample(&mut [&mut d[..]], &mut st[..1]).unwrap_err();
        assert_eq!(err, SamplingError::InfiniteLogit { row: 0, token: 0 });
        let err = Sampler::new().sample(&mut [&mut a[..]], &mut st).unwrap_err();
        assert_eq!(err, SamplingError::BatchMismatch { rows: 1, states: 2 });
    }
}
