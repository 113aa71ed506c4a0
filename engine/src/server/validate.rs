//! Validation: wire sampling fields → [`TokenizedRequest`]s, with 400s that name the field,
//! the limit and the value.

use std::sync::Arc;

use super::error::ApiError;
use super::protocol::{NativeSampling, OpenAiSampling, SamplingFields};
use crate::executor::sampler::{SamplingError, SamplingParams};
use crate::io_struct::{SeqId, TokenizedRequest};
use crate::multimodal::MultimodalInputs;
use crate::orchestrator::{Engine, TextOptions};

/// Most choices (`n`) per request.
pub const MAX_N: usize = 16;
/// Most `top_logprobs` per token.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Sampling settings common to all endpoints.
#[derive(Debug, Clone, Default)]
pub struct SamplingSpec {
    /// Requested new tokens, if given.
    pub max_new: Option<i64>,
    /// The field name `max_new` came from.
    pub max_param: &'static str,
    /// Default when `max_new` is absent (capped by what is left of the context); `None`:
    /// everything that is left.
    pub default_max: Option<usize>,
    /// Sampling parameters (unvalidated).
    pub params: SamplingParams,
    /// Stop strings and how tokens become text.
    pub text: TextOptions,
    /// Extra stop token ids.
    pub stop_token_ids: Vec<u32>,
    /// Choices.
    pub n: Option<i64>,
    /// Keep going past EOS.
    pub ignore_eos: bool,
}

impl SamplingSpec {
    /// From the OpenAI fields; `logprobs` is the number of alternatives wanted, if any.
    pub fn from_openai(s: &OpenAiSampling, logprobs: Option<usize>) -> Self {
        let (max_new, max_param) = match (s.max_completion_tokens, s.max_tokens) {
            (Some(v), _) => (Some(v), "max_completion_tokens"),
            (None, v) => (v, "max_tokens"),
        };
        Self::from_fields(&s.fields, logprobs, max_new, max_param, None)
    }

    /// From `/generate`'s `sampling_params`.
    pub fn from_native(s: &NativeSampling, logprobs: Option<usize>) -> Self {
        let max_param = "sampling_params.max_new_tokens";
        Self::from_fields(&s.fields, logprobs, s.max_new_tokens, max_param, Some(128))
    }

    /// The shared fields with their defaults, plus the endpoint's length limit.
    fn from_fields(
        f: &SamplingFields,
        logprobs: Option<usize>,
        max_new: Option<i64>,
        max_param: &'static str,
        default_max: Option<usize>,
    ) -> Self {
        Self {
            max_new,
            max_param,
            default_max,
            params: SamplingParams {
                temperature: f.temperature.unwrap_or(1.0),
                top_k: f.top_k.unwrap_or(0),
                top_p: f.top_p.unwrap_or(1.0),
                min_p: f.min_p.unwrap_or(0.0),
                repetition_penalty: f.repetition_penalty.unwrap_or(1.0),
                frequency_penalty: f.frequency_penalty.unwrap_or(0.0),
                presence_penalty: f.presence_penalty.unwrap_or(0.0),
                seed: f.seed,
                logprobs,
            },
            text: TextOptions {
                stop: f.stop.clone().map(|s| s.into_vec()).unwrap_or_default(),
                skip_special_tokens: f.skip_special_tokens.unwrap_or(true),
                no_stop_trim: f.no_stop_trim.unwrap_or(false),
            },
            stop_token_ids: f.stop_token_ids.clone().unwrap_or_default(),
            n: f.n,
            ignore_eos: f.ignore_eos.unwrap_or(false),
        }
    }

    /// Checks `n` and the sampling parameters before tokenizing.
    pub fn check(&self, prefix: &str) -> Result<usize, ApiError> {
        let n = self.n.unwrap_or(1);
        if n < 1 || n as usize > MAX_N {
            return Err(ApiError::invalid(
                &format!("{prefix}n"),
                format!("n must be between 1 and {MAX_N}, got {n}"),
            ));
        }
        if let Some(k) = self.params.logprobs.filter(|&k| k > MAX_TOP_LOGPROBS) {
            return Err(ApiError::invalid(
                "top_logprobs",
                format!("at most {MAX_TOP_LOGPROBS} top logprobs, got {k}"),
            ));
        }
        if let Err(SamplingError::InvalidParam { param, value, expected }) = self.params.validate() {
            return Err(ApiError::invalid(
                &format!("{prefix}{param}"),
                format!("invalid {param} {value}: must be {expected}"),
            ));
        }
        if let Some(m) = self.max_new.filter(|&m| m <= 0) {
            return Err(ApiError::invalid(
                self.max_param,
                format!("{} must be at least 1, got {m}", self.max_param),
            ));
        }
        Ok(n as usize)
    }

    /// The sequences to submit for a tokenized prompt (with its images, if any).
    pub fn build(
        &self,
        engine: &Engine,
        rid: &str,
        input_ids: Vec<u32>,
        mm: Option<Arc<MultimodalInputs>>,
        prompt_param: &str,
    ) -> Result<Vec<TokenizedRequest>, ApiError> {
        let n = self.check("")?;
        let limit = engine.max_seq_len();
        let len = input_ids.len();
        if len == 0 {
            return Err(ApiError::invalid(prompt_param, "the prompt is empty (0 tokens)"));
        }
        if let Some(bad) = input_ids.iter().find(|&&t| t as usize >= engine.vocab_size()) {
            return Err(ApiError::invalid(
                prompt_param,
                format!("token id {bad} is out of the vocabulary (size {})", engine.vocab_size()),
            ));
        }
        if len >= limit {
            return Err(ApiError::invalid(
                prompt_param,
                format!(
                    "the prompt is {len} tokens but this server's maximum context length is {limit} tokens \
                     (at least one more is needed to generate)"
                ),
            ));
        }
        let room = limit - len;
        let max_new = match self.max_new {
            Some(m) if m as usize > room => {
                return Err(ApiError::invalid(
                    self.max_param,
                    format!(
                        "the maximum context length is {limit} tokens; the prompt is {len} tokens and {} = {m} \
                         asks for {} in total",
                        self.max_param,
                        len + m as usize
                    ),
                ))
            }
            Some(m) => m as usize,
            None => self.default_max.map_or(room, |d| d.min(room)),
        };
        let mut stop_token_ids = self.stop_token_ids.clone();
        if !self.ignore_eos {
            stop_token_ids.extend(engine.eos_token_ids());
        }
        Ok((0..n)
            .map(|index| {
                let mut params = self.params.clone();
                params.seed = params.seed.map(|s| s.wrapping_add(index as u64));
                TokenizedRequest {
                    id: SeqId {
                        rid: rid.to_string(),
                        index,
                    },
                    input_ids: input_ids.clone(),
                    params,
                    max_new_tokens: max_new,
                    stop_token_ids: stop_token_ids.clone(),
                    mm: mm.clone(),
                }
            })
            .collect())
    }
}
