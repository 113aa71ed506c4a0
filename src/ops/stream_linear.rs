//! Dense linear layer at decode batch sizes on SM90 (nvcc kernel
//! `stream_linear`): `out = x · Wᵀ (+ bias)` for at most 16 rows of bf16/f16
//! `x`, with f32 accumulation, the weight streamed into shared memory by TMA
//! bulk copies (`csrc/gemm/stream_linear.cu`, W8A8's `stream_m16` with bf16
//! mma). It is launched with programmatic dependent launch, so the
//! weight streams while the kernel before it (a norm, SiLU) finishes, which
//! cuBLAS's kernels cannot do.
//!
//! [`linear_into`](super::linear_into) takes this path for the problems it
//! supports at one row by default (`MLLM_LINEAR_SMALL_M=auto`; measured faster
//! than cuBLAS there, see [`STREAM_LINEAR_AUTO_MAX_M`]), at up to 16 with
//! `MLLM_LINEAR_SMALL_M=stream`, never with `cublas`. It was opt-in while one
//! run of `gpu_stream_linear` on an H100 had one wrong element at M = 16,
//! N = 24576, K = 4096: a bulk copy refilling a ring slot could land before a
//! lagging shared-memory read of it (found from the SASS), fixed by a proxy
//! fence (`sync_before_refill` in `csrc/include/mllm_tma.cuh`); with the fence
//! the 256-run repeat test is bit-identical on an H100, and Qwen3-8B bf16 at
//! batch 1 decodes 2% faster than on cuBLAS (6.49 against 6.62 ms).

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

/// Rows up to which `MLLM_LINEAR_SMALL_M=auto` (the default) takes
/// `stream_linear`. H100, graph-replayed (`bench int8-mm --graph`, the bf16
/// columns), us against cuBLAS: at M = 1 it wins or ties on Qwen3-8B's qkv /
/// o / gate_up / down (20.0 / 14.6 / 71.5 / 39.2 against 20.4 / 15.8 / 72.4 /
/// 38.4), and in the model every projection and the LM head (408 against
/// 434 us) ran faster; at M = 4 down (44.6 against 38.5) and gate_up lose, at
/// M = 16 every shape does.
pub const STREAM_LINEAR_AUTO_MAX_M: usize = 1;

/// Which kernel runs `linear` at up to 16 rows on SM90.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SmallMLinear {
    /// The default: `stream_linear` up to [`STREAM_LINEAR_AUTO_MAX_M`] rows, cuBLAS above.
    Auto,
    Cublas,
    Stream,
}

impl SmallMLinear {
    /// Whether a problem `stream_linear` supports, with `m` rows, runs on it.
    pub(super) fn takes_stream(self, m: usize) -> bool {
        match self {
            Self::Auto => m <= STREAM_LINEAR_AUTO_MAX_M,
            Self::Cublas => false,
            Self::Stream => true,
        }
    }
}

impl std::str::FromStr for SmallMLinear {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "" | "auto" => Ok(Self::Auto),
            "cublas" => Ok(Self::Cublas),
            "stream" => Ok(Self::Stream),
            other => Err(bad_small_m(other.to_string())),
        }
    }
}

fn bad_small_m(value: String) -> Error {
    Error::BadEnv {
        var: "MLLM_LINEAR_SMALL_M",
        value,
        reason: "expected `auto`, `cublas` or `stream`".into(),
    }
}

/// `MLLM_LINEAR_SMALL_M` (`auto`, the default, `cublas` or `stream`), read once per process.
pub(super) fn small_m_linear() -> Result<SmallMLinear> {
    static CHOICE: OnceLock<std::result::Result<SmallMLinear, String>> = OnceLock::new();
    CHOICE
        .get_or_init(|| {
            let value = std::env::var("MLLM_LINEAR_SMALL_M").unwrap_or_default();
            value.parse().map_err(|_| value)
        })
        .clone()
        .map_err(bad_small_m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_m_choice_parses_and_picks_by_rows() {
        assert_eq!("".parse::<SmallMLinear>().unwrap(), SmallMLinear::Auto);
        let auto: SmallMLinear = "auto".parse().unwrap();
        assert!(auto.takes_stream(1));
        assert!(!auto.takes_stream(2));
        assert!("stream".parse::<SmallMLinear>().unwrap().takes_stream(16));
        assert!(!"cublas".parse::<SmallMLinear>().unwrap().takes_stream(1));
        let err = "cutlass".parse::<SmallMLinear>().unwrap_err().to_string();
        assert!(err.contains("MLLM_LINEAR_SMALL_M") && err.contains("auto"), "{err}");
    }
}
