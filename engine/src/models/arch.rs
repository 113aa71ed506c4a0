//! The architecture registry: which config / GGUF architecture strings map to which variant of
//! the shared decoder (`decoder`).

use super::{ModelError, Result};

/// The per-architecture differences of the shared decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchSpec {
    /// HF `architectures[0]`, e.g. `"Qwen3ForCausalLM"`.
    pub hf_name: &'static str,
    /// GGUF `general.architecture`, e.g. `"qwen3"`.
    pub gguf_name: &'static str,
    /// Per-head RMSNorm of q and k before RoPE (Qwen3).
    pub qk_norm: bool,
    /// q/k/v projections always carry a bias (Qwen2); otherwise the config's `attention_bias`.
    pub qkv_bias: bool,
    /// llama.cpp's converter permuted the q/k rows to interleaved-RoPE order (Llama).
    pub gguf_permuted_qk: bool,
}

/// Every supported architecture.
pub const ARCHITECTURES: [ArchSpec; 3] = [
    ArchSpec {
        hf_name: "Qwen3ForCausalLM",
        gguf_name: "qwen3",
        qk_norm: true,
        qkv_bias: false,
        gguf_permuted_qk: false,
    },
    ArchSpec {
        hf_name: "Qwen2ForCausalLM",
        gguf_name: "qwen2",
        qk_norm: false,
        qkv_bias: true,
        gguf_permuted_qk: false,
    },
    ArchSpec {
        hf_name: "LlamaForCausalLM",
        gguf_name: "llama",
        qk_norm: false,
        qkv_bias: false,
        gguf_permuted_qk: true,
    },
];

/// Looks up an HF architecture (`"LlamaForCausalLM"`) or GGUF architecture (`"llama"`) string.
///
/// ```
/// use mllm_engine::models::arch::lookup;
/// assert!(lookup("qwen3").unwrap().qk_norm);
/// let err = lookup("GPT2LMHeadModel").unwrap_err().to_string();
/// assert!(err.contains("Qwen3ForCausalLM"), "{err}");
/// ```
pub fn lookup(name: &str) -> Result<ArchSpec> {
    ARCHITECTURES
        .iter()
        .find(|a| a.hf_name == name || a.gguf_name == name)
        .copied()
        .ok_or_else(|| ModelError::UnknownArchitecture {
            arch: name.to_string(),
            supported: ARCHITECTURES.iter().flat_map(|a| [a.hf_name, a.gguf_name]).collect(),
        })
}
