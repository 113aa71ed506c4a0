//! GELU, tanh-approximated or exact (NVRTC kernel `gelu`; the vision MLP
//! and patch mergers).

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::launch::{dtype_function, float_symbols};
use super::{expect_dtype, expect_float, expect_shape};
use crate::device::Gpu;
use crate::registry::KernelId;
use crate::tensor::DeviceTensor;
use crate::{Error, Result};

const OP: &str = "gelu";

pub(super) fn symbols(variant: Option<&str>) -> Vec<String> {
    float_symbols(&["gelu_tanh", "gelu_erf"], variant)
}

/// Which GELU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gelu {
    /// `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))` (HF `gelu_pytorch_tanh`).
    Tanh,
    /// `0.5 x (1 + erf(x / √2))` (torch's default `nn.GELU()`).
    Erf,
}

/// `out = gelu(x)` elementwise (f32 math, one rounding); `out` has x's
/// shape and dtype and may be `x` itself via [`gelu_inplace`].
///
/// ```no_run
/// use mllm_kernel::{ops::{self, Gelu}, DeviceTensor, Gpu};
/// use half::bf16;
/// let gpu = Gpu::new(0)?;
/// let x = DeviceTensor::from_host(&gpu, &vec![bf16::ONE; 4096], &[1, 4096])?;
/// let mut y = DeviceTensor::empty(&gpu, &[1, 4096], mllm_kernel::DType::BF16)?;
/// ops::gelu_into(&gpu, &x, Gelu::Tanh, &mut y)?;
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub fn gelu_into(gpu: &Gpu, x: &DeviceTensor, kind: Gelu, out: &mut DeviceTensor) -> Result<()> {
    expect_float(OP, "x", x.dtype())?;
    expect_dtype(OP, "out", x.dtype(), out.dtype())?;
    expect_shape(OP, "out", x.shape(), out.shape())?;
    let (n, dtype) = (x.numel(), x.dtype());
    let (src, _gx) = x.raw_ptr(gpu.stream());
    let (dst, _go) = out.raw_ptr_mut(gpu.stream());
    launch(gpu, kind, (src, dst), n, dtype)
}

/// [`gelu_into`] in place.
pub fn gelu_inplace(gpu: &Gpu, x: &mut DeviceTensor, kind: Gelu) -> Result<()> {
    expect_float(OP, "x", x.dtype())?;
    let (n, dtype) = (x.numel(), x.dtype());
    let (ptr, _g) = x.raw_ptr_mut(gpu.stream());
    launch(gpu, kind, (ptr, ptr), n, dtype)
}

fn launch(gpu: &Gpu, kind: Gelu, (src, dst): (u64, u64), n: usize, dtype: crate::DType) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let base = match kind {
        Gelu::Tanh => "gelu_tanh",
        Gelu::Erf => "gelu_erf",
    };
    let f = dtype_function(gpu, KernelId::Gelu, dtype, &format!("{base}_{}", dtype.symbol_suffix()))?;
    let blocks = n.div_ceil(256).min(65_535 * 8) as u32;
    let config = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let n_i = n as i64;
    let mut launch = gpu.stream().launch_builder(&f);
    launch.arg(&src).arg(&dst).arg(&n_i);
    // SAFETY: signature (x, out, long long n); both addresses hold n elements
    // of `dtype` (checked by the callers, their guards live across the
    // launch); they may be equal: the kernel reads each element before the
    // same thread writes it. Grid-stride loop.
    unsafe { launch.launch(config) }
        .map(drop)
        .map_err(Error::driver("launch gelu"))
}
