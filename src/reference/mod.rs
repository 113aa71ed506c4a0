//! Plain-Rust CPU references of every op: the oracle GPU tests compare to.
//! They follow the kernels' documented numerics (and HF transformers').

mod int8_mm;
mod norm;
mod quant;

pub use int8_mm::int8_scaled_mm;
pub use norm::{fused_add_rms_norm, rms_norm};
pub use quant::per_token_quant_int8;
