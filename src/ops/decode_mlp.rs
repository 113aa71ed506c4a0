//! The gated MLP block of one decode row in W8A8 as one persistent kernel
//! (nvcc kernel `decode_mlp`, SM90): add + RMSNorm + int8 quantization,
//! gate/up GEMM, SiLU × up + quantization and down GEMM, which are otherwise
//! four kernels (`fused_add_rms_norm_quant`, `int8_scaled_mm`,
//! `silu_and_mul_quant`, `int8_scaled_mm`). At batch 1 each of those GEMMs
//! streams its weight at HBM speed, and each boundary between them drains the
//! memory pipe; one kernel keeps the next weight streaming through the norm,
//! the SiLU and the grid barrier between the two GEMMs
//! (`csrc/gemm/decode_mlp.cu` says how).

use super::{expect_dtype, expect_shape, ffi_result};
use crate::device::Gpu;
use crate::dtype::DType;
use crate::ffi::dynamic::mllm_decode_mlp_args_t;
use crate::jit::Arch;
use crate::registry::{KernelBuild, KernelId};
use crate::tensor::DeviceTensor;
use crate::{Error, Result};

const OP: &str = "decode_mlp_w8a8";

/// Bytes of device scratch the kernel's grid barrier needs
/// (`MLLM_DECODE_MLP_SCRATCH_BYTES`).
const SCRATCH_BYTES: usize = 8192;

/// A W8A8 gated MLP block's parameters: the RMSNorm before it and the two
/// int8 projections with their per-channel f32 scales.
pub struct DecodeMlpWeights<'a> {
    /// `[hidden]` RMSNorm weight, of the activations' dtype.
    pub norm: &'a DeviceTensor,
    /// `[2 * inter, hidden]` int8: the gate rows, then the up rows.
    pub gate_up: &'a DeviceTensor,
    /// `[2 * inter]` f32 per-channel scales of `gate_up`.
    pub gate_up_scales: &'a DeviceTensor,
    /// `[hidden, inter]` int8.
    pub down: &'a DeviceTensor,
    /// `[hidden]` f32 per-channel scales of `down`.
    pub down_scales: &'a DeviceTensor,
    /// The RMSNorm's epsilon.
    pub eps: f32,
}

/// Device memory for the kernel's grid barrier: allocated zeroed once and
/// reused by every launch on one stream (a CUDA graph captures its address).
pub struct DecodeMlpScratch(DeviceTensor);

impl DecodeMlpScratch {
    /// Zeroed scratch on `gpu`.
    pub fn new(gpu: &Gpu) -> Result<Self> {
        Ok(Self(DeviceTensor::zeros(gpu, &[SCRATCH_BYTES], DType::I8)?))
    }
}

/// Why `decode_mlp` cannot run a block of `hidden` x `inter` with `dtype`
/// activations on `arch`, or `None` when it can (the per-channel scales and
/// the absence of biases are the caller's to check).
///
/// ```
/// use mllm_kernel::ops::decode_mlp_w8a8_unsupported;
/// use mllm_kernel::DType;
/// let h100 = "sm_90a".parse().unwrap();
/// assert_eq!(decode_mlp_w8a8_unsupported(h100, 4096, 12288, DType::BF16), None);
/// assert!(decode_mlp_w8a8_unsupported(h100, 4096, 12280, DType::BF16).unwrap().contains("16"));
/// let a100 = "sm_80".parse().unwrap();
/// assert!(decode_mlp_w8a8_unsupported(a100, 4096, 12288, DType::BF16).unwrap().contains("SM90"));
/// ```
pub fn decode_mlp_w8a8_unsupported(arch: Arch, hidden: usize, inter: usize, dtype: DType) -> Option<String> {
    if arch.major < 9 {
        return Some(format!("needs SM90 or newer (TMA bulk copies); this GPU is {arch}"));
    }
    if !matches!(dtype, DType::BF16 | DType::F16) {
        return Some(format!("takes bf16 or f16 activations, got {dtype}"));
    }
    let fits = |v: usize| v > 0 && v.is_multiple_of(16) && v <= 1 << 20;
    if !fits(hidden) || !fits(inter) {
        return Some(format!(
            "needs hidden and intermediate sizes that are multiples of 16 (at most 2^20), got {hidden} and {inter}"
        ));
    }
    None
}

/// One decode row through a W8A8 gated MLP block: `residual += x`, then
/// `out = down(silu(gate(n)) * up(n))` with `n = rms_norm(residual) * norm`,
/// each GEMM on int8 with per-token activation scales, rounded as the unfused
/// ops round. `x`, `residual` and `out` are `[1, hidden]`, `act` `[1, inter]`
/// (overwritten with `silu(gate) * up`); all of the weights' `norm` dtype.
/// Errors name what does not fit.
///
/// ```no_run
/// use mllm_kernel::ops::{decode_mlp_w8a8_into, DecodeMlpScratch, DecodeMlpWeights};
/// use mllm_kernel::{DeviceTensor, DType, Gpu};
/// let gpu = Gpu::new(0)?;
/// let (h, i) = (4096, 12288);
/// let bf16 = |shape: &[usize]| DeviceTensor::zeros(&gpu, shape, DType::BF16);
/// let (norm, gate_up, down) = (bf16(&[h])?, DeviceTensor::zeros(&gpu, &[2 * i, h], DType::I8)?,
///     DeviceTensor::zeros(&gpu, &[h, i], DType::I8)?);
/// let (gu_s, d_s) = (DeviceTensor::zeros(&gpu, &[2 * i], DType::F32)?, DeviceTensor::zeros(&gpu, &[h], DType::F32)?);
/// let w = DecodeMlpWeights { norm: &norm, gate_up: &gate_up, gate_up_scales: &gu_s, down: &down,
///     down_scales: &d_s, eps: 1e-6 };
/// let (x, mut residual, mut act, mut out) = (bf16(&[1, h])?, bf16(&[1, h])?, bf16(&[1, i])?, bf16(&[1, h])?);
/// let mut scratch = DecodeMlpScratch::new(&gpu)?;
/// decode_mlp_w8a8_into(&gpu, &x, &mut residual, &w, &mut act, &mut scratch, &mut out)?;
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub fn decode_mlp_w8a8_into(
    gpu: &Gpu,
    x: &DeviceTensor,
    residual: &mut DeviceTensor,
    w: &DecodeMlpWeights,
    act: &mut DeviceTensor,
    scratch: &mut DecodeMlpScratch,
    out: &mut DeviceTensor,
) -> Result<()> {
    let (hidden, inter) = validate_decode_mlp(x, residual, w, act, out)?;
    if let Some(reason) = decode_mlp_w8a8_unsupported(gpu.arch(), hidden, inter, x.dtype()) {
        return Err(Error::InvalidArgument {
            op: OP,
            arg: "x",
            reason,
        });
    }
    let launcher = gpu.kernel(KernelBuild::new(KernelId::DecodeMlp, None)?)?.decode_mlp()?;
    let stream = gpu.stream();
    let (xp, _gx) = x.raw_ptr(stream);
    let (rp, _gr) = residual.raw_ptr_mut(stream);
    let (np, _gn) = w.norm.raw_ptr(stream);
    let (gup, _ggu) = w.gate_up.raw_ptr(stream);
    let (gusp, _ggus) = w.gate_up_scales.raw_ptr(stream);
    let (dp, _gd) = w.down.raw_ptr(stream);
    let (dsp, _gds) = w.down_scales.raw_ptr(stream);
    let (ap, _ga) = act.raw_ptr_mut(stream);
    let (op, _go) = out.raw_ptr_mut(stream);
    let (sp, _gs) = scratch.0.raw_ptr_mut(stream);
    let args = mllm_decode_mlp_args_t {
        x: xp as *const std::ffi::c_void,
        residual: rp as *mut std::ffi::c_void,
        norm_weight: np as *const std::ffi::c_void,
        w_gate_up: gup as *const i8,
        s_gate_up: gusp as *const f32,
        w_down: dp as *const i8,
        s_down: dsp as *const f32,
        act: ap as *mut std::ffi::c_void,
        out: op as *mut std::ffi::c_void,
        scratch: sp as *mut std::ffi::c_void,
        scratch_bytes: SCRATCH_BYTES as i64,
        hidden: hidden as i64,
        inter: inter as i64,
        eps: w.eps,
        dtype: x.dtype().to_ffi().expect("bf16/f16 checked above"),
    };
    // SAFETY: every shape and dtype validated above against its tensor, all on
    // this device and ordered on its stream (the guards live until the launch
    // is enqueued); device allocations are 256-byte aligned; the scratch is
    // this op's own and was zeroed when allocated.
    let result = unsafe { launcher(&args, stream.cu_stream() as _) };
    ffi_result(OP, result)
}

/// Checks the block's shapes and dtypes; returns `(hidden, inter)`.
fn validate_decode_mlp(
    x: &DeviceTensor,
    residual: &DeviceTensor,
    w: &DecodeMlpWeights,
    act: &DeviceTensor,
    out: &DeviceTensor,
) -> Result<(usize, usize)> {
    let dt = x.dtype();
    let &[rows, hidden] = x.shape() else {
        return Err(Error::InvalidArgument {
            op: OP,
            arg: "x",
            reason: format!("must be [1, hidden], got {:?}", x.shape()),
        });
    };
    if rows != 1 {
        return Err(Error::InvalidArgument {
            op: OP,
            arg: "x",
            reason: format!("takes one row (a batch-1 decode step), got {rows}"),
        });
    }
    let inter = w.down.shape().get(1).copied().unwrap_or(0);
    for (arg, t) in [("residual", residual), ("out", out)] {
        expect_dtype(OP, arg, dt, t.dtype())?;
        expect_shape(OP, arg, &[1, hidden], t.shape())?;
    }
    expect_dtype(OP, "act", dt, act.dtype())?;
    expect_shape(OP, "act", &[1, inter], act.shape())?;
    expect_dtype(OP, "norm", dt, w.norm.dtype())?;
    expect_shape(OP, "norm", &[hidden], w.norm.shape())?;
    expect_dtype(OP, "gate_up", DType::I8, w.gate_up.dtype())?;
    expect_shape(OP, "gate_up", &[2 * inter, hidden], w.gate_up.shape())?;
    expect_dtype(OP, "down", DType::I8, w.down.dtype())?;
    expect_shape(OP, "down", &[hidden, inter], w.down.shape())?;
    for (arg, t, n) in [
        ("gate_up_scales", w.gate_up_scales, 2 * inter),
        ("down_scales", w.down_scales, hidden),
    ] {
        expect_dtype(OP, arg, DType::F32, t.dtype())?;
        if t.numel() != n {
            return Err(Error::InvalidArgument {
                op: OP,
                arg,
                reason: format!("needs {n} per-channel scales, got {:?}", t.shape()),
            });
        }
    }
    Ok((hidden, inter))
}
