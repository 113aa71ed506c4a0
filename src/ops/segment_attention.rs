//! Dense non-causal multi-head attention within row segments of a packed
//! q/k/v buffer (a vision tower's per-frame attention): per segment, one
//! strided-batched cuBLAS GEMM for the scores of all heads, the `softmax`
//! kernel, and a second GEMM into the output columns.

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::launch::{dtype_function, float_symbols};
use super::linear::{gemm_strided_batched, BatchedOperand};
use super::{expect_dtype, expect_float, expect_shape, Meta};
use crate::device::Gpu;
use crate::registry::KernelId;
use crate::tensor::DeviceTensor;
use crate::{Error, Result};

const OP: &str = "segment_attention";
/// Scores buffer cap per GEMM pair; longer segments run a few heads at a time.
const SCORES_BYTES: usize = 256 << 20;

pub(super) fn softmax_symbols(variant: Option<&str>) -> Vec<String> {
    float_symbols(&["softmax_rows"], variant)
}

/// Checks `qkv: [n, 3·H·D]` (float), `heads` H and the segment `bounds`
/// (ascending row offsets from 0 to n, each segment non-empty). Returns
/// `(n, D)`.
///
/// ```
/// use mllm_kernel::{ops::{validate_segment_attention, Meta}, DType};
/// let qkv = Meta::new(&[20, 3 * 4 * 16], DType::BF16);
/// assert_eq!(validate_segment_attention(qkv, 4, &[0, 12, 20]).unwrap(), (20, 16));
/// assert!(validate_segment_attention(qkv, 4, &[0, 12]).is_err()); // rows 12.. uncovered
/// assert!(validate_segment_attention(qkv, 5, &[0, 20]).is_err()); // 192 columns, not 3·5·D
/// ```
pub fn validate_segment_attention(qkv: Meta, heads: usize, bounds: &[usize]) -> Result<(usize, usize)> {
    expect_float(OP, "qkv", qkv.dtype)?;
    let &[n, width] = qkv.shape else {
        return Err(Error::ShapeMismatch {
            op: OP,
            arg: "qkv",
            expected: "[rows, 3 * heads * head_dim]".into(),
            got: qkv.shape.to_vec(),
        });
    };
    if heads == 0 || !width.is_multiple_of(3 * heads) || width == 0 {
        return Err(Error::InvalidArgument {
            op: OP,
            arg: "heads",
            reason: format!("{width} columns are not 3 x {heads} heads x a head dim"),
        });
    }
    let ok = bounds.first() == Some(&0) && bounds.last() == Some(&n) && bounds.windows(2).all(|w| w[0] < w[1]);
    let empty = n == 0 && bounds.len() <= 1;
    if !(ok || empty) {
        return Err(Error::InvalidArgument {
            op: OP,
            arg: "bounds",
            reason: format!("must rise strictly from 0 to the {n} rows, got {bounds:?}"),
        });
    }
    Ok((n, width / (3 * heads)))
}

/// `out[r, h·D..(h+1)·D] = softmax(scale · q_rh · K_shᵀ) · V_sh` for each
/// row `r` of segment `s` and head `h`, with q, k, v the three `H·D` column
/// blocks of `qkv: [n, 3·H·D]` (rotary already applied) and `out: [n, H·D]`
/// of its dtype. Scores are held in that dtype (as an eager bf16 model
/// does), softmax runs in f32.
///
/// ```no_run
/// use mllm_kernel::{ops, DeviceTensor, Gpu};
/// use half::bf16;
/// let gpu = Gpu::new(0)?;
/// let qkv = DeviceTensor::from_host(&gpu, &vec![bf16::ONE; 20 * 3 * 64], &[20, 3 * 64])?;
/// let mut out = DeviceTensor::empty(&gpu, &[20, 64], mllm_kernel::DType::BF16)?;
/// ops::segment_attention_into(&gpu, &qkv, 4, &[0, 12, 20], 0.25, &mut out)?;
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub fn segment_attention_into(
    gpu: &Gpu,
    qkv: &DeviceTensor,
    heads: usize,
    bounds: &[usize],
    scale: f32,
    out: &mut DeviceTensor,
) -> Result<()> {
    let (n, d) = validate_segment_attention(qkv.into(), heads, bounds)?;
    let dtype = qkv.dtype();
    expect_dtype(OP, "out", dtype, out.dtype())?;
    expect_shape(OP, "out", &[n, heads * d], out.shape())?;
    if !scale.is_finite() {
        return Err(Error::InvalidArgument {
            op: OP,
            arg: "scale",
            reason: format!("must be finite, got {scale}"),
        });
    }
    let softmax = dtype_function(
        gpu,
        KernelId::Softmax,
        dtype,
        &format!("softmax_rows_{}", dtype.symbol_suffix()),
    )?;
    let (width, hidden, es) = (3 * heads * d, heads * d, dtype.size());
    let stream = gpu.stream();
    let (qkv_ptr, _gq) = qkv.raw_ptr(stream);
    let (out_ptr, _go) = out.raw_ptr_mut(stream);
    for seg in bounds.windows(2) {
        let (start, len) = (seg[0], seg[1] - seg[0]);
        let per_head = len * len * es;
        let chunk = (SCORES_BYTES / per_head).clamp(1, heads);
        let mut scores = DeviceTensor::empty(gpu, &[chunk, len, len], dtype)?;
        let (sp, _gs) = scores.raw_ptr_mut(stream);
        for h0 in (0..heads).step_by(chunk) {
            let hs = chunk.min(heads - h0);
            let row = |col: usize| qkv_ptr + ((start * width + col) * es) as u64;
            let q = BatchedOperand {
                ptr: row(h0 * d),
                ld: width,
                stride: d,
            };
            let k = BatchedOperand {
                ptr: row(hidden + h0 * d),
                ld: width,
                stride: d,
            };
            let v = BatchedOperand {
                ptr: row(2 * hidden + h0 * d),
                ld: width,
                stride: d,
            };
            let s = BatchedOperand {
                ptr: sp,
                ld: len,
                stride: len * len,
            };
            let o = BatchedOperand {
                ptr: out_ptr + ((start * hidden + h0 * d) * es) as u64,
                ld: hidden,
                stride: d,
            };
            // Row-major S [len_q, len_k] is column-major Sᵀ = K · Qᵀ: A = K stored
            // d × len (transposed), B = Qᵀ stored d × len.
            // SAFETY: q/k/v address segment rows of qkv (n·width elements),
            // s the scores buffer (chunk·len² elements), o segment rows of out.
            unsafe { gemm_strided_batched(gpu, dtype, (true, false), (len, len, d), k, q, s, hs)? };
            let config = LaunchConfig {
                grid_dim: ((hs * len) as u32, 1, 1),
                block_dim: ((len.div_ceil(32) * 32).clamp(32, 256) as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            let len_i = len as i32;
            let mut launch = stream.launch_builder(&softmax);
            launch.arg(&sp).arg(&len_i).arg(&scale);
            // SAFETY: signature (x, int cols, float scale); hs·len rows of len
            // elements of the scores buffer.
            unsafe { launch.launch(config) }.map_err(Error::driver("launch softmax_rows"))?;
            // Row-major O [len, d] (ld hidden) is column-major Oᵀ = Vᵀ · Pᵀ.
            // SAFETY: as above.
            unsafe { gemm_strided_batched(gpu, dtype, (false, false), (d, len, len), v, s, o, hs)? };
        }
    }
    Ok(())
}
