//! # mllm-engine
//!
//! The mllm-rs serving stack (HTTP server, tokenizer, scheduler, model
//! runner, KV cache, models, quantization) on top of `mllm-kernel`. So far:
//! the CPU tensor type ([`tensor`]) and the checkpoint loaders ([`loader`]:
//! HF config, safetensors, GGUF); models, KV cache, runner and server follow.

pub mod executor;
pub mod loader;
pub mod mem_cache;
pub mod tensor;

/// The engine's version, as `mllm --version` prints it.
///
/// ```
/// assert!(!mllm_engine::version().is_empty());
/// ```
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
