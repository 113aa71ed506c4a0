//! [`CausalLM`]: embedding → decoder layers → final norm → LM head, for every registered
//! architecture, loaded from HF safetensors, a GGUF file or any [`WeightSource`].

use std::path::Path;

use super::arch::{lookup, ArchSpec};
use super::decoder::DecoderLayer;
use super::gguf::GgufWeights;
use super::weights::{WeightReader, WeightSource};
use super::{ModelError, Result};
use crate::executor::forward_batch::{ForwardBatch, LogitsMode, SequenceInput};
use crate::layers::embedding::{Embedding, LmHead};
use crate::layers::norm::RmsNorm;
use crate::layers::rotary::RotaryEmbedding;
use crate::loader::config::ModelConfig;
use crate::loader::gguf::GgufFile;
use crate::loader::safetensors::SafetensorsModel;
use crate::mem_cache::{KvDtype, ReqToTokenPool, TokenToKvPool};
use crate::quantization::smooth::smooth;
use crate::quantization::writer::Smoothing;
use crate::quantization::{QuantMethod, QuantizationConfig};
use crate::tensor::{DType, Tensor};

/// Options of loading a model.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Storage dtype of linear, embedding and LM-head weights (`None`: as in the checkpoint;
    /// GGUF tensors are dequantized to f32). bf16 halves decode memory traffic on the CPU.
    pub weight_dtype: Option<DType>,
    /// Quantize float linear weights at load time (`--quantization`). A checkpoint with its own
    /// `quantization_config` is loaded as quantized regardless.
    pub quantization: Option<QuantMethod>,
    /// SmoothQuant before load-time W8A8 quantization (`--smoothquant-alpha`): activation
    /// outliers are migrated into the weights, calibrated on `calibration_ids` (left empty by
    /// the CLI; [`LoadedModel`](crate::generation::LoadedModel) tokenizes the built-in
    /// calibration text with the model's tokenizer).
    pub smoothing: Option<Smoothing>,
}

/// The architecture of `config.architectures[0]` (or `model_type`).
fn arch_of(config: &ModelConfig) -> Result<ArchSpec> {
    let name = config.architectures.first().unwrap_or(&config.model_type);
    lookup(name)
}

/// A decoder-only causal language model.
#[derive(Debug)]
pub struct CausalLM {
    config: ModelConfig,
    arch: ArchSpec,
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: LmHead,
    rope: RotaryEmbedding,
}

impl CausalLM {
    /// Loads an HF model directory (`config.json` + safetensors).
    pub fn from_dir(dir: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let config = ModelConfig::from_dir(dir).map_err(|e| ModelError::Invalid(e.to_string()))?;
        let st = SafetensorsModel::open(dir)?;
        Self::load(config, &st, opts)
    }

    /// Loads a GGUF file's tensors for `config` (built from the GGUF metadata); the architecture
    /// comes from `general.architecture`. Quantized tensors are dequantized.
    pub fn from_gguf(file: &GgufFile, config: ModelConfig, opts: &LoadOptions) -> Result<Self> {
        let arch_name = file
            .architecture()
            .ok_or_else(|| ModelError::Invalid("GGUF has no general.architecture".into()))?;
        let arch = lookup(arch_name)?;
        let src = GgufWeights::new(file, &arch, config.num_attention_heads, config.num_key_value_heads);
        Self::load_arch(config, arch, &src, opts)
    }

    /// Builds the model for `config.architectures[0]` (or `model_type`) from HF-named weights.
    pub fn load(config: ModelConfig, src: &dyn WeightSource, opts: &LoadOptions) -> Result<Self> {
        let arch = arch_of(&config)?;
        Self::load_arch(config, arch, src, opts)
    }

    /// As [`CausalLM::load`] with the per-layer decisions of `quant` instead of those derived
    /// from the checkpoint and `opts.quantization` (calibration observers, for SmoothQuant).
    pub fn load_with(
        config: ModelConfig,
        src: &dyn WeightSource,
        opts: &LoadOptions,
        quant: QuantizationConfig,
    ) -> Result<Self> {
        let arch = arch_of(&config)?;
        Self::build(config, arch, src, opts, &quant)
    }

    fn load_arch(config: ModelConfig, arch: ArchSpec, src: &dyn WeightSource, opts: &LoadOptions) -> Result<Self> {
        let quant = QuantizationConfig::new(config.quantization_config(), opts.quantization, opts.weight_dtype)?;
        let Some(sm) = &opts.smoothing else {
            return Self::build(config, arch, src, opts, &quant);
        };
        if config.quantization_config().is_some() {
            return Err(ModelError::Invalid(
                "--smoothquant-alpha applies to float checkpoints; this one is already quantized".into(),
            ));
        }
        if opts.quantization != Some(QuantMethod::W8A8) {
            return Err(ModelError::Invalid(
                "--smoothquant-alpha smooths the weights for W8A8; add --quantization w8a8".into(),
            ));
        }
        if sm.calibration_ids.is_empty() {
            return Err(ModelError::Invalid(
                "SmoothQuant needs calibration tokens, and this model has no tokenizer to make them".into(),
            ));
        }
        let smoothed = smooth(&config, src, &sm.calibration_ids, sm.alpha)?;
        Self::build(config, arch, &smoothed, opts, &quant)
    }

    fn build(
        config: ModelConfig,
        arch: ArchSpec,
        src: &dyn WeightSource,
        opts: &LoadOptions,
        quant: &QuantizationConfig,
    ) -> Result<Self> {
        let mut w = WeightReader::new(src);
        let cast = |t: Tensor| -> Result<Tensor> {
            Ok(match opts.weight_dtype {
                Some(dt) => t.to_dtype(dt)?,
                None => t,
            })
        };
        let (v, h) = (config.vocab_size, config.hidden_size);
        let embed = cast(w.take_shaped("model.embed_tokens.weight", &[v, h])?)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            layers.push(DecoderLayer::load(&config, &arch, i, quant, &mut w)?);
        }
        let norm = RmsNorm::new(w.take_shaped("model.norm.weight", &[h])?, config.rms_norm_eps as f32)?;
        let lm_head = if config.tie_word_embeddings {
            w.skip("lm_head.weight");
            LmHead::new(embed.clone())?
        } else {
            quant.require_float("lm_head")?;
            LmHead::new(cast(w.take_shaped("lm_head.weight", &[v, h])?)?)?
        };
        w.finish()?;
        let rope = RotaryEmbedding::new(
            config.head_dim,
            config.rope_theta,
            config.rope_scaling.as_ref(),
            config.max_position_embeddings,
        )?;
        Ok(Self {
            embed_tokens: Embedding::new(embed)?,
            layers,
            norm,
            lm_head,
            rope,
            arch,
            config,
        })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The token embedding.
    pub fn embed_tokens(&self) -> &Embedding {
        &self.embed_tokens
    }

    /// The decoder layers.
    pub fn layers(&self) -> &[DecoderLayer] {
        &self.layers
    }

    /// The final norm.
    pub fn norm(&self) -> &RmsNorm {
        &self.norm
    }

    /// The LM head (shares the embedding's storage when tied).
    pub fn lm_head(&self) -> &LmHead {
        &self.lm_head
    }

    /// The rotary embedding.
    pub fn rope(&self) -> &RotaryEmbedding {
        &self.rope
    }

    /// The architecture variant.
    pub fn arch(&self) -> &ArchSpec {
        &self.arch
    }

    /// Runs one whole prompt `ids` as a single prefill in fresh f32 KV pools sized for it;
    /// returns f32 logits for the rows `mode` asks for. For evaluation and calibration, not
    /// serving (the scheduler owns the pools there).
    pub fn forward_prompt(&self, ids: &[u32], mode: LogitsMode) -> Result<Tensor> {
        let c = &self.config;
        let mut req = ReqToTokenPool::new(2, ids.len() + 1);
        let mut kv = TokenToKvPool::new(
            ids.len() + 8,
            c.num_hidden_layers,
            c.num_key_value_heads,
            c.head_dim,
            KvDtype::F32,
        );
        let slot = req.alloc(1)?[0];
        let seq = SequenceInput {
            req_slot: slot,
            prefix_len: 0,
            new_tokens: ids.to_vec(),
        };
        let batch = ForwardBatch::build(&[seq], &mut req, &mut kv, mode)?;
        self.forward(&batch.input_ids, &batch.positions, &batch, &mut kv)
    }

    /// Runs the batch: `input_ids` / `positions` are the batch's new tokens (normally
    /// `batch.input_ids` / `batch.positions`); K/V of every layer go to `pool`. Returns f32 logits
    /// `[rows, vocab]` for [`ForwardBatch::logit_rows`] (last token per sequence, or all).
    pub fn forward(
        &self,
        input_ids: &[u32],
        positions: &[usize],
        batch: &ForwardBatch,
        pool: &mut TokenToKvPool,
    ) -> Result<Tensor> {
        if input_ids.len() != batch.num_tokens() || positions != batch.positions.as_slice() {
            return Err(ModelError::Invalid(format!(
                "forward: {} input ids / {} positions do not match the batch's {} tokens",
                input_ids.len(),
                positions.len(),
                batch.num_tokens()
            )));
        }
        if pool.num_layers() < self.layers.len() {
            return Err(ModelError::Invalid(format!(
                "KV pool has {} layers, the model {}",
                pool.num_layers(),
                self.layers.len()
            )));
        }
        // One hop onto the rayon pool for the whole pass: each op's parallel loop then starts on a
        // worker (the others steal) instead of the caller blocking on the pool once per op.
        rayon::scope(|_| self.forward_layers(input_ids, batch, pool))
    }

    fn forward_layers(&self, input_ids: &[u32], batch: &ForwardBatch, pool: &mut TokenToKvPool) -> Result<Tensor> {
        let mut x = self.embed_tokens.forward(input_ids)?;
        let mut residual: Option<Tensor> = None;
        for layer in &self.layers {
            let (out, r) = layer.forward(&x, residual.as_ref(), &self.rope, batch, pool)?;
            x = out;
            residual = Some(r);
        }
        let rows = batch.logit_rows();
        let (x, r) = if rows.len() == batch.num_tokens() {
            (x, residual)
        } else {
            let pick = |t: &Tensor| -> Result<Tensor> {
                let picked: Vec<Tensor> = rows
                    .iter()
                    .map(|&i| t.narrow_rows(i, 1))
                    .collect::<std::result::Result<_, _>>()?;
                Ok(crate::tensor::cat(&picked.iter().collect::<Vec<_>>())?)
            };
            let r = residual.as_ref().map(pick).transpose()?;
            (pick(&x)?, r)
        };
        let (h, _) = self.norm.forward_residual(&x, r.as_ref())?;
        self.lm_head.forward(&h)
    }
}
