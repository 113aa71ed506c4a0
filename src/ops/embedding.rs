//! Embedding lookup and its inverse, the row scatter (NVRTC kernel
//! `embedding`).

use cudarc::driver::PushKernelArg;

use super::launch::{dtype_function, expect_i32_vec, float_symbols, row_chunks, units};
use super::{expect_dtype, expect_float, expect_shape, Meta};
use crate::device::Gpu;
use crate::dtype::DType;
use crate::registry::KernelId;
use crate::tensor::DeviceTensor;
use crate::{Error, Result};

const OP: &str = "embedding";

pub(super) fn symbols(variant: Option<&str>) -> Vec<String> {
    float_symbols(&[OP, SCATTER], variant)
}

const SCATTER: &str = "scatter_rows";

/// What [`scatter_rows_into`] does with each destination row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scatter {
    /// `dst[rows[i]] = src[i]` (e.g. image embeddings over placeholder tokens).
    Replace,
    /// `dst[rows[i]] += src[i]`, summed in f32 and rounded once (e.g. deepstack features).
    Add,
}

/// Checks `rows: [n]` i32, `src: [n, H]` and `dst: [T, H]` of one float
/// dtype. Returns `(n, T, H)`.
///
/// ```
/// use mllm_kernel::{ops::{validate_scatter_rows, Meta}, DType};
/// let rows = Meta::new(&[3], DType::I32);
/// let src = Meta::new(&[3, 64], DType::BF16);
/// assert_eq!(validate_scatter_rows(rows, src, Meta::new(&[10, 64], DType::BF16)).unwrap(), (3, 10, 64));
/// assert!(validate_scatter_rows(rows, src, Meta::new(&[10, 32], DType::BF16)).is_err());
/// ```
pub fn validate_scatter_rows(rows: Meta, src: Meta, dst: Meta) -> Result<(usize, usize, usize)> {
    expect_float(SCATTER, "dst", dst.dtype)?;
    expect_dtype(SCATTER, "src", dst.dtype, src.dtype)?;
    let &[dst_rows, hidden] = dst.shape else {
        return Err(Error::ShapeMismatch {
            op: SCATTER,
            arg: "dst",
            expected: "[rows, hidden]".into(),
            got: dst.shape.to_vec(),
        });
    };
    if dst_rows > i32::MAX as usize || hidden == 0 || hidden > i32::MAX as usize {
        return Err(Error::ShapeMismatch {
            op: SCATTER,
            arg: "dst",
            expected: "[rows, hidden], rows < 2^31 and hidden in 1..2^31".into(),
            got: dst.shape.to_vec(),
        });
    }
    let n = rows.shape.first().copied().unwrap_or(0);
    expect_i32_vec(SCATTER, "rows", rows, n)?;
    expect_shape(SCATTER, "src", &[n, hidden], src.shape)?;
    if n > i32::MAX as usize {
        return Err(Error::InvalidArgument {
            op: SCATTER,
            arg: "rows",
            reason: format!("{n} rows exceed the 2^31-1 launch limit"),
        });
    }
    Ok((n, dst_rows, hidden))
}

/// Writes `src: [n, H]` into (or adds it to) the rows `rows: [n]` i32 of
/// `dst: [T, H]`, in place. Rows must be distinct for [`Scatter::Add`].
/// A row outside `0..T` is skipped; with `bad_row` (`[1]` i32, zeroed by
/// the caller) the kernel sets it to `1 + i` for some such `rows[i]`.
///
/// ```no_run
/// use mllm_kernel::{ops::{self, Scatter}, DeviceTensor, Gpu};
/// use half::bf16;
/// let gpu = Gpu::new(0)?;
/// let mut hidden = DeviceTensor::zeros(&gpu, &[8, 64], mllm_kernel::DType::BF16)?;
/// let image = DeviceTensor::from_host(&gpu, &vec![bf16::ONE; 2 * 64], &[2, 64])?;
/// let rows = DeviceTensor::from_host(&gpu, &[3i32, 4], &[2])?;
/// ops::scatter_rows_into(&gpu, &rows, &image, &mut hidden, Scatter::Replace, None)?;
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub fn scatter_rows_into(
    gpu: &Gpu,
    rows: &DeviceTensor,
    src: &DeviceTensor,
    dst: &mut DeviceTensor,
    mode: Scatter,
    bad_row: Option<&mut DeviceTensor>,
) -> Result<()> {
    let (n, dst_rows, hidden) = validate_scatter_rows(rows.into(), src.into(), (&*dst).into())?;
    if let Some(flag) = &bad_row {
        expect_dtype(SCATTER, "bad_row", DType::I32, flag.dtype())?;
        expect_shape(SCATTER, "bad_row", &[1], flag.shape())?;
    }
    if n == 0 {
        return Ok(());
    }
    let dtype = dst.dtype();
    let f = dtype_function(
        gpu,
        KernelId::Embedding,
        dtype,
        &format!("{SCATTER}_{}", dtype.symbol_suffix()),
    )?;
    let config = row_chunks(n, units(hidden, dtype));
    let (hidden_i, rows_i, add, null) = (hidden as i32, dst_rows as i32, i32::from(mode == Scatter::Add), 0u64);
    let mut launch = gpu.stream().launch_builder(&f);
    launch
        .arg(rows.buffer())
        .arg(src.buffer())
        .arg(dst.buffer_mut())
        .arg(&hidden_i)
        .arg(&rows_i)
        .arg(&add);
    match bad_row {
        Some(flag) => launch.arg(flag.buffer_mut()),
        None => launch.arg(&null),
    };
    // SAFETY: signature (rows, src, dst, int hidden, int dst_rows, int
    // accumulate, int* bad); grid.x = n; rows [n], src [n, H], dst [T, H],
    // flag [1] or null (checked above); out-of-range rows never index dst.
    unsafe { launch.launch(config) }
        .map(drop)
        .map_err(Error::driver("launch scatter_rows"))
}

/// Checks `ids: [T]` i32 and `table: [V, H]` float. Returns `(T, V, H)`.
///
/// ```
/// use mllm_kernel::{ops::{validate_embedding, Meta}, DType};
/// let ids = Meta::new(&[5], DType::I32);
/// assert_eq!(validate_embedding(ids, Meta::new(&[100, 64], DType::BF16)).unwrap(), (5, 100, 64));
/// assert!(validate_embedding(ids, Meta::new(&[100, 64, 2], DType::BF16)).is_err());
/// ```
pub fn validate_embedding(ids: Meta, table: Meta) -> Result<(usize, usize, usize)> {
    expect_float(OP, "table", table.dtype)?;
    let &[vocab, hidden] = table.shape else {
        return Err(Error::ShapeMismatch {
            op: OP,
            arg: "table",
            expected: "[vocab, hidden]".into(),
            got: table.shape.to_vec(),
        });
    };
    if vocab == 0 || hidden == 0 || vocab > i32::MAX as usize || hidden > i32::MAX as usize {
        return Err(Error::ShapeMismatch {
            op: OP,
            arg: "table",
            expected: "[vocab, hidden], both in 1..2^31".into(),
            got: table.shape.to_vec(),
        });
    }
    let tokens = ids.shape.first().copied().unwrap_or(0);
    expect_i32_vec(OP, "ids", ids, tokens)?;
    if tokens > i32::MAX as usize {
        return Err(Error::InvalidArgument {
            op: OP,
            arg: "ids",
            reason: format!("{tokens} tokens exceed the 2^31-1 launch limit"),
        });
    }
    Ok((tokens, vocab, hidden))
}

/// Host-side id check, for ids that come from a request: every id must be
/// in `0..vocab`. The error names the first bad position.
///
/// ```
/// use mllm_kernel::ops::validate_token_ids;
/// assert!(validate_token_ids(&[0, 5, 9], 10).is_ok());
/// assert!(validate_token_ids(&[0, 10], 10).unwrap_err().to_string().contains("position 1"));
/// ```
pub fn validate_token_ids(ids: &[i32], vocab: usize) -> Result<()> {
    match ids.iter().position(|&id| id < 0 || id as usize >= vocab) {
        None => Ok(()),
        Some(i) => Err(Error::InvalidArgument {
            op: OP,
            arg: "ids",
            reason: format!("token id {} at position {i} is outside 0..{vocab}", ids[i]),
        }),
    }
}

/// `out[t] = table[ids[t]]`: `ids: [T]` i32, `table: [V, H]` → `[T, H]`.
///
/// An id outside `0..V` reads nothing: its row is zero-filled. Validate ids
/// that come from outside with [`validate_token_ids`] first, or pass a flag
/// to [`embedding_into`] to detect them on the device.
///
/// ```no_run
/// use mllm_kernel::{ops, DeviceTensor, Gpu};
/// use half::bf16;
/// let gpu = Gpu::new(0)?;
/// let table = DeviceTensor::from_host(&gpu, &vec![bf16::ONE; 1000 * 64], &[1000, 64])?;
/// let ids = [3i32, 999, 0];
/// ops::validate_token_ids(&ids, 1000)?;
/// let ids = DeviceTensor::from_host(&gpu, &ids, &[3])?;
/// let rows = ops::embedding(&gpu, &ids, &table)?;
/// assert_eq!(rows.shape(), &[3, 64]);
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub fn embedding(gpu: &Gpu, ids: &DeviceTensor, table: &DeviceTensor) -> Result<DeviceTensor> {
    let (tokens, _, hidden) = validate_embedding(ids.into(), table.into())?;
    let mut out = DeviceTensor::empty(gpu, &[tokens, hidden], table.dtype())?;
    embedding_into(gpu, ids, table, &mut out, None)?;
    Ok(out)
}

/// [`embedding`] into `out: [T, H]`; allocates nothing. With `bad_id`
/// (`[1]` i32, zeroed by the caller), the kernel sets it to `1 + t` for
/// some token `t` whose id is out of range (left 0 if none).
pub fn embedding_into(
    gpu: &Gpu,
    ids: &DeviceTensor,
    table: &DeviceTensor,
    out: &mut DeviceTensor,
    bad_id: Option<&mut DeviceTensor>,
) -> Result<()> {
    let (tokens, vocab, hidden) = validate_embedding(ids.into(), table.into())?;
    expect_dtype(OP, "out", table.dtype(), out.dtype())?;
    expect_shape(OP, "out", &[tokens, hidden], out.shape())?;
    if let Some(flag) = &bad_id {
        expect_dtype(OP, "bad_id", DType::I32, flag.dtype())?;
        expect_shape(OP, "bad_id", &[1], flag.shape())?;
    }
    if tokens == 0 {
        return Ok(());
    }
    let dtype = table.dtype();
    let f = dtype_function(
        gpu,
        KernelId::Embedding,
        dtype,
        &format!("{OP}_{}", dtype.symbol_suffix()),
    )?;
    let config = row_chunks(tokens, units(hidden, dtype));
    let (hidden_i, vocab_i, null) = (hidden as i32, vocab as i32, 0u64);
    let mut launch = gpu.stream().launch_builder(&f);
    launch
        .arg(ids.buffer())
        .arg(table.buffer())
        .arg(out.buffer_mut())
        .arg(&hidden_i)
        .arg(&vocab_i);
    match bad_id {
        Some(flag) => launch.arg(flag.buffer_mut()),
        None => launch.arg(&null),
    };
    // SAFETY: signature (ids, table, out, int hidden, int vocab, int* bad);
    // grid.x = T; ids [T], table [V, H], out [T, H], flag [1] or null
    // (checked above); out-of-range ids never index the table.
    unsafe { launch.launch(config) }
        .map(drop)
        .map_err(Error::driver("launch embedding"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_argument() {
        let t = [50, 8];
        let e = validate_embedding(Meta::new(&[4], DType::F32), Meta::new(&t, DType::BF16)).unwrap_err();
        assert!(
            e.to_string().contains("`ids`") && e.to_string().contains("dtype f32"),
            "{e}"
        );
        let e = validate_embedding(Meta::new(&[4, 1], DType::I32), Meta::new(&t, DType::BF16)).unwrap_err();
        assert!(e.to_string().contains("`ids`"), "{e}");
        let e = validate_embedding(Meta::new(&[4], DType::I32), Meta::new(&t, DType::I8)).unwrap_err();
        assert!(e.to_string().contains("`table`"), "{e}");
        let e = validate_embedding(Meta::new(&[4], DType::I32), Meta::new(&[0, 8], DType::F16)).unwrap_err();
        assert!(e.to_string().contains("`table`"), "{e}");
        assert_eq!(
            validate_embedding(Meta::new(&[0], DType::I32), Meta::new(&t, DType::F16)).unwrap(),
            (0, 50, 8)
        );
        assert!(validate_token_ids(&[-1], 5).is_err());
    }

    #[test]
    fn scatter_validation_names_the_argument() {
        let (rows, dst) = (Meta::new(&[2], DType::I32), Meta::new(&[6, 8], DType::BF16));
        let cases = [
            (rows, Meta::new(&[2, 8], DType::F16), dst, "`src`"),
            (rows, Meta::new(&[3, 8], DType::BF16), dst, "`src`"),
            (
                Meta::new(&[2], DType::F32),
                Meta::new(&[2, 8], DType::BF16),
                dst,
                "`rows`",
            ),
            (
                rows,
                Meta::new(&[2, 8], DType::I8),
                Meta::new(&[6, 8], DType::I8),
                "`dst`",
            ),
            (
                rows,
                Meta::new(&[2, 8], DType::BF16),
                Meta::new(&[6, 0], DType::BF16),
                "`dst`",
            ),
        ];
        for (r, s, d, arg) in cases {
            let e = validate_scatter_rows(r, s, d).unwrap_err().to_string();
            assert!(e.contains(arg), "{arg}: {e}");
        }
        assert_eq!(
            validate_scatter_rows(
                Meta::new(&[0], DType::I32),
                Meta::new(&[0, 8], DType::F32),
                Meta::new(&[0, 8], DType::F32)
            )
            .unwrap(),
            (0, 0, 8)
        );
    }
}
