//! Launch helpers shared by the row-wise NVRTC ops (activation, rope,
//! embedding, KV store, sampling): the per-dtype function and the
//! (rows, chunks) grid they use.

use cudarc::driver::{CudaFunction, LaunchConfig};

use super::Meta;
use crate::device::Gpu;
use crate::dtype::DType;
use crate::registry::{KernelBuild, KernelId};
use crate::{Error, Result};

/// `symbol` from the build of `id` for `dtype` (one JIT build per dtype).
pub(super) fn dtype_function(gpu: &Gpu, id: KernelId, dtype: DType, symbol: &str) -> Result<CudaFunction> {
    let kernel = gpu.kernel(KernelBuild::new(id, Some(dtype.symbol_suffix()))?)?;
    kernel.function(id, symbol)
}

/// Symbols `{base}_{dtype}` for the float dtypes a variant (or all) builds.
pub(super) fn float_symbols(bases: &[&str], variant: Option<&str>) -> Vec<String> {
    [DType::F32, DType::F16, DType::BF16]
        .into_iter()
        .filter(|d| variant.is_none_or(|v| v == d.symbol_suffix()))
        .flat_map(|d| bases.iter().map(move |b| format!("{b}_{}", d.symbol_suffix())))
        .collect()
}

/// Threads per block for the row-copy kernels.
const THREADS: usize = 256;
/// Columns-of-work per thread a block aims at before a row is split over
/// more blocks (grid.y), so one decode token still uses several SMs.
const UNITS_PER_THREAD: usize = 4;

/// Grid (rows, chunks) x 256 threads for a row of `units` vector units.
pub(super) fn row_chunks(rows: usize, units: usize) -> LaunchConfig {
    let chunks = units.div_ceil(THREADS * UNITS_PER_THREAD).clamp(1, 65_535);
    let threads = units.div_ceil(32).clamp(1, THREADS / 32) * 32;
    LaunchConfig {
        grid_dim: (rows as u32, chunks as u32, 1),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Vector units of a row of `cols` elements: 16-byte packs when `cols` is a
/// multiple of one, else single elements (as the kernels choose).
pub(super) fn units(cols: usize, dtype: DType) -> usize {
    let vec = 16 / dtype.size();
    if cols.is_multiple_of(vec) {
        cols / vec
    } else {
        cols
    }
}

/// `[T, ...]` as (T, elements per row), requiring rank >= 2 (or exactly
/// `rank` when given) and T, row < 2^31.
pub(super) fn leading_rows(op: &'static str, arg: &'static str, m: Meta) -> Result<(usize, usize)> {
    if m.shape.len() < 2 {
        return Err(Error::ShapeMismatch {
            op,
            arg,
            expected: "rank >= 2 ([tokens, ...])".into(),
            got: m.shape.to_vec(),
        });
    }
    let rows = m.shape[0];
    let row: usize = m.shape[1..].iter().product();
    if rows > i32::MAX as usize || row > i32::MAX as usize {
        return Err(Error::InvalidArgument {
            op,
            arg,
            reason: format!("{rows} rows x {row} elements exceeds the 2^31-1 launch limit"),
        });
    }
    Ok((rows, row))
}

/// Requires an i32 vector of `len` elements (token ids, positions, slots).
pub(super) fn expect_i32_vec(op: &'static str, arg: &'static str, m: Meta, len: usize) -> Result<()> {
    super::expect_dtype(op, arg, DType::I32, m.dtype)?;
    super::expect_shape(op, arg, &[len], m.shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_splits_long_rows_and_keeps_whole_warps() {
        let c = row_chunks(3, 1792);
        assert_eq!((c.grid_dim, c.block_dim.0), ((3, 2, 1), 256));
        let c = row_chunks(1, 5);
        assert_eq!((c.grid_dim, c.block_dim.0), ((1, 1, 1), 32));
        assert_eq!(units(4096, DType::BF16), 512);
        assert_eq!(units(4100, DType::BF16), 4100);
        assert_eq!(units(4100, DType::F32), 1025);
    }

    #[test]
    fn float_symbols_follow_the_variant() {
        assert_eq!(float_symbols(&["a", "b"], Some("bf16")), ["a_bf16", "b_bf16"]);
        assert_eq!(float_symbols(&["a"], None), ["a_f32", "a_f16", "a_bf16"]);
    }
}
