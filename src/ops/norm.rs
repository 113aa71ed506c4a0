//! RMSNorm and fused residual-add + RMSNorm (NVRTC kernel `rms_norm`).

use cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};

use super::dependent_launch::DependentLaunch;
use super::{expect_dtype, expect_float, expect_shape, rows_cols, Meta};
use crate::device::Gpu;
use crate::dtype::DType;
use crate::registry::{KernelBuild, KernelId};
use crate::tensor::DeviceTensor;
use crate::{Error, Result};

const OP: &str = "rms_norm";

/// Symbols of the build for `variant` (a dtype suffix), or of every dtype.
pub(super) fn symbols(variant: Option<&str>) -> Vec<String> {
    [DType::F32, DType::F16, DType::BF16]
        .into_iter()
        .filter(|d| variant.is_none_or(|v| v == d.symbol_suffix()))
        .flat_map(|d| [Form::Plain, Form::PlainWide, Form::FusedAdd, Form::FusedAddQuant].map(|f| symbol(f, d)))
        .collect()
}

/// The kernel's entry points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    /// The row resident in registers, exactly [`PACKS_PER_THREAD`] packs per thread.
    Plain,
    /// Any row; what does not fit is streamed.
    PlainWide,
    FusedAdd,
    FusedAddQuant,
}

/// `rms_norm_bf16` / `rms_norm_wide_bf16` / `fused_add_rms_norm_bf16` /
/// `fused_add_rms_norm_quant_bf16`: the one place names are built.
fn symbol(form: Form, dtype: DType) -> String {
    let base = match form {
        Form::Plain => "rms_norm",
        Form::PlainWide => "rms_norm_wide",
        Form::FusedAdd => "fused_add_rms_norm",
        Form::FusedAddQuant => "fused_add_rms_norm_quant",
    };
    format!("{base}_{}", dtype.symbol_suffix())
}

/// Checks `x: [.., H]` and `weight: [H]` of one float dtype, and `eps`.
/// Returns `(rows, H)`.
pub fn validate_rms_norm(x: Meta, weight: Meta, eps: f32) -> Result<(usize, usize)> {
    expect_float(OP, "x", x.dtype)?;
    expect_dtype(OP, "weight", x.dtype, weight.dtype)?;
    let (rows, cols) = rows_cols(OP, "x", x)?;
    expect_shape(OP, "weight", &[cols], weight.shape)?;
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::InvalidArgument {
            op: OP,
            arg: "eps",
            reason: format!("must be finite and >= 0, got {eps}"),
        });
    }
    Ok((rows, cols))
}

/// `out = rms_norm(x) * weight` over the last dimension.
///
/// ```no_run
/// use mllm_kernel::{ops, DeviceTensor, Gpu};
/// use half::bf16;
/// let gpu = Gpu::new(0)?;
/// let x = DeviceTensor::from_host(&gpu, &vec![bf16::ONE; 2 * 4096], &[2, 4096])?;
/// let w = DeviceTensor::from_host(&gpu, &vec![bf16::ONE; 4096], &[4096])?;
/// let y = ops::rms_norm(&gpu, &x, &w, 1e-6)?;
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub fn rms_norm(gpu: &Gpu, x: &DeviceTensor, weight: &DeviceTensor, eps: f32) -> Result<DeviceTensor> {
    validate_rms_norm(x.into(), weight.into(), eps)?;
    let mut out = DeviceTensor::empty(gpu, x.shape(), x.dtype())?;
    rms_norm_into(gpu, x, weight, eps, &mut out)?;
    Ok(out)
}

/// [`rms_norm`] into a caller-provided `out` (same shape and dtype as `x`);
/// allocates nothing, so it can be captured in a CUDA graph.
pub fn rms_norm_into(
    gpu: &Gpu,
    x: &DeviceTensor,
    weight: &DeviceTensor,
    eps: f32,
    out: &mut DeviceTensor,
) -> Result<()> {
    let (rows, cols) = validate_rms_norm(x.into(), weight.into(), eps)?;
    expect_dtype(OP, "out", x.dtype(), out.dtype())?;
    expect_shape(OP, "out", x.shape(), out.shape())?;
    if rows == 0 {
        return Ok(());
    }
    let (f, config) = launch_shape(gpu, rows, cols, Form::Plain, x.dtype())?;
    let cols_i = cols as i32;
    let mut launch = gpu.stream().launch_builder(&f);
    launch
        .arg(x.buffer())
        .arg(weight.buffer())
        .arg(out.buffer_mut())
        .arg(&cols_i)
        .arg(&eps);
    // SAFETY: symbol signature (x, w, out, int cols, float eps), one block
    // per row; buffers hold rows*cols and cols elements of the dtype, checked above.
    unsafe { launch.launch(config) }
        .map(drop)
        .map_err(Error::driver("launch rms_norm"))
}

/// In place: `residual = x + residual`, then `x = rms_norm(residual) * weight`.
pub fn fused_add_rms_norm(
    gpu: &Gpu,
    x: &mut DeviceTensor,
    residual: &mut DeviceTensor,
    weight: &DeviceTensor,
    eps: f32,
) -> Result<()> {
    let (rows, cols) = validate_rms_norm((&*x).into(), weight.into(), eps)?;
    expect_dtype(OP, "residual", x.dtype(), residual.dtype())?;
    expect_shape(OP, "residual", x.shape(), residual.shape())?;
    if rows == 0 {
        return Ok(());
    }
    let (f, config) = launch_shape(gpu, rows, cols, Form::FusedAdd, x.dtype())?;
    let cols_i = cols as i32;
    // The kernel waits for its producer (the GEMM before it) in-kernel.
    let mut launch = DependentLaunch::new(gpu, &f);
    launch
        .arg(x.buffer_mut())
        .arg(residual.buffer_mut())
        .arg(weight.buffer())
        .arg(&cols_i)
        .arg(&eps);
    // SAFETY: symbol signature (x, residual, w, int cols, float eps), one
    // block per row; sizes checked above.
    unsafe { launch.launch(config) }.map_err(Error::driver("launch fused_add_rms_norm"))
}

/// [`fused_add_rms_norm`], then the per-token int8 quantization of the normalized `x` into
/// `q` (`[rows, H]` i8) and `scales` (`[rows]` f32), bit-identical to
/// [`per_token_quant_int8`](super::per_token_quant_int8) on it: the input of a W8A8 GEMM
/// without a separate quantization kernel.
///
/// ```no_run
/// use mllm_kernel::{ops, DType, DeviceTensor, Gpu};
/// use half::bf16;
/// let gpu = Gpu::new(0)?;
/// let mut x = DeviceTensor::from_host(&gpu, &vec![bf16::ONE; 4096], &[1, 4096])?;
/// let mut residual = DeviceTensor::from_host(&gpu, &vec![bf16::ONE; 4096], &[1, 4096])?;
/// let w = DeviceTensor::from_host(&gpu, &vec![bf16::ONE; 4096], &[4096])?;
/// let mut q = DeviceTensor::empty(&gpu, &[1, 4096], DType::I8)?;
/// let mut scales = DeviceTensor::empty(&gpu, &[1], DType::F32)?;
/// ops::fused_add_rms_norm_quant(&gpu, &mut x, &mut residual, &w, 1e-6, &mut q, &mut scales)?;
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub fn fused_add_rms_norm_quant(
    gpu: &Gpu,
    x: &mut DeviceTensor,
    residual: &mut DeviceTensor,
    weight: &DeviceTensor,
    eps: f32,
    q: &mut DeviceTensor,
    scales: &mut DeviceTensor,
) -> Result<()> {
    let (rows, cols) = validate_rms_norm((&*x).into(), weight.into(), eps)?;
    expect_dtype(OP, "residual", x.dtype(), residual.dtype())?;
    expect_shape(OP, "residual", x.shape(), residual.shape())?;
    expect_dtype(OP, "q", DType::I8, q.dtype())?;
    expect_shape(OP, "q", &[rows, cols], q.shape())?;
    expect_dtype(OP, "scales", DType::F32, scales.dtype())?;
    expect_shape(OP, "scales", &[rows], scales.shape())?;
    if rows == 0 {
        return Ok(());
    }
    let (f, config) = launch_shape(gpu, rows, cols, Form::FusedAddQuant, x.dtype())?;
    let cols_i = cols as i32;
    // The kernel waits for its producer (the GEMM before it) in-kernel.
    let mut launch = DependentLaunch::new(gpu, &f);
    launch
        .arg(x.buffer_mut())
        .arg(residual.buffer_mut())
        .arg(weight.buffer())
        .arg(q.buffer_mut())
        .arg(scales.buffer_mut())
        .arg(&cols_i)
        .arg(&eps);
    // SAFETY: symbol signature (x, residual, w, q, scales, int cols, float eps), one block per
    // row; x/residual/q hold rows*cols elements, scales rows, w cols (checked above).
    unsafe { launch.launch(config) }.map_err(Error::driver("launch fused_add_rms_norm_quant"))
}

/// 16-byte packs each thread keeps in registers (`CACHED` in the kernel).
const PACKS_PER_THREAD: usize = 2;

/// Threads per block: enough to cover a row with [`PACKS_PER_THREAD`] packs
/// each (rows not a multiple of 16 bytes move 1-element packs), a whole
/// number of warps, at most 1024.
fn threads_per_row(cols: usize, dtype: DType) -> u32 {
    let vec = 16 / dtype.size();
    let units = if cols.is_multiple_of(vec) { cols / vec } else { cols };
    (units.div_ceil(PACKS_PER_THREAD).div_ceil(32).clamp(1, 32) * 32) as u32
}

/// The block size at which a row is resident for [`Form::Plain`]: 16-byte
/// packs only, exactly [`PACKS_PER_THREAD`] per thread, whole warps, within
/// `max_threads`. Hidden sizes that are multiples of 512 bf16 elements (all
/// of Qwen3's) qualify.
fn resident_threads(cols: usize, dtype: DType, max_threads: u32) -> Option<u32> {
    exact_cover_threads(cols, dtype, 16, PACKS_PER_THREAD, max_threads)
}

/// Threads that hold a row of `cols` exactly in `packs_per_thread` packs of
/// `pack_bytes` each, in whole warps, within `max_threads`.
fn exact_cover_threads(
    cols: usize,
    dtype: DType,
    pack_bytes: usize,
    packs_per_thread: usize,
    max_threads: u32,
) -> Option<u32> {
    let vec = pack_bytes / dtype.size();
    let packs = cols / vec;
    let threads = packs / packs_per_thread;
    let exact = cols.is_multiple_of(vec) && packs.is_multiple_of(packs_per_thread * 32);
    (exact && threads > 0 && threads <= max_threads as usize).then_some(threads as u32)
}

/// Rows up to which the fused forms launch [`decode_threads`]: each row is a
/// block of its own on its own SM there, and its time is the chain of
/// dependent steps each thread runs (ncu on an H100 at batch 1: 256 threads
/// of 16 elements spent ~1,200 instructions a warp). Larger batches keep
/// [`threads_per_row`], measured at 91-99% of copy bandwidth.
const DECODE_ROWS: usize = 64;

/// One 8-byte pack per thread (4 bf16/f16 elements, 2 f32), when that covers
/// the row exactly in whole warps within `max_threads`: the kernels' decode
/// form (`decode_launch` in csrc/norm/rms_norm.cu), 1024 threads at hidden
/// 4096 in bf16.
fn decode_threads(cols: usize, dtype: DType, max_threads: u32) -> Option<u32> {
    exact_cover_threads(cols, dtype, 8, 1, max_threads)
}

/// The function and launch shape: one block per row, threads capped by what
/// the compiled function allows (registers can make that < 1024; the packs
/// past the cached ones are then re-read). A plain norm whose row cannot be
/// resident runs the wide form.
fn launch_shape(gpu: &Gpu, rows: usize, cols: usize, form: Form, dtype: DType) -> Result<(CudaFunction, LaunchConfig)> {
    // One JIT build per dtype keeps the cold compile short.
    let kernel = gpu.kernel(KernelBuild::new(KernelId::RmsNorm, Some(dtype.symbol_suffix()))?)?;
    if form == Form::Plain {
        let name = symbol(form, dtype);
        let max = kernel.max_threads(KernelId::RmsNorm, &name)?;
        if let Some(threads) = resident_threads(cols, dtype, max) {
            return Ok((kernel.function(KernelId::RmsNorm, &name)?, row_blocks(rows, threads)));
        }
    }
    let form = if form == Form::Plain { Form::PlainWide } else { form };
    let name = symbol(form, dtype);
    let f = kernel.function(KernelId::RmsNorm, &name)?;
    let max = kernel.max_threads(KernelId::RmsNorm, &name)?;
    if matches!(form, Form::FusedAdd | Form::FusedAddQuant)
        && rows <= DECODE_ROWS
        && let Some(threads) = decode_threads(cols, dtype, max)
    {
        return Ok((f, row_blocks(rows, threads)));
    }
    let want = threads_per_row(cols, dtype);
    Ok((f, row_blocks(rows, want.min(max / 32 * 32).max(32))))
}

/// One block of `threads` per row.
fn row_blocks(rows: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_argument() {
        let x = [4, 8];
        let err = validate_rms_norm(Meta::new(&x, DType::BF16), Meta::new(&[7], DType::BF16), 1e-6).unwrap_err();
        assert!(
            err.to_string().contains("`weight`") && err.to_string().contains("[8]"),
            "{err}"
        );
        let err = validate_rms_norm(Meta::new(&x, DType::BF16), Meta::new(&[8], DType::F16), 1e-6).unwrap_err();
        assert!(err.to_string().contains("dtype f16, expected bf16"), "{err}");
        let err = validate_rms_norm(Meta::new(&x, DType::I8), Meta::new(&[8], DType::I8), 1e-6).unwrap_err();
        assert!(err.to_string().contains("`x`"), "{err}");
        let err = validate_rms_norm(Meta::new(&[], DType::F32), Meta::new(&[1], DType::F32), 1e-6).unwrap_err();
        assert!(err.to_string().contains("rank"), "{err}");
        let err = validate_rms_norm(Meta::new(&x, DType::F32), Meta::new(&[8], DType::F32), f32::NAN).unwrap_err();
        assert!(err.to_string().contains("eps"), "{err}");
        assert_eq!(
            validate_rms_norm(Meta::new(&[0, 8], DType::F32), Meta::new(&[8], DType::F32), 0.0).unwrap(),
            (0, 8)
        );
    }

    #[test]
    fn resident_rows_are_exactly_two_packs_per_thread() {
        assert_eq!(resident_threads(4096, DType::BF16, 512), Some(256));
        assert_eq!(resident_threads(5120, DType::BF16, 512), Some(320));
        assert_eq!(resident_threads(4096, DType::F32, 512), Some(512));
        // Too wide for the bound, not whole warps, or not 16-byte packs.
        assert_eq!(resident_threads(4096, DType::F32, 256), None);
        assert_eq!(resident_threads(576, DType::BF16, 512), None);
        assert_eq!(resident_threads(4100, DType::BF16, 512), None);
        assert_eq!(resident_threads(0, DType::BF16, 512), None);
    }

    #[test]
    fn decode_threads_hold_one_eight_byte_pack_each() {
        assert_eq!(decode_threads(4096, DType::BF16, 1024), Some(1024));
        assert_eq!(decode_threads(2048, DType::F32, 1024), Some(1024));
        assert_eq!(decode_threads(1024, DType::F16, 1024), Some(256));
        // Too wide for one block, too narrow for whole warps, not 8-byte packs.
        assert_eq!(decode_threads(5120, DType::BF16, 1024), None);
        assert_eq!(decode_threads(4096, DType::BF16, 768), None);
        assert_eq!(decode_threads(64, DType::BF16, 1024), None);
        assert_eq!(decode_threads(4098, DType::BF16, 1024), None);
    }

    #[test]
    fn threads_cover_a_row_with_two_packs_each() {
        assert_eq!(threads_per_row(4096, DType::BF16), 256);
        assert_eq!(threads_per_row(4096, DType::F32), 512);
        assert_eq!(threads_per_row(5120, DType::F16), 320);
        // Not a multiple of 8 bf16: 1-element packs.
        assert_eq!(threads_per_row(4100, DType::BF16), 1024);
        assert_eq!(threads_per_row(7, DType::BF16), 32);
        assert_eq!(threads_per_row(65536, DType::BF16), 1024);
    }
}
