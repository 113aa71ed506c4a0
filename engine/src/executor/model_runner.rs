//! [`ModelRunner`]: owns the model and the KV pools; turns sequence inputs into a
//! [`ForwardBatch`], runs the forward (on the CPU or a GPU) and samples the next tokens.

use std::sync::Arc;

use super::cuda::{CudaModel, KvSizing};
use super::device::Device;
use super::forward_batch::{ForwardBatch, LogitsMode, SequenceInput};
use super::sampler::{SampleOutput, Sampler, SequenceState};
use crate::loader::config::ModelConfig;
use crate::mem_cache::{capacity_for_budget, KvDtype, ReqToTokenPool, TokenToKvPool};
use crate::models::{CausalLM, ModelError, Result};
use crate::tensor::Tensor;

/// Sizing of the runner's pools.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunnerConfig {
    /// Bytes of KV cache (all layers, K and V) at `kv_dtype`; sets the token capacity.
    pub kv_budget_bytes: usize,
    /// Storage dtype of the host KV cache (a GPU stores K/V in the model's compute dtype, with
    /// the same token capacity).
    pub kv_dtype: KvDtype,
    /// Where the model runs.
    pub device: Device,
    /// On a GPU: size the K/V cache to what fits in this fraction of its memory instead of
    /// `kv_budget_bytes` (`--mem-fraction-static`).
    pub gpu_mem_fraction: Option<f64>,
    /// On a GPU: run decode batches of up to this many sequences on CUDA graphs (0: never;
    /// `--cuda-graph-max-bs`, `--disable-cuda-graph`).
    pub cuda_graph_max_bs: usize,
    /// Request slots (sequences in flight).
    pub max_running_requests: usize,
    /// Longest sequence (prompt + output).
    pub max_context_len: usize,
}

/// The model plus its KV cache; one [`ModelRunner::step`] runs a batch of any mix of prefills
/// and decodes.
#[derive(Debug)]
pub struct ModelRunner {
    backend: Backend,
    config: ModelConfig,
    req_pool: ReqToTokenPool,
    kv_pool: TokenToKvPool,
    sampler: Sampler,
}

/// The model on its device. The CUDA backend drops the host copy of the weights once uploaded.
#[derive(Debug)]
enum Backend {
    Cpu(Box<CausalLM>),
    Cuda(Box<CudaModel>),
}

impl ModelRunner {
    /// A runner with pools sized by `cfg` (KV capacity from the byte budget). On
    /// [`Device::Cuda`] the weights are uploaded (progress on stderr) and the K/V cache is
    /// allocated on that GPU.
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
        let (layers, heads, dim) = (c.num_hidden_layers, c.num_key_value_heads, c.head_dim);
        let config = c.clone();
        let (backend, kv_pool) = match cfg.device {
            Device::Cpu => (
                Backend::Cpu(Box::new(model)),
                TokenToKvPool::new(capacity, layers, heads, dim, cfg.kv_dtype),
            ),
            Device::Cuda(ordinal) => {
                let gpu = Arc::new(mllm_kernel::Gpu::new(ordinal)?);
                let sizing = match cfg.gpu_mem_fraction {
                    Some(f) => KvSizing::MemFraction(f),
                    None => KvSizing::Tokens(capacity),
                };
                let cuda = CudaModel::new(gpu, &model, sizing, cfg.max_context_len, cfg.cuda_graph_max_bs)?;
                drop(model);
                let pool = TokenToKvPool::allocator_only(cuda.kv_capacity(), layers, heads, dim, KvDtype::BF16);
                (Backend::Cuda(Box::new(cuda)), pool)
            }
        };
        Ok(Self {
            backend,
            config,
            req_pool: ReqToTokenPool::new(cfg.max_running_requests, cfg.max_context_len),
            kv_pool,
            sampler: Sampler::new(),
        })
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Where the model runs.
    pub fn device(&self) -> Device {
        match &self.backend {
            Backend::Cpu(_) => Device::Cpu,
            Backend::Cuda(m) => Device::Cuda(m.gpu().info().ordinal),
        }
    }

    /// The host model (`None` on a GPU, where only the uploaded copy is kept).
    pub fn cpu_model(&self) -> Option<&CausalLM> {
        match &self.backend {
            Backend::Cpu(m) => Some(m),
            Backend::Cuda(_) => None,
        }
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
        match &mut self.backend {
            Backend::Cpu(m) => m.forward(&batch.input_ids, &batch.positions, batch, &mut self.kv_pool),
            Backend::Cuda(m) => m.forward(batch),
        }
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
        if let Backend::Cuda(m) = &mut self.backend {
            if let Some(out) = m.sample_on_gpu(batch, states)? {
                return Ok(out);
            }
        }
        let logits = self.forward(batch)?;
        let vocab = self.config.vocab_size;
        let mut flat = logits.to_f32_vec()?;
        self.sampler
            .sample_flat(&mut flat, vocab, states)
            .map_err(|e| ModelError::Invalid(format!("sampling failed: {e}")))
    }

    /// The CUDA backend's per-op GPU time report (`MLLM_CUDA_PROFILE=1`); `None` otherwise.
    pub fn profile_report(&self) -> Option<String> {
        match &self.backend {
            Backend::Cpu(_) => None,
            Backend::Cuda(m) => m.profile_report(),
        }
    }

    /// Frees a finished request: the KV slots of its first `len` tokens and its request slot.
    pub fn release(&mut self, req_slot: usize, len: usize) -> Result<()> {
        let slots = self.req_pool.kv_indices(req_slot, 0..len)?;
        self.kv_pool.free(&slots)?;
        self.req_pool.free(req_slot)?;
        Ok(())
    }
}
