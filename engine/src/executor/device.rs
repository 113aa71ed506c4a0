//! Which device a [`ModelRunner`](super::model_runner::ModelRunner) runs on.

use std::fmt;

/// Where the model's weights, K/V cache and forward live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// The host CPU (f32 compute over bf16/f32 weights).
    #[default]
    Cpu,
    /// CUDA device with this ordinal.
    Cuda(usize),
}

impl Device {
    /// CUDA device 0 when a driver and a GPU are present, else the CPU (`--device auto`).
    ///
    /// ```
    /// use mllm_engine::executor::device::Device;
    /// let d = Device::auto();
    /// assert!(matches!(d, Device::Cpu | Device::Cuda(0)));
    /// ```
    pub fn auto() -> Self {
        match mllm_kernel::device::cuda_device_count() {
            Ok(n) if n > 0 => Device::Cuda(0),
            _ => Device::Cpu,
        }
    }

    /// Whether this is a GPU.
    pub fn is_cuda(self) -> bool {
        matches!(self, Device::Cuda(_))
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}
