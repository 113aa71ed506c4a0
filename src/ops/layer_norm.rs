//! LayerNorm with bias, optionally fused with the residual add before it
//! (NVRTC kernel `layer_norm`; the vision tower's norms).

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::launch::{dtype_function, float_symbols};
use super::{expect_dtype, expect_float, expect_shape, rows_cols, Meta};
use crate::device::Gpu;
use crate::registry::KernelId;
use crate::tensor::DeviceTensor;
use crate::{Error, Result};

const OP: &str = "layer_norm";

pub(super) fn symbols(variant: Option<&str>) -> Vec<String> {
    float_symbols(&[OP], variant)
}

/// Checks `x: [.., D]` (float), `weight` and `bias: [D]` of its dtype and
/// `eps`. Returns `(rows, D)`.
///
/// ```
/// use mllm_kernel::{ops::{validate_layer_norm, Meta}, DType};
/// let (x, w) = (Meta::new(&[6, 1024], DType::BF16), Meta::new(&[1024], DType::BF16));
/// assert_eq!(validate_layer_norm(x, w, w, 1e-6).unwrap(), (6, 1024));
/// assert!(validate_layer_norm(x, Meta::new(&[512], DType::BF16), w, 1e-6).is_err());
/// ```
pub fn validate_layer_norm(x: Meta, weight: Meta, bias: Meta, eps: f32) -> Result<(usize, usize)> {
    expect_float(OP, "x", x.dtype)?;
    let (rows, cols) = rows_cols(OP, "x", x)?;
    for (arg, m) in [("weight", weight), ("bias", bias)] {
        expect_dtype(OP, arg, x.dtype, m.dtype)?;
        expect_shape(OP, arg, &[cols], m.shape)?;
    }
    if cols == 0 || !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::InvalidArgument {
            op: OP,
            arg: if cols == 0 { "x" } else { "eps" },
            reason: format!("needs rows of at least one element and a finite eps >= 0 (got {cols}, {eps})"),
        });
    }
    Ok((rows, cols))
}

/// `out = layer_norm(v) * weight + bias` over the last dimension, where
/// `v = x`, or with `residual` (same shape) `v = residual + x`, which is
/// also stored into `residual` (the pre-norm block's running sum). Stats in
/// f32. `out` has x's shape and dtype; allocates nothing.
///
/// ```no_run
/// use mllm_kernel::{ops, DeviceTensor, Gpu};
/// use half::bf16;
/// let gpu = Gpu::new(0)?;
/// let x = DeviceTensor::from_host(&gpu, &vec![bf16::ONE; 4 * 1024], &[4, 1024])?;
/// let w = DeviceTensor::from_host(&gpu, &vec![bf16::ONE; 1024], &[1024])?;
/// let b = DeviceTensor::zeros(&gpu, &[1024], mllm_kernel::DType::BF16)?;
/// let mut out = DeviceTensor::empty(&gpu, &[4, 1024], mllm_kernel::DType::BF16)?;
/// ops::layer_norm_into(&gpu, &x, None, &w, &b, 1e-6, &mut out)?;
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub fn layer_norm_into(
    gpu: &Gpu,
    x: &DeviceTensor,
    residual: Option<&mut DeviceTensor>,
    weight: &DeviceTensor,
    bias: &DeviceTensor,
    eps: f32,
    out: &mut DeviceTensor,
) -> Result<()> {
    let (rows, cols) = validate_layer_norm(x.into(), weight.into(), bias.into(), eps)?;
    expect_dtype(OP, "out", x.dtype(), out.dtype())?;
    expect_shape(OP, "out", x.shape(), out.shape())?;
    if let Some(r) = &residual {
        expect_dtype(OP, "residual", x.dtype(), r.dtype())?;
        expect_shape(OP, "residual", x.shape(), r.shape())?;
    }
    if rows == 0 {
        return Ok(());
    }
    let name = format!("{OP}_{}", x.dtype().symbol_suffix());
    let f = dtype_function(gpu, KernelId::LayerNorm, x.dtype(), &name)?;
    let threads = cols.div_ceil(32).clamp(1, 32) as u32 * 32;
    let config = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads.min(1024), 1, 1),
        shared_mem_bytes: 0,
    };
    let (cols_i, null) = (cols as i32, 0u64);
    let mut launch = gpu.stream().launch_builder(&f);
    launch.arg(x.buffer());
    match residual {
        Some(r) => launch.arg(r.buffer_mut()),
        None => launch.arg(&null),
    };
    launch
        .arg(weight.buffer())
        .arg(bias.buffer())
        .arg(out.buffer_mut())
        .arg(&cols_i)
        .arg(&eps);
    // SAFETY: signature (x, residual or null, w, b, out, int cols, float
    // eps), grid.x = rows; x, residual and out hold rows*cols elements and
    // w, b cols of one dtype, checked above.
    unsafe { launch.launch(config) }
        .map(drop)
        .map_err(Error::driver("launch layer_norm"))
}
