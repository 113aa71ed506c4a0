//! Performance records (JSON lines, DESIGN.md "Conventions"): the environment part.

use std::process::Command;

use serde::Serialize;

/// The device a benchmark ran on. GPU fields are `None` on the CPU backend.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DeviceInfo {
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
    pub fn of(device: crate::executor::device::Device) -> Self {
        use crate::executor::device::Device;
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

/// The source revision: `git rev-parse HEAD` and whether tracked files differ from it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Revision {
    /// The commit hash, or `unknown` outside a git checkout.
    pub commit: String,
    /// Tracked files modified (`None` if unknown).
    pub dirty: Option<bool>,
}

impl Revision {
    /// Asks git in the current directory (read-only commands).
    pub fn current() -> Self {
        let git = |args: &[&str]| {
            Command::new("git")
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        match git(&["rev-parse", "HEAD"]) {
            Some(commit) if !commit.is_empty() => Self {
                commit,
                dirty: git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty()),
            },
            _ => Self {
                commit: "unknown".into(),
                dirty: None,
            },
        }
    }
}

/// The command line as typed (arguments with spaces quoted).
pub(crate) fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if a.is_empty() || a.contains(char::is_whitespace) {
                format!("{a:?}")
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
