//! KV store into the token → KV pool, page size 1 (NVRTC kernel `kv_store`).

use cudarc::driver::PushKernelArg;

use super::launch::{dtype_function, expect_i32_vec, float_symbols, leading_rows, row_chunks, units};
use super::{expect_dtype, expect_float, expect_shape, Meta};
use crate::device::Gpu;
use crate::registry::KernelId;
use crate::tensor::DeviceTensor;
use crate::{Error, Result};

const OP: &str = "kv_store";

pub(super) fn symbols(variant: Option<&str>) -> Vec<String> {
    float_symbols(&[OP], variant)
}

/// Rows of a `[T, W]` tensor read from column `col`: token t's K (or V) is
/// elements `col .. col + Hk * D` of row t. A contiguous `[T, Hk, D]` is
/// `RowSpan { tensor, col: 0 }`; the fused qkv output `[T, (Hq + 2Hk) D]`
/// gives K at `col = Hq * D` and V at `(Hq + Hk) * D`.
#[derive(Clone, Copy)]
pub struct RowSpan<'a> {
    /// `[T, ...]`, read as `[T, W]` rows.
    pub tensor: &'a DeviceTensor,
    /// First column of the span in each row.
    pub col: usize,
}

/// Checks sources `k`, `v` (`[T, W]`, one float dtype), `out_loc: [T]` i32
/// and the pools `[num_slots, Hk, D]` (both the same shape and dtype).
/// Returns `(T, num_slots, Hk * D)`.
///
/// ```
/// use mllm_kernel::{ops::{validate_kv_store, Meta}, DType};
/// let (qkv, pool) = ([4, 48 * 128], [1024, 8, 128]);
/// let k = (Meta::new(&qkv, DType::BF16), 32 * 128);
/// let v = (Meta::new(&qkv, DType::BF16), 40 * 128);
/// let loc = Meta::new(&[4], DType::I32);
/// let cache = Meta::new(&pool, DType::BF16);
/// assert_eq!(validate_kv_store(k, v, loc, cache, cache).unwrap(), (4, 1024, 1024));
/// ```
pub fn validate_kv_store(
    k: (Meta, usize),
    v: (Meta, usize),
    out_loc: Meta,
    k_cache: Meta,
    v_cache: Meta,
) -> Result<(usize, usize, usize)> {
    expect_float(OP, "k_cache", k_cache.dtype)?;
    expect_dtype(OP, "v_cache", k_cache.dtype, v_cache.dtype)?;
    expect_shape(OP, "v_cache", k_cache.shape, v_cache.shape)?;
    let (slots, row) = leading_rows(OP, "k_cache", k_cache)?;
    if row == 0 {
        return Err(Error::ShapeMismatch {
            op: OP,
            arg: "k_cache",
            expected: "[num_slots, kv_heads, head_dim] with non-empty rows".into(),
            got: k_cache.shape.to_vec(),
        });
    }
    let (tokens, _) = leading_rows(OP, "k", k.0)?;
    for (arg, (m, col)) in [("k", k), ("v", v)] {
        expect_dtype(OP, arg, k_cache.dtype, m.dtype)?;
        let (t, width) = leading_rows(OP, arg, m)?;
        if t != tokens || col + row > width {
            return Err(Error::ShapeMismatch {
                op: OP,
                arg,
                expected: format!("[{tokens}, W] with columns {col}..{} inside W", col + row),
                got: m.shape.to_vec(),
            });
        }
    }
    expect_i32_vec(OP, "out_loc", out_loc, tokens)?;
    Ok((tokens, slots, row))
}

/// `k_cache[out_loc[t]] = k[t]`, `v_cache[out_loc[t]] = v[t]` for every
/// token (SGLang's `set_kv_buffer`). Slots outside `0..num_slots` are
/// skipped, never written; the scheduler hands out only valid ones.
///
/// ```no_run
/// use mllm_kernel::{ops, DeviceTensor, DType, Gpu};
/// let gpu = Gpu::new(0)?;
/// let (t, hq, hkv, d) = (2, 32, 8, 128);
/// let qkv = DeviceTensor::zeros(&gpu, &[t, (hq + 2 * hkv) * d], DType::BF16)?;
/// let loc = DeviceTensor::from_host(&gpu, &[7i32, 3], &[t])?;
/// let mut k_cache = DeviceTensor::zeros(&gpu, &[1024, hkv, d], DType::BF16)?;
/// let mut v_cache = DeviceTensor::zeros(&gpu, &[1024, hkv, d], DType::BF16)?;
/// let k = ops::RowSpan { tensor: &qkv, col: hq * d };
/// let v = ops::RowSpan { tensor: &qkv, col: (hq + hkv) * d };
/// ops::kv_store(&gpu, k, v, &loc, &mut k_cache, &mut v_cache)?;
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub fn kv_store(
    gpu: &Gpu,
    k: RowSpan,
    v: RowSpan,
    out_loc: &DeviceTensor,
    k_cache: &mut DeviceTensor,
    v_cache: &mut DeviceTensor,
) -> Result<()> {
    let (tokens, slots, row) = validate_kv_store(
        (k.tensor.into(), k.col),
        (v.tensor.into(), v.col),
        out_loc.into(),
        (&*k_cache).into(),
        (&*v_cache).into(),
    )?;
    if tokens == 0 {
        return Ok(());
    }
    let dtype = k_cache.dtype();
    let f = dtype_function(
        gpu,
        KernelId::KvStore,
        dtype,
        &format!("{OP}_{}", dtype.symbol_suffix()),
    )?;
    let config = row_chunks(tokens, units(row, dtype));
    let k_stride = (k.tensor.numel() / tokens) as i64;
    let v_stride = (v.tensor.numel() / tokens) as i64;
    let (k_col, v_col, row_i, slots_i) = (k.col as i32, v.col as i32, row as i32, slots as i64);
    let mut launch = gpu.stream().launch_builder(&f);
    launch
        .arg(k.tensor.buffer())
        .arg(&k_stride)
        .arg(&k_col)
        .arg(v.tensor.buffer())
        .arg(&v_stride)
        .arg(&v_col)
        .arg(out_loc.buffer())
        .arg(k_cache.buffer_mut())
        .arg(v_cache.buffer_mut())
        .arg(&row_i)
        .arg(&slots_i);
    // SAFETY: signature (k, i64 k_stride, int k_col, v, i64 v_stride, int
    // v_col, loc, k_cache, v_cache, int row_elems, i64 num_slots); grid.x =
    // T; source spans lie inside their rows, loc is [T], out-of-range slots
    // are skipped by the kernel (checked above).
    unsafe { launch.launch(config) }
        .map(drop)
        .map_err(Error::driver("launch kv_store"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    #[test]
    fn validation_names_the_argument() {
        let bf = DType::BF16;
        let qkv = [3, 48 * 16];
        let pool = [100, 8, 16];
        let ok = validate_kv_store(
            (Meta::new(&qkv, bf), 32 * 16),
            (Meta::new(&qkv, bf), 40 * 16),
            Meta::new(&[3], DType::I32),
            Meta::new(&pool, bf),
            Meta::new(&pool, bf),
        );
        assert_eq!(ok.unwrap(), (3, 100, 128));
        let e = validate_kv_store(
            (Meta::new(&qkv, bf), 32 * 16),
            (Meta::new(&qkv, bf), 41 * 16),
            Meta::new(&[3], DType::I32),
            Meta::new(&pool, bf),
            Meta::new(&pool, bf),
        )
        .unwrap_err();
        assert!(e.to_string().contains("`v`"), "{e}");
        let e = validate_kv_store(
            (Meta::new(&qkv, bf), 0),
            (Meta::new(&qkv, bf), 0),
            Meta::new(&[2], DType::I32),
            Meta::new(&pool, bf),
            Meta::new(&pool, bf),
        )
        .unwrap_err();
        assert!(e.to_string().contains("`out_loc`"), "{e}");
        let e = validate_kv_store(
            (Meta::new(&qkv, DType::F16), 0),
            (Meta::new(&qkv, bf), 0),
            Meta::new(&[3], DType::I32),
            Meta::new(&pool, bf),
            Meta::new(&pool, bf),
        )
        .unwrap_err();
        assert!(e.to_string().contains("`k`"), "{e}");
        let e = validate_kv_store(
            (Meta::new(&qkv, bf), 0),
            (Meta::new(&qkv, bf), 0),
            Meta::new(&[3], DType::I32),
            Meta::new(&pool, bf),
            Meta::new(&[100, 8, 8], bf),
        )
        .unwrap_err();
        assert!(e.to_string().contains("`v_cache`"), "{e}");
    }
}
