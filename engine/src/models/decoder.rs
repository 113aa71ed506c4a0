//! One decoder layer shared by Qwen3, Qwen2 and Llama: pre-norm attention (fused q/k/v, optional
//! q/k bias and per-head q/k norm, NeoX RoPE, paged GQA attention) and a SiLU-gated MLP.

use super::arch::ArchSpec;
use super::weights::WeightReader;
use super::{ModelError, Result};
use crate::executor::forward_batch::ForwardBatch;
use crate::layers::activation::silu_and_mul;
use crate::layers::attention::RadixAttention;
use crate::layers::linear::{merged_gate_up, qkv_linear, Linear, Shard};
use crate::layers::norm::RmsNorm;
use crate::layers::rotary::RotaryEmbedding;
use crate::loader::config::ModelConfig;
use crate::mem_cache::TokenToKvPool;
use crate::quantization::QuantizationConfig;
use crate::tensor::Tensor;

/// Self-attention block.
#[derive(Debug)]
struct SelfAttention {
    qkv_proj: Linear,
    o_proj: Linear,
    /// Per-head q/k RMSNorm (Qwen3).
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    attn: RadixAttention,
}

/// Gated MLP: `down(silu(gate(x)) * up(x))`.
#[derive(Debug)]
struct Mlp {
    gate_up_proj: Linear,
    down_proj: Linear,
}

/// One transformer block.
#[derive(Debug)]
pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: SelfAttention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

/// Loads stacked HF projections `{prefix}.{part}.{param}` into `linear`'s shards.
fn load_stacked(w: &mut WeightReader<'_>, linear: &mut Linear, prefix: &str, parts: &[&str]) -> Result<()> {
    for param in linear.param_names() {
        for (i, part) in parts.iter().enumerate() {
            let name = format!("{prefix}.{part}.{param}");
            let shard = if parts.len() == 1 {
                Shard::Whole
            } else {
                Shard::Index(i)
            };
            linear.weight_loader(param, shard, w.take(&name)?)?;
        }
    }
    linear.finish(prefix)
}

fn norm(w: &mut WeightReader<'_>, name: &str, dim: usize, eps: f32) -> Result<RmsNorm> {
    RmsNorm::new(w.take_shaped(name, &[dim])?, eps)
}

/// Borrowed parameters of one layer, for backends that upload them (CUDA).
#[derive(Debug, Clone, Copy)]
pub struct LayerParams<'a> {
    /// Pre-attention norm.
    pub input_layernorm: &'a RmsNorm,
    /// Fused q/k/v projection (q rows, then k, then v).
    pub qkv_proj: &'a Linear,
    /// Attention output projection.
    pub o_proj: &'a Linear,
    /// Per-head q and k norms (Qwen3).
    pub qk_norm: Option<(&'a RmsNorm, &'a RmsNorm)>,
    /// Pre-MLP norm.
    pub post_attention_layernorm: &'a RmsNorm,
    /// Fused gate/up projection (gate rows first).
    pub gate_up_proj: &'a Linear,
    /// MLP output projection.
    pub down_proj: &'a Linear,
}

impl DecoderLayer {
    /// The layer's parameters.
    pub fn params(&self) -> LayerParams<'_> {
        LayerParams {
            input_layernorm: &self.input_layernorm,
            qkv_proj: &self.self_attn.qkv_proj,
            o_proj: &self.self_attn.o_proj,
            qk_norm: self.self_attn.qk_norm.as_ref().map(|(q, k)| (q, k)),
            post_attention_layernorm: &self.post_attention_layernorm,
            gate_up_proj: &self.mlp.gate_up_proj,
            down_proj: &self.mlp.down_proj,
        }
    }

    /// Builds layer `i` from HF names `model.layers.{i}.*`.
    pub(crate) fn load(
        cfg: &ModelConfig,
        arch: &ArchSpec,
        i: usize,
        quant: &QuantizationConfig,
        w: &mut WeightReader<'_>,
    ) -> Result<Self> {
        let p = format!("model.layers.{i}");
        let (h, d, eps) = (cfg.hidden_size, cfg.head_dim, cfg.rms_norm_eps as f32);
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let bias = arch.qkv_bias || cfg.attention_bias;
        let (attn, mlp) = (format!("{p}.self_attn"), format!("{p}.mlp"));
        const QKV: [&str; 3] = ["q_proj", "k_proj", "v_proj"];
        const GATE_UP: [&str; 2] = ["gate_proj", "up_proj"];
        let mut qkv_proj = qkv_linear(h, nh, nkv, d, bias, quant.linear_method(&attn, &QKV)?);
        load_stacked(w, &mut qkv_proj, &attn, &QKV)?;
        let mut o_proj = Linear::new(nh * d, vec![h], false, quant.linear_method(&attn, &["o_proj"])?);
        load_stacked(w, &mut o_proj, &attn, &["o_proj"])?;
        let qk_norm = if arch.qk_norm {
            Some((
                norm(w, &format!("{p}.self_attn.q_norm.weight"), d, eps)?,
                norm(w, &format!("{p}.self_attn.k_norm.weight"), d, eps)?,
            ))
        } else {
            None
        };
        let mut gate_up_proj = merged_gate_up(h, cfg.intermediate_size, quant.linear_method(&mlp, &GATE_UP)?);
        load_stacked(w, &mut gate_up_proj, &mlp, &GATE_UP)?;
        let down = quant.linear_method(&mlp, &["down_proj"])?;
        let mut down_proj = Linear::new(cfg.intermediate_size, vec![h], false, down);
        load_stacked(w, &mut down_proj, &mlp, &["down_proj"])?;
        Ok(Self {
            input_layernorm: norm(w, &format!("{p}.input_layernorm.weight"), h, eps)?,
            self_attn: SelfAttention {
                qkv_proj,
                o_proj,
                qk_norm,
                attn: RadixAttention::new(i, nh, nkv, d),
            },
            post_attention_layernorm: norm(w, &format!("{p}.post_attention_layernorm.weight"), h, eps)?,
            mlp: Mlp {
                gate_up_proj,
                down_proj,
            },
        })
    }

    /// Runs the layer on `x` `[tokens, hidden]`; returns `(output, residual)` for the fused
    /// add + norm of the next layer.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        rope: &RotaryEmbedding,
        batch: &ForwardBatch,
        pool: &mut TokenToKvPool,
    ) -> Result<(Tensor, Tensor)> {
        let (h, residual) = self.input_layernorm.forward_residual(x, residual)?;
        let h = self.self_attn.forward(&h, rope, batch, pool)?;
        let (h, residual) = self.post_attention_layernorm.forward_residual(&h, Some(&residual))?;
        let gu = self.mlp.gate_up_proj.forward(&h)?;
        Ok((self.mlp.down_proj.forward(&silu_and_mul(&gu)?)?, residual))
    }
}

impl SelfAttention {
    fn forward(
        &self,
        x: &Tensor,
        rope: &RotaryEmbedding,
        batch: &ForwardBatch,
        pool: &mut TokenToKvPool,
    ) -> Result<Tensor> {
        let [mut q, mut k, v]: [Tensor; 3] = self
            .qkv_proj
            .forward_split(x)?
            .try_into()
            .map_err(|_| ModelError::Invalid("qkv_proj must have three shards".into()))?;
        if let Some((qn, kn)) = &self.qk_norm {
            q = qn.forward_per_head(&q)?;
            k = kn.forward_per_head(&k)?;
        }
        // RoPE rotates q and k in place (owned copies); v is only read.
        let (mut q, mut k, v) = (q.to_f32_vec()?, k.to_f32_vec()?, v.to_f32_cow()?);
        let a = &self.attn;
        rope.apply(&batch.positions, &mut q, a.num_heads, &mut k, a.num_kv_heads)?;
        let o = a.forward(&q, &k, &v, batch, pool)?;
        let o = Tensor::from_vec(o, &[batch.num_tokens(), a.num_heads * a.head_dim])?;
        self.o_proj.forward(&o)
    }
}
