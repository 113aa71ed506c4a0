//! GPU timing with CUDA events, and the op benchmarks `mllm-kernel bench`
//! runs. Every result carries a peer measured in the same run: device-to-
//! device copy of the same bytes, so the ratio survives noisy machines.
//! Both sides rotate through enough buffers to exceed the L2 cache several
//! times over, so they measure HBM, not L2 (an H100 has 50 MB of L2).

use half::bf16;
use serde::Serialize;

use crate::device::Gpu;
use crate::dtype::DType;
use crate::graph::{GpuTimer, Graph};
use crate::tensor::DeviceTensor;
use crate::{ops, Error, Result};

mod attention;
mod blas;
mod core_ops;
mod decode_mlp;
mod int8_mm;

pub use attention::{bench_attention_decode, AttentionRow};
pub use blas::{CublasBf16Gemm, LtInt8Gemm};
pub use core_ops::{bench_core_op, CoreOp};
pub use decode_mlp::{bench_decode_mlp, DecodeMlpRow};
pub use int8_mm::{bench_int8_mm, default_shapes, layer_shapes, GemmShape, Int8MmRow};

/// How a timing was taken.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TimingPlan {
    /// Untimed calls first (module load, clocks, caches).
    pub warmup: usize,
    /// Timed samples; the median is reported.
    pub repeats: usize,
    /// Calls per sample, so each sample is long enough for event resolution.
    pub calls_per_repeat: usize,
    /// Replay a CUDA graph of a sample's calls instead of launching them:
    /// what the engine's decode does, and the GPU's time without the host's
    /// per-launch cost (which otherwise sets a floor of several
    /// microseconds under small kernels).
    pub graph: bool,
}

impl Default for TimingPlan {
    fn default() -> Self {
        Self {
            warmup: 20,
            repeats: 30,
            calls_per_repeat: 20,
            graph: false,
        }
    }
}

/// Median and minimum microseconds per call.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Timing {
    pub median_us: f64,
    pub min_us: f64,
}

/// Times `call` on the GPU's stream with CUDA events (eagerly, or as a
/// captured graph when `plan.graph`).
pub fn time_gpu(gpu: &Gpu, plan: TimingPlan, mut call: impl FnMut() -> Result<()>) -> Result<Timing> {
    for _ in 0..plan.warmup {
        call()?;
    }
    let calls = plan.calls_per_repeat.max(1);
    let graph = if plan.graph {
        Some(Graph::capture(gpu, || (0..calls).try_for_each(|_| call()))?)
    } else {
        None
    };
    // Each sample starts once the previous one has finished (the timer reads
    // a run's events before recording the next).
    let mut timer = GpuTimer::new(gpu)?;
    for _ in 0..plan.repeats.max(1) {
        timer.time(gpu, || match &graph {
            Some(g) => g.launch(),
            None => (0..calls).try_for_each(|_| call()),
        })?;
    }
    let mut samples: Vec<f64> = timer.take()?.iter().map(|s| s * 1e6 / calls as f64).collect();
    samples.sort_by(f64::total_cmp);
    Ok(Timing {
        median_us: samples[samples.len() / 2],
        min_us: samples[0],
    })
}

/// Device-to-device copy of `bytes`, the bandwidth peer: GB/s counting read + write.
pub fn copy_bandwidth(gpu: &Gpu, bytes: usize, plan: TimingPlan) -> Result<f64> {
    let stream = gpu.stream();
    let sets = rotation(gpu, 2 * bytes)?;
    let alloc = || stream.alloc_zeros::<u8>(bytes.max(1)).map_err(Error::driver("alloc"));
    let src = (0..sets).map(|_| alloc()).collect::<Result<Vec<_>>>()?;
    let mut dst = (0..sets).map(|_| alloc()).collect::<Result<Vec<_>>>()?;
    let mut i = 0;
    let t = time_gpu(gpu, plan, || {
        i = (i + 1) % sets;
        stream
            .memcpy_dtod(&src[i], &mut dst[i])
            .map_err(Error::driver("memcpy"))
    })?;
    Ok(2.0 * bytes as f64 / t.median_us / 1e3)
}

/// How many buffer sets of `bytes_per_set` to cycle through so the working
/// set is at least 4x the L2 cache (capped at 64 sets).
pub(crate) fn rotation(gpu: &Gpu, bytes_per_set: usize) -> Result<usize> {
    use cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE;
    let l2 = gpu
        .context()
        .attribute(CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
        .map_err(Error::driver("L2 size"))? as usize;
    Ok((4 * l2).div_ceil(bytes_per_set.max(1)).clamp(1, 64))
}

/// One row of a bandwidth-bound op benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct BandwidthRow {
    pub op: &'static str,
    pub dtype: String,
    pub tokens: usize,
    pub hidden: usize,
    pub bytes: usize,
    pub median_us: f64,
    pub min_us: f64,
    /// Buffer sets cycled through (working set >= 4x L2).
    pub rotation: usize,
    pub gbps: f64,
    pub copy_gbps: f64,
    /// gbps / copy_gbps.
    pub ratio_to_copy: f64,
    pub plan: TimingPlan,
}

/// Deterministic benchmark data (xorshift64): `n` draws mapped by `f`.
pub(crate) fn xorshift<T>(n: usize, seed: u64, f: impl Fn(u64) -> T) -> Vec<T> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            f(s)
        })
        .collect()
}

pub(crate) fn random_bf16(n: usize, seed: u64) -> Vec<bf16> {
    xorshift(n, seed, |s| bf16::from_f32((s % 2001) as f32 / 1000.0 - 1.0))
}

/// Which bandwidth-bound op to time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BandwidthOp {
    RmsNorm,
    FusedAddRmsNorm,
    PerTokenQuantInt8,
}

impl BandwidthOp {
    pub fn name(self) -> &'static str {
        match self {
            BandwidthOp::RmsNorm => "rms_norm",
            BandwidthOp::FusedAddRmsNorm => "fused_add_rms_norm",
            BandwidthOp::PerTokenQuantInt8 => "per_token_quant_int8",
        }
    }

    /// Bytes the op must move for `tokens x hidden` bf16.
    fn bytes(self, tokens: usize, hidden: usize) -> usize {
        let act = tokens * hidden * 2;
        match self {
            BandwidthOp::RmsNorm => 2 * act + hidden * 2,
            BandwidthOp::FusedAddRmsNorm => 4 * act + hidden * 2,
            BandwidthOp::PerTokenQuantInt8 => act + tokens * hidden + tokens * 4,
        }
    }
}

/// Times `op` at each token count (bf16, `hidden` wide) against a copy of
/// the same number of bytes.
pub fn bench_bandwidth(
    gpu: &Gpu,
    op: BandwidthOp,
    hidden: usize,
    tokens: &[usize],
    plan: TimingPlan,
) -> Result<Vec<BandwidthRow>> {
    let w = DeviceTensor::from_host(gpu, &random_bf16(hidden, 7), &[hidden])?;
    let mut rows = Vec::with_capacity(tokens.len());
    for &t in tokens {
        let bytes = op.bytes(t, hidden);
        let sets = rotation(gpu, bytes)?;
        let shape = [t, hidden];
        let inputs = (0..sets)
            .map(|k| DeviceTensor::from_host(gpu, &random_bf16(t * hidden, 11 + k as u64), &shape))
            .collect::<Result<Vec<_>>>()?;
        let mut i = 0;
        let mut next = || {
            i = (i + 1) % sets;
            i
        };
        let timing = match op {
            BandwidthOp::RmsNorm => {
                let mut outs = zeros_sets(gpu, sets, &shape, DType::BF16)?;
                time_gpu(gpu, plan, || {
                    let k = next();
                    ops::rms_norm_into(gpu, &inputs[k], &w, 1e-6, &mut outs[k])
                })?
            }
            BandwidthOp::FusedAddRmsNorm => {
                let mut xs = inputs;
                let mut rs = (0..sets)
                    .map(|k| DeviceTensor::from_host(gpu, &random_bf16(t * hidden, 97 + k as u64), &shape))
                    .collect::<Result<Vec<_>>>()?;
                time_gpu(gpu, plan, || {
                    let k = next();
                    ops::fused_add_rms_norm(gpu, &mut xs[k], &mut rs[k], &w, 1e-6)
                })?
            }
            BandwidthOp::PerTokenQuantInt8 => {
                let mut qs = zeros_sets(gpu, sets, &shape, DType::I8)?;
                let mut ss = zeros_sets(gpu, sets, &[t], DType::F32)?;
                time_gpu(gpu, plan, || {
                    let k = next();
                    ops::per_token_quant_int8_into(gpu, &inputs[k], &mut qs[k], &mut ss[k])
                })?
            }
        };
        let shape = RowShape {
            tokens: t,
            hidden,
            bytes,
        };
        rows.push(BandwidthRow::measure(
            gpu,
            op.name(),
            "bf16",
            shape,
            timing,
            sets,
            plan,
        )?);
    }
    Ok(rows)
}

/// What a bandwidth row moved: `bytes` read + written for `tokens` rows `hidden` wide.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowShape {
    pub(crate) tokens: usize,
    pub(crate) hidden: usize,
    pub(crate) bytes: usize,
}

impl BandwidthRow {
    /// The row for an op's `timing`, with a copy of as many bytes as the op reads + writes
    /// timed now as the peer.
    pub(crate) fn measure(
        gpu: &Gpu,
        op: &'static str,
        dtype: &str,
        shape: RowShape,
        timing: Timing,
        rotation: usize,
        plan: TimingPlan,
    ) -> Result<Self> {
        let gbps = shape.bytes as f64 / timing.median_us / 1e3;
        let copy_gbps = copy_bandwidth(gpu, shape.bytes / 2, plan)?;
        Ok(Self {
            op,
            dtype: dtype.into(),
            tokens: shape.tokens,
            hidden: shape.hidden,
            bytes: shape.bytes,
            median_us: timing.median_us,
            min_us: timing.min_us,
            rotation,
            gbps,
            copy_gbps,
            ratio_to_copy: gbps / copy_gbps,
            plan,
        })
    }
}

pub(crate) fn zeros_sets(gpu: &Gpu, sets: usize, shape: &[usize], dtype: DType) -> Result<Vec<DeviceTensor>> {
    (0..sets).map(|_| DeviceTensor::zeros(gpu, shape, dtype)).collect()
}
