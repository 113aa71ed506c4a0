//! [`Qwen3VlModel`]: HF `Qwen3VLForConditionalGeneration` on the CPU — vision tower, image
//! splice, M-RoPE text decoder with deepstack — with a full-prompt `forward`, a KV-cached
//! `forward_step` and a greedy `generate`.

use std::path::Path;
use std::sync::Arc;

use super::cache::VlKvCache;
use super::front::VlFront;
use super::model_config::Qwen3VlConfig;
use super::mrope::MropePos;
use super::rope_index::{text_position, RopePositions};
use super::splice::VisualRows;
use super::text::{StepLogits, TextModel};
use super::vision::{VisionOutput, VisionTower};
use crate::layers::embedding::{Embedding, LmHead};
use crate::layers::norm::RmsNorm;
use crate::loader::config::ModelConfig;
use crate::loader::safetensors::SafetensorsModel;
use crate::mem_cache::TokenToKvPool;
use crate::models::weights::WeightSource;
use crate::models::{DecoderLayer, LoadOptions, ModelError, Result, TextDecoder};
use crate::multimodal::{GridThw, ImagePatches};
use crate::tensor::Tensor;

/// A loaded Qwen3-VL model. The vision tower is never quantized and keeps the checkpoint dtype;
/// [`LoadOptions`] apply to the text decoder.
///
/// ```no_run
/// use mllm_engine::models::qwen3_vl::Qwen3VlModel;
/// use mllm_engine::models::LoadOptions;
/// use mllm_engine::multimodal::{ImageProcessorConfig, Rgb8Image};
///
/// let model = Qwen3VlModel::from_dir("Qwen3-VL-2B-Instruct", &LoadOptions::default())?;
/// let img = Rgb8Image::new(64, 64, vec![128; 64 * 64 * 3]).expect("64x64 RGB");
/// let patches = ImageProcessorConfig::default().preprocess(&img)?;
/// let c = model.config();
/// // <|vision_start|>, one placeholder per merged patch, <|vision_end|>, then the text.
/// let mut ids = vec![c.vision_start_token_id];
/// ids.extend(vec![c.image_token_id; patches.grid.num_tokens(2)]);
/// ids.extend([c.vision_end_token_id, 785, 2168]);
/// let logits = model.forward(&ids, &[patches.clone()])?; // [ids.len(), vocab]
/// let continuation = model.generate(&ids, &[patches], 16, &[151645])?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Qwen3VlModel {
    front: VlFront,
    text: TextModel,
}

impl std::fmt::Debug for Qwen3VlModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qwen3VlModel")
            .field("cfg", &self.front.config())
            .finish_non_exhaustive()
    }
}

/// A prompt made ready for the decoder: positions of every token, the rope delta and the
/// tower's output for its images.
#[derive(Debug, Clone)]
pub struct PreparedPrompt {
    /// M-RoPE positions and delta of the whole prompt.
    pub rope: RopePositions,
    /// The vision tower's rows for every image (`None` without images).
    pub vision: Option<VisionOutput>,
}

impl Qwen3VlModel {
    /// Loads an HF model directory (`config.json` + safetensors).
    pub fn from_dir(dir: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg = Qwen3VlConfig::from_dir(dir)?;
        let st = SafetensorsModel::open(dir)?;
        Self::load(cfg, &st, opts)
    }

    /// Builds the model from HF-named weights (`model.language_model.*`, `model.visual.*`,
    /// `lm_head.weight`; the older `language_model.*` / `visual.*` names are accepted too).
    pub fn load(cfg: Qwen3VlConfig, src: &dyn WeightSource, opts: &LoadOptions) -> Result<Self> {
        if opts.smoothing.is_some() {
            // Calibration runs a text-only decoder; Qwen3-VL's needs M-RoPE and images.
            return Err(ModelError::Invalid(
                "SmoothQuant covers text-only decoders; load this vision-language model without --smoothquant-alpha"
                    .into(),
            ));
        }
        let vision = Arc::new(VisionTower::load(cfg.vision.clone(), src)?);
        let text = TextModel::load(&cfg, src, opts)?;
        let front = VlFront::new(cfg, vision, text.mrope().clone());
        Ok(Self { front, text })
    }

    /// The config.
    pub fn config(&self) -> &Qwen3VlConfig {
        self.front.config()
    }

    /// The vision tower.
    pub fn vision(&self) -> &VisionTower {
        self.front.vision()
    }

    /// The vision tower, shared.
    pub fn shared_vision(&self) -> Arc<VisionTower> {
        self.front.shared_vision()
    }

    /// What stays on the host when another backend runs the text decoder.
    pub fn front(&self) -> &VlFront {
        &self.front
    }

    /// Drops the text decoder's host weights (once a GPU holds them), keeping the front.
    pub fn into_front(self) -> VlFront {
        self.front
    }

    /// The text decoder's layers (their linear layers quantized as loaded).
    pub fn text_layers(&self) -> &[DecoderLayer] {
        self.text.layers()
    }

    /// The text token embedding.
    pub fn embed_tokens(&self) -> &Embedding {
        self.text.embed()
    }

    /// The LM head (shares the embedding's storage when tied).
    pub fn lm_head(&self) -> &LmHead {
        self.text.lm_head()
    }

    /// An empty KV cache for `capacity` tokens of one sequence.
    pub fn new_cache(&self, capacity: usize) -> VlKvCache {
        let t = &self.config().text;
        VlKvCache::new(capacity, t.num_hidden_layers, t.num_key_value_heads, t.head_dim)
    }

    /// Positions of `ids[range]` for a request whose images have `grids` (in prompt order).
    pub fn rope_positions(
        &self,
        ids: &[u32],
        grids: &[GridThw],
        range: std::ops::Range<usize>,
    ) -> Result<RopePositions> {
        self.front.rope_positions(ids, grids, range)
    }

    /// Encodes `images` and computes the prompt's positions; errors (before any decoder work)
    /// when placeholders and images do not match.
    pub fn prepare(&self, ids: &[u32], images: &[ImagePatches]) -> Result<PreparedPrompt> {
        let grids: Vec<GridThw> = images.iter().map(|i| i.grid).collect();
        let rope = self.rope_positions(ids, &grids, 0..ids.len())?;
        let vision = if images.is_empty() {
            None
        } else {
            Some(self.vision().forward_images(images)?)
        };
        // Checks the placeholder count against the tower's rows once for the whole prompt.
        self.visual_rows(ids, vision.as_ref(), 0..0)?;
        Ok(PreparedPrompt { rope, vision })
    }

    /// The image rows of `ids[range]` (see [`VisualRows::for_range`]).
    pub fn visual_rows(
        &self,
        ids: &[u32],
        vision: Option<&VisionOutput>,
        range: std::ops::Range<usize>,
    ) -> Result<Option<VisualRows>> {
        self.front.visual_rows(ids, vision, range)
    }

    /// One decoder step after the tokens in `cache`: `ids` at 3-axis `positions`, with the
    /// step's image rows; K/V are appended to `cache`. Returns f32 logits for `logits`' rows.
    pub fn forward_step(
        &self,
        ids: &[u32],
        positions: &[MropePos],
        visual: Option<&VisualRows>,
        cache: &mut VlKvCache,
        logits: StepLogits,
    ) -> Result<Tensor> {
        self.text.forward(ids, positions, visual, cache, logits)
    }

    /// [`Qwen3VlModel::forward_step`] on a shared paged KV pool (the engine's
    /// [`TokenToKvPool`]): `slots` are the KV slots of the sequence's whole context, the last
    /// `ids.len()` of them (from `prefix`) already allocated for the new tokens.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_paged(
        &self,
        ids: &[u32],
        positions: &[MropePos],
        visual: Option<&VisualRows>,
        pool: &mut TokenToKvPool,
        slots: &[u32],
        prefix: usize,
        logits: StepLogits,
    ) -> Result<Tensor> {
        self.text
            .forward_paged(ids, positions, visual, pool, slots, prefix, logits)
    }

    /// Prefills `ids[cache.len()..]` of a prepared prompt (the cache may already hold a prefix
    /// of the same prompt, e.g. a chunk or a prefix-cache hit).
    pub fn prefill(
        &self,
        ids: &[u32],
        prompt: &PreparedPrompt,
        cache: &mut VlKvCache,
        logits: StepLogits,
    ) -> Result<Tensor> {
        let range = cache.len()..ids.len();
        if prompt.rope.positions.len() != ids.len() || range.is_empty() {
            return Err(ModelError::Invalid(format!(
                "prefill: {} tokens, {} cached, {} prepared positions",
                ids.len(),
                cache.len(),
                prompt.rope.positions.len()
            )));
        }
        let visual = self.visual_rows(ids, prompt.vision.as_ref(), range.clone())?;
        self.forward_step(
            &ids[range.clone()],
            &prompt.rope.positions[range],
            visual.as_ref(),
            cache,
            logits,
        )
    }

    /// Logits `[ids.len(), vocab]` of a full prompt with its images (no cache kept).
    pub fn forward(&self, ids: &[u32], images: &[ImagePatches]) -> Result<Tensor> {
        let prompt = self.prepare(ids, images)?;
        let mut cache = self.new_cache(ids.len());
        self.prefill(ids, &prompt, &mut cache, StepLogits::All)
    }

    /// Greedy decoding: up to `max_new_tokens` tokens after the prompt, stopping after any
    /// token in `stop` (which is included).
    pub fn generate(
        &self,
        ids: &[u32],
        images: &[ImagePatches],
        max_new_tokens: usize,
        stop: &[u32],
    ) -> Result<Vec<u32>> {
        let prompt = self.prepare(ids, images)?;
        let mut cache = self.new_cache(ids.len() + max_new_tokens);
        let mut out = Vec::with_capacity(max_new_tokens);
        if max_new_tokens == 0 {
            return Ok(out);
        }
        let mut logits = self.prefill(ids, &prompt, &mut cache, StepLogits::Last)?;
        loop {
            let next = argmax(&logits)?;
            out.push(next);
            if out.len() == max_new_tokens || stop.contains(&next) {
                return Ok(out);
            }
            let pos = text_position(cache.len(), prompt.rope.delta);
            logits = self.forward_step(&[next], &[pos], None, &mut cache, StepLogits::Last)?;
        }
    }

    /// The vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.text.vocab_size()
    }
}

/// Index of the largest logit of a `[1, vocab]` row (first on ties, as torch).
fn argmax(logits: &Tensor) -> Result<u32> {
    let v = logits.to_f32_vec()?;
    let (mut best, mut arg) = (f32::NEG_INFINITY, 0);
    for (i, &x) in v.iter().enumerate() {
        if x > best {
            (best, arg) = (x, i);
        }
    }
    Ok(arg as u32)
}

impl TextDecoder for Qwen3VlModel {
    fn config(&self) -> &ModelConfig {
        &self.config().text
    }
    fn embed_tokens(&self) -> &Embedding {
        self.text.embed()
    }
    fn layers(&self) -> &[DecoderLayer] {
        self.text.layers()
    }
    fn norm(&self) -> &RmsNorm {
        self.text.norm()
    }
    fn lm_head(&self) -> &LmHead {
        self.text.lm_head()
    }
    fn rope_table(&self, max_pos: usize) -> Vec<f32> {
        self.front.rope_table(max_pos)
    }
}
