//! Embedding lookup (NVRTC kernel `embedding`).

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
    float_symbols(&[OP], variant)
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
}
