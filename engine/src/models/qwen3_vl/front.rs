//! [`VlFront`]: the parts of Qwen3-VL that stay on the host whichever backend runs the text
//! decoder — the config, the vision tower (shared with the serving state that batches image
//! encoding) and the M-RoPE that turns 3-axis positions into rotary angles.

use std::ops::Range;
use std::sync::Arc;

use super::model_config::Qwen3VlConfig;
use super::mrope::{MRotaryEmbedding, MropePos};
use super::rope_index::{rope_positions, RopePositions};
use super::splice::VisualRows;
use super::vision::{VisionEncoder, VisionOutput, VisionTower};
use crate::models::{ModelError, Result};
use crate::multimodal::GridThw;

/// Config, vision tower and M-RoPE of a loaded Qwen3-VL model
/// ([`super::Qwen3VlModel::front`], or [`super::Qwen3VlModel::into_front`] once a GPU holds the
/// text decoder).
///
/// ```no_run
/// use mllm_engine::models::qwen3_vl::Qwen3VlModel;
/// use mllm_engine::models::LoadOptions;
/// let front = Qwen3VlModel::from_dir("Qwen3-VL-2B-Instruct", &LoadOptions::default())?.into_front();
/// let c = front.config();
/// let ids = [c.vision_start_token_id, c.image_token_id, c.vision_end_token_id];
/// assert!(front.rope_positions(&ids, &[], 0..3).is_err()); // a placeholder without an image
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct VlFront {
    cfg: Qwen3VlConfig,
    vision: Arc<VisionTower>,
    /// What runs the tower: `vision` itself, or a GPU copy.
    encoder: Arc<dyn VisionEncoder>,
    mrope: MRotaryEmbedding,
}

impl std::fmt::Debug for VlFront {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VlFront")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl VlFront {
    pub(crate) fn new(cfg: Qwen3VlConfig, vision: Arc<VisionTower>, mrope: MRotaryEmbedding) -> Self {
        let encoder = vision.clone();
        Self {
            cfg,
            vision,
            encoder,
            mrope,
        }
    }

    /// The same front with images encoded by `encoder` (e.g. the tower uploaded to a GPU).
    pub fn with_encoder(self, encoder: Arc<dyn VisionEncoder>) -> Self {
        Self { encoder, ..self }
    }

    /// What encodes images.
    pub fn encoder(&self) -> Arc<dyn VisionEncoder> {
        self.encoder.clone()
    }

    /// The config.
    pub fn config(&self) -> &Qwen3VlConfig {
        &self.cfg
    }

    /// The vision tower.
    pub fn vision(&self) -> &VisionTower {
        &self.vision
    }

    /// The vision tower, shared.
    pub fn shared_vision(&self) -> Arc<VisionTower> {
        self.vision.clone()
    }

    /// The text decoder's M-RoPE.
    pub fn mrope(&self) -> &MRotaryEmbedding {
        &self.mrope
    }

    /// `[max_pos, head_dim]` rotary table of 1-D positions (all three axes equal): what text
    /// tokens, and every token after the prompt, rotate by.
    pub fn rope_table(&self, max_pos: usize) -> Vec<f32> {
        let positions: Vec<MropePos> = (0..max_pos as u32).map(|p| [p; 3]).collect();
        self.mrope.cos_sin_rows(&positions)
    }

    /// Positions of `ids[range]` for a request whose images have `grids` (in prompt order).
    pub fn rope_positions(&self, ids: &[u32], grids: &[GridThw], range: Range<usize>) -> Result<RopePositions> {
        rope_positions(
            ids,
            grids,
            self.cfg.image_token_id,
            self.cfg.vision.spatial_merge_size as u32,
            range,
        )
        .map_err(|e| ModelError::Invalid(format!("Qwen3-VL prompt: {e}")))
    }

    /// The image rows of `ids[range]` (see [`VisualRows::for_range`]); without `vision`, an
    /// error if the prompt has image placeholders.
    pub fn visual_rows(
        &self,
        ids: &[u32],
        vision: Option<&VisionOutput>,
        range: Range<usize>,
    ) -> Result<Option<VisualRows>> {
        let id = self.cfg.image_token_id;
        match vision {
            Some(out) => VisualRows::for_range(out, ids, id, range),
            None => match ids.iter().filter(|&&t| t == id).count() {
                0 => Ok(None),
                n => Err(ModelError::Invalid(format!(
                    "image features and image tokens do not match: {n} placeholder token(s) (id {id}), no image given"
                ))),
            },
        }
    }
}
