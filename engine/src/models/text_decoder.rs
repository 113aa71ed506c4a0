//! [`TextDecoder`]: the parameters of a loaded decoder-only text model, as a backend that
//! re-hosts them (the CUDA upload) reads them — a [`CausalLM`], or the text half of Qwen3-VL.

use super::{CausalLM, DecoderLayer};
use crate::layers::embedding::{Embedding, LmHead};
use crate::layers::norm::RmsNorm;
use crate::loader::config::ModelConfig;

/// A text decoder's parameters and its 1-D rotary table.
///
/// ```no_run
/// use mllm_engine::models::{CausalLM, LoadOptions, TextDecoder};
/// let model = CausalLM::from_dir("SmolLM2-135M", &LoadOptions::default())?;
/// let table = model.rope_table(2048); // [2048, head_dim]: cos, then sin
/// assert_eq!(table.len(), 2048 * model.config().head_dim);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait TextDecoder {
    /// The text config (for Qwen3-VL its `text_config`).
    fn config(&self) -> &ModelConfig;
    /// The token embedding.
    fn embed_tokens(&self) -> &Embedding;
    /// The decoder layers.
    fn layers(&self) -> &[DecoderLayer];
    /// The final norm.
    fn norm(&self) -> &RmsNorm;
    /// The LM head (shares the embedding's storage when tied).
    fn lm_head(&self) -> &LmHead;
    /// `[max_pos, head_dim]` f32: per position the `cos` of the `head_dim / 2` rotary
    /// frequencies, then their `sin` (for M-RoPE, all three axes at that position).
    fn rope_table(&self, max_pos: usize) -> Vec<f32>;
}

impl TextDecoder for CausalLM {
    fn config(&self) -> &ModelConfig {
        CausalLM::config(self)
    }
    fn embed_tokens(&self) -> &Embedding {
        CausalLM::embed_tokens(self)
    }
    fn layers(&self) -> &[DecoderLayer] {
        CausalLM::layers(self)
    }
    fn norm(&self) -> &RmsNorm {
        CausalLM::norm(self)
    }
    fn lm_head(&self) -> &LmHead {
        CausalLM::lm_head(self)
    }
    fn rope_table(&self, max_pos: usize) -> Vec<f32> {
        self.rope().cos_sin_table(max_pos)
    }
}
