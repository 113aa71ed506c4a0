//! Which device a [`ModelRunner`](super::model_runner::ModelRunner) runs on.

use std::fmt;

use serde::Serialize;

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

/// What a device is, for performance records and `/server_info`. GPU fields are `None` on the
/// CPU backend.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceInfo {
    /// `cpu` or `cuda`.
    pub kind: &'static str,
    /// CPU model name from `/proc/cpuinfo`, or the GPU's name.
    pub name: String,
    /// Logical cores available to this process.
    pub cores: usize,
    /// Threads of the rayon pool the CPU kernels use.
    pub threads: usize,
    /// GPU compute capability (none on the CPU).
    pub compute_capability: Option<String>,
    /// GPU driver version (none on the CPU).
    pub driver: Option<String>,
    /// CUDA version (none on the CPU).
    pub cuda: Option<String>,
}

impl DeviceInfo {
    /// The device a runner uses.
    pub fn of(device: Device) -> Self {
        let Device::Cuda(ordinal) = device else {
            return Self::cpu();
        };
        let mut info = Self::cpu();
        info.kind = "cuda";
        if let Ok(gpu) = mllm_kernel::device::list_devices().map(|mut d| {
            let i = ordinal.min(d.len().saturating_sub(1));
            d.swap_remove(i)
        }) {
            let (major, minor) = gpu.compute_capability;
            info.name = gpu.name;
            info.compute_capability = Some(format!("{major}.{minor}"));
            info.driver = Some(gpu.driver_version);
        }
        // The CUDA release the kernels are compiled with (NVRTC's version).
        info.cuda = mllm_kernel::KernelEnv::from_process()
            .ok()
            .and_then(|env| mllm_kernel::jit::nvrtc_version(&env).ok())
            .map(|v| v.trim_start_matches("nvrtc ").to_string());
        info
    }

    /// This machine's CPU.
    pub fn cpu() -> Self {
        let name = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        Self {
            kind: "cpu",
            name,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            threads: rayon::current_num_threads(),
            compute_capability: None,
            driver: None,
            cuda: None,
        }
    }
}
