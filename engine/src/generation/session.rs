//! [`Generator`]: one prompt at a time through prefill and decode.

use std::time::Instant;

use super::load::ModelInfo;
use super::stop::StopMatcher;
use super::{GenerationError, Result};
use crate::executor::device::Device;
use crate::executor::forward_batch::{LogitsMode, SequenceInput};
use crate::executor::model_runner::{ModelRunner, RunnerConfig};
use crate::executor::sampler::{SampleOutput, SamplingParams, SequenceState};
use crate::loader::config::ModelConfig;
use crate::mem_cache::KvDtype;
use crate::models::{CausalLM, ModelError};
use crate::tokenizer::Tokenizer;

/// What to generate for one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// Most new tokens to generate.
    pub max_tokens: usize,
    /// Sampling parameters (validated when the request starts).
    pub params: SamplingParams,
    /// Stop strings: generation ends before the first occurrence, which is not returned.
    pub stop: Vec<String>,
    /// Keep generating past EOS tokens.
    pub ignore_eos: bool,
}

impl Default for GenerateRequest {
    /// 128 tokens, default sampling, no stop strings.
    fn default() -> Self {
        Self {
            max_tokens: 128,
            params: SamplingParams::default(),
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-sequence token (not part of the text).
    Eos {
        /// The token.
        token: u32,
    },
    /// A stop string appeared.
    Stop {
        /// The stop string.
        stop: String,
    },
    /// `max_tokens` were generated.
    Length,
}

/// Timings and counts of one generation.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct GenerateStats {
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Generated tokens (including an EOS token that ended generation).
    pub generated_tokens: usize,
    /// Seconds of the prefill step (forward + sampling of the first token).
    pub prefill_s: f64,
    /// Seconds of all decode steps.
    pub decode_s: f64,
    /// Number of decode steps (`generated_tokens - 1` unless nothing was generated).
    pub decode_steps: usize,
}

impl GenerateStats {
    /// Prompt tokens per second of prefill.
    ///
    /// ```
    /// use mllm_engine::generation::GenerateStats;
    /// let s = GenerateStats { prompt_tokens: 100, prefill_s: 0.5, ..Default::default() };
    /// assert_eq!(s.prefill_tok_s(), 200.0);
    /// ```
    pub fn prefill_tok_s(&self) -> f64 {
        rate(self.prompt_tokens, self.prefill_s)
    }

    /// Generated tokens per second of decode (one token per decode step).
    pub fn decode_tok_s(&self) -> f64 {
        rate(self.decode_steps, self.decode_s)
    }
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// The result of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOutput {
    /// The generated text (special tokens and any stop string left out).
    pub text: String,
    /// The generated token ids.
    pub tokens: Vec<u32>,
    /// One sampler output per generated token (with logprobs when asked for).
    pub samples: Vec<SampleOutput>,
    /// Why it ended.
    pub finish: FinishReason,
    /// Counts and timings.
    pub stats: GenerateStats,
}

/// Where a [`Generator`] runs and how it keeps its KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneratorTarget {
    /// CPU or a GPU.
    pub device: Device,
    /// On a GPU, replay decode steps from a CUDA graph.
    pub cuda_graph: bool,
    /// The KV cache's element type; `None` follows the weights (bf16 weights keep a bf16 cache,
    /// see [`ModelInfo::default_kv_dtype`]).
    pub kv_dtype: Option<KvDtype>,
}

impl GeneratorTarget {
    /// The CPU with an f32 KV cache (what [`Generator::new`] uses).
    ///
    /// ```
    /// use mllm_engine::generation::GeneratorTarget;
    /// use mllm_engine::mem_cache::KvDtype;
    /// assert_eq!(GeneratorTarget::cpu().kv_dtype, Some(KvDtype::F32));
    /// ```
    pub fn cpu() -> Self {
        Self {
            device: Device::Cpu,
            cuda_graph: false,
            kv_dtype: Some(KvDtype::F32),
        }
    }
}

/// Generates text for one prompt at a time with a [`ModelRunner`] sized for one sequence.
#[derive(Debug)]
pub struct Generator {
    runner: ModelRunner,
    tokenizer: Tokenizer,
    info: ModelInfo,
    capacity: usize,
}

impl Generator {
    /// A generator on the CPU whose KV cache (f32) holds one sequence of `max_context_len` tokens.
    pub fn new(model: CausalLM, tokenizer: Tokenizer, info: ModelInfo, max_context_len: usize) -> Result<Self> {
        Self::on_device(model, tokenizer, info, max_context_len, GeneratorTarget::cpu())
    }

    /// Like [`Generator::new`], running on `target`'s device with its KV cache type.
    pub fn on_device(
        model: CausalLM,
        tokenizer: Tokenizer,
        info: ModelInfo,
        max_context_len: usize,
        target: GeneratorTarget,
    ) -> Result<Self> {
        let cuda_graph_max_bs = usize::from(target.cuda_graph);
        let device = target.device;
        let kv_dtype = target.kv_dtype.unwrap_or_else(|| info.default_kv_dtype());
        let cfg = RunnerConfig {
            kv_budget_bytes: Self::kv_bytes_for(model.config(), max_context_len, kv_dtype),
            kv_dtype,
            max_running_requests: 1,
            max_context_len,
            device,
            gpu_mem_fraction: None,
            cuda_graph_max_bs,
        };
        Ok(Self {
            runner: ModelRunner::new(model, cfg)?,
            tokenizer,
            info,
            capacity: max_context_len,
        })
    }

    /// Bytes of KV cache (f32 or bf16, all layers, K and V) for `tokens` tokens plus the padding
    /// slot; the budget [`RunnerConfig::kv_budget_bytes`] needs for them.
    ///
    /// ```
    /// use mllm_engine::generation::Generator;
    /// use mllm_engine::loader::config::ModelConfig;
    /// use mllm_engine::mem_cache::{capacity_for_budget, KvDtype};
    /// let json = r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
    ///     "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
    ///     "num_key_value_heads": 2, "vocab_size": 128, "max_position_embeddings": 256}"#;
    /// let c = ModelConfig::from_json_str(json, "config.json")?;
    /// let bytes = Generator::kv_bytes_for(&c, 100, KvDtype::F32);
    /// assert_eq!(capacity_for_budget(bytes, 2, 2, 16, 4), 100);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn kv_bytes_for(config: &ModelConfig, tokens: usize, kv_dtype: KvDtype) -> usize {
        2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * kv_dtype.size() * (tokens + 1)
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// What was loaded.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Generates for `prompt` (token ids), calling `on_text` with each new piece of text as soon
    /// as it is final (complete UTF-8, not part of a possible stop string).
    pub fn generate(
        &mut self,
        prompt: &[u32],
        req: &GenerateRequest,
        on_text: impl FnMut(&str),
    ) -> Result<GenerateOutput> {
        if prompt.is_empty() {
            return Err(GenerationError::EmptyPrompt);
        }
        let needed = prompt.len() + req.max_tokens;
        if needed > self.capacity {
            return Err(GenerationError::OverCapacity {
                needed,
                prompt_tokens: prompt.len(),
                max_tokens: req.max_tokens,
                capacity: self.capacity,
            });
        }
        let state = SequenceState::new(req.params.clone(), prompt)?;
        let slot = self.runner.req_pool_mut().alloc(1).map_err(ModelError::from)?[0];
        let mut fed = 0;
        let result = self.run(slot, prompt, state, req, &mut fed, on_text);
        // Every token fed holds a KV slot until released, also after an error mid-step.
        let released = self.runner.release(slot, fed);
        let out = result?;
        released?;
        Ok(out)
    }

    fn run(
        &mut self,
        slot: usize,
        prompt: &[u32],
        mut state: SequenceState,
        req: &GenerateRequest,
        fed: &mut usize,
        mut on_text: impl FnMut(&str),
    ) -> Result<GenerateOutput> {
        let mut stats = GenerateStats {
            prompt_tokens: prompt.len(),
            ..Default::default()
        };
        let mut out = GenerateOutput {
            text: String::new(),
            tokens: Vec::new(),
            samples: Vec::new(),
            finish: FinishReason::Length,
            stats,
        };
        if req.max_tokens == 0 {
            return Ok(out);
        }
        let mut stream = self.tokenizer.decode_stream(true);
        let mut stops = StopMatcher::new(req.stop.clone());
        let mut emit = |text: &mut String, piece: &str| {
            if !piece.is_empty() {
                on_text(piece);
                text.push_str(piece);
            }
        };
        let mut input = SequenceInput {
            req_slot: slot,
            prefix_len: 0,
            new_tokens: prompt.to_vec(),
        };
        loop {
            let t = Instant::now();
            let batch = self
                .runner
                .prepare(std::slice::from_ref(&input), LogitsMode::LastPerSequence)?;
            *fed = input.prefix_len + input.new_tokens.len();
            let sample = self.runner.step(&batch, std::slice::from_mut(&mut state))?.remove(0);
            if input.prefix_len == 0 {
                stats.prefill_s = t.elapsed().as_secs_f64();
            } else {
                stats.decode_s += t.elapsed().as_secs_f64();
                stats.decode_steps += 1;
            }
            let token = sample.token;
            out.tokens.push(token);
            out.samples.push(sample);
            stats.generated_tokens += 1;
            if !req.ignore_eos && self.tokenizer.eos_token_ids().contains(&token) {
                out.finish = FinishReason::Eos { token };
                break;
            }
            if let Some(piece) = stream.step(&self.tokenizer, token)? {
                let (safe, stopped) = stops.push(&piece);
                emit(&mut out.text, &safe);
                if let (true, Some(stop)) = (stopped, stops.matched()) {
                    out.finish = FinishReason::Stop { stop: stop.into() };
                    break;
                }
            }
            if out.tokens.len() == req.max_tokens {
                break;
            }
            input = SequenceInput {
                req_slot: slot,
                prefix_len: input.prefix_len + input.new_tokens.len(),
                new_tokens: vec![token],
            };
        }
        if !matches!(out.finish, FinishReason::Stop { .. }) {
            let rest = stops.flush();
            emit(&mut out.text, &rest);
        }
        out.stats = stats;
        Ok(out)
    }
}
