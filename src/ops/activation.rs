//! SiLU-and-mul, SwiGLU's gate (NVRTC kernel `silu_and_mul`).

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::dependent_launch::DependentLaunch;
use super::launch::{dtype_function, float_symbols, row_chunks, units};
use super::{expect_dtype, expect_float, expect_shape, rows_cols, Meta};
use crate::device::Gpu;
use crate::dtype::DType;
use crate::registry::KernelId;
use crate::tensor::DeviceTensor;
use crate::{Error, Result};

const OP: &str = "silu_and_mul";

pub(super) fn symbols(variant: Option<&str>) -> Vec<String> {
    float_symbols(&[OP, "silu_and_mul_quant", "silu_and_mul_quant_cluster"], variant)
}

/// Checks `x: [.., 2I]` (a float dtype, even last dimension). Returns
/// `(rows, I)`.
///
/// ```
/// use mllm_kernel::{ops::{validate_silu_and_mul, Meta}, DType};
/// assert_eq!(validate_silu_and_mul(Meta::new(&[3, 16], DType::BF16)).unwrap(), (3, 8));
/// assert!(validate_silu_and_mul(Meta::new(&[3, 15], DType::BF16)).is_err());
/// ```
pub fn validate_silu_and_mul(x: Meta) -> Result<(usize, usize)> {
    expect_float(OP, "x", x.dtype)?;
    let (rows, cols) = rows_cols(OP, "x", x)?;
    if !cols.is_multiple_of(2) {
        return Err(Error::ShapeMismatch {
            op: OP,
            arg: "x",
            expected: "an even last dimension ([.., 2 * intermediate])".into(),
            got: x.shape.to_vec(),
        });
    }
    Ok((rows, cols / 2))
}

/// `out = silu(x[.., :I]) * x[.., I:]` for `x: [.., 2I]`; `out: [.., I]`.
///
/// ```no_run
/// use mllm_kernel::{ops, DeviceTensor, Gpu};
/// use half::bf16;
/// let gpu = Gpu::new(0)?;
/// let x = DeviceTensor::from_host(&gpu, &vec![bf16::ONE; 2 * 2 * 12288], &[2, 2 * 12288])?;
/// let y = ops::silu_and_mul(&gpu, &x)?;
/// assert_eq!(y.shape(), &[2, 12288]);
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub fn silu_and_mul(gpu: &Gpu, x: &DeviceTensor) -> Result<DeviceTensor> {
    let (_, inter) = validate_silu_and_mul(x.into())?;
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("validated rank >= 1") = inter;
    let mut out = DeviceTensor::empty(gpu, &shape, x.dtype())?;
    silu_and_mul_into(gpu, x, &mut out)?;
    Ok(out)
}

/// [`silu_and_mul`] into a caller-provided `out` (`[.., I]`, dtype of `x`);
/// allocates nothing, so it can be captured in a CUDA graph.
pub fn silu_and_mul_into(gpu: &Gpu, x: &DeviceTensor, out: &mut DeviceTensor) -> Result<()> {
    let (rows, inter) = validate_silu_and_mul(x.into())?;
    expect_dtype(OP, "out", x.dtype(), out.dtype())?;
    let mut want = x.shape().to_vec();
    *want.last_mut().expect("validated rank >= 1") = inter;
    expect_shape(OP, "out", &want, out.shape())?;
    if rows == 0 {
        return Ok(());
    }
    let name = format!("{OP}_{}", x.dtype().symbol_suffix());
    let f = dtype_function(gpu, KernelId::SiluAndMul, x.dtype(), &name)?;
    let config = row_chunks(rows, units(inter, x.dtype()));
    let inter_i = inter as i32;
    // The kernel waits for its producer (the gate/up GEMM) in-kernel.
    let mut launch = DependentLaunch::new(gpu, &f);
    launch.arg(x.buffer()).arg(out.buffer_mut()).arg(&inter_i);
    // SAFETY: signature (x, out, int inter), grid.x = rows; x holds rows*2I
    // and out rows*I elements of the dtype, checked above.
    unsafe { launch.launch(config) }.map_err(Error::driver("launch silu_and_mul"))
}

/// [`silu_and_mul_into`], then the per-token int8 quantization of `out` into `q` (`[rows, I]`
/// i8) and `scales` (`[rows]` f32), bit-identical to
/// [`per_token_quant_int8`](super::per_token_quant_int8) on it: the input of a W8A8 down
/// projection without a separate quantization kernel. One block per row; on SM90 a
/// decode batch's rows a cluster of 8 each.
///
/// ```no_run
/// use mllm_kernel::{ops, DType, DeviceTensor, Gpu};
/// use half::bf16;
/// let gpu = Gpu::new(0)?;
/// let x = DeviceTensor::from_host(&gpu, &vec![bf16::ONE; 2 * 12288], &[1, 2 * 12288])?;
/// let mut out = DeviceTensor::empty(&gpu, &[1, 12288], DType::BF16)?;
/// let mut q = DeviceTensor::empty(&gpu, &[1, 12288], DType::I8)?;
/// let mut scales = DeviceTensor::empty(&gpu, &[1], DType::F32)?;
/// ops::silu_and_mul_quant_into(&gpu, &x, &mut out, &mut q, &mut scales)?;
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub fn silu_and_mul_quant_into(
    gpu: &Gpu,
    x: &DeviceTensor,
    out: &mut DeviceTensor,
    q: &mut DeviceTensor,
    scales: &mut DeviceTensor,
) -> Result<()> {
    let (rows, inter) = validate_silu_and_mul(x.into())?;
    expect_dtype(OP, "out", x.dtype(), out.dtype())?;
    let mut want = x.shape().to_vec();
    *want.last_mut().expect("validated rank >= 1") = inter;
    expect_shape(OP, "out", &want, out.shape())?;
    expect_dtype(OP, "q", DType::I8, q.dtype())?;
    expect_shape(OP, "q", &[rows, inter], q.shape())?;
    expect_dtype(OP, "scales", DType::F32, scales.dtype())?;
    expect_shape(OP, "scales", &[rows], scales.shape())?;
    if rows == 0 {
        return Ok(());
    }
    let cluster = cluster_threads(gpu.arch().major, rows, inter, x.dtype());
    let form = if cluster.is_some() {
        "silu_and_mul_quant_cluster"
    } else {
        "silu_and_mul_quant"
    };
    let name = format!("{form}_{}", x.dtype().symbol_suffix());
    let f = dtype_function(gpu, KernelId::SiluAndMul, x.dtype(), &name)?;
    let config = match cluster {
        Some(threads) => LaunchConfig {
            grid_dim: ((rows * CLUSTER_CTAS) as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        },
        None => LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (QUANT_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        },
    };
    let inter_i = inter as i32;
    // The kernel waits for its producer (the gate/up GEMM) in-kernel.
    let mut launch = DependentLaunch::new(gpu, &f);
    launch
        .arg(x.buffer())
        .arg(out.buffer_mut())
        .arg(q.buffer_mut())
        .arg(scales.buffer_mut())
        .arg(&inter_i);
    // SAFETY: signature (x, out, q, scales, int inter), grid.x = rows, grid.y = 1; x holds
    // rows*2I, out and q rows*I, scales rows elements (checked above).
    unsafe { launch.launch(config) }.map_err(Error::driver("launch silu_and_mul_quant"))
}

/// Threads of the quantizing form's one block per row (12288-wide rows: 1.5 packs each).
const QUANT_BLOCK: u32 = 1024;

/// CTAs of the cluster form (`kClusterCtas` in csrc/activation/silu_and_mul.cu).
const CLUSTER_CTAS: usize = 8;

/// Rows up to which SM90 takes the cluster form: a decode batch, where each
/// row's block was bound by one SM's instruction issue (4.7 us a row at
/// I = 12288 on an H100); larger batches fill the GPU with one block a row.
const CLUSTER_MAX_ROWS: usize = 64;

/// Threads per CTA of the cluster form (one 16-byte pack each, the row
/// exactly covered by [`CLUSTER_CTAS`] CTAs of whole warps), or `None` where
/// it does not apply: before SM90 (no clusters), past
/// [`CLUSTER_MAX_ROWS`], or a row it cannot cover so.
fn cluster_threads(arch_major: u32, rows: usize, inter: usize, dtype: DType) -> Option<u32> {
    let pack = 16 / dtype.size();
    let per_cta = inter / (CLUSTER_CTAS * pack);
    let exact = per_cta * CLUSTER_CTAS * pack == inter && per_cta.is_multiple_of(32);
    (arch_major >= 9 && rows <= CLUSTER_MAX_ROWS && exact && (32..=1024).contains(&per_cta)).then_some(per_cta as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_form_covers_decode_rows_on_sm90() {
        // Qwen3-8B: 12288 / (8 CTAs x 8 bf16) = 192 threads.
        assert_eq!(cluster_threads(9, 1, 12288, DType::BF16), Some(192));
        assert_eq!(cluster_threads(10, 64, 2048, DType::F32), Some(64));
        assert_eq!(cluster_threads(8, 1, 12288, DType::BF16), None);
        assert_eq!(cluster_threads(9, 65, 12288, DType::BF16), None);
        // Not whole warps per CTA, or not whole packs.
        assert_eq!(cluster_threads(9, 1, 1024, DType::BF16), None);
        assert_eq!(cluster_threads(9, 1, 12300, DType::BF16), None);
        assert_eq!(cluster_threads(9, 1, 0, DType::BF16), None);
    }

    #[test]
    fn validation_names_the_argument() {
        let err = validate_silu_and_mul(Meta::new(&[2, 7], DType::F16)).unwrap_err();
        assert!(
            err.to_string().contains("`x`") && err.to_string().contains("even"),
            "{err}"
        );
        let err = validate_silu_and_mul(Meta::new(&[2, 8], DType::I32)).unwrap_err();
        assert!(err.to_string().contains("dtype i32"), "{err}");
        let err = validate_silu_and_mul(Meta::new(&[], DType::F32)).unwrap_err();
        assert!(err.to_string().contains("rank"), "{err}");
        assert_eq!(validate_silu_and_mul(Meta::new(&[0, 8], DType::F32)).unwrap(), (0, 4));
        assert_eq!(
            validate_silu_and_mul(Meta::new(&[2, 3, 8], DType::F32)).unwrap(),
            (6, 4)
        );
    }
}
