//! Model loading: HF config, safetensors (mmap, sharded) and GGUF.

pub mod config;
pub mod gguf;
pub mod safetensors;
