//! # mllm-engine
//!
//! The mllm-rs serving stack (HTTP server, tokenizer, scheduler, model
//! runner, KV cache, models, quantization) on top of `mllm-kernel`. So far:
//! the CPU tensor type ([`tensor`]), the checkpoint loaders ([`loader`]: HF
//! config, safetensors, GGUF), the KV pools and CPU paged attention
//! ([`mem_cache`]) and the sampler ([`executor::sampler`]); models, the model
//! runner and the server follow.

pub mod bench_serve;
pub mod cli;
pub mod executor;
pub mod generation;
pub mod hub;
pub mod io_struct;
pub mod layers;
pub mod loader;
pub mod mem_cache;
pub mod models;
pub mod multimodal;
pub mod orchestrator;
pub mod parsers;
pub mod quantization;
pub mod server;
pub mod tensor;
pub mod tokenizer;

/// The engine's version, as `mllm --version` prints it.
///
/// ```
/// assert!(!mllm_engine::version().is_empty());
/// ```
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
