//! Benchmarks of the model-step kernels (SiLU-and-mul, q/k norm + RoPE,
//! embedding, KV store, argmax, sampling), each against a device copy of the bytes
//! it must move, with buffers rotated past L2 like the norm benchmarks.

use half::bf16;

use super::{random_bf16, rotation, time_gpu, xorshift, zeros_sets, BandwidthRow, RowShape, TimingPlan};
use crate::device::Gpu;
use crate::dtype::DType;
use crate::tensor::DeviceTensor;
use crate::{ops, Result};

/// Qwen3-8B attention: q heads, kv heads, head dim.
const HEADS: (usize, usize, usize) = (32, 8, 128);
/// Qwen3's vocabulary.
const VOCAB: usize = 151_936;

/// Which model-step op to time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoreOp {
    /// bf16 `[T, 2 * hidden]` → `[T, hidden]` (hidden = intermediate size).
    SiluAndMul,
    /// Qwen3-8B q/k heads of a packed bf16 qkv buffer, norm on.
    QkNormRope,
    /// bf16 rows of `hidden` gathered from a Qwen3-sized vocabulary.
    Embedding,
    /// Qwen3-8B K and V rows of a packed bf16 qkv buffer into a slot pool.
    KvStore,
    /// f32 logits `[T, 151936]` → greedy ids + log-probabilities.
    Argmax,
    /// f32 logits `[T, 151936]` → seeded samples (temperature 0.8, top-k 50,
    /// top-p 0.95) + log-probabilities.
    Sampling,
}

impl CoreOp {
    /// The op's name in benchmark rows (`silu_and_mul`, ...).
    ///
    /// ```
    /// assert_eq!(mllm_kernel::bench::CoreOp::KvStore.name(), "kv_store");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            CoreOp::SiluAndMul => "silu_and_mul",
            CoreOp::QkNormRope => "qk_norm_rope",
            CoreOp::Embedding => "embedding",
            CoreOp::KvStore => "kv_store",
            CoreOp::Argmax => "argmax",
            CoreOp::Sampling => "sampling",
        }
    }

    /// Elements per row the op works on (the table's `hidden` column).
    fn width(self, hidden: usize) -> usize {
        let (hq, hk, d) = HEADS;
        match self {
            CoreOp::SiluAndMul | CoreOp::Embedding => hidden,
            CoreOp::QkNormRope => (hq + hk) * d,
            CoreOp::KvStore => hk * d,
            CoreOp::Argmax | CoreOp::Sampling => VOCAB,
        }
    }

    /// Bytes the op must move at least for `tokens` rows.
    fn bytes(self, tokens: usize, hidden: usize) -> usize {
        let w = self.width(hidden);
        match self {
            CoreOp::SiluAndMul => 3 * tokens * w * 2,
            // q and k read + written, plus a cos/sin row per token.
            CoreOp::QkNormRope => 2 * tokens * w * 2 + tokens * (HEADS.2 * 4 + 4),
            CoreOp::Embedding => 2 * tokens * w * 2 + tokens * 4,
            // k and v read + written, plus the slot.
            CoreOp::KvStore => 4 * tokens * w * 2 + tokens * 4,
            // Logits read once (the logprob pass re-reads them, mostly from L2).
            CoreOp::Argmax => tokens * w * 4 + tokens * 8,
            // Logits read once (the threshold searches re-read them from L2), params, outputs.
            CoreOp::Sampling => tokens * w * 4 + tokens * (4 * ops::SampleParams::WORDS + 8),
        }
    }
}

/// Times `op` at each token count against a copy of the same bytes.
///
/// ```no_run
/// use mllm_kernel::bench::{bench_core_op, CoreOp, TimingPlan};
/// let gpu = mllm_kernel::Gpu::new(0)?;
/// let rows = bench_core_op(&gpu, CoreOp::SiluAndMul, 12_288, &[1, 256], TimingPlan::default())?;
/// println!("{:.0}% of copy", 100.0 * rows[1].ratio_to_copy);
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub fn bench_core_op(
    gpu: &Gpu,
    op: CoreOp,
    hidden: usize,
    tokens: &[usize],
    plan: TimingPlan,
) -> Result<Vec<BandwidthRow>> {
    let mut rows = Vec::with_capacity(tokens.len());
    // Sampling batches stop well below prefill token counts (and a
    // [8192, 151936] f32 logits buffer is 5 GB): argmax and sampling run up
    // to 1024 rows.
    let logits_op = matches!(op, CoreOp::Argmax | CoreOp::Sampling);
    let tokens = tokens.iter().filter(|&&t| !logits_op || t <= 1024);
    for &t in tokens {
        let bytes = op.bytes(t, hidden);
        let sets = rotation(gpu, bytes)?;
        let timing = match op {
            CoreOp::SiluAndMul => {
                let xs = bf16_sets(gpu, sets, &[t, 2 * hidden])?;
                let mut outs = zeros_sets(gpu, sets, &[t, hidden], DType::BF16)?;
                let mut i = 0;
                time_gpu(gpu, plan, || {
                    i = (i + 1) % sets;
                    ops::silu_and_mul_into(gpu, &xs[i], &mut outs[i])
                })?
            }
            CoreOp::QkNormRope => {
                let (hq, hk, d) = HEADS;
                let mut qkv = bf16_sets(gpu, sets, &[t, (hq + 2 * hk) * d])?;
                let max_pos = 32_768;
                let pos: Vec<i32> = xorshift(t, 5, |s| (s % max_pos as u64) as i32);
                let positions = DeviceTensor::from_host(gpu, &pos, &[t])?;
                let cos_sin = DeviceTensor::from_host(gpu, &ops::rope_cos_sin_cache(d, max_pos, 1e6), &[max_pos, d])?;
                let w = DeviceTensor::from_host(gpu, &random_bf16(d, 3), &[d])?;
                let args = ops::QkNormRope {
                    heads: ops::QkHeads::packed_qkv(hq, hk, d),
                    positions: &positions,
                    cos_sin: &cos_sin,
                    q_norm: Some(&w),
                    k_norm: Some(&w),
                    eps: 1e-6,
                };
                let mut i = 0;
                time_gpu(gpu, plan, || {
                    i = (i + 1) % sets;
                    ops::qk_norm_rope(gpu, &mut qkv[i], &args)
                })?
            }
            CoreOp::Embedding => {
                let vocab = VOCAB.min((1 << 31) / (hidden * 2)).max(1);
                let table = DeviceTensor::zeros(gpu, &[vocab, hidden], DType::BF16)?;
                let ids = (0..sets)
                    .map(|k| {
                        let v: Vec<i32> = xorshift(t, 17 + k as u64, |s| (s % vocab as u64) as i32);
                        DeviceTensor::from_host(gpu, &v, &[t])
                    })
                    .collect::<Result<Vec<_>>>()?;
                let mut outs = zeros_sets(gpu, sets, &[t, hidden], DType::BF16)?;
                let mut i = 0;
                time_gpu(gpu, plan, || {
                    i = (i + 1) % sets;
                    ops::embedding_into(gpu, &ids[i], &table, &mut outs[i], None)
                })?
            }
            CoreOp::KvStore => {
                let (hq, hk, d) = HEADS;
                let qkv = bf16_sets(gpu, sets, &[t, (hq + 2 * hk) * d])?;
                let slots = (sets * t).max(1);
                let mut k_cache = DeviceTensor::zeros(gpu, &[slots, hk, d], DType::BF16)?;
                let mut v_cache = DeviceTensor::zeros(gpu, &[slots, hk, d], DType::BF16)?;
                // Set k writes slots k*t .. (k+1)*t, shuffled within the set.
                let locs = (0..sets)
                    .map(|k| {
                        let mut v: Vec<i32> = (0..t).map(|j| (k * t + j) as i32).collect();
                        let r = xorshift(t, 31 + k as u64, |s| s as usize);
                        for j in (1..t).rev() {
                            v.swap(j, r[j] % (j + 1));
                        }
                        DeviceTensor::from_host(gpu, &v, &[t])
                    })
                    .collect::<Result<Vec<_>>>()?;
                let mut i = 0;
                time_gpu(gpu, plan, || {
                    i = (i + 1) % sets;
                    let k = ops::RowSpan {
                        tensor: &qkv[i],
                        col: hq * d,
                    };
                    let v = ops::RowSpan {
                        tensor: &qkv[i],
                        col: (hq + hk) * d,
                    };
                    ops::kv_store(gpu, k, v, &locs[i], &mut k_cache, &mut v_cache)
                })?
            }
            CoreOp::Argmax => {
                let logits = logits_sets(gpu, sets, t)?;
                let mut ids = zeros_sets(gpu, sets, &[t], DType::I32)?;
                let mut lps = zeros_sets(gpu, sets, &[t], DType::F32)?;
                let mut i = 0;
                time_gpu(gpu, plan, || {
                    i = (i + 1) % sets;
                    ops::argmax_into(gpu, &logits[i], &mut ids[i], Some(&mut lps[i]))
                })?
            }
            CoreOp::Sampling => {
                let logits = logits_sets(gpu, sets, t)?;
                let rows: Vec<ops::SampleParams> = (0..t)
                    .map(|r| ops::SampleParams {
                        temperature: 0.8,
                        top_k: 50,
                        top_p: 0.95,
                        seed: r as u64,
                        ..Default::default()
                    })
                    .collect();
                let words = ops::SampleParams::pack(&rows)?;
                let params = DeviceTensor::from_host(gpu, &words, &[t, ops::SampleParams::WORDS])?;
                let mut ids = zeros_sets(gpu, sets, &[t], DType::I32)?;
                let mut lps = zeros_sets(gpu, sets, &[t], DType::F32)?;
                let mut i = 0;
                time_gpu(gpu, plan, || {
                    i = (i + 1) % sets;
                    ops::sample_into(gpu, &logits[i], &params, &mut ids[i], Some(&mut lps[i]))
                })?
            }
        };
        let dtype = if logits_op { "f32" } else { "bf16" };
        let shape = RowShape {
            tokens: t,
            hidden: op.width(hidden),
            bytes,
        };
        rows.push(BandwidthRow::measure(gpu, op.name(), dtype, shape, timing, sets, plan)?);
    }
    Ok(rows)
}

/// `sets` f32 logits buffers `[t, VOCAB]` with values in [-10, 10].
fn logits_sets(gpu: &Gpu, sets: usize, t: usize) -> Result<Vec<DeviceTensor>> {
    (0..sets)
        .map(|k| {
            let v: Vec<f32> = xorshift(t * VOCAB, 41 + k as u64, |s| (s % 20_001) as f32 / 1000.0 - 10.0);
            DeviceTensor::from_host(gpu, &v, &[t, VOCAB])
        })
        .collect()
}

fn bf16_sets(gpu: &Gpu, sets: usize, shape: &[usize]) -> Result<Vec<DeviceTensor>> {
    let n: usize = shape.iter().product();
    (0..sets)
        .map(|k| DeviceTensor::from_host::<bf16>(gpu, &random_bf16(n, 11 + k as u64), shape))
        .collect()
}
