//! Model building blocks: linear layers with pluggable quantization methods, RMSNorm, RoPE,
//! gated activation, embeddings and paged attention. Errors are [`crate::models::ModelError`].

pub mod activation;
pub mod attention;
pub mod embedding;
pub mod linear;
pub mod norm;
pub mod rotary;
