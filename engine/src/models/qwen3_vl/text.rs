//! The Qwen3-VL text decoder on the CPU: the shared Qwen3 [`DecoderLayer`] parameters (fused
//! q/k/v, per-head q/k norm, SiLU MLP) run with interleaved M-RoPE, image rows spliced into the
//! embeddings and deepstack features added after the first layers, attention over a
//! [`VlKvCache`].

use std::collections::BTreeMap;

use super::cache::VlKvCache;
use super::model_config::Qwen3VlConfig;
use super::mrope::{MRotaryEmbedding, MropePos};
use super::splice::{scatter_rows, VisualRows};
use crate::layers::activation::silu_and_mul;
use crate::layers::embedding::{Embedding, LmHead};
use crate::layers::norm::RmsNorm;
use crate::mem_cache::{extend_attention, TokenToKvPool};
use crate::models::arch::lookup;
use crate::models::weights::{WeightReader, WeightSource};
use crate::models::{DecoderLayer, LayerParams, LoadOptions, ModelError, Result};
use crate::quantization::QuantizationConfig;
use crate::tensor::Tensor;

/// Which rows of a step get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StepLogits {
    /// Only the step's last token (`[1, vocab]`), for generation.
    #[default]
    Last,
    /// Every token of the step (`[tokens, vocab]`), for tests and scoring.
    All,
}

/// The text model's parameters.
#[derive(Debug)]
pub(crate) struct TextModel {
    embed: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: LmHead,
    mrope: MRotaryEmbedding,
    heads: (usize, usize, usize),
}

/// Checkpoint names that belong to the vision tower.
pub(crate) fn is_vision_name(name: &str) -> bool {
    name.starts_with("model.visual.") || name.starts_with("visual.")
}

/// The text part of a Qwen3-VL checkpoint under the names the shared decoder loads
/// (`model.language_model.*` and `language_model.*` → `model.*`; vision names hidden).
struct TextWeights<'a> {
    src: &'a dyn WeightSource,
    /// Text name → checkpoint name.
    names: BTreeMap<String, String>,
    /// The checkpoint's prefix for `model.` names, if it renames them.
    prefix: Option<&'static str>,
}

const TEXT_PREFIXES: [&str; 3] = ["model.language_model.", "language_model.model.", "language_model."];

impl<'a> TextWeights<'a> {
    fn new(src: &'a dyn WeightSource) -> Self {
        let mut prefix = None;
        let names = src
            .names()
            .into_iter()
            .filter(|n| !is_vision_name(n))
            .map(|n| match TEXT_PREFIXES.iter().find(|p| n.starts_with(**p)) {
                Some(p) => {
                    prefix = Some(*p);
                    (format!("model.{}", &n[p.len()..]), n)
                }
                None => (n.clone(), n),
            })
            .collect();
        Self { src, names, prefix }
    }

    /// The checkpoint's spelling of text name `name`.
    fn checkpoint_name(&self, name: &str) -> String {
        if let Some(orig) = self.names.get(name) {
            return orig.clone();
        }
        match (name.strip_prefix("model."), self.prefix) {
            (Some(rest), Some(p)) => format!("{p}{rest}"),
            _ => name.to_string(),
        }
    }

    /// `e` with weight names spelled as in the checkpoint.
    fn rename(&self, e: ModelError) -> ModelError {
        let all = |v: Vec<String>| v.iter().map(|n| self.checkpoint_name(n)).collect();
        match e {
            ModelError::MissingWeight { name, near } => ModelError::MissingWeight {
                name: self.checkpoint_name(&name),
                near: all(near),
            },
            ModelError::UnexpectedWeights { names } => ModelError::UnexpectedWeights { names: all(names) },
            ModelError::WeightShape { name, expected, got } => ModelError::WeightShape {
                name: self.checkpoint_name(&name),
                expected,
                got,
            },
            e => e,
        }
    }
}

impl WeightSource for TextWeights<'_> {
    fn names(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }
    fn get(&self, name: &str) -> Result<Option<Tensor>> {
        match self.names.get(name) {
            Some(orig) => self.src.get(orig),
            None => Ok(None),
        }
    }
}

impl TextModel {
    /// Loads the text weights of `cfg` from a full checkpoint; every text weight must be used.
    /// Errors name weights as the checkpoint spells them.
    pub(crate) fn load(cfg: &Qwen3VlConfig, src: &dyn WeightSource, opts: &LoadOptions) -> Result<Self> {
        let view = TextWeights::new(src);
        Self::load_view(cfg, &view, opts).map_err(|e| view.rename(e))
    }

    fn load_view(cfg: &Qwen3VlConfig, view: &TextWeights<'_>, opts: &LoadOptions) -> Result<Self> {
        let c = &cfg.text;
        let mut w = WeightReader::new(view);
        let arch = lookup("Qwen3ForCausalLM")?;
        let mut quant = QuantizationConfig::new(c.quantization_config(), opts.quantization, opts.weight_dtype)?;
        // `ignore` / `targets` name layers as the checkpoint does, not as the view renames them.
        if let Some(p) = view.prefix {
            quant = quant.with_checkpoint_prefix("model.", p);
        }
        let cast = |t: Tensor| -> Result<Tensor> {
            Ok(match opts.weight_dtype {
                Some(dt) => t.to_dtype(dt)?,
                None => t,
            })
        };
        let (v, h) = (c.vocab_size, c.hidden_size);
        let embed = cast(w.take_shaped("model.embed_tokens.weight", &[v, h])?)?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| DecoderLayer::load(c, &arch, i, &quant, &mut w))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(w.take_shaped("model.norm.weight", &[h])?, c.rms_norm_eps as f32)?;
        let lm_head = if c.tie_word_embeddings {
            w.skip("lm_head.weight");
            LmHead::new(embed.clone())?
        } else {
            quant.require_float("lm_head")?;
            LmHead::new(cast(w.take_shaped("lm_head.weight", &[v, h])?)?)?
        };
        w.finish()?;
        let mrope = MRotaryEmbedding::new(c.head_dim, c.rope_theta, cfg.mrope_section, cfg.mrope_layout)?;
        Ok(Self {
            embed: Embedding::new(embed)?,
            layers,
            norm,
            lm_head,
            mrope,
            heads: (c.num_attention_heads, c.num_key_value_heads, c.head_dim),
        })
    }

    /// Runs `ids` at `positions` after the tokens already in `cache` (their K/V appended),
    /// with optional image rows; returns f32 logits for `logits`' rows.
    pub(crate) fn forward(
        &self,
        ids: &[u32],
        positions: &[MropePos],
        visual: Option<&VisualRows>,
        cache: &mut VlKvCache,
        logits: StepLogits,
    ) -> Result<Tensor> {
        self.check_step(ids, positions, visual)?;
        let (_, kv_heads, head_dim) = self.heads;
        if cache.num_layers() != self.layers.len() || cache.kv_shape() != (kv_heads, head_dim) {
            return Err(ModelError::Invalid(format!(
                "KV cache has {} layers of {:?} (kv heads, head dim), the model {} of {:?}",
                cache.num_layers(),
                cache.kv_shape(),
                self.layers.len(),
                (kv_heads, head_dim)
            )));
        }
        cache.extend(ids.len(), |pool, slots, prefix| {
            self.run(ids, positions, visual, pool, slots, prefix, logits)
        })
    }

    /// Like [`TextModel::forward`] on a shared paged pool: `slots` are the KV slots of the
    /// whole context, the last `ids.len()` of them (from `prefix`) already allocated for the
    /// new tokens.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward_paged(
        &self,
        ids: &[u32],
        positions: &[MropePos],
        visual: Option<&VisualRows>,
        pool: &mut TokenToKvPool,
        slots: &[u32],
        prefix: usize,
        logits: StepLogits,
    ) -> Result<Tensor> {
        self.check_step(ids, positions, visual)?;
        let (_, kv_heads, head_dim) = self.heads;
        if pool.num_layers() != self.layers.len() || (pool.num_kv_heads(), pool.head_dim()) != (kv_heads, head_dim) {
            return Err(ModelError::Invalid(format!(
                "KV pool has {} layers of {:?} (kv heads, head dim), the model {} of {:?}",
                pool.num_layers(),
                (pool.num_kv_heads(), pool.head_dim()),
                self.layers.len(),
                (kv_heads, head_dim)
            )));
        }
        if slots.len() != prefix + ids.len() {
            return Err(ModelError::Invalid(format!(
                "{} KV slots for {prefix} cached and {} new tokens",
                slots.len(),
                ids.len()
            )));
        }
        self.run(ids, positions, visual, pool, slots, prefix, logits)
    }

    fn check_step(&self, ids: &[u32], positions: &[MropePos], visual: Option<&VisualRows>) -> Result<()> {
        let n = ids.len();
        let hidden = self.embed.weight().shape()[1];
        if n == 0 || positions.len() != n {
            return Err(ModelError::Invalid(format!(
                "forward_step: {n} token ids and {} positions (need the same, non-zero count)",
                positions.len()
            )));
        }
        if let Some(v) = visual {
            v.check(n, hidden, self.layers.len())?;
        }
        Ok(())
    }

    /// The decoder over checked inputs; new K/V go to `slots[prefix..]`.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        ids: &[u32],
        positions: &[MropePos],
        visual: Option<&VisualRows>,
        pool: &mut TokenToKvPool,
        slots: &[u32],
        prefix: usize,
        logits: StepLogits,
    ) -> Result<Tensor> {
        let n = ids.len();
        let mut x = self.embed.forward(ids)?;
        if let Some(v) = visual {
            x = scatter_rows(&x, &v.rows, &v.embeddings, true)?;
        }
        let x = rayon::scope(|_| -> Result<Tensor> {
            for (i, layer) in self.layers.iter().enumerate() {
                x = self.layer(i, layer.params(), &x, positions, pool, slots, prefix)?;
                // Deepstack level i joins the image rows after layer i.
                if let Some((v, d)) = visual.and_then(|v| Some((v, v.deepstack.get(i)?))) {
                    x = scatter_rows(&x, &v.rows, d, false)?;
                }
            }
            Ok(x)
        })?;
        let x = match logits {
            StepLogits::All => x,
            StepLogits::Last => x.narrow_rows(n - 1, 1)?,
        };
        self.lm_head.forward(&self.norm.forward(&x)?)
    }

    /// One pre-norm block on the materialised hidden state `x`: HF's
    /// `x + attn(norm(x))`, then `+ mlp(norm(·))`.
    #[allow(clippy::too_many_arguments)]
    fn layer(
        &self,
        i: usize,
        p: LayerParams<'_>,
        x: &Tensor,
        positions: &[MropePos],
        pool: &mut TokenToKvPool,
        slots: &[u32],
        prefix: usize,
    ) -> Result<Tensor> {
        let (heads, kv_heads, d) = self.heads;
        let n = positions.len();
        let h = p.input_layernorm.forward(x)?;
        let [q, k, v]: [Tensor; 3] = p
            .qkv_proj
            .forward_split(&h)?
            .try_into()
            .map_err(|_| ModelError::Invalid("qkv_proj must have three shards".into()))?;
        let (q, k) = match p.qk_norm {
            Some((qn, kn)) => (qn.forward_per_head(&q)?, kn.forward_per_head(&k)?),
            None => (q, k),
        };
        let (mut q, mut k, v) = (q.to_f32_vec()?, k.to_f32_vec()?, v.to_f32_vec()?);
        self.mrope.apply(positions, &mut q, heads, &mut k, kv_heads)?;
        pool.set_kv(i, &slots[prefix..], &k, &v)?;
        let scale = 1.0 / (d as f32).sqrt();
        let o = extend_attention(&q, [n, heads, d], pool, i, slots, prefix, scale)?;
        let o = p.o_proj.forward(&Tensor::from_vec(o, &[n, heads * d])?)?;
        let x = x.add(&o)?;
        let h = p.post_attention_layernorm.forward(&x)?;
        let m = p.down_proj.forward(&silu_and_mul(&p.gate_up_proj.forward(&h)?)?)?;
        Ok(x.add(&m)?)
    }

    /// The decoder layers.
    pub(crate) fn layers(&self) -> &[DecoderLayer] {
        &self.layers
    }

    /// The token embedding.
    pub(crate) fn embed(&self) -> &Embedding {
        &self.embed
    }

    /// The LM head.
    pub(crate) fn lm_head(&self) -> &LmHead {
        &self.lm_head
    }

    /// The final norm.
    pub(crate) fn norm(&self) -> &RmsNorm {
        &self.norm
    }

    /// The M-RoPE.
    pub(crate) fn mrope(&self) -> &MRotaryEmbedding {
        &self.mrope
    }

    /// The vocabulary size.
    pub(crate) fn vocab_size(&self) -> usize {
        self.lm_head.weight().shape()[0]
    }
}
