//! RMSNorm and fused residual-add + RMSNorm (NVRTC kernel `rms_norm`).

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::{expect_dtype, expect_float, expect_shape, rows_cols, Meta};
use crate::device::Gpu;
use crate::dtype::DType;
use crate::registry::KernelId;
use crate::tensor::DeviceTensor;
use crate::{Error, Result};

const OP: &str = "rms_norm";

pub(super) fn symbols() -> Vec<String> {
    [DType::F32, DType::F16, DType::BF16]
        .iter()
        .flat_map(|d| [symbol(false, *d), symbol(true, *d)])
        .collect()
}

/// `rms_norm_bf16` / `fused_add_rms_norm_bf16`: the one place names are built.
fn symbol(fused: bool, dtype: DType) -> String {
    format!(
        "{}rms_norm_{}",
        if fused { "fused_add_" } else { "" },
        dtype.symbol_suffix()
    )
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
    let mut out = DeviceTensor::zeros(gpu, x.shape(), x.dtype())?;
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
    let f = gpu
        .kernel(KernelId::RmsNorm)?
        .function(KernelId::RmsNorm, &symbol(false, x.dtype()))?;
    let cols_i = cols as i32;
    let mut launch = gpu.stream().launch_builder(&f);
    launch
        .arg(x.buffer())
        .arg(weight.buffer())
        .arg(out.buffer_mut())
        .arg(&cols_i)
        .arg(&eps);
    // SAFETY: symbol signature (x, w, out, int cols, float eps); buffers hold
    // rows*cols and cols elements of the dtype, checked above.
    unsafe { launch.launch(config(rows, cols, x.dtype())) }
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
    let f = gpu
        .kernel(KernelId::RmsNorm)?
        .function(KernelId::RmsNorm, &symbol(true, x.dtype()))?;
    let cols_i = cols as i32;
    let cfg = config(rows, cols, x.dtype());
    let mut launch = gpu.stream().launch_builder(&f);
    launch
        .arg(x.buffer_mut())
        .arg(residual.buffer_mut())
        .arg(weight.buffer())
        .arg(&cols_i)
        .arg(&eps);
    // SAFETY: symbol signature (x, residual, w, int cols, float eps); sizes checked above.
    unsafe { launch.launch(cfg) }
        .map(drop)
        .map_err(Error::driver("launch fused_add_rms_norm"))
}

/// Packs each thread keeps in registers (`CACHED` in rms_norm.cu).
const PACKS_PER_THREAD: usize = 4;

/// One block per row, each thread holding up to 4 16-byte packs: small
/// blocks keep many rows' loads in flight per SM (measured on H100: one pack
/// per thread in 512-thread blocks reached only 50-74% of copy bandwidth).
fn config(rows: usize, cols: usize, dtype: DType) -> LaunchConfig {
    let vec = 16 / dtype.size();
    let packs = if cols.is_multiple_of(vec) { cols / vec } else { cols };
    let threads = packs.div_ceil(PACKS_PER_THREAD).div_ceil(32).clamp(1, 32) * 32;
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads as u32, 1, 1),
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
    fn launch_shape_keeps_four_packs_per_thread() {
        assert_eq!(config(3, 4096, DType::BF16).block_dim.0, 128);
        assert_eq!(config(3, 4096, DType::F32).block_dim.0, 256);
        assert_eq!(config(3, 7, DType::BF16).block_dim.0, 32);
        assert_eq!(config(3, 65536, DType::BF16).block_dim.0, 1024);
    }
}
