//! CUDA graphs for decode steps: one graph per batch size in a fixed list, captured the first
//! time a decode batch pads to it, replayed after writing the step's inputs into the graph's
//! fixed buffers and re-planning attention (outside the graph, as FlashInfer's CUDA-graph mode
//! expects). Removes the per-kernel launch cost of ~14 launches per layer.

use std::collections::HashMap;

use mllm_kernel::graph::{GpuTimer, Graph, GraphEdges};
use mllm_kernel::profile::OpProfiler;
use mllm_kernel::staging::{Staging, StagingPair};
use mllm_kernel::{DeviceTensor, Gpu};

use super::attention::{Attention, BatchLayout, HostLayout};
use super::forward::{forward_into, HostInputs, StepInputs};
use super::weights::GpuWeights;
use super::{Dims, TokenFeed};
use crate::executor::forward_batch::{ForwardBatch, ForwardMode, LogitsMode};
use crate::models::{ModelError, Result};

/// The batch sizes graphs are captured for, up to `max_bs` (SGLang's list: 1, 2, 4, then
/// steps of 8).
///
/// ```ignore
/// assert_eq!(capture_sizes(20), vec![1, 2, 4, 8, 16, 20]);
/// ```
pub(super) fn capture_sizes(max_bs: usize) -> Vec<usize> {
    let mut sizes: Vec<usize> = [1, 2, 4]
        .into_iter()
        .chain((8..).step_by(8))
        .take_while(|&s| s < max_bs)
        .collect();
    if max_bs > 0 {
        sizes.push(max_bs);
    }
    sizes
}

/// One captured decode step and the fixed buffers it reads and writes.
struct Captured {
    graph: Graph,
    inputs: StepInputs,
    layout: BatchLayout,
    logits: DeviceTensor,
    /// `[size, 2]` i32 (row, sample) pairs of the step's fed tokens, padded with (-1, -1).
    feed_pairs: DeviceTensor,
}

/// Decode graphs of one model.
pub(super) struct DecodeGraphs {
    sizes: Vec<usize>,
    /// Longest context a sequence may have (sizes the slot-id buffer).
    max_context: usize,
    attn: Attention,
    captured: HashMap<usize, Captured>,
    /// GPU time of each replay, so `bench-one-batch` can tell the GPU's share of a decode
    /// step from the host's.
    replays: GpuTimer,
}

impl DecodeGraphs {
    pub fn new(gpu: &Gpu, dims: &Dims, dtype: mllm_kernel::DType, max_bs: usize, max_context: usize) -> Result<Self> {
        Ok(Self {
            sizes: capture_sizes(max_bs),
            max_context,
            attn: Attention::new(gpu, dims, dtype, true)?,
            captured: HashMap::new(),
            replays: GpuTimer::new(gpu)?,
        })
    }

    /// The captured size a batch runs at, if it can run on a graph at all.
    pub fn size_for(&self, batch: &ForwardBatch) -> Option<usize> {
        let decode = batch.mode == ForwardMode::Decode && batch.logits == LogitsMode::LastPerSequence;
        let fits = batch.seqs.iter().all(|s| s.kv_indices.len() <= self.max_context);
        let bs = batch.batch_size();
        (decode && fits)
            .then(|| self.sizes.iter().copied().find(|&s| s >= bs))
            .flatten()
    }

    /// Runs a decode batch (checked with [`DecodeGraphs::size_for`]) on its graph, capturing
    /// it first if needed; returns the size it ran at, whose `[size, vocab]` f32 logits
    /// ([`DecodeGraphs::logits`]; rows past the batch are padding) it wrote. `feed` patches
    /// the uploaded ids before the replay. The step's inputs go up through `staging` (its
    /// upload never waits for the step before, which may still be running under overlap
    /// scheduling).
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &mut self,
        (gpu, staging): (&Gpu, &mut StagingPair),
        dims: &Dims,
        w: &GpuWeights,
        kv: &mut [(DeviceTensor, DeviceTensor)],
        batch: &ForwardBatch,
        inputs: HostInputs,
        feed: Option<&TokenFeed>,
    ) -> Result<usize> {
        let size = self
            .size_for(batch)
            .ok_or_else(|| ModelError::Invalid("batch cannot run on a decode CUDA graph".into()))?;
        let inputs = inputs.padded(size);
        let layout = HostLayout::of(batch)?.padded(size);
        if !self.captured.contains_key(&size) {
            let c = self.capture((gpu, staging), dims, w, kv, (size, &inputs, feed), layout)?;
            self.captured.insert(size, c);
            return Ok(size);
        }
        let c = self.captured.get_mut(&size).expect("checked above");
        let feed_bytes = match feed {
            Some(f) => {
                f.check(size)?;
                c.feed_pairs.nbytes()
            }
            None => 0,
        };
        let bytes = inputs.staged_bytes() + Staging::bytes_for(&[4 * layout.kv_indices.len(), feed_bytes]);
        let mut up = staging.begin(gpu, bytes)?;
        c.inputs.write(&mut up, &inputs)?;
        c.layout.write(&mut up, layout)?;
        if let Some(f) = feed {
            up.write(&mut c.feed_pairs, &f.flat(size))?;
        }
        up.finish()?;
        if let Some(f) = feed {
            mllm_kernel::ops::feed_tokens_into(gpu, &mut c.inputs.ids, f.sampled, &c.feed_pairs)?;
        }
        // Planning writes the schedule into the workspace the captured kernels read.
        self.attn.plan(gpu, &c.layout)?;
        self.replays.time(gpu, || c.graph.launch())?;
        Ok(size)
    }

    /// The logits buffer of the graph captured at `size`.
    pub fn logits(&self, size: usize) -> Result<&DeviceTensor> {
        self.captured
            .get(&size)
            .map(|c| &c.logits)
            .ok_or_else(|| ModelError::Invalid(format!("no decode graph captured at batch size {size}")))
    }

    /// GPU seconds of each graph replay since the last call.
    pub fn take_replay_seconds(&mut self) -> Result<Vec<f64>> {
        Ok(self.replays.take()?)
    }

    /// Each captured batch size and how its graph's kernels depend on what precedes them.
    pub fn edges(&self) -> Result<Vec<(usize, GraphEdges)>> {
        let mut sizes: Vec<usize> = self.captured.keys().copied().collect();
        sizes.sort_unstable();
        sizes
            .into_iter()
            .map(|s| Ok((s, self.captured[&s].graph.edges()?)))
            .collect()
    }

    /// Runs the step once eagerly (loads every kernel and cuBLAS's choices for this shape),
    /// then captures the same step; the capture does not execute, so the eager run's results
    /// are the step's.
    fn capture(
        &mut self,
        (gpu, staging): (&Gpu, &mut StagingPair),
        dims: &Dims,
        w: &GpuWeights,
        kv: &mut [(DeviceTensor, DeviceTensor)],
        (size, host_inputs, feed): (usize, &HostInputs, Option<&TokenFeed>),
        host_layout: HostLayout,
    ) -> Result<Captured> {
        let feed_bytes = feed.map_or(0, TokenFeed::bytes);
        let bytes = host_inputs.staged_bytes() + Staging::bytes_for(&[feed_bytes]);
        let mut up = staging.begin(gpu, bytes)?;
        let mut inputs = StepInputs::stage(&mut up, host_inputs)?;
        if let Some(f) = feed {
            f.feed_into(gpu, &mut up, &mut inputs.ids)?;
        }
        up.finish()?;
        let mut slots = DeviceTensor::zeros(gpu, &[size * self.max_context], mllm_kernel::DType::I32)?;
        slots.write_from_host(gpu, &host_layout.kv_indices)?;
        let layout = BatchLayout {
            qo_indptr: host_layout.qo_indptr,
            kv_indptr: host_layout.kv_indptr,
            kv_indices: slots,
        };
        let mut logits = DeviceTensor::empty(gpu, &[size, dims.vocab], mllm_kernel::DType::F32)?;
        let plan = self.attn.plan(gpu, &layout)?;
        let off = OpProfiler::default();
        forward_into(
            gpu,
            dims,
            w,
            kv,
            (&self.attn, &plan, &layout),
            &inputs,
            &mut logits,
            &off,
        )?;
        let step = (&self.attn, &plan, &layout);
        let graph = Graph::capture(gpu, || forward_into(gpu, dims, w, kv, step, &inputs, &mut logits, &off))?;
        Ok(Captured {
            graph,
            inputs,
            layout,
            logits,
            feed_pairs: DeviceTensor::zeros(gpu, &[size, 2], mllm_kernel::DType::I32)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_sizes_follow_sglang() {
        assert_eq!(capture_sizes(1), vec![1]);
        assert_eq!(capture_sizes(20), vec![1, 2, 4, 8, 16, 20]);
        assert_eq!(capture_sizes(32), vec![1, 2, 4, 8, 16, 24, 32]);
        assert!(capture_sizes(0).is_empty());
    }
}
