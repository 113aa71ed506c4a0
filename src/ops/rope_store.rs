//! q/k RMSNorm + NeoX RoPE fused with the KV store (NVRTC kernel
//! `qk_norm_rope`, symbol `qk_norm_rope_store_<dtype>`): one launch reads the
//! packed qkv projection output and writes the rotated q heads to their own
//! buffer and the rotated k heads and the v heads straight into the KV pool.
//! A decode layer then runs one small kernel where [`super::qk_norm_rope`],
//! [`super::kv_store`] and a q copy ran three.

use cudarc::driver::PushKernelArg;

use super::dependent_launch::DependentLaunch;
use super::rope::{per_head_config, push_rotary_inputs, rope_function, validate_qk_norm_rope, QkHeads, QkNormRope};
use super::{expect_dtype, expect_shape, validate_kv_store, Meta};
use crate::device::Gpu;
use crate::tensor::DeviceTensor;
use crate::{Error, Result};

const OP: &str = "qk_norm_rope_store";

/// Where [`qk_norm_rope_store`] writes: `q_out: [T, Hq, D]`, the pools
/// `[num_slots, Hkv, D]` and each token's pool slot (`out_loc: [T]` i32; a
/// slot outside the pool skips that token's K/V, as in [`super::kv_store`]).
pub struct RopeStoreOut<'a> {
    pub q_out: &'a mut DeviceTensor,
    pub k_cache: &'a mut DeviceTensor,
    pub v_cache: &'a mut DeviceTensor,
    pub out_loc: &'a DeviceTensor,
}

/// Checks a packed `qkv: [T, (Hq + 2 Hkv) D]` (q heads, then k, then v;
/// `args.heads` must be [`QkHeads::packed_qkv`]), the norm/RoPE inputs and the
/// destinations. Returns `(T, row width, num_slots)`.
///
/// ```
/// use mllm_kernel::{ops::{validate_qk_norm_rope_store, Meta, QkHeads}, DType};
/// let heads = QkHeads::packed_qkv(32, 8, 128);
/// let qkv = Meta::new(&[4, 48 * 128], DType::BF16);
/// let (pos, loc) = (Meta::new(&[4], DType::I32), Meta::new(&[4], DType::I32));
/// let cos_sin = Meta::new(&[4096, 128], DType::F32);
/// let q = Meta::new(&[4, 32, 128], DType::BF16);
/// let pool = Meta::new(&[1024, 8, 128], DType::BF16);
/// let dims = validate_qk_norm_rope_store(qkv, heads, pos, cos_sin, None, None, 1e-6, q, pool, pool, loc).unwrap();
/// assert_eq!(dims, (4, 6144, 1024));
/// ```
#[allow(clippy::too_many_arguments)]
pub fn validate_qk_norm_rope_store(
    qkv: Meta,
    heads: QkHeads,
    positions: Meta,
    cos_sin: Meta,
    q_norm: Option<Meta>,
    k_norm: Option<Meta>,
    eps: f32,
    q_out: Meta,
    k_cache: Meta,
    v_cache: Meta,
    out_loc: Meta,
) -> Result<(usize, usize, usize)> {
    let (hq, hkv, d) = (heads.q_heads, heads.k_heads, heads.head_dim);
    if heads != QkHeads::packed_qkv(hq, hkv, d) {
        return Err(Error::InvalidArgument {
            op: OP,
            arg: "heads",
            reason: format!("must be the packed qkv layout (q at column 0, k right after), got {heads:?}"),
        });
    }
    let (tokens, width) = validate_qk_norm_rope(qkv, heads, positions, cos_sin, q_norm, k_norm, eps)?;
    if width != (hq + 2 * hkv) * d {
        return Err(Error::ShapeMismatch {
            op: OP,
            arg: "qkv",
            expected: format!("[T, {}] (q, k and v heads)", (hq + 2 * hkv) * d),
            got: qkv.shape.to_vec(),
        });
    }
    expect_dtype(OP, "q_out", qkv.dtype, q_out.dtype)?;
    expect_shape(OP, "q_out", &[tokens, hq, d], q_out.shape)?;
    expect_dtype(OP, "k_cache", qkv.dtype, k_cache.dtype)?;
    let k = (qkv, hq * d);
    let v = (qkv, (hq + hkv) * d);
    let (_, slots, row) = validate_kv_store(k, v, out_loc, k_cache, v_cache)?;
    if row != hkv * d {
        return Err(Error::ShapeMismatch {
            op: OP,
            arg: "k_cache",
            expected: format!("[num_slots, {hkv}, {d}]"),
            got: k_cache.shape.to_vec(),
        });
    }
    Ok((tokens, width, slots))
}

/// For each token of the packed `qkv` row buffer: q heads normed with
/// `q_norm` and rotated into `out.q_out`; k heads normed with `k_norm`,
/// rotated and stored at `out.k_cache[out_loc[t]]`; v heads copied to
/// `out.v_cache[out_loc[t]]`. `qkv` itself is left unchanged. Same numerics
/// as [`super::qk_norm_rope`] followed by [`super::kv_store`].
///
/// ```no_run
/// use mllm_kernel::{ops, DType, DeviceTensor, Gpu};
/// use half::bf16;
/// let gpu = Gpu::new(0)?;
/// let (hq, hkv, d, t) = (32, 8, 128, 2);
/// let qkv = DeviceTensor::from_host(&gpu, &vec![bf16::ONE; t * (hq + 2 * hkv) * d], &[t, (hq + 2 * hkv) * d])?;
/// let positions = DeviceTensor::from_host(&gpu, &[5i32, 6], &[t])?;
/// let loc = DeviceTensor::from_host(&gpu, &[10i32, 11], &[t])?;
/// let cos_sin = DeviceTensor::from_host(&gpu, &ops::rope_cos_sin_cache(d, 4096, 1e6), &[4096, d])?;
/// let mut q = DeviceTensor::empty(&gpu, &[t, hq, d], DType::BF16)?;
/// let mut k_cache = DeviceTensor::zeros(&gpu, &[64, hkv, d], DType::BF16)?;
/// let mut v_cache = DeviceTensor::zeros(&gpu, &[64, hkv, d], DType::BF16)?;
/// let args = ops::QkNormRope {
///     heads: ops::QkHeads::packed_qkv(hq, hkv, d),
///     positions: &positions,
///     cos_sin: &cos_sin,
///     q_norm: None,
///     k_norm: None,
///     eps: 1e-6,
/// };
/// let out = ops::RopeStoreOut { q_out: &mut q, k_cache: &mut k_cache, v_cache: &mut v_cache, out_loc: &loc };
/// ops::qk_norm_rope_store(&gpu, &qkv, &args, out)?;
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub fn qk_norm_rope_store(gpu: &Gpu, qkv: &DeviceTensor, args: &QkNormRope, out: RopeStoreOut<'_>) -> Result<()> {
    let (tokens, width, slots) = validate_qk_norm_rope_store(
        qkv.into(),
        args.heads,
        args.positions.into(),
        args.cos_sin.into(),
        args.q_norm.map(Meta::from),
        args.k_norm.map(Meta::from),
        args.eps,
        (&*out.q_out).into(),
        (&*out.k_cache).into(),
        (&*out.v_cache).into(),
        out.out_loc.into(),
    )?;
    let h = args.heads;
    let warps = tokens * (h.q_heads + 2 * h.k_heads);
    if warps == 0 {
        return Ok(());
    }
    let f = rope_function(gpu, OP, qkv.dtype())?;
    let null = 0u64;
    let (row_stride, max_pos, num_slots) = (width as i64, args.cos_sin.shape()[0] as i32, slots as i64);
    let ints = [tokens, h.q_heads, h.k_heads, h.head_dim].map(|v| v as i32);
    // The kernel waits for its producer (the qkv GEMM) in-kernel.
    let mut launch = DependentLaunch::new(gpu, &f);
    launch.arg(qkv.buffer()).arg(&row_stride);
    push_rotary_inputs(&mut launch, args, &max_pos, &null);
    for v in &ints {
        launch.arg(v);
    }
    launch
        .arg(&args.eps)
        .arg(out.q_out.buffer_mut())
        .arg(out.k_cache.buffer_mut())
        .arg(out.v_cache.buffer_mut())
        .arg(out.out_loc.buffer())
        .arg(&num_slots);
    // SAFETY: signature (qkv, i64 row_stride, pos, cos_sin, int max_pos, q_w,
    // k_w, int tokens, q_heads, kv_heads, head_dim, float eps, q_out, k_cache,
    // v_cache, loc, i64 num_slots); one warp per (token, head) over
    // Hq + 2 Hkv heads; shapes checked above, slots outside the pool skipped.
    unsafe { launch.launch(per_head_config(warps)) }.map_err(Error::driver("launch qk_norm_rope_store"))
}
