//! [`ModelRunner`]: owns the model and the KV pools; turns sequence inputs into a
//! [`ForwardBatch`], runs the forward (on the CPU or a GPU) and samples the next tokens.

use std::ops::Range;
use std::sync::Arc;

use mllm_kernel::graph::GraphEdges;
use mllm_kernel::readback::Readback;
use mllm_kernel::DeviceTensor;

use super::cuda::{record_ids, CudaModel, CudaVisionTower, KvSizing, Picked, TokenFeed, VisualStep};
use super::device::Device;
use super::forward_batch::{ForwardBatch, LogitsMode, SequenceInput};
use super::pending::{check_futures, resolve_on_host, LastSamples, Pending, PendingStep};
use super::sampler::{SampleOutput, Sampler, SequenceState};
use crate::loader::config::ModelConfig;
use crate::mem_cache::{capacity_for_budget, KvDtype, ReqToTokenPool, TokenToKvPool};
use crate::models::qwen3_vl::{Qwen3VlModel, StepLogits, VlFront, VlRequests};
use crate::models::{CausalLM, ModelError, Result};
use crate::multimodal::MultimodalInputs;
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
    /// The last launched step's samples, for the next step's future tokens.
    last_samples: Option<LastSamples>,
    /// Idle page-locked buffers for sampled ids on their way to the host.
    readbacks: Vec<Readback>,
}

/// The model on its device. The CUDA backend drops the host copy of the weights once uploaded.
#[derive(Debug)]
enum Backend {
    Cpu(Box<CausalLM>),
    Cuda(Box<CudaModel>),
    /// Qwen3-VL on the CPU, one sequence at a time, with its image requests' state.
    Vl(Box<Qwen3VlModel>, VlRequests),
    /// Qwen3-VL on a GPU: the text decoder (batched, decode on CUDA graphs) and a copy of the
    /// vision tower; the host keeps the tower's config and position table.
    VlCuda(Box<CudaModel>, Box<VlFront>, VlRequests),
}

/// The weights a [`ModelRunner`] runs.
#[derive(Debug)]
pub enum RunnerModel {
    /// A text decoder (CPU or GPU).
    Text(Box<CausalLM>),
    /// Qwen3-VL: text and images.
    Qwen3Vl(Box<Qwen3VlModel>),
}

impl RunnerModel {
    /// The text decoder's config (a Qwen3-VL model's `text_config`).
    pub fn config(&self) -> &ModelConfig {
        match self {
            Self::Text(m) => m.config(),
            Self::Qwen3Vl(m) => &m.config().text,
        }
    }
}

impl From<CausalLM> for RunnerModel {
    fn from(m: CausalLM) -> Self {
        Self::Text(Box::new(m))
    }
}

impl From<Qwen3VlModel> for RunnerModel {
    fn from(m: Qwen3VlModel) -> Self {
        Self::Qwen3Vl(Box::new(m))
    }
}

impl ModelRunner {
    /// A runner with pools sized by `cfg` (KV capacity from the byte budget). On
    /// [`Device::Cuda`] the weights are uploaded (progress on stderr) and the K/V cache is
    /// allocated on that GPU (for Qwen3-VL also the vision tower).
    pub fn new(model: impl Into<RunnerModel>, cfg: RunnerConfig) -> Result<Self> {
        let model = model.into();
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
        let (backend, kv_pool) = match (model, cfg.device) {
            (RunnerModel::Text(model), Device::Cpu) => (
                Backend::Cpu(model),
                TokenToKvPool::new(capacity, layers, heads, dim, cfg.kv_dtype),
            ),
            (RunnerModel::Qwen3Vl(model), Device::Cpu) => (
                Backend::Vl(model, VlRequests::default()),
                TokenToKvPool::new(capacity, layers, heads, dim, cfg.kv_dtype),
            ),
            (model, Device::Cuda(ordinal)) => {
                let gpu = Arc::new(mllm_kernel::Gpu::new(ordinal)?);
                let sizing = match cfg.gpu_mem_fraction {
                    Some(f) => KvSizing::MemFraction(f),
                    None => KvSizing::Tokens(capacity),
                };
                let (max_context, graph_bs) = (cfg.max_context_len, cfg.cuda_graph_max_bs);
                let backend = match model {
                    RunnerModel::Text(m) => {
                        Backend::Cuda(Box::new(CudaModel::new(gpu, &*m, sizing, max_context, graph_bs)?))
                    }
                    RunnerModel::Qwen3Vl(m) => {
                        let cuda = CudaModel::new(gpu.clone(), &*m, sizing, max_context, graph_bs)?;
                        let tower = CudaVisionTower::upload(gpu, m.shared_vision(), cuda.dtype())?;
                        let front = m.into_front().with_encoder(Arc::new(tower));
                        Backend::VlCuda(Box::new(cuda), Box::new(front), VlRequests::default())
                    }
                };
                let kv_capacity = match &backend {
                    Backend::Cuda(m) | Backend::VlCuda(m, ..) => m.kv_capacity(),
                    Backend::Cpu(_) | Backend::Vl(..) => unreachable!("a CUDA backend was just built"),
                };
                let pool = TokenToKvPool::allocator_only(kv_capacity, layers, heads, dim, KvDtype::BF16);
                (backend, pool)
            }
        };
        Ok(Self {
            backend,
            config,
            req_pool: ReqToTokenPool::new(cfg.max_running_requests, cfg.max_context_len),
            kv_pool,
            sampler: Sampler::new(),
            last_samples: None,
            readbacks: Vec::new(),
        })
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Where the model runs.
    pub fn device(&self) -> Device {
        match &self.backend {
            Backend::Cpu(_) | Backend::Vl(..) => Device::Cpu,
            Backend::Cuda(m) | Backend::VlCuda(m, ..) => Device::Cuda(m.gpu().info().ordinal),
        }
    }

    /// The K/V cache's element type where the cache lives: the GPU's compute dtype (bf16, or
    /// f16 for an f16 checkpoint) on CUDA, the host pool's otherwise.
    pub fn kv_dtype_name(&self) -> &'static str {
        match &self.backend {
            Backend::Cuda(m) | Backend::VlCuda(m, ..) => m.dtype().name(),
            Backend::Cpu(_) | Backend::Vl(..) => self.kv_pool.dtype().name(),
        }
    }

    /// The host text model (`None` on a GPU, where only the uploaded copy is kept, and for
    /// Qwen3-VL).
    pub fn cpu_model(&self) -> Option<&CausalLM> {
        match &self.backend {
            Backend::Cpu(m) => Some(m),
            Backend::Cuda(_) | Backend::Vl(..) | Backend::VlCuda(..) => None,
        }
    }

    /// Whether the model runs requests with images (Qwen3-VL).
    pub fn runs_images(&self) -> bool {
        self.vl_front().is_some()
    }

    /// Qwen3-VL's host half (config, vision tower, M-RoPE), whichever device runs its text.
    fn vl_front(&self) -> Option<&VlFront> {
        match &self.backend {
            Backend::Vl(m, _) => Some(m.front()),
            Backend::VlCuda(_, front, _) => Some(front),
            Backend::Cpu(_) | Backend::Cuda(_) => None,
        }
    }

    /// GPU seconds of each CUDA-graph decode replay since the last call (`None` on the CPU):
    /// a decode step's time minus this is the host's share.
    pub fn take_graph_replay_seconds(&mut self) -> Result<Option<Vec<f64>>> {
        match &mut self.backend {
            Backend::Cuda(m) | Backend::VlCuda(m, ..) => Ok(Some(m.take_graph_replay_seconds()?)),
            Backend::Cpu(_) | Backend::Vl(..) => Ok(None),
        }
    }

    /// Each captured decode graph's batch size and how its kernels depend on what precedes
    /// them (`None` on the CPU): a kernel behind a memory node cannot launch early.
    pub fn decode_graph_edges(&self) -> Result<Option<Vec<(usize, GraphEdges)>>> {
        match &self.backend {
            Backend::Cuda(m) | Backend::VlCuda(m, ..) => Ok(Some(m.decode_graph_edges()?)),
            Backend::Cpu(_) | Backend::Vl(..) => Ok(None),
        }
    }

    /// Seconds spent encoding images so far (`None` for a text model).
    pub fn vision_encode_seconds(&self) -> Option<f64> {
        match &self.backend {
            Backend::Vl(_, reqs) | Backend::VlCuda(_, _, reqs) => Some(reqs.tower_seconds()),
            Backend::Cpu(_) | Backend::Cuda(_) => None,
        }
    }

    /// Qwen3-VL's host half and its image requests' state.
    fn vl_requests(&mut self) -> Option<(&VlFront, &mut VlRequests)> {
        match &mut self.backend {
            Backend::Vl(m, reqs) => Some((m.front(), reqs)),
            Backend::VlCuda(_, front, reqs) => Some((front, reqs)),
            Backend::Cpu(_) | Backend::Cuda(_) => None,
        }
    }

    /// Checks a request's images (`None`: a text request) against its prompt's image
    /// placeholders, before it is queued. A runner without images accepts only text.
    pub fn check_images(&self, prompt: &[u32], mm: Option<&MultimodalInputs>) -> Result<()> {
        match (self.vl_front(), mm) {
            (Some(front), mm) => VlRequests::check(front, prompt, mm),
            (None, Some(_)) => Err(ModelError::Invalid("this model runner cannot run images yet".into())),
            (None, None) => Ok(()),
        }
    }

    /// Registers the images of the request admitted into `req_slot` (`prompt`: its prompt
    /// tokens); its prefill chunks then get their image rows and all its steps their 3-axis
    /// positions. Undone by [`ModelRunner::detach_images`] or [`ModelRunner::release`].
    pub fn attach_images(&mut self, req_slot: usize, prompt: &[u32], mm: Arc<MultimodalInputs>) -> Result<()> {
        match self.vl_requests() {
            Some((front, reqs)) => reqs.attach(front, req_slot, prompt, mm),
            None => Err(ModelError::Invalid("this model runner cannot run images".into())),
        }
    }

    /// Checks and queues the images of `req_slot`'s request that tokens `range` reach and that
    /// are not encoded yet (a no-op for text requests); the next forward encodes every queued
    /// image of the step in one vision-tower pass. Errors concern that request only.
    pub fn encode_images(&mut self, req_slot: usize, range: Range<usize>) -> Result<()> {
        match self.vl_requests() {
            Some((front, reqs)) => reqs.encode(front, req_slot, range),
            None => Ok(()),
        }
    }

    /// Forgets the images of the request in `req_slot` (when it leaves the slot).
    pub fn detach_images(&mut self, req_slot: usize) {
        if let Some((_, reqs)) = self.vl_requests() {
            reqs.detach(req_slot);
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

    /// Runs the model: f32 logits `[rows, vocab]` for the batch's logit rows. Future tokens
    /// take the last launched step's samples.
    pub fn forward(&mut self, batch: &ForwardBatch) -> Result<Tensor> {
        let last = self.last_samples.take();
        match self.forward_or_sample(batch, last.as_ref(), None)? {
            Stepped::Logits(l) => Ok(l),
            Stepped::Sampled(_) | Stepped::OnDevice(_) => unreachable!("nothing is sampled without states"),
        }
    }

    /// Runs the batch; with `states`, a GPU backend may sample on the device when every
    /// request allows it: then only the ids come back, or (`states` with `true`) none, the ids
    /// staying on the device. Future tokens come from `last`.
    fn forward_or_sample(
        &mut self,
        batch: &ForwardBatch,
        last: Option<&LastSamples>,
        states: Option<(&mut [SequenceState], bool)>,
    ) -> Result<Stepped> {
        let resolved;
        let (batch, feed) = match last {
            _ if batch.future_tokens.is_empty() => (batch, None),
            None => {
                return Err(ModelError::Invalid(
                    "the batch takes tokens from a previous step, but none was launched".into(),
                ))
            }
            Some(LastSamples::Host(ids)) => {
                resolved = resolve_on_host(batch, ids)?;
                (&resolved, None)
            }
            Some(LastSamples::Device(ids, rows)) => {
                check_futures(batch, *rows)?;
                let pairs = batch.future_tokens.iter().map(|f| (f.row, f.sample)).collect();
                (batch, Some(TokenFeed { sampled: ids, pairs }))
            }
        };
        let on_host = |what| {
            ModelError::Invalid(format!(
                "{what} cannot take tokens sampled on a GPU (internal error: a CPU step after a GPU one)"
            ))
        };
        let logits = match &mut self.backend {
            Backend::Cpu(_) | Backend::Vl(..) if feed.is_some() => return Err(on_host("a CPU step")),
            Backend::Cpu(m) => m.forward(&batch.input_ids, &batch.positions, batch, &mut self.kv_pool)?,
            Backend::Vl(m, reqs) => forward_vl(m, reqs, &mut self.kv_pool, batch)?,
            Backend::Cuda(m) => return cuda_step(m, batch, None, states, feed.as_ref()),
            Backend::VlCuda(m, front, reqs) => {
                let visual = VisualStep::build(front, reqs, batch)?;
                return cuda_step(m, batch, Some(&visual), states, feed.as_ref());
            }
        };
        Ok(Stepped::Logits(logits))
    }

    /// Forward, then sample one token per sequence (`states[i]` for `batch.seqs[i]`; the batch
    /// must use [`LogitsMode::LastPerSequence`]): [`ModelRunner::launch`] and
    /// [`ModelRunner::finish`] at once.
    pub fn step(&mut self, batch: &ForwardBatch, states: &mut [SequenceState]) -> Result<Vec<SampleOutput>> {
        // Downloaded at once: no readback buffer on the way.
        let pending = self.launch_with(batch, states, false)?;
        self.finish(pending, states)
    }

    /// Queues the batch (as [`ModelRunner::step`]) and returns without waiting for its tokens
    /// where it can: on a GPU whose requests all sample there without logprobs. Else the step
    /// runs to its tokens here. The batch's future tokens take the previous launched step's
    /// samples (fed on the device when they are there). Read the samples with
    /// [`ModelRunner::finish`], in launch order, with the same states.
    ///
    /// ```no_run
    /// # use mllm_engine::executor::{model_runner::ModelRunner, forward_batch::*, sampler::*};
    /// # fn demo(runner: &mut ModelRunner, slot: usize, prompt: Vec<u32>) -> mllm_engine::models::Result<()> {
    /// let mut states = vec![SequenceState::new(SamplingParams::greedy(), &prompt).unwrap()];
    /// let len = prompt.len();
    /// let seq = SequenceInput { req_slot: slot, prefix_len: 0, new_tokens: prompt };
    /// let batch = runner.prepare(&[seq], LogitsMode::LastPerSequence)?;
    /// let first = runner.launch(&batch, &mut states)?;
    /// // The next step feeds on the first one's token before the host has seen it.
    /// let next = SequenceInput { req_slot: slot, prefix_len: len, new_tokens: vec![0] };
    /// let batch = runner.prepare(&[next], LogitsMode::LastPerSequence)?.with_future_tokens(&[(0, 0)])?;
    /// let second = runner.launch(&batch, &mut states)?;
    /// let (a, b) = (runner.finish(first, &mut states)?, runner.finish(second, &mut states)?);
    /// # let _ = (a, b); Ok(()) }
    /// ```
    pub fn launch(&mut self, batch: &ForwardBatch, states: &mut [SequenceState]) -> Result<PendingStep> {
        self.launch_with(batch, states, true)
    }

    /// [`ModelRunner::launch`]; `keep_on_device`: GPU ids stay there (else downloaded now).
    fn launch_with(
        &mut self,
        batch: &ForwardBatch,
        states: &mut [SequenceState],
        keep_on_device: bool,
    ) -> Result<PendingStep> {
        if batch.logits != LogitsMode::LastPerSequence || states.len() != batch.batch_size() {
            return Err(ModelError::Invalid(format!(
                "step needs last-token logits and one sampling state per sequence ({} states, {} sequences)",
                states.len(),
                batch.batch_size()
            )));
        }
        let last = self.last_samples.take();
        let inner = match self.forward_or_sample(batch, last.as_ref(), Some((&mut *states, keep_on_device)))? {
            Stepped::Sampled(out) => Pending::Done(out),
            Stepped::OnDevice(ids) => {
                let readback = self.readback_for(&ids)?;
                self.last_samples = Some(LastSamples::Device(ids, states.len()));
                return Ok(PendingStep {
                    inner: Pending::OnDevice {
                        readback,
                        rows: states.len(),
                    },
                });
            }
            Stepped::Logits(logits) => {
                let vocab = self.config.vocab_size;
                let mut flat = logits.to_f32_vec()?;
                let out = self
                    .sampler
                    .sample_flat(&mut flat, vocab, states)
                    .map_err(|e| ModelError::Invalid(format!("sampling failed: {e}")))?;
                Pending::Done(out)
            }
        };
        if let Pending::Done(out) = &inner {
            self.last_samples = Some(LastSamples::Host(out.iter().map(|o| o.token).collect()));
        }
        Ok(PendingStep { inner })
    }

    /// Waits for a launched step's tokens (only that step, not those launched after it) and
    /// records them in `states` (the states it was launched with).
    pub fn finish(&mut self, step: PendingStep, states: &mut [SequenceState]) -> Result<Vec<SampleOutput>> {
        match step.inner {
            Pending::Done(out) => Ok(out),
            Pending::OnDevice { readback, rows } => {
                if states.len() != rows {
                    return Err(ModelError::Invalid(format!(
                        "finishing a step of {rows} sequences with {} states",
                        states.len()
                    )));
                }
                let ids = readback.wait::<i32>();
                self.readbacks.push(readback);
                record_ids(&ids?, states)
            }
        }
    }

    /// An idle readback buffer that holds `ids`, with its download queued.
    fn readback_for(&mut self, ids: &DeviceTensor) -> Result<Readback> {
        let gpu = match &self.backend {
            Backend::Cuda(m) | Backend::VlCuda(m, ..) => m.gpu().clone(),
            Backend::Cpu(_) | Backend::Vl(..) => unreachable!("only a GPU keeps samples on the device"),
        };
        let mut rb = match self.readbacks.iter().position(|r| r.capacity() >= ids.nbytes()) {
            Some(i) => self.readbacks.swap_remove(i),
            None => Readback::new(&gpu, ids.nbytes().max(4096))?,
        };
        rb.start(&gpu, ids)?;
        Ok(rb)
    }

    /// The CUDA backend's per-op GPU time report (`MLLM_CUDA_PROFILE=1`); `None` otherwise.
    pub fn profile_report(&self) -> Option<String> {
        match &self.backend {
            Backend::Cpu(_) | Backend::Vl(..) => None,
            Backend::Cuda(m) => m.profile_report(),
            Backend::VlCuda(m, front, _) => {
                let text = m.profile_report()?;
                Some(match front.encoder().profile_report() {
                    Some(vision) => format!("{text}vision tower: {vision}"),
                    None => text,
                })
            }
        }
    }

    /// Frees a finished request: the KV slots of its first `len` tokens and its request slot.
    pub fn release(&mut self, req_slot: usize, len: usize) -> Result<()> {
        let slots = self.req_pool.kv_indices(req_slot, 0..len)?;
        self.kv_pool.free(&slots)?;
        self.req_pool.free(req_slot)?;
        self.detach_images(req_slot);
        Ok(())
    }
}

/// What a forward gave: logits, ids already sampled on the GPU, or ids still there.
enum Stepped {
    Logits(Tensor),
    Sampled(Vec<SampleOutput>),
    OnDevice(DeviceTensor),
}

/// A CUDA forward, sampling on the device when `states` allow it (and leaving the ids there
/// when asked).
fn cuda_step(
    m: &mut CudaModel,
    batch: &ForwardBatch,
    visual: Option<&VisualStep>,
    states: Option<(&mut [SequenceState], bool)>,
    feed: Option<&TokenFeed>,
) -> Result<Stepped> {
    if let Some((states, keep_on_device)) = states {
        match m.launch_sample(batch, visual, states, feed, keep_on_device)? {
            Some(Picked::Host(out)) => return Ok(Stepped::Sampled(out)),
            Some(Picked::Device(ids)) => return Ok(Stepped::OnDevice(ids)),
            None => {}
        }
    }
    Ok(Stepped::Logits(m.forward(batch, visual, feed)?))
}

/// A Qwen3-VL batch, one sequence at a time on the shared pool: each sequence's 3-axis
/// positions and image rows come from `reqs`; logits rows in batch order.
fn forward_vl(
    model: &Qwen3VlModel,
    reqs: &mut VlRequests,
    pool: &mut TokenToKvPool,
    batch: &ForwardBatch,
) -> Result<Tensor> {
    let logits = match batch.logits {
        LogitsMode::LastPerSequence => StepLogits::Last,
        LogitsMode::All => StepLogits::All,
    };
    let vocab = model.vocab_size();
    let mut out = Vec::with_capacity(batch.logit_rows().len() * vocab);
    for s in &batch.seqs {
        let range = s.prefix_len..s.prefix_len + s.extend_len;
        let ids = &batch.input_ids[s.start..s.start + s.extend_len];
        let positions = reqs.positions_of(s.req_slot, range.clone());
        reqs.encode(model.front(), s.req_slot, range.clone())?;
        let visual = reqs.visual_rows(s.req_slot, range.clone())?;
        let l = model.forward_paged(
            ids,
            &positions,
            visual.as_ref(),
            pool,
            &s.kv_indices,
            s.prefix_len,
            logits,
        )?;
        out.extend(l.to_f32_vec()?);
        reqs.prefilled(s.req_slot, range.end);
    }
    let rows = out.len() / vocab;
    Ok(Tensor::from_vec(out, &[rows, vocab])?)
}
