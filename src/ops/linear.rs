//! Dense linear layer `out = x · Wᵀ (+ bias)` on cuBLAS: f32 accumulation,
//! bf16/f16/f32 inputs, output in the input dtype or f32 (LM-head logits).
//! On SM90 `MLLM_LINEAR_SMALL_M` routes small problems to
//! [`stream_linear_into`](super::stream_linear_into) instead (`auto`, the
//! default: one row; `stream`: up to 16; `cublas`: none).
//!
//! One cuBLAS handle per [`Gpu`], bound to its stream and to a fixed
//! workspace so the calls can be captured in a CUDA graph.

use std::ffi::c_void;

use cudarc::cublas::{result as blas, sys as blas_sys};
use cudarc::driver::{CudaSlice, DevicePtr};

use super::{expect_dtype, expect_shape, rows_cols, stream_linear, Meta};
use crate::device::Gpu;
use crate::dtype::DType;
use crate::tensor::DeviceTensor;
use crate::{Error, Result};

const OP: &str = "linear";
/// cuBLAS's recommended workspace on Hopper; fixed so graph capture never allocates.
const WORKSPACE_BYTES: usize = 32 << 20;

fn blas_err(what: &'static str) -> impl FnOnce(blas::CublasError) -> Error {
    move |e| Error::KernelLaunch {
        kernel: "cublas".into(),
        reason: format!("{what}: {e:?}"),
    }
}

/// A cuBLAS handle on a [`Gpu`]'s stream, with the ones vector the bias
/// broadcast multiplies by (grown on demand, one per dtype).
pub(crate) struct Blas {
    handle: blas_sys::cublasHandle_t,
    _workspace: CudaSlice<u8>,
    ones: Vec<DeviceTensor>,
}

// SAFETY: the Gpu hands the handle out only under its mutex, and it is
// always used on the one stream it was bound to.
unsafe impl Send for Blas {}

impl Blas {
    pub(crate) fn new(gpu: &Gpu) -> Result<Self> {
        let handle = blas::create_handle().map_err(blas_err("create handle"))?;
        let workspace = gpu
            .stream()
            .alloc_zeros::<u8>(WORKSPACE_BYTES)
            .map_err(Error::driver("allocate cuBLAS workspace"))?;
        let (ws_ptr, _guard) = workspace.device_ptr(gpu.stream());
        // SAFETY: fresh handle; the stream and workspace outlive it (the Gpu
        // owns the stream, this struct the workspace).
        unsafe {
            blas::set_stream(handle, gpu.stream().cu_stream() as _).map_err(blas_err("set stream"))?;
            blas_sys::cublasSetWorkspace_v2(handle, ws_ptr as *mut c_void, WORKSPACE_BYTES)
                .result()
                .map_err(blas_err("set workspace"))?;
        }
        drop(_guard);
        Ok(Self {
            handle,
            _workspace: workspace,
            ones: Vec::new(),
        })
    }

    /// A device pointer to at least `len` ones of `dtype`.
    fn ones(&mut self, gpu: &Gpu, dtype: DType, len: usize) -> Result<u64> {
        let ones = &mut self.ones;
        let have = ones.iter().position(|t| t.dtype() == dtype && t.numel() >= len);
        let idx = match have {
            Some(i) => i,
            None => {
                ones.retain(|t| t.dtype() != dtype);
                let n = len.next_power_of_two().max(256);
                ones.push(ones_tensor(gpu, dtype, n)?);
                ones.len() - 1
            }
        };
        let (ptr, _guard) = ones[idx].raw_ptr(gpu.stream());
        Ok(ptr)
    }
}

fn ones_tensor(gpu: &Gpu, dtype: DType, n: usize) -> Result<DeviceTensor> {
    match dtype {
        DType::F32 => DeviceTensor::from_host(gpu, &vec![1f32; n], &[n]),
        DType::F16 => DeviceTensor::from_host(gpu, &vec![half::f16::ONE; n], &[n]),
        DType::BF16 => DeviceTensor::from_host(gpu, &vec![half::bf16::ONE; n], &[n]),
        other => Err(Error::DTypeMismatch {
            op: OP,
            arg: "x",
            expected: "f32, f16 or bf16".into(),
            got: other,
        }),
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: created in new() and destroyed once here.
        unsafe {
            let _ = blas::destroy_handle(self.handle);
        }
    }
}

fn cuda_type(dtype: DType) -> Option<blas_sys::cudaDataType> {
    use blas_sys::cudaDataType::*;
    match dtype {
        DType::F32 => Some(CUDA_R_32F),
        DType::F16 => Some(CUDA_R_16F),
        DType::BF16 => Some(CUDA_R_16BF),
        _ => None,
    }
}

/// Checks `x: [.., K]`, `weight: [N, K]` (the checkpoint layout), an
/// optional `bias: [N]` in x's dtype and `out: [.., N]` in x's dtype or f32.
/// Returns `(M, N, K)`.
///
/// ```
/// use mllm_kernel::{ops::{validate_linear, Meta}, DType};
/// let x = Meta::new(&[3, 4096], DType::BF16);
/// let w = Meta::new(&[6144, 4096], DType::BF16);
/// let out = Meta::new(&[3, 6144], DType::BF16);
/// assert_eq!(validate_linear(x, w, None, out).unwrap(), (3, 6144, 4096));
/// let bad = Meta::new(&[6144, 4000], DType::BF16);
/// assert!(validate_linear(x, bad, None, out).is_err());
/// ```
pub fn validate_linear(x: Meta, weight: Meta, bias: Option<Meta>, out: Meta) -> Result<(usize, usize, usize)> {
    if cuda_type(x.dtype).is_none() {
        return Err(Error::DTypeMismatch {
            op: OP,
            arg: "x",
            expected: "f32, f16 or bf16".into(),
            got: x.dtype,
        });
    }
    expect_dtype(OP, "weight", x.dtype, weight.dtype)?;
    let (m, k) = rows_cols(OP, "x", x)?;
    let &[n, wk] = weight.shape else {
        return Err(Error::ShapeMismatch {
            op: OP,
            arg: "weight",
            expected: format!("[N, {k}]"),
            got: weight.shape.to_vec(),
        });
    };
    if wk != k || n == 0 || n > i32::MAX as usize {
        return Err(Error::ShapeMismatch {
            op: OP,
            arg: "weight",
            expected: format!("[N, {k}] with 0 < N < 2^31 (x has {k} features)"),
            got: weight.shape.to_vec(),
        });
    }
    if let Some(b) = bias {
        expect_dtype(OP, "bias", x.dtype, b.dtype)?;
        expect_shape(OP, "bias", &[n], b.shape)?;
    }
    if out.dtype != x.dtype && out.dtype != DType::F32 {
        return Err(Error::DTypeMismatch {
            op: OP,
            arg: "out",
            expected: format!("{} or f32", x.dtype),
            got: out.dtype,
        });
    }
    let mut want = x.shape.to_vec();
    *want.last_mut().expect("rank >= 1 checked") = n;
    expect_shape(OP, "out", &want, out.shape)?;
    Ok((m, n, k))
}

/// `out = x · weightᵀ (+ bias)` with f32 accumulation.
///
/// ```no_run
/// use mllm_kernel::{ops, DeviceTensor, DType, Gpu};
/// let gpu = Gpu::new(0)?;
/// let x = DeviceTensor::zeros(&gpu, &[2, 64], DType::BF16)?;
/// let w = DeviceTensor::zeros(&gpu, &[128, 64], DType::BF16)?;
/// let mut y = DeviceTensor::zeros(&gpu, &[2, 128], DType::BF16)?;
/// ops::linear_into(&gpu, &x, &w, None, &mut y)?;
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub fn linear_into(
    gpu: &Gpu,
    x: &DeviceTensor,
    weight: &DeviceTensor,
    bias: Option<&DeviceTensor>,
    out: &mut DeviceTensor,
) -> Result<()> {
    let (m, n, k) = validate_linear(x.into(), weight.into(), bias.map(Meta::from), (&*out).into())?;
    if m == 0 {
        return Ok(());
    }
    if m > i32::MAX as usize {
        return Err(Error::InvalidArgument {
            op: OP,
            arg: "x",
            reason: format!("{m} rows exceeds cuBLAS's 2^31-1 limit"),
        });
    }
    let small_m = stream_linear::stream_linear_unsupported(gpu.arch(), m, n, k, x.dtype(), out.dtype()).is_none();
    if small_m && stream_linear::small_m_linear()?.takes_stream(m) {
        // Validated above: launch without checking again.
        return stream_linear::launch(gpu, x, weight, bias, out, (m, n, k));
    }
    gpu.with_blas(|blas| gemm(gpu, blas, x, weight, bias, out, (m, n, k)))
}

fn gemm(
    gpu: &Gpu,
    blas: &mut Blas,
    x: &DeviceTensor,
    weight: &DeviceTensor,
    bias: Option<&DeviceTensor>,
    out: &mut DeviceTensor,
    (m, n, k): (usize, usize, usize),
) -> Result<()> {
    let in_type = cuda_type(x.dtype()).expect("validated");
    let out_type = cuda_type(out.dtype()).expect("validated");
    let stream = gpu.stream();
    let (xp, _gx) = x.raw_ptr(stream);
    let (wp, _gw) = weight.raw_ptr(stream);
    let (op, _go) = out.raw_ptr_mut(stream);
    let (one, zero) = (1f32, 0f32);
    let mut beta = &zero;
    use blas_sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
    let compute = blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F;
    let algo = blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT;
    if let Some(b) = bias {
        // out (column-major N×M) = bias (N×1) · ones (1×M), then the GEMM adds to it.
        let ones = blas.ones(gpu, x.dtype(), m)?;
        let (bp, _gb) = b.raw_ptr(stream);
        // SAFETY: shapes validated above; all pointers are live device
        // buffers ordered on the handle's stream.
        unsafe {
            blas::gemm_ex(
                blas.handle,
                CUBLAS_OP_N,
                CUBLAS_OP_N,
                n as i32,
                m as i32,
                1,
                &one as *const f32 as *const c_void,
                bp as *const c_void,
                in_type,
                n as i32,
                ones as *const c_void,
                in_type,
                1,
                &zero as *const f32 as *const c_void,
                op as *mut c_void,
                out_type,
                n as i32,
                compute,
                algo,
            )
        }
        .map_err(blas_err("gemm_ex bias broadcast"))?;
        beta = &one;
    }
    // Row-major out [M, N] is column-major N×M: out = Wᵀ-op(N×K) · x(K×M).
    // SAFETY: as above.
    unsafe {
        blas::gemm_ex(
            blas.handle,
            CUBLAS_OP_T,
            CUBLAS_OP_N,
            n as i32,
            m as i32,
            k as i32,
            &one as *const f32 as *const c_void,
            wp as *const c_void,
            in_type,
            k as i32,
            xp as *const c_void,
            in_type,
            k as i32,
            beta as *const f32 as *const c_void,
            op as *mut c_void,
            out_type,
            n as i32,
            compute,
            algo,
        )
    }
    .map_err(blas_err("gemm_ex"))
}

/// Like [`linear_into`], allocating `out` in x's dtype.
pub fn linear(gpu: &Gpu, x: &DeviceTensor, weight: &DeviceTensor, bias: Option<&DeviceTensor>) -> Result<DeviceTensor> {
    let n = weight.shape().first().copied().unwrap_or(0);
    let mut shape = x.shape().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = n;
    }
    let mut out = DeviceTensor::empty(gpu, &shape, x.dtype())?;
    linear_into(gpu, x, weight, bias, &mut out)?;
    Ok(out)
}

/// A column-major operand of [`gemm_strided_batched`]: device address,
/// leading dimension and the element stride between batch entries.
#[derive(Debug, Clone, Copy)]
pub(super) struct BatchedOperand {
    pub ptr: u64,
    pub ld: usize,
    pub stride: usize,
}

/// `C_i = op(A_i) · op(B_i)` for `batch` entries, all of `dtype` (f32
/// accumulation), in cuBLAS's column-major terms: `op(A)` is `m × k`
/// (`trans_a`: A is stored `k × m`), `op(B)` is `k × n`, C is `m × n`.
///
/// # Safety
/// Every address must be a live device buffer of `dtype` on `gpu`'s stream
/// covering its `ld`, stride and `batch` extents.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_strided_batched(
    gpu: &Gpu,
    dtype: DType,
    (trans_a, trans_b): (bool, bool),
    (m, n, k): (usize, usize, usize),
    a: BatchedOperand,
    b: BatchedOperand,
    c: BatchedOperand,
    batch: usize,
) -> Result<()> {
    use blas_sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
    let t = cuda_type(dtype).ok_or(Error::InvalidArgument {
        op: "gemm_strided_batched",
        arg: "dtype",
        reason: format!("{dtype} has no cuBLAS GEMM"),
    })?;
    let dims = [m, n, k, a.ld, b.ld, c.ld, batch];
    if dims.iter().any(|&d| d > i32::MAX as usize) {
        return Err(Error::InvalidArgument {
            op: "gemm_strided_batched",
            arg: "shape",
            reason: format!("{dims:?} exceeds cuBLAS's 2^31-1 limit"),
        });
    }
    let op = |t: bool| if t { CUBLAS_OP_T } else { CUBLAS_OP_N };
    let (one, zero) = (1f32, 0f32);
    gpu.with_blas(|blas| {
        // SAFETY: the caller's contract; the handle is bound to gpu's stream.
        unsafe {
            blas::gemm_strided_batched_ex(
                blas.handle,
                op(trans_a),
                op(trans_b),
                m as i32,
                n as i32,
                k as i32,
                &one as *const f32 as *const c_void,
                a.ptr as *const c_void,
                t,
                a.ld as i32,
                a.stride as i64,
                b.ptr as *const c_void,
                t,
                b.ld as i32,
                b.stride as i64,
                &zero as *const f32 as *const c_void,
                c.ptr as *mut c_void,
                t,
                c.ld as i32,
                c.stride as i64,
                batch as i32,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(blas_err("gemm_strided_batched_ex"))
    })
}
