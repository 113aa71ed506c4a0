//! Every environment variable the kernel library reads, parsed in one place.
//!
//! Nothing else in the crate calls `std::env::var`; code takes a [`KernelEnv`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::jit::Arch;
use crate::{Error, Result};

/// Where the crate was built from; the default home of the project-local
/// toolchain (`.toolchain/`) and headers (`third_party/`).
pub const SOURCE_ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The `MLLM_*` variables of this process (kernel choices and tuning knobs such as
/// `MLLM_INT8_MM_CONFIG`, `MLLM_DECODE_KERNEL` or `MLLM_PDL`), sorted: what a benchmark
/// record ran under.
///
/// ```
/// let vars = mllm_kernel::env::mllm_vars();
/// assert!(vars.keys().all(|k| k.starts_with("MLLM_")));
/// ```
pub fn mllm_vars() -> BTreeMap<String, String> {
    std::env::vars().filter(|(k, _)| k.starts_with("MLLM_")).collect()
}

/// Resolved configuration from the environment.
#[derive(Debug, Clone, Default)]
pub struct KernelEnv {
    /// `CUDA_HOME` (or `CUDA_PATH`).
    pub cuda_home: Option<PathBuf>,
    /// `NVCC`: an explicit nvcc binary.
    pub nvcc: Option<PathBuf>,
    /// `CUTLASS_HOME`.
    pub cutlass_home: Option<PathBuf>,
    /// `FLASHINFER_HOME`.
    pub flashinfer_home: Option<PathBuf>,
    /// `MLLM_CUDA_ARCHS`, e.g. `80;90a`.
    pub cuda_archs: Vec<Arch>,
    /// `MLLM_KERNEL_CACHE_DIR`.
    pub cache_dir: Option<PathBuf>,
    /// `MLLM_KERNEL_LOCK_DIR`: keeps lock files off a network filesystem.
    pub lock_dir: Option<PathBuf>,
    /// `MLLM_KERNEL_JIT=0` turns a cache miss into an error.
    pub jit_disabled: bool,
    /// `MLLM_KERNEL_LOCK_TIMEOUT` (seconds) bounds the wait for another builder.
    pub lock_timeout: Option<Duration>,
}

impl KernelEnv {
    /// Reads the process environment.
    pub fn from_process() -> Result<Self> {
        Self::from_lookup(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    }

    /// Reads configuration through `lookup` (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let path = |name: &str| lookup(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let cuda_archs = match lookup("MLLM_CUDA_ARCHS").filter(|v| !v.trim().is_empty()) {
            Some(list) => Arch::parse_list(&list).map_err(|e| Error::BadEnv {
                var: "MLLM_CUDA_ARCHS",
                value: list.clone(),
                reason: e.to_string(),
            })?,
            None => Vec::new(),
        };
        let jit_disabled = match lookup("MLLM_KERNEL_JIT").as_deref().map(str::trim) {
            None | Some("") | Some("1") | Some("true") | Some("on") => false,
            Some("0") | Some("false") | Some("off") => true,
            Some(other) => {
                return Err(Error::BadEnv {
                    var: "MLLM_KERNEL_JIT",
                    value: other.into(),
                    reason: "expected 0 or 1".into(),
                })
            }
        };
        let lock_timeout = match lookup("MLLM_KERNEL_LOCK_TIMEOUT") {
            None => None,
            Some(v) => Some(
                v.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|s| *s > 0.0)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| Error::BadEnv {
                        var: "MLLM_KERNEL_LOCK_TIMEOUT",
                        value: v.clone(),
                        reason: "expected a positive number of seconds".into(),
                    })?,
            ),
        };
        Ok(Self {
            cuda_home: path("CUDA_HOME").or_else(|| path("CUDA_PATH")),
            nvcc: path("NVCC"),
            cutlass_home: path("CUTLASS_HOME"),
            flashinfer_home: path("FLASHINFER_HOME"),
            cuda_archs,
            cache_dir: path("MLLM_KERNEL_CACHE_DIR"),
            lock_dir: path("MLLM_KERNEL_LOCK_DIR"),
            jit_disabled,
            lock_timeout,
        })
    }

    /// The CUDA toolkit to use: `CUDA_HOME`, else the project-local one made by
    /// `scripts/setup.sh`, else `/usr/local/cuda`.
    pub fn resolved_cuda_home(&self) -> Option<PathBuf> {
        if let Some(home) = &self.cuda_home {
            return Some(home.clone());
        }
        if let Some(nvcc) = &self.nvcc {
            // NVCC=/x/bin/nvcc → /x
            if let Some(home) = nvcc.parent().and_then(Path::parent) {
                return Some(home.to_path_buf());
            }
        }
        [project_cuda_home(), PathBuf::from("/usr/local/cuda")]
            .into_iter()
            .find(|p| p.join("bin").join("nvcc").is_file() || p.join("lib").is_dir())
    }

    /// CUTLASS checkout: `CUTLASS_HOME`, else `third_party/cutlass`.
    pub fn resolved_cutlass_home(&self) -> PathBuf {
        self.cutlass_home
            .clone()
            .unwrap_or_else(|| Path::new(SOURCE_ROOT).join("third_party").join("cutlass"))
    }

    /// FlashInfer headers: `FLASHINFER_HOME`, else `third_party/flashinfer`.
    pub fn resolved_flashinfer_home(&self) -> PathBuf {
        self.flashinfer_home
            .clone()
            .unwrap_or_else(|| Path::new(SOURCE_ROOT).join("third_party").join("flashinfer"))
    }

    /// The cache root: `MLLM_KERNEL_CACHE_DIR`, else `<user cache dir>/mllm_kernel`.
    pub fn resolved_cache_root(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(default_cache_root)
    }

    /// How long to wait for another process building the same entry.
    pub fn lock_wait(&self) -> Duration {
        self.lock_timeout.unwrap_or(Duration::from_secs(900))
    }
}

/// `~/.cache/mllm_kernel` on Linux.
pub fn default_cache_root() -> PathBuf {
    dirs::cache_dir().unwrap_or_else(std::env::temp_dir).join("mllm_kernel")
}

/// The CUDA home `scripts/setup.sh` installs from PyPI.
pub fn project_cuda_home() -> PathBuf {
    Path::new(SOURCE_ROOT).join(".toolchain/cuda/nvidia/cu13")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<KernelEnv> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        KernelEnv::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn parses_archs_and_flags() {
        let e = env(&[("MLLM_CUDA_ARCHS", "80;90a"), ("MLLM_KERNEL_JIT", "0")]).unwrap();
        assert_eq!(
            e.cuda_archs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            ["sm_80", "sm_90a"]
        );
        assert!(e.jit_disabled);
    }

    #[test]
    fn rejects_bad_values_naming_the_variable() {
        let err = env(&[("MLLM_KERNEL_JIT", "maybe")]).unwrap_err().to_string();
        assert!(err.contains("MLLM_KERNEL_JIT"), "{err}");
        let err = env(&[("MLLM_CUDA_ARCHS", "80;hopper")]).unwrap_err().to_string();
        assert!(err.contains("MLLM_CUDA_ARCHS") && err.contains("hopper"), "{err}");
        let err = env(&[("MLLM_KERNEL_LOCK_TIMEOUT", "-3")]).unwrap_err().to_string();
        assert!(err.contains("MLLM_KERNEL_LOCK_TIMEOUT"), "{err}");
    }
}
