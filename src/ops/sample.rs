//! Seeded sampling with per-row temperature, top-k, top-p and min-p (NVRTC
//! kernel `sample`), for the engine's non-greedy requests.
//!
//! Semantics follow the engine's CPU sampler: `x = logit / temperature`;
//! tokens ranked by `x` descending, ties to the lower id; top-k, then top-p
//! (the shortest prefix of the top-k survivors whose softmax mass reaches
//! `top_p`), then min-p (`p >= min_p * p_max`); the token is drawn from the
//! renormalized survivors by inverse CDF in ascending id order, with a
//! uniform `u` from Philox4x32-10 keyed by the row's `seed` at counter
//! `offset` (see [`reference::sample_uniform`](crate::reference::sample_uniform)).
//! The logprob is `log_softmax(x)[id]` over the whole row, before truncation.

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::launch::{dtype_function, expect_i32_vec, float_symbols};
use super::sampling::logits_rows;
use super::{expect_dtype, expect_shape, Meta};
use crate::device::Gpu;
use crate::dtype::DType;
use crate::registry::KernelId;
use crate::tensor::DeviceTensor;
use crate::{Error, Result};

const OP: &str = "sample";

pub(super) fn symbols(variant: Option<&str>) -> Vec<String> {
    float_symbols(&["sample"], variant)
}

/// One row's sampling parameters. On the device a row is
/// [`SampleParams::WORDS`] 32-bit words ([`SampleParams::to_words`]); build
/// the `[B, 8]` i32 tensor with [`SampleParams::pack`], which validates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleParams {
    /// `logits / temperature`; finite and `> 0` (route greedy rows to
    /// [`argmax`](super::argmax)).
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; `0` or `-1` (or `>= V`) is off.
    pub top_k: i32,
    /// Nucleus mass in `(0, 1]`; `1` is off.
    pub top_p: f32,
    /// Keep tokens with `p >= min_p * p_max`, in `[0, 1]`; `0` is off.
    pub min_p: f32,
    /// The request's seed (the Philox key).
    pub seed: u64,
    /// The draw's counter, e.g. the decode step: a new number each step.
    pub offset: u64,
}

impl Default for SampleParams {
    /// Temperature 1, every filter off, seed 0, offset 0.
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 0,
            offset: 0,
        }
    }
}

impl SampleParams {
    /// 32-bit words per row on the device.
    pub const WORDS: usize = 8;

    /// Checks every range; the error names the field.
    ///
    /// ```
    /// use mllm_kernel::ops::SampleParams;
    /// assert!(SampleParams { top_p: 0.9, ..Default::default() }.validate().is_ok());
    /// let e = SampleParams { top_p: 0.0, ..Default::default() }.validate().unwrap_err();
    /// assert!(e.to_string().contains("`top_p`"), "{e}");
    /// ```
    pub fn validate(&self) -> Result<()> {
        let bad = |arg: &'static str, value: String, expected: &str| {
            Err(Error::InvalidArgument {
                op: OP,
                arg,
                reason: format!("{value} is not {expected}"),
            })
        };
        let t = self.temperature;
        if !(t.is_finite() && t > 0.0) {
            return bad(
                "temperature",
                t.to_string(),
                "finite and > 0 (greedy rows go to argmax)",
            );
        }
        if self.top_k < -1 {
            return bad("top_k", self.top_k.to_string(), ">= -1 (0 or -1 disable it)");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p.to_string(), "in (0, 1]");
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return bad("min_p", self.min_p.to_string(), "in [0, 1]");
        }
        Ok(())
    }

    /// The row as the kernel reads it: temperature, top_k, top_p, min_p
    /// (f32 bits / i32), then seed and offset as (low, high) u32 pairs.
    pub fn to_words(&self) -> [i32; Self::WORDS] {
        let half = |v: u64, hi: bool| (if hi { v >> 32 } else { v & 0xffff_ffff }) as u32 as i32;
        [
            self.temperature.to_bits() as i32,
            self.top_k,
            self.top_p.to_bits() as i32,
            self.min_p.to_bits() as i32,
            half(self.seed, false),
            half(self.seed, true),
            half(self.offset, false),
            half(self.offset, true),
        ]
    }

    /// Validates every row and flattens them into `[rows.len(), 8]` words
    /// for [`DeviceTensor::from_host`] or `write_from_host` (a CUDA graph's
    /// fixed buffer). The error names the field and the row.
    ///
    /// ```
    /// use mllm_kernel::ops::SampleParams;
    /// let rows = [SampleParams { seed: 7, ..Default::default() }, SampleParams::default()];
    /// assert_eq!(SampleParams::pack(&rows).unwrap().len(), 16);
    /// let bad = [SampleParams::default(), SampleParams { temperature: 0.0, ..Default::default() }];
    /// let e = SampleParams::pack(&bad).unwrap_err().to_string();
    /// assert!(e.contains("`temperature`") && e.contains("row 1"), "{e}");
    /// ```
    pub fn pack(rows: &[SampleParams]) -> Result<Vec<i32>> {
        let mut words = Vec::with_capacity(rows.len() * Self::WORDS);
        for (r, p) in rows.iter().enumerate() {
            p.validate().map_err(|e| match e {
                Error::InvalidArgument { op, arg, reason } => Error::InvalidArgument {
                    op,
                    arg,
                    reason: format!("row {r}: {reason}"),
                },
                other => other,
            })?;
            words.extend(p.to_words());
        }
        Ok(words)
    }
}

/// Checks `logits: [B, V]` (float) and `params: [B, 8]` i32 (from
/// [`SampleParams::pack`]). Returns `(B, V)`.
///
/// ```
/// use mllm_kernel::{ops::{validate_sample, Meta}, DType};
/// let logits = [4, 151_936];
/// assert_eq!(validate_sample(Meta::new(&logits, DType::BF16), Meta::new(&[4, 8], DType::I32)).unwrap(), (4, 151_936));
/// assert!(validate_sample(Meta::new(&logits, DType::F32), Meta::new(&[3, 8], DType::I32)).is_err());
/// assert!(validate_sample(Meta::new(&logits, DType::F32), Meta::new(&[4, 8], DType::F32)).is_err());
/// ```
pub fn validate_sample(logits: Meta, params: Meta) -> Result<(usize, usize)> {
    let (batch, vocab) = logits_rows(OP, logits)?;
    expect_dtype(OP, "params", DType::I32, params.dtype)?;
    expect_shape(OP, "params", &[batch, SampleParams::WORDS], params.shape)?;
    Ok((batch, vocab))
}

/// Samples one token per row of `logits: [B, V]` with per-row `params`
/// (`[B, 8]` i32 from [`SampleParams::pack`]); returns `(ids [B] i32,
/// logprobs [B] f32)`. The same (row, params) always gives the same token.
///
/// A row whose scaled logits hold NaN or `+inf`, that has no finite logit,
/// or whose params are out of range gets id `-1` and logprob NaN; check
/// the ids on the host (the op itself never synchronizes).
///
/// ```no_run
/// use mllm_kernel::{ops::{self, SampleParams}, DeviceTensor, Gpu};
/// let gpu = Gpu::new(0)?;
/// let logits = DeviceTensor::from_host(&gpu, &[0.5f32, 2.0, -1.0, 3.0, 3.0, 0.0], &[2, 3])?;
/// let rows = [
///     SampleParams { top_k: 1, ..Default::default() },
///     SampleParams { temperature: 0.7, top_p: 0.9, seed: 42, offset: 3, ..Default::default() },
/// ];
/// let params = DeviceTensor::from_host(&gpu, &SampleParams::pack(&rows)?, &[2, SampleParams::WORDS])?;
/// let (ids, logprobs) = ops::sample(&gpu, &logits, &params)?;
/// assert_eq!(ids.to_host::<i32>(&gpu)?[0], 1);
/// assert!(logprobs.to_host::<f32>(&gpu)?.iter().all(|lp| *lp <= 0.0));
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub fn sample(gpu: &Gpu, logits: &DeviceTensor, params: &DeviceTensor) -> Result<(DeviceTensor, DeviceTensor)> {
    let (batch, _) = validate_sample(logits.into(), params.into())?;
    let mut ids = DeviceTensor::zeros(gpu, &[batch], DType::I32)?;
    let mut logprobs = DeviceTensor::zeros(gpu, &[batch], DType::F32)?;
    sample_into(gpu, logits, params, &mut ids, Some(&mut logprobs))?;
    Ok((ids, logprobs))
}

/// [`sample`] into `ids: [B]` i32 and, when given, `logprobs: [B]` f32.
/// Allocates nothing (CUDA-graph safe).
pub fn sample_into(
    gpu: &Gpu,
    logits: &DeviceTensor,
    params: &DeviceTensor,
    ids: &mut DeviceTensor,
    logprobs: Option<&mut DeviceTensor>,
) -> Result<()> {
    let (batch, vocab) = validate_sample(logits.into(), params.into())?;
    expect_i32_vec(OP, "ids", (&*ids).into(), batch)?;
    if let Some(lp) = &logprobs {
        expect_dtype(OP, "logprobs", DType::F32, lp.dtype())?;
        expect_shape(OP, "logprobs", &[batch], lp.shape())?;
    }
    if batch == 0 {
        return Ok(());
    }
    let dtype = logits.dtype();
    let f = dtype_function(
        gpu,
        KernelId::Sample,
        dtype,
        &format!("sample_{}", dtype.symbol_suffix()),
    )?;
    let (vocab_i, null) = (vocab as i32, 0u64);
    let mut launch = gpu.stream().launch_builder(&f);
    launch
        .arg(logits.buffer())
        .arg(&vocab_i)
        .arg(params.buffer())
        .arg(ids.buffer_mut());
    match logprobs {
        Some(lp) => launch.arg(lp.buffer_mut()),
        None => launch.arg(&null),
    };
    // SAFETY: signature (logits, int vocab, const unsigned* params, int* ids,
    // float* logprob or null); one block per row; logits [B, V], params
    // [B, 8] words, ids and logprobs [B] (checked above).
    unsafe { launch.launch(sample_blocks(batch, vocab)) }
        .map(drop)
        .map_err(Error::driver("launch sample"))
}

/// One block per row: 1024 threads for a real vocabulary, fewer (whole
/// warps, at least one thread per logit) for tiny ones. The kernel's fast
/// path keeps up to 4 candidates per thread, so it needs this shape.
fn sample_blocks(batch: usize, vocab: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (batch as u32, 1, 1),
        block_dim: ((vocab.div_ceil(32).clamp(1, 32) * 32) as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_validate_and_pack() {
        let ok = SampleParams {
            temperature: 0.7,
            top_k: -1,
            top_p: 1.0,
            min_p: 1.0,
            seed: 0x1234_5678_9abc_def0,
            offset: u64::MAX,
        };
        assert!(ok.validate().is_ok());
        let w = ok.to_words();
        assert_eq!(f32::from_bits(w[0] as u32), 0.7);
        assert_eq!((w[4] as u32, w[5] as u32), (0x9abc_def0, 0x1234_5678));
        assert_eq!((w[6] as u32, w[7] as u32), (u32::MAX, u32::MAX));
        let cases = [
            (SampleParams { temperature: 0.0, ..ok }, "temperature"),
            (
                SampleParams {
                    temperature: f32::NAN,
                    ..ok
                },
                "temperature",
            ),
            (
                SampleParams {
                    temperature: f32::INFINITY,
                    ..ok
                },
                "temperature",
            ),
            (SampleParams { top_k: -2, ..ok }, "top_k"),
            (SampleParams { top_p: 0.0, ..ok }, "top_p"),
            (SampleParams { top_p: 1.5, ..ok }, "top_p"),
            (SampleParams { top_p: f32::NAN, ..ok }, "top_p"),
            (SampleParams { min_p: -0.1, ..ok }, "min_p"),
            (SampleParams { min_p: 1.1, ..ok }, "min_p"),
        ];
        for (p, arg) in cases {
            let e = SampleParams::pack(&[ok, ok, p]).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument { arg: a, .. } if a == arg), "{e}");
            assert!(e.to_string().contains("row 2"), "{e}");
        }
    }

    #[test]
    fn validation_names_the_argument() {
        let logits = [4, 10];
        let e = validate_sample(Meta::new(&logits, DType::F32), Meta::new(&[4, 7], DType::I32)).unwrap_err();
        assert!(e.to_string().contains("`params`"), "{e}");
        let e = validate_sample(Meta::new(&logits, DType::I8), Meta::new(&[4, 8], DType::I32)).unwrap_err();
        assert!(e.to_string().contains("`logits`"), "{e}");
        assert_eq!(
            validate_sample(Meta::new(&[0, 10], DType::F16), Meta::new(&[0, 8], DType::I32)).unwrap(),
            (0, 10)
        );
        assert_eq!(sample_blocks(3, 5).block_dim.0, 32);
        assert_eq!(sample_blocks(3, 151_936).block_dim.0, 1024);
    }
}
