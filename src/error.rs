//! The crate's one error type. Every variant names the argument, kernel or
//! path involved, so a user can act on the message without reading code.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors from the kernel library: bad input, missing toolchain, cache and
/// compile failures, and CUDA driver errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no CUDA device: {reason}")]
    NoCudaDevice { reason: String },

    #[error("{op}: argument `{arg}` has shape {got:?}, expected {expected}")]
    ShapeMismatch {
        op: &'static str,
        arg: &'static str,
        expected: String,
        got: Vec<usize>,
    },

    #[error("{op}: argument `{arg}` has dtype {got}, expected {expected}")]
    DTypeMismatch {
        op: &'static str,
        arg: &'static str,
        expected: String,
        got: crate::DType,
    },

    #[error("{op}: invalid argument `{arg}`: {reason}")]
    InvalidArgument {
        op: &'static str,
        arg: &'static str,
        reason: String,
    },

    #[error("unknown kernel `{name}`; known kernels: {known}")]
    UnknownKernel { name: String, known: String },

    #[error("invalid CUDA arch `{given}`: expected sm_XY or sm_XYa with X,Y digits (e.g. sm_80, sm_90a)")]
    InvalidArch { given: String },

    #[error("{what} not found: {reason}. Run `bash scripts/setup.sh` or set {env_var}")]
    ToolNotFound {
        what: &'static str,
        reason: String,
        env_var: &'static str,
    },

    #[error("kernel `{kernel}` for {arch} failed to compile with {compiler}:\n{first_errors}\nfull log: {log}\nfix the source or toolchain and call again (failed builds are retried, never cached as success); `mllm-kernel cache clear '{kernel}'` removes the log")]
    CompileFailed {
        kernel: String,
        arch: String,
        compiler: String,
        first_errors: String,
        log: PathBuf,
    },

    #[error("kernel cache root {path} {problem}; fix its ownership/permissions (chmod 700) or set MLLM_KERNEL_CACHE_DIR to a directory you own")]
    UnsafeCacheRoot { path: PathBuf, problem: String },

    #[error("kernel cache root {root} is read-only and has no valid entry for {key}; set MLLM_KERNEL_CACHE_DIR to a writable directory (e.g. {suggestion}) or prebuild with `mllm-kernel cache rebuild`")]
    ReadOnlyMiss {
        root: PathBuf,
        key: String,
        suggestion: PathBuf,
    },

    #[error("kernel cache miss for {key} (expected at {path}) and MLLM_KERNEL_JIT=0 forbids compiling; prebuild it with `mllm-kernel cache rebuild '{kernel}' --arch {arch}` or unset MLLM_KERNEL_JIT")]
    JitDisabled {
        kernel: String,
        arch: String,
        key: String,
        path: PathBuf,
    },

    #[error("timed out after {waited_s:.0}s waiting for the build lock {lock} of {key}, held by {holder}; if that process is stuck, kill it (its lock is released when it dies) or raise MLLM_KERNEL_LOCK_TIMEOUT")]
    LockTimeout {
        key: String,
        lock: PathBuf,
        holder: String,
        waited_s: f64,
    },

    #[error("kernel `{kernel}` artifact {path} is unusable: {reason}")]
    BadArtifact {
        kernel: String,
        path: PathBuf,
        reason: String,
    },

    #[error("invalid environment variable {var}={value:?}: {reason}")]
    BadEnv {
        var: &'static str,
        value: String,
        reason: String,
    },

    // The cause is in the message, so it is not also chained as a source
    // (that would print it twice with `{:#}`).
    #[error("CUDA driver error in {context}: {error}")]
    Driver {
        context: String,
        error: cudarc::driver::DriverError,
    },

    #[error("{op} is not supported on {arch}: {reason}")]
    UnsupportedArch {
        op: &'static str,
        arch: String,
        reason: String,
    },

    #[error("kernel `{kernel}` failed: {reason}")]
    KernelLaunch { kernel: String, reason: String },

    #[error("I/O error on {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },

    #[error("kernel timeline: {reason}")]
    Timeline { reason: String },
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |error| Error::Io { path, error }
    }

    /// Wraps a CUDA driver error with what was being done.
    pub fn driver(context: impl Into<String>) -> impl FnOnce(cudarc::driver::DriverError) -> Error {
        let context = context.into();
        move |error| Error::Driver { context, error }
    }
}
