//! Decode attention bandwidth: one layer of paged decode attention at
//! Qwen3-8B's heads (32 q / 8 kv, head dim 128, bf16) against a device copy
//! moving as many bytes, with the KV rotated past L2 like the other
//! bandwidth benches (each rotation set is its own range of pool slots).

use serde::Serialize;

use super::{copy_bandwidth, random_bf16, rotation, time_gpu, TimingPlan};
use crate::device::Gpu;
use crate::dtype::DType;
use crate::ops::{self, AttentionHeads, AttentionWorkspace, DecodeKernel, WorkspaceConfig};
use crate::tensor::DeviceTensor;
use crate::Result;

/// Qwen3-8B attention: q heads, kv heads, head dim.
const HEADS: AttentionHeads = AttentionHeads {
    num_heads: 32,
    num_kv_heads: 8,
    head_dim: 128,
    dtype: DType::BF16,
};

/// One decode step of one layer.
#[derive(Debug, Clone, Serialize)]
pub struct AttentionRow {
    pub op: &'static str,
    /// `cuda-cores` (FlashInfer's decode kernel), `tensor-cores` (its
    /// prefill kernel, one query row per sequence), `split-kv` (ours, merged
    /// through global memory) or `split-kv-cluster` (ours, merged through a
    /// cluster's shared memory).
    pub kernel: &'static str,
    pub dtype: &'static str,
    pub batch: usize,
    /// Context tokens per sequence.
    pub context: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// K and V bytes read, plus q read and out written.
    pub bytes: usize,
    pub median_us: f64,
    pub min_us: f64,
    /// Rotation sets of KV slots (working set >= 4x L2).
    pub rotation: usize,
    pub gbps: f64,
    /// Device copy of the same bytes (read + write counted).
    pub copy_gbps: f64,
    /// gbps / copy_gbps.
    pub ratio_to_copy: f64,
    pub plan: TimingPlan,
}

/// Times decode attention for every (batch, context) pair, on each decode
/// kernel.
///
/// ```no_run
/// use mllm_kernel::bench::{bench_attention_decode, TimingPlan};
/// let gpu = mllm_kernel::Gpu::new(0)?;
/// let rows = bench_attention_decode(&gpu, &[1, 64], &[4096], TimingPlan::default())?;
/// println!("{:.0}% of copy", 100.0 * rows[1].ratio_to_copy);
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub fn bench_attention_decode(
    gpu: &Gpu,
    batches: &[usize],
    contexts: &[usize],
    plan: TimingPlan,
) -> Result<Vec<AttentionRow>> {
    let AttentionHeads {
        num_heads: h,
        num_kv_heads: hk,
        head_dim: d,
        ..
    } = HEADS;
    let kernels = [
        (DecodeKernel::CudaCores, "cuda-cores"),
        (DecodeKernel::TensorCores, "tensor-cores"),
        (DecodeKernel::SplitKv, "split-kv"),
        (DecodeKernel::SplitKvCluster, "split-kv-cluster"),
    ];
    let mut workspaces = kernels
        .iter()
        .map(|&(decode_kernel, _)| {
            AttentionWorkspace::new(
                gpu,
                WorkspaceConfig {
                    decode_kernel,
                    ..WorkspaceConfig::default()
                },
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let mut rows = Vec::new();
    for &b in batches {
        for &ctx in contexts {
            let tokens = b * ctx;
            let kv_bytes = 2 * tokens * hk * d * 2;
            let bytes = kv_bytes + 2 * b * h * d * 2;
            let sets = rotation(gpu, kv_bytes)?;
            let capacity = sets * tokens;
            let k = DeviceTensor::from_host(gpu, &random_bf16(capacity * hk * d, 3), &[capacity, hk, d])?;
            let v = DeviceTensor::from_host(gpu, &random_bf16(capacity * hk * d, 5), &[capacity, hk, d])?;
            let indices = (0..sets)
                .map(|s| {
                    let slots: Vec<i32> = (s * tokens..(s + 1) * tokens).map(|x| x as i32).collect();
                    DeviceTensor::from_host(gpu, &slots, &[tokens])
                })
                .collect::<Result<Vec<_>>>()?;
            let qo: Vec<i32> = (0..=b as i32).collect();
            let kv: Vec<i32> = (0..=b).map(|i| (i * ctx) as i32).collect();
            let q = DeviceTensor::from_host(gpu, &random_bf16(b * h * d, 7), &[b, h, d])?;
            let mut out = DeviceTensor::zeros(gpu, &[b, h, d], DType::BF16)?;
            let copy_gbps = copy_bandwidth(gpu, bytes / 2, plan)?;
            for (ws, &(_, kernel)) in workspaces.iter_mut().zip(&kernels) {
                let attn = ops::plan_attention(gpu, ws, &qo, &kv, HEADS)?;
                let mut i = 0;
                let timing = time_gpu(gpu, plan, || {
                    i = (i + 1) % sets;
                    ops::paged_attention_into(gpu, &attn, ws, &q, &k, &v, &indices[i], None, &mut out)
                })?;
                let gbps = bytes as f64 / timing.median_us / 1e3;
                rows.push(AttentionRow {
                    op: "attention_decode",
                    kernel,
                    dtype: "bf16",
                    batch: b,
                    context: ctx,
                    num_heads: h,
                    num_kv_heads: hk,
                    head_dim: d,
                    bytes,
                    median_us: timing.median_us,
                    min_us: timing.min_us,
                    rotation: sets,
                    gbps,
                    copy_gbps,
                    ratio_to_copy: gbps / copy_gbps,
                    plan,
                });
            }
        }
    }
    Ok(rows)
}
