//! The JIT: turns a [`KernelSpec`] into a cached, verified artifact.
//!
//! `get` = fast path (valid entry → done) → lock → re-check → compile in a
//! temp dir → atomic rename. Failed builds are recorded with their log but
//! never as success, and are retried on the next call.

mod arch;
pub mod cache;
mod compile;
mod key;
mod lock;
pub mod manage;
mod spec;
mod toolchain;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub use arch::Arch;
pub use cache::{CacheRoot, EntryState, EntryStatus, Manifest};
pub use compile::{first_errors, key_flags};
pub use key::{sha256_hex, CacheKey};
pub use lock::BuildLock;
pub use spec::{Compiler, KernelSpec, SourceTree, ThirdParty};
pub use toolchain::{compiler_id, compiler_id_memoized, find_nvcc, nvcc_version, nvrtc_version, CompilerId};

use crate::env::KernelEnv;
use crate::{Error, Result};

/// A verified artifact in the cache.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub path: PathBuf,
    pub manifest: Manifest,
    /// True when this call compiled it.
    pub compiled: bool,
}

/// The kernel cache at one root.
///
/// ```no_run
/// use mllm_kernel::{jit::{JitCache, KernelSpec}, KernelEnv, registry::KernelId};
/// let jit = JitCache::new(KernelEnv::from_process()?)?;
/// let art = jit.get(&KernelSpec::builtin(KernelId::RmsNorm), "sm_90a".parse()?)?;
/// println!("{}", art.path.display());
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct JitCache {
    env: KernelEnv,
    root: CacheRoot,
    /// Whether a build on a cache miss is announced on stderr.
    announce_builds: bool,
}

impl JitCache {
    /// Opens the cache root named by `env`, checking its ownership and mode.
    pub fn new(env: KernelEnv) -> Result<Self> {
        let root = CacheRoot::open(&env.resolved_cache_root())?;
        Ok(Self::with_root(env, root))
    }

    /// A cache over an already opened root (e.g. one known to be read-only).
    pub fn with_root(env: KernelEnv, root: CacheRoot) -> Self {
        Self {
            env,
            root,
            announce_builds: true,
        }
    }

    /// The same cache, building on a miss without the stderr notice (for
    /// callers that report each build themselves, such as `mllm-kernel check`).
    pub fn quiet(mut self) -> Self {
        self.announce_builds = false;
        self
    }

    pub fn root(&self) -> &CacheRoot {
        &self.root
    }

    pub fn env(&self) -> &KernelEnv {
        &self.env
    }

    /// Where build locks live.
    pub fn lock_dir(&self) -> PathBuf {
        self.env
            .lock_dir
            .clone()
            .unwrap_or_else(|| self.root.path.join(".locks"))
    }

    /// The key of `spec` on `arch` with this machine's compiler.
    pub fn key(&self, spec: &KernelSpec, arch: Arch) -> Result<CacheKey> {
        let compiler = compiler_id_memoized(&self.env, spec.compiler, &self.root.path.join(".compilers.json"))?;
        self.key_with(spec, arch, compiler)
    }

    fn key_with(&self, spec: &KernelSpec, arch: Arch, compiler: CompilerId) -> Result<CacheKey> {
        let third_party = spec
            .third_party
            .iter()
            .map(|tp| Ok((*tp, third_party_version(&self.env, *tp)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(CacheKey::new(spec, arch, compiler, key_flags(spec, arch), third_party))
    }

    /// Returns the artifact of `spec` for `arch`, compiling it if needed.
    pub fn get(&self, spec: &KernelSpec, arch: Arch) -> Result<Artifact> {
        let key = match self.key(spec, arch) {
            Ok(key) => key,
            // No compiler here (a runtime image): a prebuilt entry that
            // matches in everything but the compiler is still good.
            Err(e @ Error::ToolNotFound { .. }) => return self.find_prebuilt(spec, arch).ok_or(e),
            Err(e) => return Err(e),
        };
        self.get_keyed(spec, &key)
    }

    /// Like [`get`](Self::get) for a precomputed key.
    pub fn get_keyed(&self, spec: &KernelSpec, key: &CacheKey) -> Result<Artifact> {
        let dir = self.root.entry_dir(key);
        if let EntryState::Valid(manifest) = cache::inspect_entry(&dir) {
            cache::touch(&dir);
            return Ok(artifact(&dir, manifest, false));
        }
        if !self.root.writable {
            return Err(Error::ReadOnlyMiss {
                root: self.root.path.clone(),
                key: key.to_string(),
                suggestion: crate::env::default_cache_root(),
            });
        }
        if self.env.jit_disabled {
            return Err(Error::JitDisabled {
                kernel: key.build_name(),
                arch: key.arch.to_string(),
                key: key.to_string(),
                path: dir,
            });
        }
        let _lock = self.lock_entry(key)?;
        match cache::inspect_entry(&dir) {
            EntryState::Valid(manifest) => return Ok(artifact(&dir, manifest, false)),
            EntryState::Corrupt(reason) => {
                eprintln!("mllm-kernel: warning: cache entry {key} is corrupt ({reason}); rebuilding")
            }
            EntryState::Failed(_) | EntryState::Missing => {}
        }
        // A CUTLASS build takes minutes; say why the first call is slow.
        if self.announce_builds {
            eprintln!(
                "mllm-kernel: compiling {} for {} (first use; cached in {})",
                key.build_name(),
                key.arch,
                dir.display()
            );
        }
        let started = Instant::now();
        let built = self.build_locked(spec, key, &dir)?;
        if self.announce_builds {
            eprintln!(
                "mllm-kernel: compiled {} in {:.1}s",
                key.build_name(),
                started.elapsed().as_secs_f64()
            );
        }
        Ok(built)
    }

    /// Recompiles `spec` for `arch` even if a valid entry exists. An explicit
    /// build, so `MLLM_KERNEL_JIT=0` does not apply; the old entry is only
    /// replaced once the entry's lock is held.
    pub fn rebuild(&self, spec: &KernelSpec, arch: Arch) -> Result<Artifact> {
        let key = self.key(spec, arch)?;
        if !self.root.writable {
            return Err(Error::ReadOnlyMiss {
                root: self.root.path.clone(),
                key: key.to_string(),
                suggestion: crate::env::default_cache_root(),
            });
        }
        let _lock = self.lock_entry(&key)?;
        self.build_locked(spec, &key, &self.root.entry_dir(&key))
    }

    fn lock_entry(&self, key: &CacheKey) -> Result<BuildLock> {
        let lock_dir = self.lock_dir();
        cache::create_private_dir(&lock_dir).map_err(Error::io(&lock_dir))?;
        let lock_path = lock_dir.join(format!("{}-{}.lock", key.kernel, key.dir_name()));
        BuildLock::acquire(&lock_path, &key.to_string(), self.env.lock_wait())
    }

    /// Compiles into a temp dir and renames it into place. Caller holds the lock.
    fn build_locked(&self, spec: &KernelSpec, key: &CacheKey, dir: &Path) -> Result<Artifact> {
        let kernel_dir = dir.parent().expect("entry has a parent");
        cache::create_private_dir(kernel_dir).map_err(Error::io(kernel_dir))?;
        sweep_stale_temps(kernel_dir, &key.dir_name());
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let tmp = kernel_dir.join(format!(".tmp-{}-{}-{nanos}", key.dir_name(), std::process::id()));
        cache::create_private_dir(&tmp).map_err(Error::io(&tmp))?;

        let result = self.compile_into(spec, key, &tmp);
        let manifest = match result {
            Ok(m) => m,
            Err(e) => {
                let _ = cache::remove_tree(&tmp);
                return Err(e);
            }
        };
        let _ = fs::remove_dir_all(tmp.join("src"));
        cache::remove_tree(dir).map_err(Error::io(dir))?;
        fs::rename(&tmp, dir).map_err(Error::io(dir))?;
        if manifest.status == EntryStatus::Ok {
            return Ok(artifact(dir, manifest, true));
        }
        let log = fs::read_to_string(dir.join("build.log")).unwrap_or_default();
        Err(Error::CompileFailed {
            kernel: key.build_name(),
            arch: key.arch.to_string(),
            compiler: key.compiler.version.clone(),
            first_errors: first_errors(&log),
            log: dir.join("build.log"),
        })
    }

    fn compile_into(&self, spec: &KernelSpec, key: &CacheKey, tmp: &Path) -> Result<Manifest> {
        let outcome = compile::compile(&self.env, spec, key.arch, &key.flags, tmp)?;
        let artifact_name = spec.compiler.artifact_name().to_string();
        let (status, sha, size) = if outcome.success {
            let path = tmp.join(&artifact_name);
            let bytes = fs::read(&path).map_err(Error::io(&path))?;
            (EntryStatus::Ok, sha256_hex(&bytes), bytes.len() as u64)
        } else {
            (EntryStatus::Failed, String::new(), 0)
        };
        let manifest = Manifest {
            key: key.clone(),
            status,
            artifact: artifact_name,
            artifact_sha256: sha,
            artifact_size: size,
            created_unix: cache::unix_now(),
            compile_seconds: outcome.seconds,
            command: outcome.command,
        };
        let path = tmp.join("manifest.json");
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
        fs::write(&path, json).map_err(Error::io(&path))?;
        Ok(manifest)
    }

    /// A valid entry for `spec` on `arch` built by any compiler version.
    fn find_prebuilt(&self, spec: &KernelSpec, arch: Arch) -> Option<Artifact> {
        let placeholder = CompilerId {
            compiler: spec.compiler,
            version: String::new(),
        };
        let want = self.key_with(spec, arch, placeholder).ok()?;
        let kernel_dir = self.root.path.join(&spec.name);
        let prefix = format!("{arch}-");
        fs::read_dir(kernel_dir).ok()?.flatten().find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with(&prefix) {
                return None;
            }
            match cache::inspect_entry(&e.path()) {
                EntryState::Valid(m) if m.key.same_except_compiler(&want) => Some(artifact(&e.path(), m, false)),
                _ => None,
            }
        })
    }
}

fn artifact(dir: &Path, manifest: Manifest, compiled: bool) -> Artifact {
    Artifact {
        path: dir.join(&manifest.artifact),
        manifest,
        compiled,
    }
}

/// Removes temp dirs of this entry left by builders that died (we hold the
/// entry's lock, so no live builder owns them).
fn sweep_stale_temps(kernel_dir: &Path, entry: &str) {
    let prefix = format!(".tmp-{entry}-");
    let Ok(list) = fs::read_dir(kernel_dir) else { return };
    for e in list.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = cache::remove_tree(&e.path());
        }
    }
}

/// The version of a third-party header library, from the tree itself.
pub fn third_party_version(env: &KernelEnv, tp: ThirdParty) -> Result<String> {
    let (home, var) = match tp {
        ThirdParty::Cutlass => (env.resolved_cutlass_home(), "CUTLASS_HOME"),
        ThirdParty::FlashInfer => (env.resolved_flashinfer_home(), "FLASHINFER_HOME"),
    };
    let missing = |reason: String| Error::ToolNotFound {
        what: match tp {
            ThirdParty::Cutlass => "CUTLASS headers",
            ThirdParty::FlashInfer => "FlashInfer headers",
        },
        reason,
        env_var: var,
    };
    if let Ok(v) = fs::read_to_string(home.join("VERSION")) {
        return Ok(v.trim().to_string());
    }
    if tp == ThirdParty::Cutlass {
        let header = home.join("include/cutlass/version.h");
        let text = fs::read_to_string(&header).map_err(|e| missing(format!("{}: {e}", header.display())))?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(&format!("#define {name} ")))
                .map(|v| v.trim().to_string())
        };
        if let (Some(a), Some(b), Some(c)) = (field("CUTLASS_MAJOR"), field("CUTLASS_MINOR"), field("CUTLASS_PATCH")) {
            return Ok(format!("{a}.{b}.{c}"));
        }
    }
    Err(missing(format!("no VERSION file under {}", home.display())))
}
