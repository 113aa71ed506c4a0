//! Plain-Rust CPU references of every op: the oracle GPU tests compare to.
//! They follow the kernels' documented numerics (and HF transformers').

mod activation;
mod attention;
mod int8_mm;
mod linear;
mod memory;
mod mlp;
mod norm;
mod quant;
mod rope;
mod sample;
mod sampling;
mod vision;

pub use activation::silu_and_mul;
pub use attention::{paged_attention, PagedKv};
pub use int8_mm::int8_scaled_mm;
pub use linear::linear;
pub use memory::{embedding, kv_store, scatter_rows};
pub use mlp::decode_mlp_w8a8;
pub use norm::{fused_add_rms_norm, rms_norm};
pub use quant::per_token_quant_int8;
pub use rope::qk_norm_rope;
pub use sample::{kept_cdf, philox4x32_10, sample, sample_uniform, KeptCdf, Sampled};
pub use sampling::{argmax, feed_tokens, token_logprobs, top_logprobs};
pub use vision::{erfc, gelu, layer_norm, segment_attention};
