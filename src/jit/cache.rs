//! The on-disk cache: root checks, entries, manifests, listing and cleanup.
//!
//! Layout: `<root>/<kernel>/<arch>[-<variant>]-<16 hex>/{kernel.cubin|kernel.so, build.log, manifest.json}`;
//! temp build dirs `<root>/<kernel>/.tmp-<entry>-<pid>-<nanos>`; locks in
//! `<root>/.locks` or `MLLM_KERNEL_LOCK_DIR`.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::key::{sha256_hex, CacheKey};
use crate::{Error, Result};

/// Whether an entry holds a usable artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryStatus {
    Ok,
    Failed,
    /// Not stored: found when the artifact no longer matches its manifest.
    Corrupt,
}

impl std::fmt::Display for EntryStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            EntryStatus::Ok => "ok",
            EntryStatus::Failed => "failed",
            EntryStatus::Corrupt => "corrupt",
        })
    }
}

/// `manifest.json` of an entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub key: CacheKey,
    pub status: EntryStatus,
    pub artifact: String,
    pub artifact_sha256: String,
    pub artifact_size: u64,
    pub created_unix: u64,
    pub compile_seconds: f64,
    /// The command line that built it (with this machine's paths; not part of the key).
    pub command: Vec<String>,
}

/// A cache root that passed the ownership and permission checks.
#[derive(Debug, Clone)]
pub struct CacheRoot {
    pub path: PathBuf,
    pub writable: bool,
}

impl CacheRoot {
    /// Opens (creating with mode 0700 if missing) the root at `path`.
    /// A root owned by another user (other than root) or writable by group or
    /// others is refused: anyone who can write there can run code as us.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists()
            && let Err(e) = create_private_dir(path)
            && !path.exists()
        {
            return Err(Error::io(path)(e));
        }
        let meta = fs::symlink_metadata(path).map_err(Error::io(path))?;
        let refuse = |problem: String| Error::UnsafeCacheRoot {
            path: path.to_path_buf(),
            problem,
        };
        if meta.file_type().is_symlink() {
            let target = fs::metadata(path).map_err(Error::io(path))?;
            if !target.is_dir() {
                return Err(refuse("is a symlink to a non-directory".into()));
            }
        } else if !meta.is_dir() {
            return Err(refuse("is not a directory".into()));
        }
        let meta = fs::metadata(path).map_err(Error::io(path))?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me && meta.uid() != 0 {
            return Err(refuse(format!("is owned by uid {} (you are uid {me})", meta.uid())));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(refuse(format!(
                "is writable by group or others (mode {:o})",
                meta.mode() & 0o777
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
            writable: is_writable(path),
        })
    }

    /// `<root>/<kernel>/<arch>-<hash>`.
    pub fn entry_dir(&self, key: &CacheKey) -> PathBuf {
        self.path.join(&key.kernel).join(key.dir_name())
    }
}

/// Creates `path` and missing parents with mode 0700.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(path)
}

fn is_writable(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// What checking an entry on disk found.
#[derive(Debug)]
pub enum EntryState {
    Missing,
    Valid(Manifest),
    Failed(Manifest),
    Corrupt(String),
}

/// Reads `dir/manifest.json` and verifies the artifact's size and sha256.
pub fn inspect_entry(dir: &Path) -> EntryState {
    let manifest_path = dir.join("manifest.json");
    let text = match fs::read(&manifest_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return if dir.exists() {
                EntryState::Corrupt("manifest.json is missing".into())
            } else {
                EntryState::Missing
            }
        }
        Err(e) => return EntryState::Corrupt(format!("cannot read manifest: {e}")),
    };
    let manifest: Manifest = match serde_json::from_slice(&text) {
        Ok(m) => m,
        Err(e) => return EntryState::Corrupt(format!("manifest.json is unreadable: {e}")),
    };
    if manifest.status == EntryStatus::Failed {
        return EntryState::Failed(manifest);
    }
    match fs::read(dir.join(&manifest.artifact)) {
        Err(e) => EntryState::Corrupt(format!("artifact {}: {e}", manifest.artifact)),
        Ok(bytes) if bytes.len() as u64 != manifest.artifact_size => EntryState::Corrupt(format!(
            "artifact is {} bytes, manifest says {}",
            bytes.len(),
            manifest.artifact_size
        )),
        Ok(bytes) if sha256_hex(&bytes) != manifest.artifact_sha256 => {
            EntryState::Corrupt("artifact checksum does not match its manifest".into())
        }
        Ok(_) => EntryState::Valid(manifest),
    }
}

/// Marks an entry as just used (manifest mtime), for LRU pruning. Best effort:
/// a read-only root simply keeps its times.
pub fn touch(dir: &Path) {
    if let Ok(f) = fs::File::options().append(true).open(dir.join("manifest.json")) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Removes a directory tree without following symlinks out of it.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() || m.is_file() => fs::remove_file(path),
        Ok(_) => fs::remove_dir_all(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// True when `pid` is a live process on this machine.
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Parses the builder pid out of `.tmp-<entry>-<pid>-<nanos>`.
pub fn temp_dir_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(".tmp-")?;
    let mut parts = rest.rsplitn(3, '-');
    let _nanos = parts.next()?;
    parts.next()?.parse().ok()
}

/// Ensures `dir` has mode 0700 (temp dirs are renamed into place as entries).
pub fn set_private(dir: &Path) -> std::io::Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}
