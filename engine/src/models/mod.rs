//! Models: one shared decoder (`decoder`) whose per-architecture differences are data
//! ([`arch::ArchSpec`]: Qwen3 q/k norm, Qwen2 q/k/v bias, Llama GGUF q/k permutation), the full
//! causal LM ([`CausalLM`]) and weight sources (safetensors, GGUF, in-memory).
//!
//! Load a model directory and run one prefill:
//!
//! ```no_run
//! use mllm_engine::executor::forward_batch::{ForwardBatch, LogitsMode, SequenceInput};
//! use mllm_engine::mem_cache::{KvDtype, ReqToTokenPool, TokenToKvPool};
//! use mllm_engine::models::{CausalLM, LoadOptions};
//!
//! let model = CausalLM::from_dir("SmolLM2-135M", &LoadOptions::default())?;
//! let c = model.config();
//! let mut req = ReqToTokenPool::new(8, 2048);
//! let mut kv = TokenToKvPool::new(4096, c.num_hidden_layers, c.num_key_value_heads, c.head_dim, KvDtype::F32);
//! let slot = req.alloc(1)?[0];
//! let seq = SequenceInput { req_slot: slot, prefix_len: 0, new_tokens: vec![1, 2, 3] };
//! let batch = ForwardBatch::build(&[seq], &mut req, &mut kv, LogitsMode::LastPerSequence)?;
//! let logits = model.forward(&batch.input_ids, &batch.positions, &batch, &mut kv)?; // [1, vocab]
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod arch;
mod causal_lm;
mod decoder;
mod error;
pub mod gguf;
pub mod qwen3_vl;
pub mod random;
mod text_decoder;
pub mod weights;

pub use causal_lm::{CausalLM, LoadOptions};
pub use decoder::{DecoderLayer, LayerParams};
pub use error::{ModelError, Result};
pub use text_decoder::TextDecoder;
