//! GGUF tensors seen through HF names: `blk.N.attn_q.weight` → `model.layers.N.self_attn.q_proj.weight`,
//! dequantized to f32, with llama.cpp's q/k row permutation undone for Llama so NeoX RoPE applies.

use super::arch::ArchSpec;
use super::weights::WeightSource;
use super::Result;
use crate::loader::gguf::GgufFile;
use crate::tensor::Tensor;

/// GGUF per-block suffix → HF per-layer suffix.
const BLOCK_NAMES: [(&str, &str); 11] = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// Top-level GGUF names → HF names.
const GLOBAL_NAMES: [(&str, &str); 3] = [
    ("token_embd", "model.embed_tokens"),
    ("output_norm", "model.norm"),
    ("output", "lm_head"),
];

/// The HF name of a GGUF tensor, or `None` if it has no HF counterpart.
///
/// ```
/// use mllm_engine::models::gguf::hf_name;
/// assert_eq!(hf_name("blk.3.attn_k.bias").as_deref(), Some("model.layers.3.self_attn.k_proj.bias"));
/// assert_eq!(hf_name("token_embd.weight").as_deref(), Some("model.embed_tokens.weight"));
/// assert_eq!(hf_name("rope_freqs.weight"), None);
/// ```
pub fn hf_name(gguf: &str) -> Option<String> {
    let (stem, param) = gguf.rsplit_once('.')?;
    if let Some(rest) = stem.strip_prefix("blk.") {
        let (layer, part) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let hf = BLOCK_NAMES.iter().find(|(g, _)| *g == part)?.1;
        return Some(format!("model.layers.{layer}.{hf}.{param}"));
    }
    let hf = GLOBAL_NAMES.iter().find(|(g, _)| *g == stem)?.1;
    Some(format!("{hf}.{param}"))
}

/// llama.cpp's `permute(w, n_head)`: within each head, rows `[2, half]` → `[half, 2]`
/// (NeoX halves → interleaved pairs). `data` is `[rows, cols]` row-major.
pub fn permute_qk(data: &[f32], rows: usize, n_head: usize) -> Vec<f32> {
    reorder(data, rows, n_head, false)
}

/// Inverse of [`permute_qk`]: interleaved pairs back to NeoX halves.
///
/// ```
/// use mllm_engine::models::gguf::{permute_qk, unpermute_qk};
/// let w: Vec<f32> = (0..8).map(|x| x as f32).collect(); // 8 rows x 1 col, 2 heads of 4
/// let p = permute_qk(&w, 8, 2);
/// assert_eq!(p, vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
/// assert_eq!(unpermute_qk(&p, 8, 2), w);
/// ```
pub fn unpermute_qk(data: &[f32], rows: usize, n_head: usize) -> Vec<f32> {
    reorder(data, rows, n_head, true)
}

fn reorder(data: &[f32], rows: usize, n_head: usize, inverse: bool) -> Vec<f32> {
    let cols = data.len() / rows.max(1);
    let half = rows / n_head.max(1) / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..half {
                let neox = h * 2 * half + j * half + i; // [h, 2, half]
                let inter = h * 2 * half + i * 2 + j; // [h, half, 2]
                let (src, dst) = if inverse { (inter, neox) } else { (neox, inter) };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// A [`GgufFile`] as a [`WeightSource`] with HF names.
pub struct GgufWeights<'a> {
    file: &'a GgufFile,
    /// `(hf name, gguf name)`; unmapped GGUF names keep their own name.
    names: Vec<(String, String)>,
    permuted: bool,
    n_head: usize,
    n_head_kv: usize,
}

impl<'a> GgufWeights<'a> {
    /// Wraps `file` for an architecture with `n_head` query and `n_head_kv` KV heads.
    pub fn new(file: &'a GgufFile, arch: &ArchSpec, n_head: usize, n_head_kv: usize) -> Self {
        let names = file
            .tensors()
            .map(|t| {
                (
                    hf_name(t.name()).unwrap_or_else(|| t.name().to_string()),
                    t.name().to_string(),
                )
            })
            .collect();
        Self {
            file,
            names,
            permuted: arch.gguf_permuted_qk,
            n_head,
            n_head_kv,
        }
    }
}

impl WeightSource for GgufWeights<'_> {
    fn names(&self) -> Vec<String> {
        self.names.iter().map(|(h, _)| h.clone()).collect()
    }

    fn get(&self, name: &str) -> Result<Option<Tensor>> {
        let Some((_, gguf)) = self.names.iter().find(|(h, _)| h == name) else {
            return Ok(None);
        };
        let info = self
            .file
            .tensor_info(gguf)
            .ok_or_else(|| super::ModelError::Invalid(format!("GGUF tensor `{gguf}` listed but not found")))?;
        let shape = info.shape();
        let mut data = self.file.dequantize_f32(gguf)?;
        if self.permuted {
            let heads = if name.contains("self_attn.q_proj.") {
                Some(self.n_head)
            } else if name.contains("self_attn.k_proj.") {
                Some(self.n_head_kv)
            } else {
                None
            };
            if let Some(n) = heads {
                data = unpermute_qk(&data, shape[0], n);
            }
        }
        Ok(Some(Tensor::from_vec(data, &shape)?))
    }
}
