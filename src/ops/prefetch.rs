//! L2 prefetch of device buffers (NVRTC kernel `prefetch_l2`): pulls the
//! leading bytes of up to four tensors into the GPU's L2 cache without
//! changing anything. At decode the weights of the GEMMs after attention can
//! be fetched while attention (which leaves HBM mostly idle) runs, so those
//! GEMMs read L2 instead of HBM. Whether that pays is a measurement
//! (`MLLM_L2_PREFETCH` in the engine); the op itself only costs a launch.

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::dependent_launch::DependentLaunch;
use crate::device::Gpu;
use crate::registry::{KernelBuild, KernelId};
use crate::tensor::DeviceTensor;
use crate::{Error, Result};

const OP: &str = "prefetch_l2";

/// Most ranges one launch prefetches.
pub const MAX_PREFETCH_RANGES: usize = 4;

/// Blocks of 32 threads: each thread issues one prefetch per 64 KiB piece,
/// so 64 SMs issue a 40 MiB window's 640 pieces at once.
const BLOCKS: u32 = 64;

pub(super) fn symbols() -> Vec<String> {
    vec![OP.to_string()]
}

/// Checks `(tensor bytes, bytes to prefetch)` pairs: at most
/// [`MAX_PREFETCH_RANGES`], each within its tensor. Returns the byte counts
/// the kernel takes, rounded down to whole 16-byte units (a bulk prefetch's
/// granule; the tail of a range is simply not prefetched).
///
/// ```
/// use mllm_kernel::ops::validate_prefetch_l2;
/// assert_eq!(validate_prefetch_l2(&[(4096, 4096), (1000, 1000)]).unwrap(), [4096, 992]);
/// assert!(validate_prefetch_l2(&[(4096, 8192)]).unwrap_err().to_string().contains("4096"));
/// assert!(validate_prefetch_l2(&[(16, 16); 5]).is_err());
/// ```
pub fn validate_prefetch_l2(ranges: &[(usize, usize)]) -> Result<Vec<usize>> {
    if ranges.len() > MAX_PREFETCH_RANGES {
        return Err(Error::InvalidArgument {
            op: OP,
            arg: "ranges",
            reason: format!("{} ranges, at most {MAX_PREFETCH_RANGES} per launch", ranges.len()),
        });
    }
    ranges
        .iter()
        .map(|&(size, bytes)| {
            if bytes > size {
                return Err(Error::InvalidArgument {
                    op: OP,
                    arg: "bytes",
                    reason: format!("{bytes} bytes asked of a {size}-byte tensor"),
                });
            }
            Ok(bytes / 16 * 16)
        })
        .collect()
}

/// Prefetches the first `bytes` of each tensor into L2, ordered on the
/// GPU's stream after the kernels before it (under programmatic dependent
/// launch the next kernel starts at once; nothing is written).
///
/// ```no_run
/// use mllm_kernel::{ops, DType, DeviceTensor, Gpu};
/// let gpu = Gpu::new(0)?;
/// let weight = DeviceTensor::zeros(&gpu, &[4096, 4096], DType::I8)?;
/// ops::prefetch_l2(&gpu, &[(&weight, weight.nbytes())])?;
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub fn prefetch_l2(gpu: &Gpu, ranges: &[(&DeviceTensor, usize)]) -> Result<()> {
    let sizes: Vec<(usize, usize)> = ranges.iter().map(|(t, b)| (t.nbytes(), *b)).collect();
    let bytes = validate_prefetch_l2(&sizes)?;
    if bytes.iter().all(|&b| b == 0) {
        return Ok(());
    }
    let kernel = gpu.kernel(KernelBuild::new(KernelId::PrefetchL2, None)?)?;
    let f = kernel.function(KernelId::PrefetchL2, OP)?;
    let lens: Vec<i64> = (0..MAX_PREFETCH_RANGES)
        .map(|i| bytes.get(i).map_or(0, |&b| b as i64))
        .collect();
    let null = 0u64;
    let mut launch = DependentLaunch::new(gpu, &f);
    for (i, len) in lens.iter().enumerate() {
        match ranges.get(i) {
            Some((t, _)) => launch.arg(t.buffer()),
            None => launch.arg(&null),
        };
        launch.arg(len);
    }
    let config = LaunchConfig {
        grid_dim: (BLOCKS, 1, 1),
        block_dim: (32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: signature (ptr, i64 len) x 4; each len is within its buffer
    // (checked above) and unused ranges have len 0; device allocations are
    // 256-byte aligned and the lens whole 16-byte units, as bulk prefetches
    // need. The kernel waits for its producer before it exits.
    unsafe { launch.launch(config) }.map_err(Error::driver("launch prefetch_l2"))
}
