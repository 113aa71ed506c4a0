//! Greedy sampling, token log-probabilities and the top-n log-probabilities
//! (NVRTC kernel `argmax`).

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
    float_symbols(&["argmax", "token_logprob", "top_logprobs"], variant)
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
/// a NaN or nothing above -inf). Allocates nothing: a batch of few rows is
/// split over many blocks in one launch, through scratch the kernel module
/// holds (fixed addresses, reset by each launch, so CUDA-graph safe; it
/// relies on the module's launches not overlapping, as on a [`Gpu`]'s one
/// stream).
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
    let (cfg, chunk) = argmax_grid(batch, vocab, dtype);
    let (vocab_i, null) = (vocab as i32, 0u64);
    let mut launch = gpu.stream().launch_builder(&f);
    launch
        .arg(logits.buffer())
        .arg(&vocab_i)
        .arg(&chunk)
        .arg(ids.buffer_mut());
    match logprobs {
        Some(lp) => launch.arg(lp.buffer_mut()),
        None => launch.arg(&null),
    };
    // SAFETY: signature (logits, int vocab, int chunk, int* ids, float*
    // logprob or null); grid (rows, ceil(V / chunk)) within the kernel's
    // scratch limits (argmax_grid); logits [B, V], ids and logprobs [B]
    // (checked above).
    unsafe { launch.launch(cfg) }
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
    let (cfg, chunk) = argmax_grid(batch, vocab, dtype);
    let vocab_i = vocab as i32;
    let mut launch = gpu.stream().launch_builder(&f);
    launch
        .arg(logits.buffer())
        .arg(&vocab_i)
        .arg(&chunk)
        .arg(ids.buffer())
        .arg(out.buffer_mut());
    // SAFETY: signature (logits, int vocab, int chunk, const int* ids,
    // float* out); grid as in argmax_into; logits [B, V], ids and out [B]
    // (checked above).
    unsafe { launch.launch(cfg) }
        .map(drop)
        .map_err(Error::driver("launch token_logprob"))
}

/// Most top log-probabilities per row (OpenAI's `top_logprobs` limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// The `n` most likely tokens of each row of `logits: [B, V]` and their
/// log-probabilities, `(ids [B, n] i32, logprobs [B, n] f32)`, most likely
/// first with ties to the lowest id, over `logits[b] · scale[b]` (`scale`:
/// `[B]` f32, e.g. 1 / temperature; `None` = 1): the host sampler's
/// `top_logprobs`. NaN logits are skipped (slots past a row's non-NaN
/// values get id -1), and a NaN anywhere in a row makes its logprobs NaN.
///
/// ```no_run
/// use mllm_kernel::{ops, DeviceTensor, Gpu};
/// let gpu = Gpu::new(0)?;
/// let logits = DeviceTensor::from_host(&gpu, &[0.0f32, 2.0, 2.0, 1.0], &[1, 4])?;
/// let (ids, lps) = ops::top_logprobs(&gpu, &logits, None, 3)?;
/// assert_eq!(ids.to_host::<i32>(&gpu)?, vec![1, 2, 3]);
/// assert!(lps.to_host::<f32>(&gpu)?.iter().all(|lp| *lp < 0.0));
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub fn top_logprobs(
    gpu: &Gpu,
    logits: &DeviceTensor,
    scale: Option<&DeviceTensor>,
    n: usize,
) -> Result<(DeviceTensor, DeviceTensor)> {
    let (batch, _) = validate_logits(logits.into())?;
    let mut ids = DeviceTensor::zeros(gpu, &[batch, n], DType::I32)?;
    let mut logprobs = DeviceTensor::zeros(gpu, &[batch, n], DType::F32)?;
    top_logprobs_into(gpu, logits, scale, n, &mut ids, &mut logprobs)?;
    Ok((ids, logprobs))
}

/// Checks [`top_logprobs`]'s arguments. Returns `(B, V)`.
///
/// ```
/// use mllm_kernel::{ops::{validate_top_logprobs, Meta}, DType};
/// let (lg, ids, lps) = ([2, 100], [2, 5], [2, 5]);
/// let ok = validate_top_logprobs(Meta::new(&lg, DType::BF16), None, 5,
///     Meta::new(&ids, DType::I32), Meta::new(&lps, DType::F32));
/// assert_eq!(ok.unwrap(), (2, 100));
/// let err = validate_top_logprobs(Meta::new(&lg, DType::BF16), None, 21,
///     Meta::new(&[2, 21], DType::I32), Meta::new(&[2, 21], DType::F32)).unwrap_err();
/// assert!(err.to_string().contains("`n`"));
/// ```
pub fn validate_top_logprobs(
    logits: Meta,
    scale: Option<Meta>,
    n: usize,
    ids: Meta,
    logprobs: Meta,
) -> Result<(usize, usize)> {
    const OP: &str = "top_logprobs";
    let (batch, vocab) = logits_rows(OP, logits)?;
    if n == 0 || n > MAX_TOP_LOGPROBS.min(vocab) {
        return Err(Error::InvalidArgument {
            op: OP,
            arg: "n",
            reason: format!(
                "must be in 1..={} (and at most vocab {vocab}), got {n}",
                MAX_TOP_LOGPROBS
            ),
        });
    }
    if let Some(s) = scale {
        expect_dtype(OP, "scale", DType::F32, s.dtype)?;
        expect_shape(OP, "scale", &[batch], s.shape)?;
    }
    expect_dtype(OP, "ids", DType::I32, ids.dtype)?;
    expect_shape(OP, "ids", &[batch, n], ids.shape)?;
    expect_dtype(OP, "logprobs", DType::F32, logprobs.dtype)?;
    expect_shape(OP, "logprobs", &[batch, n], logprobs.shape)?;
    Ok((batch, vocab))
}

/// [`top_logprobs`] into `ids` and `logprobs` (`[B, n]`); allocates
/// nothing. One block per row; each of the `n` rounds scans the row for the
/// best token after the previous round's pick.
pub fn top_logprobs_into(
    gpu: &Gpu,
    logits: &DeviceTensor,
    scale: Option<&DeviceTensor>,
    n: usize,
    ids: &mut DeviceTensor,
    logprobs: &mut DeviceTensor,
) -> Result<()> {
    let (batch, vocab) = validate_top_logprobs(
        logits.into(),
        scale.map(Meta::from),
        n,
        Meta::from(&*ids),
        Meta::from(&*logprobs),
    )?;
    if batch == 0 {
        return Ok(());
    }
    let dtype = logits.dtype();
    let name = format!("top_logprobs_{}", dtype.symbol_suffix());
    let f = dtype_function(gpu, KernelId::Argmax, dtype, &name)?;
    let threads = block_threads(vocab, TOP_LOGPROBS_THREADS);
    let cfg = LaunchConfig {
        grid_dim: (batch as u32, 1, 1),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let (vocab_i, n_i, null) = (vocab as i32, n as i32, 0u64);
    let mut launch = gpu.stream().launch_builder(&f);
    launch.arg(logits.buffer()).arg(&vocab_i);
    match scale {
        Some(s) => launch.arg(s.buffer()),
        None => launch.arg(&null),
    };
    launch.arg(&n_i).arg(ids.buffer_mut()).arg(logprobs.buffer_mut());
    // SAFETY: signature (logits, int vocab, const float* scale or null,
    // int n, int* ids, float* logprobs); grid = rows, block <= 1024 threads
    // (the kernel's bound); logits [B, V], scale [B], ids and logprobs
    // [B, n] with 1 <= n <= V (checked above).
    unsafe { launch.launch(cfg) }
        .map(drop)
        .map_err(Error::driver("launch top_logprobs"))
}

/// Threads per block of `top_logprobs` (its `__launch_bounds__`).
const TOP_LOGPROBS_THREADS: usize = 1024;

/// Whole warps for `units` strided work items, one or more and at most `max` threads.
fn block_threads(units: usize, max: usize) -> usize {
    units.div_ceil(32).clamp(1, max / 32) * 32
}

/// Blocks a batch aims at before rows stop being split (~4 per SM of an
/// H100/H200's 132, so one decode row reads at many SMs' bandwidth).
const SPLIT_TARGET_BLOCKS: usize = 512;
/// Most blocks one row is split over.
const MAX_CHUNKS: usize = 128;
/// Fewest vector units (16-byte packs, or elements) per chunk: one per thread.
const MIN_CHUNK_UNITS: usize = 256;
/// Threads per block (the kernels' `__launch_bounds__`).
const ARGMAX_THREADS: usize = 256;
/// The kernel's scratch: split rows only while `rows <= MAX_SPLIT_ROWS` and
/// `rows * chunks <= MAX_PARTIALS` (`kMaxSplitRows`, `kMaxPartials` in
/// `csrc/sampling/argmax.cu`).
const MAX_SPLIT_ROWS: usize = 512;
const MAX_PARTIALS: usize = 1024;

/// Grid `(rows, chunks)` and the chunk length in elements (a multiple of
/// the 16-byte pack when `vocab` is): few rows are split over many blocks,
/// the last block of a row merging the others' partials.
fn argmax_grid(batch: usize, vocab: usize, dtype: DType) -> (LaunchConfig, i32) {
    let vec = 16 / dtype.size();
    let (units, per_unit) = if vocab.is_multiple_of(vec) {
        (vocab / vec, vec)
    } else {
        (vocab, 1)
    };
    let mut chunks = SPLIT_TARGET_BLOCKS
        .div_ceil(batch.max(1))
        .min(MAX_CHUNKS)
        .min(units.div_ceil(MIN_CHUNK_UNITS))
        .max(1);
    if batch > MAX_SPLIT_ROWS {
        chunks = 1;
    } else {
        chunks = chunks.min(MAX_PARTIALS / batch.max(1)).max(1);
    }
    let chunk_units = units.div_ceil(chunks);
    let chunks = units.div_ceil(chunk_units);
    let threads = block_threads(chunk_units, ARGMAX_THREADS);
    let cfg = LaunchConfig {
        grid_dim: (batch as u32, chunks as u32, 1),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    (cfg, (chunk_units * per_unit) as i32)
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
    }

    #[test]
    fn argmax_grid_splits_few_rows_within_the_scratch() {
        let (c, chunk) = argmax_grid(1, 151_936, DType::F32);
        assert_eq!((c.grid_dim, c.block_dim.0, chunk), ((1, 128, 1), 256, 1188));
        let (c, chunk) = argmax_grid(64, 151_936, DType::BF16);
        assert_eq!((c.grid_dim, chunk), ((64, 8, 1), 18_992));
        // Odd vocabulary: element chunks; tiny ones: one block of one warp.
        let (c, chunk) = argmax_grid(3, 151_937, DType::F32);
        assert_eq!((c.grid_dim.1, chunk), (128, 1188));
        let (c, chunk) = argmax_grid(5, 1, DType::BF16);
        assert_eq!((c.grid_dim, c.block_dim.0, chunk), ((5, 1, 1), 32, 1));
        assert_eq!(argmax_grid(1024, 151_936, DType::F32).0.grid_dim, (1024, 1, 1));
        for batch in (1..=600).chain([1023, 5000]) {
            for vocab in [1, 7, 1000, 4096, 32_000, 151_936, 151_937, 1 << 20] {
                for dtype in [DType::F32, DType::BF16] {
                    let (c, chunk) = argmax_grid(batch, vocab, dtype);
                    let (rows, chunks) = (c.grid_dim.0 as usize, c.grid_dim.1 as usize);
                    let chunk = chunk as usize;
                    assert_eq!(rows, batch);
                    assert!(chunks == 1 || (rows <= MAX_SPLIT_ROWS && rows * chunks <= MAX_PARTIALS));
                    // Every chunk holds at least one element; together they cover the row.
                    assert!(
                        chunk * (chunks - 1) < vocab && chunk * chunks >= vocab,
                        "{batch} {vocab}"
                    );
                    let vec = 16 / dtype.size();
                    assert!(!vocab.is_multiple_of(vec) || chunk.is_multiple_of(vec));
                    assert!(c.block_dim.0 % 32 == 0 && c.block_dim.0 as usize <= ARGMAX_THREADS);
                }
            }
        }
    }
}
