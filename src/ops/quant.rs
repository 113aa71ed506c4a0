//! Dynamic per-token int8 quantization (nvcc kernel `per_token_quant_int8`).

use super::{expect_dtype, expect_float, expect_shape, ffi_result, rows_cols, Meta};
use crate::device::Gpu;
use crate::dtype::DType;
use crate::registry::{KernelBuild, KernelId};
use crate::tensor::DeviceTensor;
use crate::Result;

const OP: &str = "per_token_quant_int8";

/// Checks `x: [.., K]` float; returns `(rows, K)`.
pub fn validate_per_token_quant_int8(x: Meta) -> Result<(usize, usize)> {
    expect_float(OP, "x", x.dtype)?;
    rows_cols(OP, "x", x)
}

/// Quantizes each row of `x: [.., K]` to int8 with its own scale.
/// Returns `(q: i8 [.., K], scales: f32 [rows])`.
///
/// ```no_run
/// use mllm_kernel::{ops, DeviceTensor, Gpu};
/// let gpu = Gpu::new(0)?;
/// let x = DeviceTensor::from_host(&gpu, &[0.5f32, -1.0], &[1, 2])?;
/// let (q, s) = ops::per_token_quant_int8(&gpu, &x)?;
/// assert_eq!(q.to_host::<i8>(&gpu)?, vec![64, -127]);
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub fn per_token_quant_int8(gpu: &Gpu, x: &DeviceTensor) -> Result<(DeviceTensor, DeviceTensor)> {
    let (rows, _) = validate_per_token_quant_int8(x.into())?;
    let mut q = DeviceTensor::empty(gpu, x.shape(), DType::I8)?;
    let mut scales = DeviceTensor::empty(gpu, &[rows], DType::F32)?;
    per_token_quant_int8_into(gpu, x, &mut q, &mut scales)?;
    Ok((q, scales))
}

/// [`per_token_quant_int8`] into caller-provided outputs (no allocation).
pub fn per_token_quant_int8_into(
    gpu: &Gpu,
    x: &DeviceTensor,
    q: &mut DeviceTensor,
    scales: &mut DeviceTensor,
) -> Result<()> {
    let (rows, cols) = validate_per_token_quant_int8(x.into())?;
    expect_dtype(OP, "q", DType::I8, q.dtype())?;
    expect_shape(OP, "q", x.shape(), q.shape())?;
    expect_dtype(OP, "scales", DType::F32, scales.dtype())?;
    expect_shape(OP, "scales", &[rows], scales.shape())?;
    if rows == 0 {
        return Ok(());
    }
    let launcher = gpu
        .kernel(KernelBuild::new(KernelId::PerTokenQuantInt8, None)?)?
        .per_token_quant_int8()?;
    let dtype = x.dtype().to_ffi().expect("float dtype checked above");
    let stream = gpu.stream();
    let (xp, _gx) = x.raw_ptr(stream);
    let (qp, _gq) = q.raw_ptr_mut(stream);
    let (sp, _gs) = scales.raw_ptr_mut(stream);
    // SAFETY: pointers address rows*cols elements of x's dtype, rows*cols
    // int8 and rows f32 on this stream's device (checked above); the guards
    // keep them ordered on the stream until the launch is enqueued.
    let result = unsafe {
        launcher(
            xp as *const std::ffi::c_void,
            qp as *mut i8,
            sp as *mut f32,
            rows as i64,
            cols as i64,
            dtype,
            stream.cu_stream() as _,
        )
    };
    ffi_result(OP, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert_eq!(
            validate_per_token_quant_int8(Meta::new(&[3, 5], DType::BF16)).unwrap(),
            (3, 5)
        );
        assert_eq!(
            validate_per_token_quant_int8(Meta::new(&[2, 0, 5], DType::F16)).unwrap(),
            (0, 5)
        );
        let err = validate_per_token_quant_int8(Meta::new(&[3, 5], DType::I32)).unwrap_err();
        assert!(err.to_string().contains("`x` has dtype i32"), "{err}");
        let err = validate_per_token_quant_int8(Meta::new(&[3, 0], DType::F32)).unwrap_err();
        assert!(err.to_string().contains("non-empty"), "{err}");
    }
}
