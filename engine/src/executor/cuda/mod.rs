//! The CUDA backend of the [`ModelRunner`](super::model_runner::ModelRunner): the model's
//! parameters and its K/V cache on one GPU, and a forward built from mllm-kernel ops (cuBLAS
//! linears, fused add+RMSNorm, q/k norm + RoPE, KV store, FlashInfer paged attention). Every op
//! runs on the [`Gpu`]'s one stream; the host waits only for the logits.

mod attention;
mod forward;
mod fused_mlp;
mod graph;
mod prefetch;
mod sampling;
mod vision;
mod visual;
mod weights;

use std::sync::Arc;

use mllm_kernel::graph::GraphEdges;
use mllm_kernel::profile::OpProfiler;
use mllm_kernel::staging::{Staging, StagingPair, Upload};
use mllm_kernel::{DeviceTensor, Gpu};

use self::attention::{Attention, BatchLayout, HostLayout};
use self::forward::{HostInputs, StepInputs};
use self::graph::DecodeGraphs;
pub use self::vision::CudaVisionTower;
pub use self::visual::VisualStep;
use crate::executor::forward_batch::{ForwardBatch, ForwardMode};
use crate::executor::sampler::SequenceState;
use crate::loader::config::ModelConfig;
use crate::models::{ModelError, Result, TextDecoder};
use crate::tensor::{DType, Tensor};
pub(crate) use sampling::{record_ids, Picked};

/// Sizes the forward needs.
pub(crate) struct Dims {
    pub hidden: usize,
    pub intermediate: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub eps: f32,
}

impl Dims {
    fn of(c: &ModelConfig) -> Self {
        Self {
            hidden: c.hidden_size,
            intermediate: c.intermediate_size,
            num_heads: c.num_attention_heads,
            num_kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            vocab: c.vocab_size,
            eps: c.rms_norm_eps as f32,
        }
    }
}

/// Input ids a step takes from the previous step's sampled ids, on the device (overlap
/// scheduling): `(row of the input ids, row of sampled)` pairs.
pub struct TokenFeed<'a> {
    /// The previous step's `[rows (+ padding)]` i32 ids.
    pub sampled: &'a DeviceTensor,
    pub pairs: Vec<(usize, usize)>,
}

impl TokenFeed<'_> {
    /// Checks the pairs against `ids_len` input ids and the sampled ids.
    fn check(&self, ids_len: usize) -> Result<()> {
        Ok(mllm_kernel::ops::validate_feed_tokens(
            ids_len,
            self.sampled.numel(),
            &self.pairs,
        )?)
    }

    /// The pairs as `[rows, 2]` i32, padded with `(-1, -1)` rows (skipped by the kernel).
    fn flat(&self, rows: usize) -> Vec<i32> {
        let mut flat: Vec<i32> = self.pairs.iter().flat_map(|&(r, s)| [r as i32, s as i32]).collect();
        flat.resize(2 * rows.max(self.pairs.len()), -1);
        flat
    }

    /// Bytes of its pairs in an upload.
    fn bytes(&self) -> usize {
        8 * self.pairs.len()
    }

    /// Writes the fed ids into `ids` (a step's input ids, queued in `up` before): checks the
    /// pairs, queues them in `up` ([`TokenFeed::bytes`] of it) and launches the kernel after
    /// the copies.
    fn feed_into(&self, gpu: &Gpu, up: &mut Upload, ids: &mut DeviceTensor) -> Result<()> {
        self.check(ids.numel())?;
        let pairs = up.tensor(&self.flat(0), &[self.pairs.len(), 2])?;
        Ok(mllm_kernel::ops::feed_tokens_into(gpu, ids, self.sampled, &pairs)?)
    }
}

/// How many tokens the GPU K/V cache holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KvSizing {
    /// Exactly this many tokens.
    Tokens(usize),
    /// What fits once the weights are resident, keeping `1 - fraction` of the GPU's memory free
    /// for activations, cuBLAS and the attention workspace (SGLang's `--mem-fraction-static`).
    MemFraction(f64),
}

/// A model resident on one GPU with a page-size-1 K/V cache of `kv_capacity + 1` slots per
/// layer (slot 0 is the padding slot, as in the host pool).
pub struct CudaModel {
    gpu: Arc<Gpu>,
    dims: Dims,
    dtype: DType,
    weights: weights::GpuWeights,
    kv: Vec<(DeviceTensor, DeviceTensor)>,
    attn: Attention,
    graphs: Option<DecodeGraphs>,
    /// Page-locked buffers every step's inputs go up through, in turn.
    staging: StagingPair,
    /// The same for the sampling kernel's per-request parameters (one upload a step each).
    sample_staging: StagingPair,
    /// The last eager step's logits (graph steps keep theirs in the graph's buffer).
    eager_logits: Option<DeviceTensor>,
    /// Per-op GPU time of prefill and decode steps (`MLLM_CUDA_PROFILE=1`; steps then run
    /// eagerly).
    profilers: [OpProfiler; 2],
}

impl std::fmt::Debug for CudaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CudaModel({}, {} layers, {}, {} KV slots)",
            self.gpu.info().name,
            self.kv.len(),
            self.dtype,
            self.kv.first().map_or(0, |(k, _)| k.shape()[0])
        )
    }
}

impl CudaModel {
    /// Uploads `model` (in bf16, or f16 for an f16 checkpoint) and allocates the K/V cache.
    /// Positions up to `max_context` get RoPE entries. Decode batches of up to
    /// `cuda_graph_max_bs` sequences run on CUDA graphs (0: never).
    pub fn new(
        gpu: Arc<Gpu>,
        model: &dyn TextDecoder,
        kv: KvSizing,
        max_context: usize,
        cuda_graph_max_bs: usize,
    ) -> Result<Self> {
        let c = model.config();
        let dims = Dims::of(c);
        let dtype = weights::compute_dtype(model);
        let kdt = weights::kernel_dtype(dtype)?;
        let attn = Attention::new(&gpu, &dims, kdt, false)?;
        let graphs = (cuda_graph_max_bs > 0)
            .then(|| DecodeGraphs::new(&gpu, &dims, kdt, cuda_graph_max_bs, max_context.max(1)))
            .transpose()?;
        let weights = weights::upload(&gpu, model, dtype, max_context.max(1))?;
        let per_token = 2 * c.num_hidden_layers * dims.num_kv_heads * dims.head_dim * dtype.size();
        let kv_capacity = match kv {
            KvSizing::Tokens(n) => n,
            KvSizing::MemFraction(f) => {
                if !(f > 0.0 && f < 1.0) {
                    return Err(ModelError::Invalid(format!(
                        "--mem-fraction-static must be in (0, 1), got {f}"
                    )));
                }
                let (free, total) = gpu.memory_info()?;
                let keep = ((1.0 - f) * total as f64) as usize;
                let tokens = free.saturating_sub(keep) / per_token.max(1);
                if tokens < 2 {
                    return Err(ModelError::Invalid(format!(
                        "no room for a K/V cache: {} MiB free of {} MiB after loading the weights, and \
                         --mem-fraction-static {f} keeps {} MiB back; raise it or use a smaller model",
                        free >> 20,
                        total >> 20,
                        keep >> 20
                    )));
                }
                tokens.saturating_sub(1).min(i32::MAX as usize - 1)
            }
        };
        let shape = [kv_capacity + 1, dims.num_kv_heads, dims.head_dim];
        let kv = (0..c.num_hidden_layers)
            .map(|_| {
                Ok((
                    DeviceTensor::zeros(&gpu, &shape, kdt)?,
                    DeviceTensor::zeros(&gpu, &shape, kdt)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            staging: StagingPair::new(&gpu)?,
            sample_staging: StagingPair::new(&gpu)?,
            gpu,
            dims,
            dtype,
            weights,
            kv,
            attn,
            graphs,
            eager_logits: None,
            profilers: [OpProfiler::from_env(), OpProfiler::from_env()],
        })
    }

    /// Usable K/V slots (slot 0, the padding slot, excluded).
    pub fn kv_capacity(&self) -> usize {
        self.kv.first().map_or(0, |(k, _)| k.shape()[0] - 1)
    }

    /// The GPU.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// The dtype weights, activations and the K/V cache are held in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The per-op GPU time report of prefill and decode steps, when `MLLM_CUDA_PROFILE=1`.
    pub fn profile_report(&self) -> Option<String> {
        let [prefill, decode] = &self.profilers;
        prefill
            .enabled()
            .then(|| format!("prefill: {}decode: {}", prefill.report(), decode.report()))
    }

    /// GPU seconds of each decode-graph replay since the last call (empty without graphs).
    pub fn take_graph_replay_seconds(&mut self) -> Result<Vec<f64>> {
        self.graphs
            .as_mut()
            .map_or(Ok(Vec::new()), DecodeGraphs::take_replay_seconds)
    }

    /// Each captured decode graph's batch size and kernel dependencies (empty without graphs).
    pub fn decode_graph_edges(&self) -> Result<Vec<(usize, GraphEdges)>> {
        self.graphs.as_ref().map_or(Ok(Vec::new()), DecodeGraphs::edges)
    }

    /// Runs the batch; host f32 logits `[rows, vocab]` for [`ForwardBatch::logit_rows`].
    /// `visual`: a Qwen3-VL step's positions and image rows.
    /// `feed`: input ids that come from the previous step's device ids.
    pub fn forward(
        &mut self,
        batch: &ForwardBatch,
        visual: Option<&VisualStep>,
        feed: Option<&TokenFeed>,
    ) -> Result<Tensor> {
        let rows = batch.logit_rows().len();
        let at = self.run_forward(batch, visual, feed)?;
        let logits = logits_at(&self.graphs, &self.eager_logits, at)?;
        let mut host = logits.to_host::<f32>(&self.gpu)?;
        host.truncate(rows * self.dims.vocab);
        Ok(Tensor::from_vec(host, &[rows, self.dims.vocab])?)
    }

    /// Runs the batch and picks each sequence's token on the GPU, when no request needs the
    /// host sampler (penalties, more than 20 top logprobs); `None` (nothing run) otherwise.
    /// Greedy requests take the argmax (lowest id on ties, as the host sampler); the others
    /// sample with their filters and a seed from their own RNG. With `keep_on_device` and no
    /// logprobs asked the ids stay on the device ([`Picked::Device`]: nothing waited for);
    /// else only the ids (and logprobs) are downloaded.
    pub(crate) fn launch_sample(
        &mut self,
        batch: &ForwardBatch,
        visual: Option<&VisualStep>,
        states: &mut [SequenceState],
        feed: Option<&TokenFeed>,
        keep_on_device: bool,
    ) -> Result<Option<Picked>> {
        if !sampling::all_on_gpu(states) {
            return Ok(None);
        }
        let at = self.run_forward(batch, visual, feed)?;
        // Disjoint fields: the logits stay borrowed while the parameters go up.
        let logits = logits_at(&self.graphs, &self.eager_logits, at)?;
        let picked = sampling::pick_async((&self.gpu, &mut self.sample_staging), logits, states, keep_on_device)?;
        Ok(Some(picked))
    }

    /// Runs the batch into logits `[rows (+ graph padding), vocab]` on the GPU: a decode batch
    /// that fits a graph replays it, anything else runs eagerly. Returns where they are.
    fn run_forward(
        &mut self,
        batch: &ForwardBatch,
        visual: Option<&VisualStep>,
        feed: Option<&TokenFeed>,
    ) -> Result<LogitsAt> {
        let prof = &self.profilers[usize::from(batch.mode == ForwardMode::Decode)];
        let mut host = HostInputs::of(batch)?;
        if let Some(v) = visual {
            if v.positions.len() != host.positions.len() {
                return Err(ModelError::Invalid(format!(
                    "visual step has {} positions for {} tokens",
                    v.positions.len(),
                    host.positions.len()
                )));
            }
            host.positions.clone_from(&v.positions);
        }
        let eager = prof.enabled() || visual.is_some_and(VisualStep::needs_eager);
        let graphs = self.graphs.as_mut().filter(|_| !eager);
        if let Some(g) = graphs.filter(|g| g.size_for(batch).is_some()) {
            let gpu_staging = (&*self.gpu, &mut self.staging);
            let size = g.run(gpu_staging, &self.dims, &self.weights, &mut self.kv, batch, host, feed)?;
            return Ok(LogitsAt::Graph(size));
        }
        // Page-locked uploads: a pageable one may wait for the step still running.
        let host_layout = HostLayout::of(batch)?;
        let feed_bytes = feed.map_or(0, TokenFeed::bytes);
        let bytes = host.staged_bytes() + Staging::bytes_for(&[4 * host_layout.kv_indices.len(), feed_bytes]);
        let mut up = self.staging.begin(&self.gpu, bytes)?;
        let mut inputs = StepInputs::stage(&mut up, &host)?;
        let layout = BatchLayout::stage(&mut up, host_layout)?;
        if let Some(f) = feed {
            f.feed_into(&self.gpu, &mut up, &mut inputs.ids)?;
        }
        up.finish()?;
        if let Some(v) = visual {
            (inputs.rope, inputs.visual) = v.upload(&self.gpu, self.dtype, self.dims.head_dim)?;
        }
        let plan = self.attn.plan(&self.gpu, &layout)?;
        let rows = batch.logit_rows().len();
        let mut logits = DeviceTensor::empty(&self.gpu, &[rows, self.dims.vocab], mllm_kernel::DType::F32)?;
        let step = (&self.attn, &plan, &layout);
        forward::forward_into(
            &self.gpu,
            &self.dims,
            &self.weights,
            &mut self.kv,
            step,
            &inputs,
            &mut logits,
            prof,
        )?;
        prof.end()?;
        self.eager_logits = Some(logits);
        Ok(LogitsAt::Eager)
    }
}

/// Where a forward left its logits.
#[derive(Debug, Clone, Copy)]
enum LogitsAt {
    /// In the buffer of the decode graph captured at this batch size.
    Graph(usize),
    /// In [`CudaModel`]'s last eager logits.
    Eager,
}

/// The logits a forward left `at` (a free function over the two fields, so the caller may
/// borrow other fields mutably meanwhile).
fn logits_at<'a>(
    graphs: &'a Option<DecodeGraphs>,
    eager: &'a Option<DeviceTensor>,
    at: LogitsAt,
) -> Result<&'a DeviceTensor> {
    match at {
        LogitsAt::Graph(size) => graphs
            .as_ref()
            .ok_or_else(|| ModelError::Invalid("no decode graphs".into()))?
            .logits(size),
        LogitsAt::Eager => eager
            .as_ref()
            .ok_or_else(|| ModelError::Invalid("no eager logits".into())),
    }
}
