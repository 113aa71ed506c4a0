//! Greedy sampling and token log-probabilities (NVRTC kernel `argmax`).

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::launch::{dtype_function, expect_i32_vec, float_symbols};
use super::{expect_dtype, expect_float, expect_shape, Meta};
use crate::device::Gpu;
use crate::dtype::DType;
use crate::registry::KernelId;
use crate::tensor::DeviceTensor;
use crate::{Error, Result};

const OP: &str = "argmax";

pub(super) fn symbols(variant: Option<&str>) -> Vec<String> {
    float_symbols(&["argmax", "token_logprob"], variant)
}

/// Checks `logits: [B, V]` (float, `0 < V < 2^31`). Returns `(B, V)`.
///
/// ```
/// use mllm_kernel::{ops::{validate_logits, Meta}, DType};
/// assert_eq!(validate_logits(Meta::new(&[4, 151_936], DType::F32)).unwrap(), (4, 151_936));
/// assert!(validate_logits(Meta::new(&[4, 0], DType::F32)).is_err());
/// ```
pub fn validate_logits(logits: Meta) -> Result<(usize, usize)> {
    logits_rows(OP, logits)
}

/// [`validate_logits`] with errors naming `op` (shared with `sample`).
pub(super) fn logits_rows(op: &'static str, logits: Meta) -> Result<(usize, usize)> {
    expect_float(op, "logits", logits.dtype)?;
    match *logits.shape {
        [b, v] if v > 0 && v <= i32::MAX as usize && b <= i32::MAX as usize => Ok((b, v)),
        _ => Err(Error::ShapeMismatch {
            op,
            arg: "logits",
            expected: "[batch, vocab] with 0 < vocab < 2^31".into(),
            got: logits.shape.to_vec(),
        }),
    }
}

/// Greedy ids `[B]` i32: the largest logit of each row, ties to the lowest
/// index (as `torch.argmax`); NaN logits are skipped.
///
/// ```no_run
/// use mllm_kernel::{ops, DeviceTensor, Gpu};
/// let gpu = Gpu::new(0)?;
/// let logits = DeviceTensor::from_host(&gpu, &[0.5f32, 2.0, -1.0, 3.0, 3.0, 0.0], &[2, 3])?;
/// assert_eq!(ops::argmax(&gpu, &logits)?.to_host::<i32>(&gpu)?, vec![1, 0]);
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub fn argmax(gpu: &Gpu, logits: &DeviceTensor) -> Result<DeviceTensor> {
    let (batch, _) = validate_logits(logits.into())?;
    let mut ids = DeviceTensor::zeros(gpu, &[batch], DType::I32)?;
    argmax_into(gpu, logits, &mut ids, None)?;
    Ok(ids)
}

/// [`argmax`] into `ids: [B]` i32; with `logprobs: [B]` f32 also writes the
/// chosen token's `log_softmax` (of the raw logits; NaN for a row holding
/// a NaN). Allocates nothing.
pub fn argmax_into(
    gpu: &Gpu,
    logits: &DeviceTensor,
    ids: &mut DeviceTensor,
    logprobs: Option<&mut DeviceTensor>,
) -> Result<()> {
    let (batch, vocab) = validate_logits(logits.into())?;
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
        KernelId::Argmax,
        dtype,
        &format!("argmax_{}", dtype.symbol_suffix()),
    )?;
    let (vocab_i, null) = (vocab as i32, 0u64);
    let mut launch = gpu.stream().launch_builder(&f);
    launch.arg(logits.buffer()).arg(&vocab_i).arg(ids.buffer_mut());
    match logprobs {
        Some(lp) => launch.arg(lp.buffer_mut()),
        None => launch.arg(&null),
    };
    // SAFETY: signature (logits, int vocab, int* ids, float* logprob or
    // null); one block per row; logits [B, V], ids and logprobs [B] (checked above).
    unsafe { launch.launch(row_blocks(batch, vocab)) }
        .map(drop)
        .map_err(Error::driver("launch argmax"))
}

/// `log_softmax(logits[b])[ids[b]]` for given ids `[B]` i32 (e.g. sampled
/// tokens) → `[B]` f32; an id outside `0..V` gives NaN.
///
/// ```no_run
/// use mllm_kernel::{ops, DeviceTensor, Gpu};
/// let gpu = Gpu::new(0)?;
/// let logits = DeviceTensor::from_host(&gpu, &[0.0f32, 0.0], &[1, 2])?;
/// let ids = DeviceTensor::from_host(&gpu, &[1i32], &[1])?;
/// let lp = ops::token_logprobs(&gpu, &logits, &ids)?.to_host::<f32>(&gpu)?;
/// assert!((lp[0] - 0.5f32.ln()).abs() < 1e-6);
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub fn token_logprobs(gpu: &Gpu, logits: &DeviceTensor, ids: &DeviceTensor) -> Result<DeviceTensor> {
    let (batch, _) = validate_logits(logits.into())?;
    let mut out = DeviceTensor::zeros(gpu, &[batch], DType::F32)?;
    token_logprobs_into(gpu, logits, ids, &mut out)?;
    Ok(out)
}

/// [`token_logprobs`] into `out: [B]` f32; allocates nothing.
pub fn token_logprobs_into(gpu: &Gpu, logits: &DeviceTensor, ids: &DeviceTensor, out: &mut DeviceTensor) -> Result<()> {
    let (batch, vocab) = validate_logits(logits.into())?;
    expect_i32_vec(OP, "ids", ids.into(), batch)?;
    expect_dtype(OP, "out", DType::F32, out.dtype())?;
    expect_shape(OP, "out", &[batch], out.shape())?;
    if batch == 0 {
        return Ok(());
    }
    let dtype = logits.dtype();
    let name = format!("token_logprob_{}", dtype.symbol_suffix());
    let f = dtype_function(gpu, KernelId::Argmax, dtype, &name)?;
    let vocab_i = vocab as i32;
    let mut launch = gpu.stream().launch_builder(&f);
    launch
        .arg(logits.buffer())
        .arg(&vocab_i)
        .arg(ids.buffer())
        .arg(out.buffer_mut());
    // SAFETY: signature (logits, int vocab, const int* ids, float* out); one
    // block per row; logits [B, V], ids and out [B] (checked above).
    unsafe { launch.launch(row_blocks(batch, vocab)) }
        .map(drop)
        .map_err(Error::driver("launch token_logprob"))
}

/// One block per row; 1024 threads for a real vocabulary, fewer for tiny ones.
fn row_blocks(batch: usize, vocab: usize) -> LaunchConfig {
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
    fn validation_names_the_argument() {
        let e = validate_logits(Meta::new(&[4], DType::F32)).unwrap_err();
        assert!(e.to_string().contains("`logits`"), "{e}");
        let e = validate_logits(Meta::new(&[4, 8], DType::I32)).unwrap_err();
        assert!(e.to_string().contains("dtype i32"), "{e}");
        assert_eq!(validate_logits(Meta::new(&[0, 8], DType::BF16)).unwrap(), (0, 8));
        assert_eq!(row_blocks(3, 5).block_dim.0, 32);
        assert_eq!(row_blocks(3, 151_936).block_dim.0, 1024);
    }
}
