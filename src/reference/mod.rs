//! Plain-Rust CPU references of every op: the oracle GPU tests compare to.
//! They follow the kernels' documented numerics (and HF transformers').

mod norm;
mod quant;

pub use norm::{fused_add_rms_norm, rms_norm};
pub use quant::per_token_quant_int8;
