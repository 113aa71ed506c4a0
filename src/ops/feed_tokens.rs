//! Sampled ids fed into the next step's input ids on the device (NVRTC
//! kernel `feed_tokens`). Overlap scheduling launches step k + 1 before the
//! host has read step k's tokens; the rows of step k + 1 that continue a
//! sequence of step k take their token straight from step k's sampled ids.

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::expect_dtype;
use crate::device::Gpu;
use crate::dtype::DType;
use crate::registry::{KernelBuild, KernelId};
use crate::tensor::DeviceTensor;
use crate::{Error, Result};

const OP: &str = "feed_tokens";

pub(super) fn symbols() -> Vec<String> {
    vec![OP.to_string()]
}

/// Checks `(row of ids, row of sampled)` pairs against both lengths; a row
/// of `ids` may be fed only once.
///
/// ```
/// use mllm_kernel::ops::validate_feed_tokens;
/// assert!(validate_feed_tokens(8, 2, &[(7, 0), (3, 1)]).is_ok());
/// assert!(validate_feed_tokens(8, 2, &[(8, 0)]).unwrap_err().to_string().contains("8 input ids"));
/// assert!(validate_feed_tokens(8, 2, &[(1, 2)]).unwrap_err().to_string().contains("2 sampled"));
/// assert!(validate_feed_tokens(8, 2, &[(1, 0), (1, 1)]).unwrap_err().to_string().contains("twice"));
/// ```
pub fn validate_feed_tokens(ids_len: usize, sampled_len: usize, pairs: &[(usize, usize)]) -> Result<()> {
    let bad = |reason: String| Error::InvalidArgument {
        op: OP,
        arg: "pairs",
        reason,
    };
    if ids_len > i32::MAX as usize || sampled_len > i32::MAX as usize || pairs.len() > i32::MAX as usize {
        return Err(bad("more than 2^31 - 1 rows".into()));
    }
    let mut fed = vec![false; ids_len];
    for &(row, src) in pairs {
        if row >= ids_len {
            return Err(bad(format!("row {row} is past the {ids_len} input ids")));
        }
        if src >= sampled_len {
            return Err(bad(format!("source {src} is past the {sampled_len} sampled ids")));
        }
        if std::mem::replace(&mut fed[row], true) {
            return Err(bad(format!("row {row} is fed twice")));
        }
    }
    Ok(())
}

/// `ids[row] = sampled[src]` for each `(row, src)` row of `pairs: [n, 2]` i32, on the GPU's
/// stream (`ids` and `sampled` i32 vectors). The caller checks the pairs with
/// [`validate_feed_tokens`] before uploading them (they are on the device, so the kernel
/// can only skip a pair out of range, not report it).
///
/// ```no_run
/// use mllm_kernel::{ops, DeviceTensor, Gpu};
/// let gpu = Gpu::new(0)?;
/// let sampled = DeviceTensor::from_host(&gpu, &[11i32, 22], &[2])?;
/// let mut ids = DeviceTensor::from_host(&gpu, &[0i32, 5, 0], &[3])?;
/// ops::validate_feed_tokens(3, 2, &[(0, 1), (2, 0)])?;
/// let pairs = DeviceTensor::from_host(&gpu, &[0i32, 1, 2, 0], &[2, 2])?;
/// ops::feed_tokens_into(&gpu, &mut ids, &sampled, &pairs)?;
/// assert_eq!(ids.to_host::<i32>(&gpu)?, vec![22, 5, 11]);
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub fn feed_tokens_into(gpu: &Gpu, ids: &mut DeviceTensor, sampled: &DeviceTensor, pairs: &DeviceTensor) -> Result<()> {
    expect_dtype(OP, "ids", DType::I32, ids.dtype())?;
    expect_dtype(OP, "sampled", DType::I32, sampled.dtype())?;
    expect_dtype(OP, "pairs", DType::I32, pairs.dtype())?;
    let n = match *pairs.shape() {
        [n, 2] => n,
        _ => {
            return Err(Error::ShapeMismatch {
                op: OP,
                arg: "pairs",
                expected: "[n, 2]".into(),
                got: pairs.shape().to_vec(),
            })
        }
    };
    if ids.numel() > i32::MAX as usize || sampled.numel() > i32::MAX as usize || n > i32::MAX as usize {
        return Err(Error::InvalidArgument {
            op: OP,
            arg: "pairs",
            reason: "more than 2^31 - 1 rows".into(),
        });
    }
    if n == 0 {
        return Ok(());
    }
    let kernel = gpu.kernel(KernelBuild::new(KernelId::FeedTokens, None)?)?;
    let f = kernel.function(KernelId::FeedTokens, OP)?;
    let (ids_len, sampled_len, n_i) = (ids.numel() as i32, sampled.numel() as i32, n as i32);
    let mut launch = gpu.stream().launch_builder(&f);
    launch
        .arg(ids.buffer_mut())
        .arg(&ids_len)
        .arg(sampled.buffer())
        .arg(&sampled_len)
        .arg(pairs.buffer())
        .arg(&n_i);
    let config = LaunchConfig {
        grid_dim: (n.div_ceil(256) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: signature (int* ids, int, const int* sampled, int, const int* pairs, int n);
    // the lengths are the tensors' (i32, checked above) and pairs holds 2n ints; the kernel
    // skips any pair out of range.
    unsafe { launch.launch(config) }
        .map(drop)
        .map_err(Error::driver("launch feed_tokens"))
}
