//! # mllm-engine
//!
//! The mllm-rs serving stack (HTTP server, tokenizer, scheduler, model
//! runner, KV cache, models, quantization) on top of `mllm-kernel`. This
//! crate currently holds only the `mllm` binary's entry point; the engine
//! issues ([engine-core], [serving], [gpu-exec]) fill it in.

pub mod loader;
pub mod tensor;

/// The engine's version, as `mllm --version` prints it.
///
/// ```
/// assert!(!mllm_engine::version().is_empty());
/// ```
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
