//! Dense linear layer at decode batch sizes on SM90 (nvcc kernel
//! `stream_linear`): `out = x · Wᵀ (+ bias)` for at most 16 rows of bf16/f16
//! `x`, with f32 accumulation, the weight streamed into shared memory by TMA
//! bulk copies (`csrc/include/mllm_stream_gemm.cuh`, the kernel behind W8A8's
//! `stream_m16`). It is launched with programmatic dependent launch, so the
//! weight streams while the kernel before it (a norm, SiLU) finishes, which
//! cuBLAS's kernels cannot do.
//!
//! [`linear_into`](super::linear_into) takes this path for the problems it
//! supports when `MLLM_LINEAR_SMALL_M=stream` (default `cublas` until it is
//! measured in a whole model).

use std::sync::OnceLock;

use super::{ffi_result, linear::validate_linear, Meta};
use crate::device::Gpu;
use crate::dtype::DType;
use crate::ffi::dynamic::mllm_stream_linear_args_t;
use crate::jit::Arch;
use crate::registry::{KernelBuild, KernelId};
use crate::tensor::DeviceTensor;
use crate::{Error, Result};

const OP: &str = "stream_linear";

/// Most rows of `x` the kernel takes (one 16-row mma tile).
pub const STREAM_LINEAR_MAX_M: usize = 16;

/// Why `stream_linear` cannot run an `m x n x k` problem of `dtype` into
/// `out_dtype` on `arch`, or `None` when it can.
///
/// ```
/// use mllm_kernel::ops::stream_linear_unsupported;
/// use mllm_kernel::DType;
/// let h100 = "sm_90a".parse().unwrap();
/// assert_eq!(stream_linear_unsupported(h100, 1, 6144, 4096, DType::BF16, DType::BF16), None);
/// assert_eq!(stream_linear_unsupported(h100, 1, 151_936, 4096, DType::BF16, DType::F32), None);
/// assert!(stream_linear_unsupported(h100, 17, 6144, 4096, DType::BF16, DType::BF16).unwrap().contains("rows"));
/// let a100 = "sm_80".parse().unwrap();
/// assert!(stream_linear_unsupported(a100, 1, 6144, 4096, DType::BF16, DType::BF16).unwrap().contains("SM90"));
/// ```
pub fn stream_linear_unsupported(
    arch: Arch,
    m: usize,
    n: usize,
    k: usize,
    dtype: DType,
    out_dtype: DType,
) -> Option<String> {
    if arch.major < 9 {
        return Some(format!("needs SM90 or newer (TMA bulk copies); this GPU is {arch}"));
    }
    if m > STREAM_LINEAR_MAX_M {
        return Some(format!("takes at most {STREAM_LINEAR_MAX_M} rows, got {m}"));
    }
    if !matches!(dtype, DType::BF16 | DType::F16) {
        return Some(format!("takes bf16 or f16 x and weight, got {dtype}"));
    }
    if out_dtype != dtype && out_dtype != DType::F32 {
        return Some(format!("writes {dtype} or f32, not {out_dtype}"));
    }
    if !n.is_multiple_of(8) || !k.is_multiple_of(8) || k >= 1 << 30 {
        return Some(format!(
            "needs N and K multiples of 8 (16-byte weight rows), got N = {n}, K = {k}"
        ));
    }
    None
}

/// `out = x · weightᵀ (+ bias)` for `x: [M <= 16, K]` bf16/f16 on SM90; `out`
/// is `[M, N]` of x's dtype or f32. Errors name what does not fit.
///
/// ```no_run
/// use mllm_kernel::{ops, DeviceTensor, DType, Gpu};
/// let gpu = Gpu::new(0)?;
/// let x = DeviceTensor::zeros(&gpu, &[1, 4096], DType::BF16)?;
/// let w = DeviceTensor::zeros(&gpu, &[6144, 4096], DType::BF16)?;
/// let mut y = DeviceTensor::zeros(&gpu, &[1, 6144], DType::BF16)?;
/// ops::stream_linear_into(&gpu, &x, &w, None, &mut y)?;
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub fn stream_linear_into(
    gpu: &Gpu,
    x: &DeviceTensor,
    weight: &DeviceTensor,
    bias: Option<&DeviceTensor>,
    out: &mut DeviceTensor,
) -> Result<()> {
    let (m, n, k) = validate_linear(x.into(), weight.into(), bias.map(Meta::from), (&*out).into())?;
    if let Some(reason) = stream_linear_unsupported(gpu.arch(), m, n, k, x.dtype(), out.dtype()) {
        return Err(Error::InvalidArgument {
            op: OP,
            arg: "x",
            reason,
        });
    }
    launch(gpu, x, weight, bias, out, (m, n, k))
}

/// Enqueues a problem [`validate_linear`] and [`stream_linear_unsupported`]
/// have passed (so [`linear_into`](super::linear_into) checks it only once).
pub(super) fn launch(
    gpu: &Gpu,
    x: &DeviceTensor,
    weight: &DeviceTensor,
    bias: Option<&DeviceTensor>,
    out: &mut DeviceTensor,
    (m, n, k): (usize, usize, usize),
) -> Result<()> {
    if m == 0 {
        return Ok(());
    }
    let launcher = gpu
        .kernel(KernelBuild::new(KernelId::StreamLinear, None)?)?
        .stream_linear()?;
    let (dtype, out_dtype) = (x.dtype(), out.dtype());
    let stream = gpu.stream();
    let (xp, _gx) = x.raw_ptr(stream);
    let (wp, _gw) = weight.raw_ptr(stream);
    let bias_ptr = bias.map(|b| b.raw_ptr(stream));
    let (op, _go) = out.raw_ptr_mut(stream);
    let args = mllm_stream_linear_args_t {
        x: xp as *const std::ffi::c_void,
        w: wp as *const std::ffi::c_void,
        bias: bias_ptr
            .as_ref()
            .map_or(std::ptr::null(), |(p, _)| *p as *const std::ffi::c_void),
        out: op as *mut std::ffi::c_void,
        m: m as i64,
        n: n as i64,
        k: k as i64,
        dtype: dtype.to_ffi().expect("bf16/f16 checked above"),
        out_dtype: out_dtype.to_ffi().expect("bf16/f16/f32 checked above"),
    };
    // SAFETY: shapes and dtypes validated above against the pointers' tensors,
    // all on this device and ordered on its stream (the guards live until the
    // launch is enqueued); device allocations are 256-byte aligned.
    let result = unsafe { launcher(&args, stream.cu_stream() as _) };
    ffi_result(OP, result)
}

/// Which kernel runs `linear` at up to 16 rows on SM90.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SmallMLinear {
    Cublas,
    Stream,
}

/// `MLLM_LINEAR_SMALL_M` (`cublas` or `stream`), read once per process.
pub(super) fn small_m_linear() -> Result<SmallMLinear> {
    static CHOICE: OnceLock<std::result::Result<SmallMLinear, String>> = OnceLock::new();
    CHOICE
        .get_or_init(|| match std::env::var("MLLM_LINEAR_SMALL_M").as_deref() {
            Err(_) | Ok("") | Ok("cublas") => Ok(SmallMLinear::Cublas),
            Ok("stream") => Ok(SmallMLinear::Stream),
            Ok(other) => Err(other.to_string()),
        })
        .clone()
        .map_err(|value| Error::BadEnv {
            var: "MLLM_LINEAR_SMALL_M",
            value,
            reason: "expected `cublas` or `stream`".into(),
        })
}
