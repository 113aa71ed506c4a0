//! Finding the compilers and naming them by identity (version), not path.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use super::spec::Compiler;
use crate::env::KernelEnv;
use crate::{Error, Result};

/// A compiler as it enters the cache key: kind + version text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CompilerId {
    pub compiler: Compiler,
    pub version: String,
}

/// The nvcc binary to use: `NVCC`, `$CUDA_HOME/bin/nvcc`, the project-local
/// toolkit, then `nvcc` on `PATH`.
pub fn find_nvcc(env: &KernelEnv) -> Result<PathBuf> {
    if let Some(nvcc) = &env.nvcc {
        return if nvcc.is_file() {
            Ok(nvcc.clone())
        } else {
            Err(Error::ToolNotFound {
                what: "nvcc",
                reason: format!("NVCC={} does not exist", nvcc.display()),
                env_var: "NVCC",
            })
        };
    }
    let from_home = env.resolved_cuda_home().map(|h| h.join("bin").join("nvcc"));
    let on_path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("nvcc"))
        .find(|p| p.is_file());
    from_home
        .filter(|p| p.is_file())
        .or(on_path)
        .ok_or_else(|| Error::ToolNotFound {
            what: "nvcc",
            reason: "no nvcc in CUDA_HOME, .toolchain/ or PATH".into(),
            env_var: "CUDA_HOME or NVCC",
        })
}

/// `nvcc --version`, reduced to the lines that identify the build
/// (release + build id), memoized per binary.
pub fn nvcc_version(nvcc: &Path) -> Result<String> {
    static SEEN: OnceLock<Mutex<Vec<(PathBuf, String)>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    if let Some((_, v)) = seen.lock().unwrap().iter().find(|(p, _)| p == nvcc) {
        return Ok(v.clone());
    }
    let out = Command::new(nvcc).arg("--version").output().map_err(Error::io(nvcc))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("release") || l.starts_with("Build"))
        .map(str::trim)
        .collect();
    if !out.status.success() || version.is_empty() {
        return Err(Error::ToolNotFound {
            what: "nvcc",
            reason: format!(
                "`{} --version` failed: {}",
                nvcc.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            env_var: "NVCC",
        });
    }
    let version = version.join("; ");
    seen.lock().unwrap().push((nvcc.to_path_buf(), version.clone()));
    Ok(version)
}

/// Makes NVRTC loadable and returns its version. cudarc opens
/// `libnvrtc.so.13` by bare name; loading it first by full path from the
/// resolved CUDA home lets that lookup succeed without `LD_LIBRARY_PATH`
/// (the dynamic loader matches an already-loaded SONAME).
pub fn nvrtc_version(env: &KernelEnv) -> Result<String> {
    static VERSION: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    VERSION
        .get_or_init(|| {
            preload_cuda_libs(env, &["libnvrtc-builtins.so.13.0", "libnvrtc.so.13"]);
            // SAFETY: only probes dlopen; no symbol is called.
            if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
                return Err("libnvrtc.so.13 not found in CUDA_HOME/lib{,64} or the loader path".into());
            }
            let (mut major, mut minor) = (0, 0);
            // SAFETY: both out-pointers are valid for the call.
            let rc = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
            if rc != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
                return Err(format!("nvrtcVersion failed: {rc:?}"));
            }
            Ok(format!("nvrtc {major}.{minor}"))
        })
        .clone()
        .map_err(|reason| Error::ToolNotFound {
            what: "NVRTC",
            reason,
            env_var: "CUDA_HOME",
        })
}

/// The compiler identity, memoized in `memo` (a JSON file in the cache root)
/// by the compiler binary's path, size and mtime: a warm cache hit then
/// runs no `nvcc --version` and loads no NVRTC.
pub fn compiler_id_memoized(env: &KernelEnv, compiler: Compiler, memo: &Path) -> Result<CompilerId> {
    let binary = match compiler {
        Compiler::Nvcc => Some(find_nvcc(env)?),
        Compiler::Nvrtc => nvrtc_library(env),
    };
    let Some(stamp) = binary.as_deref().and_then(file_stamp) else {
        return compiler_id(env, compiler);
    };
    let mut table: std::collections::BTreeMap<String, String> = std::fs::read(memo)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if let Some(version) = table.get(&stamp) {
        return Ok(CompilerId {
            compiler,
            version: version.clone(),
        });
    }
    let id = compiler_id(env, compiler)?;
    table.insert(stamp, id.version.clone());
    // Best effort (a read-only root just stays unmemoized); atomic via rename.
    let tmp = memo.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, serde_json::to_vec_pretty(&table).unwrap_or_default()).is_ok() {
        let _ = std::fs::rename(&tmp, memo);
    }
    Ok(id)
}

/// `path|size|mtime_ns` of a file, following symlinks.
fn file_stamp(path: &Path) -> Option<String> {
    let real = std::fs::canonicalize(path).ok()?;
    let meta = std::fs::metadata(&real).ok()?;
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some(format!("{}|{}|{mtime}", real.display(), meta.len()))
}

/// The NVRTC library file in the resolved CUDA home, if there is one.
fn nvrtc_library(env: &KernelEnv) -> Option<PathBuf> {
    let home = env.resolved_cuda_home()?;
    ["lib64", "lib"]
        .iter()
        .map(|d| home.join(d).join("libnvrtc.so.13"))
        .find(|p| p.is_file())
}

/// The compiler identity for `compiler`.
pub fn compiler_id(env: &KernelEnv, compiler: Compiler) -> Result<CompilerId> {
    let version = match compiler {
        Compiler::Nvrtc => nvrtc_version(env)?,
        Compiler::Nvcc => nvcc_version(&find_nvcc(env)?)?,
    };
    Ok(CompilerId { compiler, version })
}

/// dlopens each library from `$CUDA_HOME/lib` or `lib64` (first found) and
/// keeps it loaded for the life of the process.
fn preload_cuda_libs(env: &KernelEnv, names: &[&str]) {
    static KEEP: Mutex<Vec<libloading::Library>> = Mutex::new(Vec::new());
    let Some(home) = env.resolved_cuda_home() else {
        return;
    };
    for name in names {
        for dir in ["lib64", "lib"] {
            let path = home.join(dir).join(name);
            if path.is_file() {
                // SAFETY: CUDA's own libraries; their initializers are benign.
                if let Ok(lib) = unsafe { libloading::Library::new(&path) } {
                    KEEP.lock().unwrap().push(lib);
                    break;
                }
            }
        }
    }
}
