//! Optional per-head q/k RMSNorm + NeoX rotary embedding, in place on a
//! packed row buffer (NVRTC kernel `qk_norm_rope`).

use cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig, PushKernelArg};

use super::launch::{dtype_function, expect_i32_vec, float_symbols, leading_rows};
use super::{expect_dtype, expect_float, expect_shape, Meta};
use crate::device::Gpu;
use crate::dtype::DType;
use crate::registry::KernelId;
use crate::tensor::DeviceTensor;
use crate::{Error, Result};

const OP: &str = "qk_norm_rope";
/// Largest head dim the kernel supports (4 rotary pairs per lane).
pub const MAX_ROPE_HEAD_DIM: usize = 256;

pub(super) fn symbols(variant: Option<&str>) -> Vec<String> {
    float_symbols(&[OP, "qk_norm_rope_store"], variant)
}

/// Where the q and k heads sit in each row of a `[T, W]` buffer: q heads
/// are `q_heads * head_dim` elements from column `q_col`, k heads
/// `k_heads * head_dim` from `k_col`. Either count may be 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QkHeads {
    /// First column of the q heads.
    pub q_col: usize,
    /// Number of q heads (0: none).
    pub q_heads: usize,
    /// First column of the k heads.
    pub k_col: usize,
    /// Number of k heads (0: none).
    pub k_heads: usize,
    /// Elements per head: even, at most [`MAX_ROPE_HEAD_DIM`].
    pub head_dim: usize,
}

impl QkHeads {
    /// The fused qkv projection output `[T, (Hq + 2 Hkv) * D]`: q first, then k.
    ///
    /// ```
    /// let h = mllm_kernel::ops::QkHeads::packed_qkv(32, 8, 128);
    /// assert_eq!((h.q_col, h.k_col), (0, 32 * 128));
    /// ```
    pub fn packed_qkv(q_heads: usize, kv_heads: usize, head_dim: usize) -> Self {
        Self {
            q_col: 0,
            q_heads,
            k_col: q_heads * head_dim,
            k_heads: kv_heads,
            head_dim,
        }
    }
}

/// The read-only inputs of [`qk_norm_rope`].
#[derive(Clone, Copy)]
pub struct QkNormRope<'a> {
    /// Where the heads sit in each row.
    pub heads: QkHeads,
    /// `[T]` i32 positions; each must be `< max_pos` (the kernel clamps
    /// out-of-range ones into the cache instead of reading out of bounds).
    pub positions: &'a DeviceTensor,
    /// `[max_pos, head_dim]` f32: per position `cos` of the `head_dim / 2`
    /// frequencies, then their `sin` (see [`rope_cos_sin_cache`]).
    pub cos_sin: &'a DeviceTensor,
    /// Per-head RMSNorm weights `[head_dim]` (Qwen3's q_norm / k_norm), or
    /// `None` to skip the norm (Llama, Qwen2).
    pub q_norm: Option<&'a DeviceTensor>,
    pub k_norm: Option<&'a DeviceTensor>,
    /// RMSNorm epsilon (unused without weights).
    pub eps: f32,
}

/// Checks the buffer `qk: [T, ...]`, the head layout and the inputs.
/// Returns `(T, W)`: tokens and elements per row (the row stride).
///
/// ```
/// use mllm_kernel::{ops::{validate_qk_norm_rope, Meta, QkHeads}, DType};
/// let heads = QkHeads::packed_qkv(32, 8, 128);
/// let qkv = Meta::new(&[4, 48 * 128], DType::BF16);
/// let pos = Meta::new(&[4], DType::I32);
/// let cos_sin = Meta::new(&[4096, 128], DType::F32);
/// assert_eq!(validate_qk_norm_rope(qkv, heads, pos, cos_sin, None, None, 1e-6).unwrap(), (4, 6144));
/// ```
#[allow(clippy::too_many_arguments)]
pub fn validate_qk_norm_rope(
    qk: Meta,
    heads: QkHeads,
    positions: Meta,
    cos_sin: Meta,
    q_norm: Option<Meta>,
    k_norm: Option<Meta>,
    eps: f32,
) -> Result<(usize, usize)> {
    expect_float(OP, "qk", qk.dtype)?;
    let (tokens, width) = leading_rows(OP, "qk", qk)?;
    let d = heads.head_dim;
    if d == 0 || !d.is_multiple_of(2) || d > MAX_ROPE_HEAD_DIM {
        return Err(Error::InvalidArgument {
            op: OP,
            arg: "head_dim",
            reason: format!("must be even and in 2..={MAX_ROPE_HEAD_DIM}, got {d}"),
        });
    }
    let q_end = heads.q_col + heads.q_heads * d;
    let k_end = heads.k_col + heads.k_heads * d;
    for (arg, end) in [("q_heads", q_end), ("k_heads", k_end)] {
        if end > width {
            return Err(Error::InvalidArgument {
                op: OP,
                arg,
                reason: format!("heads end at column {end} but a row of `qk` has {width} elements"),
            });
        }
    }
    let overlap = heads.q_heads > 0 && heads.k_heads > 0 && heads.q_col < k_end && heads.k_col < q_end;
    if overlap {
        return Err(Error::InvalidArgument {
            op: OP,
            arg: "k_col",
            reason: format!(
                "k columns {}..{k_end} overlap q columns {}..{q_end}",
                heads.k_col, heads.q_col
            ),
        });
    }
    if tokens.saturating_mul(heads.q_heads + heads.k_heads) > (i32::MAX as usize) / 32 * 8 {
        return Err(Error::InvalidArgument {
            op: OP,
            arg: "qk",
            reason: format!(
                "{tokens} tokens x {} heads exceed the launch limit",
                heads.q_heads + heads.k_heads
            ),
        });
    }
    expect_i32_vec(OP, "positions", positions, tokens)?;
    expect_dtype(OP, "cos_sin", DType::F32, cos_sin.dtype)?;
    if cos_sin.shape.len() != 2
        || cos_sin.shape[1] != d
        || cos_sin.shape[0] == 0
        || cos_sin.shape[0] > i32::MAX as usize
    {
        return Err(Error::ShapeMismatch {
            op: OP,
            arg: "cos_sin",
            expected: format!("[max_pos, {d}] with 0 < max_pos < 2^31"),
            got: cos_sin.shape.to_vec(),
        });
    }
    for (arg, w) in [("q_norm", q_norm), ("k_norm", k_norm)] {
        if let Some(w) = w {
            expect_dtype(OP, arg, qk.dtype, w.dtype)?;
            expect_shape(OP, arg, &[d], w.shape)?;
        }
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::InvalidArgument {
            op: OP,
            arg: "eps",
            reason: format!("must be finite and >= 0, got {eps}"),
        });
    }
    Ok((tokens, width))
}

/// In place on `qk: [T, W]`: for every q head (and k head) of each token,
/// optionally RMSNorm it with `q_norm` (`k_norm`), then rotate it NeoX style
/// (pairs `(i, i + D/2)`) by the angle of the token's position.
///
/// ```no_run
/// use mllm_kernel::{ops, DeviceTensor, Gpu};
/// use half::bf16;
/// let gpu = Gpu::new(0)?;
/// let (hq, hkv, d, t) = (32, 8, 128, 4);
/// let mut qkv = DeviceTensor::from_host(&gpu, &vec![bf16::ONE; t * (hq + 2 * hkv) * d], &[t, (hq + 2 * hkv) * d])?;
/// let positions = DeviceTensor::from_host(&gpu, &[0i32, 1, 2, 3], &[t])?;
/// let cache = ops::rope_cos_sin_cache(d, 4096, 1e6);
/// let cos_sin = DeviceTensor::from_host(&gpu, &cache, &[4096, d])?;
/// let args = ops::QkNormRope {
///     heads: ops::QkHeads::packed_qkv(hq, hkv, d),
///     positions: &positions,
///     cos_sin: &cos_sin,
///     q_norm: None,
///     k_norm: None,
///     eps: 1e-6,
/// };
/// ops::qk_norm_rope(&gpu, &mut qkv, &args)?;
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub fn qk_norm_rope(gpu: &Gpu, qk: &mut DeviceTensor, args: &QkNormRope) -> Result<()> {
    let (tokens, width) = validate_qk_norm_rope(
        (&*qk).into(),
        args.heads,
        args.positions.into(),
        args.cos_sin.into(),
        args.q_norm.map(Meta::from),
        args.k_norm.map(Meta::from),
        args.eps,
    )?;
    let h = args.heads;
    let warps = tokens * (h.q_heads + h.k_heads);
    if warps == 0 {
        return Ok(());
    }
    let f = rope_function(gpu, OP, qk.dtype())?;
    let null = 0u64;
    let (row_stride, max_pos) = (width as i64, args.cos_sin.shape()[0] as i32);
    let ints = [tokens, h.q_col, h.q_heads, h.k_col, h.k_heads, h.head_dim].map(|v| v as i32);
    let mut launch = gpu.stream().launch_builder(&f);
    launch.arg(qk.buffer_mut()).arg(&row_stride);
    push_rotary_inputs(&mut launch, args, &max_pos, &null);
    for v in &ints {
        launch.arg(v);
    }
    launch.arg(&args.eps);
    // SAFETY: signature (qk, i64 row_stride, pos, cos_sin, int max_pos, q_w,
    // k_w, int tokens, q_col, q_heads, k_col, k_heads, head_dim, float eps);
    // one warp per (token, head); every head lies inside its row, positions
    // are [T] and clamped to cos_sin's rows, weights [D] or null (checked above).
    unsafe { launch.launch(per_head_config(warps)) }
        .map(drop)
        .map_err(Error::driver("launch qk_norm_rope"))
}

/// The `<op>_<dtype>` function of the `qk_norm_rope` kernel.
pub(super) fn rope_function(gpu: &Gpu, op: &str, dtype: DType) -> Result<CudaFunction> {
    dtype_function(
        gpu,
        KernelId::QkNormRope,
        dtype,
        &format!("{op}_{}", dtype.symbol_suffix()),
    )
}

/// Both rope kernels run one warp per (token, head), 8 warps a block.
pub(super) fn per_head_config(warps: usize) -> LaunchConfig {
    const WARPS_PER_BLOCK: usize = 8;
    LaunchConfig {
        grid_dim: (warps.div_ceil(WARPS_PER_BLOCK) as u32, 1, 1),
        block_dim: (32 * WARPS_PER_BLOCK as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Pushes the arguments both rope kernels take after their row buffer and
/// row stride: positions, cos_sin, max_pos, then the q and k norm weights
/// (`null` for a missing one).
pub(super) fn push_rotary_inputs<'a, L>(launch: &mut L, args: &'a QkNormRope<'a>, max_pos: &'a i32, null: &'a u64)
where
    L: PushKernelArg<&'a CudaSlice<u8>> + PushKernelArg<&'a i32> + PushKernelArg<&'a u64>,
{
    launch
        .arg(args.positions.buffer())
        .arg(args.cos_sin.buffer())
        .arg(max_pos);
    for w in [args.q_norm, args.k_norm] {
        match w {
            Some(w) => launch.arg(w.buffer()),
            None => launch.arg(null),
        };
    }
}

/// The NeoX rotary cache `[max_pos, head_dim]` f32 for [`qk_norm_rope`]:
/// row p is `cos(p * f_i)` for `i < head_dim / 2`, then `sin(p * f_i)`,
/// with `f_i = base^(-2i / head_dim)` (no scaling; scaled variants build
/// their own frequencies and fill the same layout). Computed in f64.
///
/// ```
/// let c = mllm_kernel::ops::rope_cos_sin_cache(4, 2, 10_000.0);
/// assert_eq!(&c[..4], &[1.0, 1.0, 0.0, 0.0]);
/// assert_eq!(c[4], 1f64.cos() as f32);
/// ```
pub fn rope_cos_sin_cache(head_dim: usize, max_pos: usize, base: f64) -> Vec<f32> {
    let half = head_dim / 2;
    let freqs: Vec<f64> = (0..half)
        .map(|i| base.powf(-((2 * i) as f64) / head_dim as f64))
        .collect();
    let mut out = Vec::with_capacity(max_pos * head_dim);
    for p in 0..max_pos {
        out.extend(freqs.iter().map(|f| (p as f64 * f).cos() as f32));
        out.extend(freqs.iter().map(|f| (p as f64 * f).sin() as f32));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(qk: &[usize], heads: QkHeads, pos: &[usize], cs: &[usize], w: Option<&[usize]>) -> Result<(usize, usize)> {
        let wm = w.map(|s| Meta::new(s, DType::BF16));
        validate_qk_norm_rope(
            Meta::new(qk, DType::BF16),
            heads,
            Meta::new(pos, DType::I32),
            Meta::new(cs, DType::F32),
            wm,
            wm,
            1e-6,
        )
    }

    #[test]
    fn validation_names_the_argument() {
        let h = QkHeads::packed_qkv(4, 2, 64);
        assert_eq!(check(&[3, 512], h, &[3], &[10, 64], Some(&[64])).unwrap(), (3, 512));
        let e = check(&[3, 380], h, &[3], &[10, 64], None).unwrap_err();
        assert!(e.to_string().contains("`k_heads`"), "{e}");
        let e = check(&[3, 512], h, &[4], &[10, 64], None).unwrap_err();
        assert!(e.to_string().contains("`positions`"), "{e}");
        let e = check(&[3, 512], h, &[3], &[10, 32], None).unwrap_err();
        assert!(e.to_string().contains("`cos_sin`"), "{e}");
        let e = check(&[3, 512], h, &[3], &[10, 64], Some(&[32])).unwrap_err();
        assert!(e.to_string().contains("`q_norm`"), "{e}");
        let odd = QkHeads::packed_qkv(4, 2, 63);
        let e = check(&[3, 512], odd, &[3], &[10, 63], None).unwrap_err();
        assert!(e.to_string().contains("`head_dim`"), "{e}");
        let big = QkHeads::packed_qkv(1, 1, 258);
        assert!(check(&[3, 1024], big, &[3], &[10, 258], None).is_err());
        let overlap = QkHeads { k_col: 64, ..h };
        let e = check(&[3, 512], overlap, &[3], &[10, 64], None).unwrap_err();
        assert!(e.to_string().contains("overlap"), "{e}");
        let e = check(&[512], h, &[3], &[10, 64], None).unwrap_err();
        assert!(e.to_string().contains("rank"), "{e}");
    }

    #[test]
    fn cache_layout_is_cos_then_sin() {
        let c = rope_cos_sin_cache(8, 3, 10_000.0);
        assert_eq!(c.len(), 24);
        let f1 = 10_000f64.powf(-2.0 / 8.0);
        assert_eq!(c[16 + 1], (2.0 * f1).cos() as f32);
        assert_eq!(c[16 + 4 + 1], (2.0 * f1).sin() as f32);
    }
}
