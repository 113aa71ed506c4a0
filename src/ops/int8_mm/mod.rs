//! W8A8 int8 scaled matmul (nvcc kernel `int8_scaled_mm`), as mllm-kernel's
//! `int8_scaled_mm`: `out[m, n] = scales_a[m] * scales_b[n] * Σ_k a[m, k] b[k, n]
//! (+ bias[n])`, int32 accumulation, one rounding to the output dtype.
//!
//! Layouts: `a: [M, K]` int8 row-major; `b` is `K x N` column-major, i.e.
//! stored as `[N, K]` row-major (a checkpoint's `[out, in]` weight as is).
//! Alignment: K a multiple of 16 and N of 8 (every kernel moves 16-byte
//! vectors of A/B and of the 16-bit output).
//!
//! Kernels: a hand-written mma.sync kernel for M ≤ 64, CUTLASS 2.x on SM80+
//! and CUTLASS 3.x (TMA + wgmma) on sm_90a, chosen by [`select_int8_mm_config`].
//! `MLLM_INT8_MM_PATH=sm80` keeps Hopper on the SM80 kernels and
//! `MLLM_INT8_MM_CONFIG=<name>` forces one config (tests, benchmarks) on
//! every problem with at most the rows it covers; larger M keeps the table's
//! choice (so a small-M config can be tried in a whole model's decode).

mod dispatch;

pub use dispatch::{select_int8_mm_config, Int8MmConfig, Int8MmPath};

use super::{expect_dtype, expect_shape, ffi_result, Meta};
use crate::device::Gpu;
use crate::dtype::DType;
use crate::ffi::dynamic::{mllm_dtype_t, mllm_int8_mm_args_t};
use crate::jit::Arch;
use crate::registry::{KernelBuild, KernelId};
use crate::tensor::DeviceTensor;
use crate::{Error, Result};

const OP: &str = "int8_scaled_mm";

/// What a validated call computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int8MmProblem {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// `scales_a` is `[M]` (else `[1]`).
    pub per_token_a: bool,
    /// `scales_b` is `[N]` (else `[1]`).
    pub per_channel_b: bool,
}

fn invalid(arg: &'static str, reason: String) -> Error {
    Error::InvalidArgument { op: OP, arg, reason }
}

fn matrix(arg: &'static str, t: Meta, what: &str) -> Result<(usize, usize)> {
    expect_dtype(OP, arg, DType::I8, t.dtype)?;
    match *t.shape {
        [rows, cols] => Ok((rows, cols)),
        _ => Err(Error::ShapeMismatch {
            op: OP,
            arg,
            expected: format!("rank 2 ({what})"),
            got: t.shape.to_vec(),
        }),
    }
}

/// `[len]` or `[1]` of f32; returns whether it is the full vector.
fn scales(arg: &'static str, t: Meta, len: usize, what: &str) -> Result<bool> {
    expect_dtype(OP, arg, DType::F32, t.dtype)?;
    match *t.shape {
        [l] if l == len => Ok(true),
        [1] => Ok(false),
        _ => Err(Error::ShapeMismatch {
            op: OP,
            arg,
            expected: format!("[{len}] ({what}) or [1] (per-tensor)"),
            got: t.shape.to_vec(),
        }),
    }
}

/// Checks every argument of [`int8_scaled_mm`] without a device.
///
/// ```
/// use mllm_kernel::ops::{validate_int8_scaled_mm, Meta};
/// use mllm_kernel::DType;
/// let p = validate_int8_scaled_mm(
///     Meta::new(&[3, 64], DType::I8), Meta::new(&[32, 64], DType::I8),
///     Meta::new(&[3], DType::F32), Meta::new(&[1], DType::F32), DType::BF16, None).unwrap();
/// assert_eq!((p.m, p.n, p.k, p.per_token_a, p.per_channel_b), (3, 32, 64, true, false));
/// let err = validate_int8_scaled_mm(
///     Meta::new(&[3, 60], DType::I8), Meta::new(&[32, 60], DType::I8),
///     Meta::new(&[3], DType::F32), Meta::new(&[32], DType::F32), DType::BF16, None).unwrap_err();
/// assert!(err.to_string().contains("multiple of 16"));
/// ```
pub fn validate_int8_scaled_mm(
    a: Meta,
    b: Meta,
    scales_a: Meta,
    scales_b: Meta,
    out_dtype: DType,
    bias: Option<Meta>,
) -> Result<Int8MmProblem> {
    let (m, k) = matrix("a", a, "[M, K] activations")?;
    let (n, kb) = matrix("b", b, "[N, K]: the K x N column-major weight")?;
    if kb != k {
        return Err(invalid(
            "b",
            format!("b is [N, K] = {:?} but a is [M, K] = {:?}: K differs", b.shape, a.shape),
        ));
    }
    if k == 0 || n == 0 {
        return Err(invalid("b", format!("N and K must be > 0, got N={n}, K={k}")));
    }
    if k % 16 != 0 {
        return Err(invalid(
            "a",
            format!("K = {k} must be a multiple of 16 (the kernels load 16-byte int8 vectors along K)"),
        ));
    }
    if n % 8 != 0 {
        return Err(invalid(
            "b",
            format!("N = {n} must be a multiple of 8 (the kernels store 16-byte vectors of 16-bit outputs)"),
        ));
    }
    for (arg, v) in [("a", m), ("b", n), ("a", k)] {
        if v > i32::MAX as usize {
            return Err(invalid(arg, format!("dimension {v} exceeds 2^31-1")));
        }
    }
    if !matches!(out_dtype, DType::BF16 | DType::F16) {
        return Err(Error::DTypeMismatch {
            op: OP,
            arg: "out_dtype",
            expected: "bf16 or f16".into(),
            got: out_dtype,
        });
    }
    let per_token_a = scales("scales_a", scales_a, m, "per-token")?;
    let per_channel_b = scales("scales_b", scales_b, n, "per-channel")?;
    if let Some(bias) = bias {
        expect_dtype(OP, "bias", out_dtype, bias.dtype)?;
        expect_shape(OP, "bias", &[n], bias.shape)?;
    }
    Ok(Int8MmProblem {
        m,
        n,
        k,
        per_token_a,
        per_channel_b,
    })
}

/// `int8 tensor cores need SM80 or newer; this GPU is sm_75`.
fn check_arch(gpu: &Gpu) -> Result<()> {
    let arch = gpu.arch();
    if arch.major >= 8 {
        return Ok(());
    }
    Err(Error::UnsupportedArch {
        op: OP,
        arch: arch.to_string(),
        reason: format!("int8 tensor cores need SM80 or newer; this GPU is {arch}"),
    })
}

fn check_device(gpu: &Gpu, arg: &'static str, t: &DeviceTensor) -> Result<()> {
    let (want, got) = (gpu.context().ordinal(), t.buffer().ordinal());
    if want == got {
        return Ok(());
    }
    Err(invalid(arg, format!("is on cuda:{got} but the op runs on cuda:{want}")))
}

/// The path and forced config from `MLLM_INT8_MM_PATH` / `MLLM_INT8_MM_CONFIG`.
fn env_choice() -> Result<(Int8MmPath, Option<Int8MmConfig>)> {
    let path = match std::env::var("MLLM_INT8_MM_PATH").as_deref() {
        Err(_) | Ok("") | Ok("auto") => Int8MmPath::Auto,
        Ok("sm80") => Int8MmPath::Sm80,
        Ok(other) => {
            return Err(Error::BadEnv {
                var: "MLLM_INT8_MM_PATH",
                value: other.to_string(),
                reason: "expected `auto` or `sm80`".into(),
            })
        }
    };
    let config = match std::env::var("MLLM_INT8_MM_CONFIG") {
        Ok(name) if !name.is_empty() => Some(name.parse().map_err(|_| Error::BadEnv {
            var: "MLLM_INT8_MM_CONFIG",
            value: name.clone(),
            reason: format!("known: {}", Int8MmConfig::ALL.map(|c| c.name()).join(", ")),
        })?),
        _ => None,
    };
    Ok((path, config))
}

/// The config that runs an `m x n x k` problem on `arch`: `forced`, else
/// `MLLM_INT8_MM_CONFIG` when it covers `m` rows, else the dispatch table
/// (on the `MLLM_INT8_MM_PATH` path); errors if that config cannot run it.
pub fn resolve_int8_mm_config(
    arch: Arch,
    m: usize,
    n: usize,
    k: usize,
    forced: Option<Int8MmConfig>,
) -> Result<Int8MmConfig> {
    let (path, env_config) = env_choice()?;
    let config = forced
        .or(env_config.filter(|c| m <= c.max_m()))
        .unwrap_or_else(|| select_int8_mm_config(arch, path, m, n, k));
    if !config.runs_on(arch) {
        return Err(Error::UnsupportedArch {
            op: OP,
            arch: arch.to_string(),
            reason: format!("config {config} needs sm_90a"),
        });
    }
    if m > config.max_m() {
        return Err(invalid(
            "a",
            format!("config {config} covers at most {} rows, got M = {m}", config.max_m()),
        ));
    }
    Ok(config)
}

fn ffi_dtype(d: DType) -> mllm_dtype_t {
    d.to_ffi().expect("bf16/f16 checked by validation")
}

/// `out = scales_a * scales_b * (a @ b) + bias`, allocated as `[M, N]` of `out_dtype`.
///
/// ```no_run
/// use mllm_kernel::{ops, DType, DeviceTensor, Gpu};
/// let gpu = Gpu::new(0)?;
/// let a = DeviceTensor::from_host(&gpu, &vec![1i8; 2 * 32], &[2, 32])?;
/// let b = DeviceTensor::from_host(&gpu, &vec![2i8; 8 * 32], &[8, 32])?; // [N, K]
/// let sa = DeviceTensor::from_host(&gpu, &[0.5f32, 1.0], &[2])?;
/// let sb = DeviceTensor::from_host(&gpu, &[0.25f32], &[1])?;
/// let out = ops::int8_scaled_mm(&gpu, &a, &b, &sa, &sb, DType::BF16, None)?;
/// assert_eq!(out.shape(), &[2, 8]);
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub fn int8_scaled_mm(
    gpu: &Gpu,
    a: &DeviceTensor,
    b: &DeviceTensor,
    scales_a: &DeviceTensor,
    scales_b: &DeviceTensor,
    out_dtype: DType,
    bias: Option<&DeviceTensor>,
) -> Result<DeviceTensor> {
    let p = validate_int8_scaled_mm(
        a.into(),
        b.into(),
        scales_a.into(),
        scales_b.into(),
        out_dtype,
        bias.map(Meta::from),
    )?;
    let mut out = DeviceTensor::empty(gpu, &[p.m, p.n], out_dtype)?;
    int8_scaled_mm_into(gpu, a, b, scales_a, scales_b, bias, &mut out, None)?;
    Ok(out)
}

/// [`int8_scaled_mm`] into a caller-provided `out: [M, N]` (bf16 or f16);
/// nothing is allocated, so it can be captured in a CUDA graph. `config`
/// overrides the dispatch table.
#[allow(clippy::too_many_arguments)]
pub fn int8_scaled_mm_into(
    gpu: &Gpu,
    a: &DeviceTensor,
    b: &DeviceTensor,
    scales_a: &DeviceTensor,
    scales_b: &DeviceTensor,
    bias: Option<&DeviceTensor>,
    out: &mut DeviceTensor,
    config: Option<Int8MmConfig>,
) -> Result<()> {
    let out_dtype = out.dtype();
    let p = validate_int8_scaled_mm(
        a.into(),
        b.into(),
        scales_a.into(),
        scales_b.into(),
        out_dtype,
        bias.map(Meta::from),
    )?;
    expect_shape(OP, "out", &[p.m, p.n], out.shape())?;
    check_arch(gpu)?;
    for (arg, t) in [("a", a), ("b", b), ("scales_a", scales_a), ("scales_b", scales_b)] {
        check_device(gpu, arg, t)?;
    }
    if let Some(bias) = bias {
        check_device(gpu, "bias", bias)?;
    }
    check_device(gpu, "out", out)?;
    if p.m == 0 {
        return Ok(());
    }
    let config = resolve_int8_mm_config(gpu.arch(), p.m, p.n, p.k, config)?;
    let kernel = gpu.kernel(KernelBuild::new(KernelId::Int8ScaledMm, Some(config.variant()))?)?;
    let launcher = if config.is_sm90() {
        kernel.int8_scaled_mm_sm90()?
    } else {
        kernel.int8_scaled_mm_sm80()?
    };
    let stream = gpu.stream();
    let (ap, _ga) = a.raw_ptr(stream);
    let (bp, _gb) = b.raw_ptr(stream);
    let (sap, _gsa) = scales_a.raw_ptr(stream);
    let (sbp, _gsb) = scales_b.raw_ptr(stream);
    let bias_ptr = bias.map(|t| t.raw_ptr(stream));
    let (op, _go) = out.raw_ptr_mut(stream);
    let args = ffi_args(
        &p,
        ap,
        bp,
        sap,
        sbp,
        bias_ptr.as_ref().map_or(0, |(ptr, _)| *ptr),
        op,
        out_dtype,
    );
    // SAFETY: every pointer addresses a validated tensor of the right size
    // and dtype on this device; guards keep them alive until enqueued.
    let result = unsafe { launcher(&args, config.id(), stream.cu_stream() as _) };
    ffi_result(OP, result)
}

#[allow(clippy::too_many_arguments)]
fn ffi_args(
    p: &Int8MmProblem,
    a: u64,
    b: u64,
    sa: u64,
    sb: u64,
    bias: u64,
    out: u64,
    out_dtype: DType,
) -> mllm_int8_mm_args_t {
    mllm_int8_mm_args_t {
        a: a as *const i8,
        b: b as *const i8,
        scales_a: sa as *const f32,
        scales_b: sb as *const f32,
        bias: bias as *const std::ffi::c_void,
        out: out as *mut std::ffi::c_void,
        m: p.m as i64,
        n: p.n as i64,
        k: p.k as i64,
        scales_a_per_row: p.per_token_a as i32,
        scales_b_per_col: p.per_channel_b as i32,
        out_dtype: ffi_dtype(out_dtype),
    }
}

/// Dynamic W8A8: quantizes `x: [M, K]` (bf16/f16) per token, then
/// multiplies with `b`; the output has `x`'s dtype. On SM90 the GEMM is
/// launched with programmatic dependent launch behind the quantization, so
/// its launch and prologue (and, in the skinny kernel, the weight loads)
/// overlap it.
///
/// ```no_run
/// use mllm_kernel::{ops, DeviceTensor, Gpu};
/// use half::bf16;
/// let gpu = Gpu::new(0)?;
/// let x = DeviceTensor::from_host(&gpu, &vec![bf16::ONE; 4 * 64], &[4, 64])?;
/// let w = DeviceTensor::from_host(&gpu, &vec![1i8; 16 * 64], &[16, 64])?;
/// let sw = DeviceTensor::from_host(&gpu, &vec![0.01f32; 16], &[16])?;
/// let y = ops::int8_scaled_mm_dynamic(&gpu, &x, &w, &sw, None)?;
/// assert_eq!(y.shape(), &[4, 16]);
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub fn int8_scaled_mm_dynamic(
    gpu: &Gpu,
    x: &DeviceTensor,
    b: &DeviceTensor,
    scales_b: &DeviceTensor,
    bias: Option<&DeviceTensor>,
) -> Result<DeviceTensor> {
    let [m, k] = *x.shape() else {
        return Err(Error::ShapeMismatch {
            op: OP,
            arg: "x",
            expected: "rank 2 ([M, K] activations)".into(),
            got: x.shape().to_vec(),
        });
    };
    let n = b.shape().first().copied().unwrap_or(0);
    let mut q = DeviceTensor::empty(gpu, &[m, k], DType::I8)?;
    let mut q_scales = DeviceTensor::empty(gpu, &[m], DType::F32)?;
    let mut out = DeviceTensor::empty(gpu, &[m, n], x.dtype())?;
    int8_scaled_mm_dynamic_into(gpu, x, b, scales_b, bias, &mut q, &mut q_scales, &mut out, None)?;
    Ok(out)
}

/// [`int8_scaled_mm_dynamic`] with caller-provided workspaces `q: [M, K]`
/// int8 and `q_scales: [M]` f32 and output `out: [M, N]` of `x`'s dtype.
/// The workspaces are scratch: the separate quantization kernel writes them,
/// but at M <= 4 on SM90 the streaming GEMM quantizes `x` itself (same
/// rounding) and leaves them as they were.
#[allow(clippy::too_many_arguments)]
pub fn int8_scaled_mm_dynamic_into(
    gpu: &Gpu,
    x: &DeviceTensor,
    b: &DeviceTensor,
    scales_b: &DeviceTensor,
    bias: Option<&DeviceTensor>,
    q: &mut DeviceTensor,
    q_scales: &mut DeviceTensor,
    out: &mut DeviceTensor,
    config: Option<Int8MmConfig>,
) -> Result<()> {
    if !matches!(x.dtype(), DType::BF16 | DType::F16) {
        return Err(Error::DTypeMismatch {
            op: OP,
            arg: "x",
            expected: "bf16 or f16".into(),
            got: x.dtype(),
        });
    }
    expect_shape(OP, "q", x.shape(), q.shape())?;
    expect_dtype(OP, "out", x.dtype(), out.dtype())?;
    let p = validate_int8_scaled_mm(
        Meta::from(&*q),
        b.into(),
        Meta::from(&*q_scales),
        scales_b.into(),
        x.dtype(),
        bias.map(Meta::from),
    )?;
    expect_shape(OP, "q_scales", &[p.m], q_scales.shape())?;
    expect_shape(OP, "out", &[p.m, p.n], out.shape())?;
    check_arch(gpu)?;
    if p.m == 0 {
        return Ok(());
    }
    let config = resolve_int8_mm_config(gpu.arch(), p.m, p.n, p.k, config)?;
    for (arg, t) in [
        ("x", x),
        ("b", b),
        ("scales_b", scales_b),
        ("q", &*q),
        ("q_scales", &*q_scales),
    ] {
        check_device(gpu, arg, t)?;
    }
    check_device(gpu, "out", out)?;
    let kernel = gpu.kernel(KernelBuild::new(KernelId::Int8ScaledMm, Some(config.variant()))?)?;
    let launcher = if config.is_sm90() {
        kernel.int8_scaled_mm_dynamic_sm90()?
    } else {
        kernel.int8_scaled_mm_dynamic_sm80()?
    };
    let stream = gpu.stream();
    let (xp, _gx) = x.raw_ptr(stream);
    let (bp, _gb) = b.raw_ptr(stream);
    let (sbp, _gsb) = scales_b.raw_ptr(stream);
    let bias_ptr = bias.map(|t| t.raw_ptr(stream));
    let (qp, _gq) = q.raw_ptr_mut(stream);
    let (qsp, _gqs) = q_scales.raw_ptr_mut(stream);
    let (op, _go) = out.raw_ptr_mut(stream);
    let args = ffi_args(
        &p,
        0,
        bp,
        0,
        sbp,
        bias_ptr.as_ref().map_or(0, |(ptr, _)| *ptr),
        op,
        x.dtype(),
    );
    // SAFETY: as in int8_scaled_mm_into; q/q_scales are the validated
    // workspaces the launcher fills before the GEMM reads them.
    let result = unsafe {
        launcher(
            xp as *const std::ffi::c_void,
            ffi_dtype(x.dtype()),
            qp as *mut i8,
            qsp as *mut f32,
            &args,
            config.id(),
            stream.cu_stream() as _,
        )
    };
    ffi_result(OP, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(
        a: &[usize],
        b: &[usize],
        sa: &[usize],
        sb: &[usize],
        out: DType,
        bias: Option<(&[usize], DType)>,
    ) -> Result<Int8MmProblem> {
        validate_int8_scaled_mm(
            Meta::new(a, DType::I8),
            Meta::new(b, DType::I8),
            Meta::new(sa, DType::F32),
            Meta::new(sb, DType::F32),
            out,
            bias.map(|(s, d)| Meta::new(s, d)),
        )
    }

    fn err(r: Result<Int8MmProblem>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn accepts_every_scale_granularity_and_bias() {
        let p = v(
            &[5, 32],
            &[16, 32],
            &[5],
            &[16],
            DType::BF16,
            Some((&[16], DType::BF16)),
        )
        .unwrap();
        assert!(p.per_token_a && p.per_channel_b);
        let p = v(&[5, 32], &[16, 32], &[1], &[1], DType::F16, None).unwrap();
        assert!(!p.per_token_a && !p.per_channel_b);
        assert_eq!(v(&[0, 32], &[16, 32], &[0], &[1], DType::F16, None).unwrap().m, 0);
    }

    #[test]
    fn names_the_bad_argument() {
        assert!(err(v(&[5, 32], &[16, 48], &[5], &[16], DType::BF16, None)).contains("K differs"));
        assert!(err(v(&[5, 32], &[12, 32], &[5], &[12], DType::BF16, None)).contains("multiple of 8"));
        assert!(err(v(&[5, 24], &[16, 24], &[5], &[16], DType::BF16, None)).contains("multiple of 16"));
        assert!(err(v(&[5, 32, 1], &[16, 32], &[5], &[16], DType::BF16, None)).contains("`a` has shape"));
        assert!(err(v(&[5, 32], &[16, 32], &[4], &[16], DType::BF16, None)).contains("scales_a"));
        assert!(err(v(&[5, 32], &[16, 32], &[5], &[15], DType::BF16, None)).contains("scales_b"));
        assert!(err(v(&[5, 32], &[16, 32], &[5], &[16], DType::F32, None)).contains("out_dtype"));
        assert!(err(v(
            &[5, 32],
            &[16, 32],
            &[5],
            &[16],
            DType::BF16,
            Some((&[16], DType::F16))
        ))
        .contains("bias"));
        assert!(err(v(
            &[5, 32],
            &[16, 32],
            &[5],
            &[16],
            DType::BF16,
            Some((&[8], DType::BF16))
        ))
        .contains("bias"));
        let wrong_dtype = validate_int8_scaled_mm(
            Meta::new(&[5, 32], DType::BF16),
            Meta::new(&[16, 32], DType::I8),
            Meta::new(&[5], DType::F32),
            Meta::new(&[16], DType::F32),
            DType::BF16,
            None,
        );
        assert!(err(wrong_dtype).contains("`a` has dtype bf16"));
    }
}
