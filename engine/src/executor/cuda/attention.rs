//! Paged attention of the CUDA backend: the batch's page-size-1 layout (query and context
//! offsets on the host, context slot ids on the GPU), planned once per forward and run per layer.

use mllm_kernel::ops;
use mllm_kernel::staging::Upload;
use mllm_kernel::{DeviceTensor, Gpu};

use super::Dims;
use crate::executor::forward_batch::ForwardBatch;
use crate::models::{ModelError, Result};

/// Where each sequence's queries and context sit.
pub(super) struct BatchLayout {
    /// `[B + 1]` offsets of each sequence's new tokens.
    pub qo_indptr: Vec<i32>,
    /// `[B + 1]` offsets of each sequence's context in `kv_indices`.
    pub kv_indptr: Vec<i32>,
    /// KV slot ids of every context, concatenated (i32 on the GPU).
    pub kv_indices: DeviceTensor,
}

/// [`BatchLayout`]'s host side: offsets and the concatenated slot ids.
pub(super) struct HostLayout {
    pub qo_indptr: Vec<i32>,
    pub kv_indptr: Vec<i32>,
    pub kv_indices: Vec<i32>,
}

impl HostLayout {
    pub fn of(batch: &ForwardBatch) -> Result<Self> {
        let too_big = || ModelError::Invalid("batch exceeds 2^31 tokens".into());
        let mut qo = Vec::with_capacity(batch.seqs.len() + 1);
        let mut kv = Vec::with_capacity(batch.seqs.len() + 1);
        qo.push(0i32);
        kv.push(0i32);
        let mut indices: Vec<i32> = Vec::new();
        for s in &batch.seqs {
            let q_end = *qo.last().expect("non-empty") as usize + s.extend_len;
            qo.push(i32::try_from(q_end).map_err(|_| too_big())?);
            indices.extend(s.kv_indices.iter().map(|&i| i as i32));
            kv.push(i32::try_from(indices.len()).map_err(|_| too_big())?);
        }
        Ok(Self {
            qo_indptr: qo,
            kv_indptr: kv,
            kv_indices: indices,
        })
    }

    /// A decode layout padded to `size` sequences of one query over the padding slot 0.
    pub fn padded(mut self, size: usize) -> Self {
        for _ in self.qo_indptr.len() - 1..size {
            self.qo_indptr.push(*self.qo_indptr.last().expect("non-empty") + 1);
            self.kv_indices.push(0);
            self.kv_indptr.push(self.kv_indices.len() as i32);
        }
        self
    }
}

impl BatchLayout {
    /// The layout with its slot ids in a new buffer, filled through the page-locked upload
    /// `up` (`4 * kv_indices.len()` bytes of it).
    pub fn stage(up: &mut Upload, h: HostLayout) -> Result<Self> {
        let n = h.kv_indices.len();
        Ok(Self {
            kv_indices: up.tensor(&h.kv_indices, &[n])?,
            qo_indptr: h.qo_indptr,
            kv_indptr: h.kv_indptr,
        })
    }

    /// Overwrites the layout in place; the slot ids go into the existing (large enough) buffer
    /// through a page-locked upload.
    pub fn write(&mut self, up: &mut Upload, h: HostLayout) -> Result<()> {
        up.write(&mut self.kv_indices, &h.kv_indices)?;
        self.qo_indptr = h.qo_indptr;
        self.kv_indptr = h.kv_indptr;
        Ok(())
    }
}

/// The attention op's reusable state for one model.
pub(super) struct Attention {
    workspace: ops::AttentionWorkspace,
    heads: ops::AttentionHeads,
}

/// One forward's plan (decode or prefill kernels, work split).
pub(super) type Plan = ops::AttentionPlan;

impl Attention {
    /// `cuda_graph`: plans keep launch shapes fixed per batch size (for captured decode).
    pub fn new(gpu: &Gpu, dims: &Dims, dtype: mllm_kernel::DType, cuda_graph: bool) -> Result<Self> {
        let heads = ops::AttentionHeads {
            num_heads: dims.num_heads,
            num_kv_heads: dims.num_kv_heads,
            head_dim: dims.head_dim,
            dtype,
        };
        // Unsupported head dims or dtypes fail here, at load, not at the first request.
        ops::validate_attention_batch(&[0, 1], &[0, 1], heads)?;
        Ok(Self {
            workspace: ops::AttentionWorkspace::new(
                gpu,
                ops::WorkspaceConfig {
                    cuda_graph,
                    ..ops::WorkspaceConfig::default()
                },
            )?,
            heads,
        })
    }

    /// Plans the batch (once per forward).
    pub fn plan(&mut self, gpu: &Gpu, layout: &BatchLayout) -> Result<Plan> {
        Ok(ops::plan_attention(
            gpu,
            &mut self.workspace,
            &layout.qo_indptr,
            &layout.kv_indptr,
            self.heads,
        )?)
    }

    /// One layer: `out[t] = softmax(q[t] · Kᵀ / sqrt(head_dim)) · V` over each sequence's
    /// causal context.
    pub fn run(
        &self,
        gpu: &Gpu,
        (plan, layout): (&Plan, &BatchLayout),
        q: &DeviceTensor,
        (k_cache, v_cache): (&DeviceTensor, &DeviceTensor),
        out: &mut DeviceTensor,
    ) -> Result<()> {
        Ok(ops::paged_attention_into(
            gpu,
            plan,
            &self.workspace,
            q,
            k_cache,
            v_cache,
            &layout.kv_indices,
            None,
            out,
        )?)
    }
}
