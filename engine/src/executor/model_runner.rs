//! [`ModelRunner`]: owns the model and the KV pools; turns sequence inputs into a
//! [`ForwardBatch`], runs the forward and samples the next tokens.

use super::forward_batch::{ForwardBatch, LogitsMode, SequenceInput};
use super::sampler::{SampleOutput, Sampler, SequenceState};
use crate::mem_cache::{capacity_for_budget, KvDtype, ReqToTokenPool, TokenToKvPool};
use crate::models::{CausalLM, ModelError, Result};
use crate::tensor::Tensor;

/// Sizing of the runner's pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunnerConfig {
    /// Bytes of KV cache (all layers, K and V).
    pub kv_budget_bytes: usize,
    /// Storage dtype of the KV cache.
    pub kv_dtype: KvDtype,
    /// Request slots (sequences in flight).
    pub max_running_requests: usize,
    /// Longest sequence (prompt + output).
    pub max_context_len: usize,
}

/// The model plus its KV cache; one [`ModelRunner::step`] runs a batch of any mix of prefills
/// and decodes.
#[derive(Debug)]
pub struct ModelRunner {
    model: CausalLM,
    req_pool: ReqToTokenPool,
    kv_pool: TokenToKvPool,
    sampler: Sampler,
}

impl ModelRunner {
    /// A runner with pools sized by `cfg` (KV capacity from the byte budget).
    pub fn new(model: CausalLM, cfg: RunnerConfig) -> Result<Self> {
        let c = model.config();
        let capacity = capacity_for_budget(
            cfg.kv_budget_bytes,
            c.num_hidden_layers,
            c.num_key_value_heads,
            c.head_dim,
            cfg.kv_dtype.size(),
        );
        if capacity == 0 || cfg.max_running_requests == 0 || cfg.max_context_len == 0 {
            return Err(ModelError::Invalid(format!(
                "KV budget of {} bytes holds {capacity} tokens; need a budget for at least one token, \
                 max_running_requests > 0 and max_context_len > 0",
                cfg.kv_budget_bytes
            )));
        }
        let kv_pool = TokenToKvPool::new(
            capacity,
            c.num_hidden_layers,
            c.num_key_value_heads,
            c.head_dim,
            cfg.kv_dtype,
        );
        Ok(Self {
            req_pool: ReqToTokenPool::new(cfg.max_running_requests, cfg.max_context_len),
            kv_pool,
            model,
            sampler: Sampler::new(),
        })
    }

    /// The model.
    pub fn model(&self) -> &CausalLM {
        &self.model
    }

    /// The request→token pool (allocate a slot per new request here).
    pub fn req_pool_mut(&mut self) -> &mut ReqToTokenPool {
        &mut self.req_pool
    }

    /// The KV pool.
    pub fn kv_pool(&self) -> &TokenToKvPool {
        &self.kv_pool
    }

    /// The KV pool, mutably (to free slots a prefix cache hands back).
    pub fn kv_pool_mut(&mut self) -> &mut TokenToKvPool {
        &mut self.kv_pool
    }

    /// Allocates KV for the inputs' new tokens and lays out the batch.
    pub fn prepare(&mut self, inputs: &[SequenceInput], logits: LogitsMode) -> Result<ForwardBatch> {
        ForwardBatch::build(inputs, &mut self.req_pool, &mut self.kv_pool, logits)
    }

    /// Runs the model: f32 logits `[rows, vocab]` for the batch's logit rows.
    pub fn forward(&mut self, batch: &ForwardBatch) -> Result<Tensor> {
        self.model
            .forward(&batch.input_ids, &batch.positions, batch, &mut self.kv_pool)
    }

    /// Forward, then sample one token per sequence (`states[i]` for `batch.seqs[i]`; the batch
    /// must use [`LogitsMode::LastPerSequence`]).
    pub fn step(&mut self, batch: &ForwardBatch, states: &mut [SequenceState]) -> Result<Vec<SampleOutput>> {
        if batch.logits != LogitsMode::LastPerSequence || states.len() != batch.batch_size() {
            return Err(ModelError::Invalid(format!(
                "step needs last-token logits and one sampling state per sequence ({} states, {} sequences)",
                states.len(),
                batch.batch_size()
            )));
        }
        let logits = self.forward(batch)?;
        let vocab = self.model.config().vocab_size;
        let mut flat = logits.to_f32_vec()?;
        self.sampler
            .sample_flat(&mut flat, vocab, states)
            .map_err(|e| ModelError::Invalid(format!("sampling failed: {e}")))
    }

    /// Frees a finished request: the KV slots of its first `len` tokens and its request slot.
    pub fn release(&mut self, req_slot: usize, len: usize) -> Result<()> {
        let slots = self.req_pool.kv_indices(req_slot, 0..len)?;
        self.kv_pool.free(&slots)?;
        self.req_pool.free(req_slot)?;
        Ok(())
    }
}
