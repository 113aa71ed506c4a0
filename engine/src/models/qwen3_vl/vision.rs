//! The Qwen3-VL vision tower ([`VisionTower`]): pixel patches → merged image embeddings plus
//! the deepstack features, on the CPU in f32.

use std::path::Path;

use rayon::prelude::*;

use super::config::{VisionAct, VisionConfig};
use super::layers::{activate, segment_attention, Rotary};
use super::positions::{frame_bounds, patch_coords, position_taps};
use super::weights::{BlockWeights, MergerWeights, VisionWeights};
use crate::loader::safetensors::SafetensorsModel;
use crate::models::weights::WeightSource;
use crate::models::{ModelError, Result};
use crate::multimodal::{GridThw, ImagePatches};
use crate::tensor::Tensor;

/// What the tower returns for a batch of images.
#[derive(Debug, Clone)]
pub struct VisionOutput {
    /// Merged embeddings `[patches / merge², out_hidden_size]`, one row per LLM image token, in
    /// input order.
    pub embeddings: Tensor,
    /// One `[patches / merge², out_hidden_size]` tensor per deepstack block, in block order.
    pub deepstack: Vec<Tensor>,
}

impl VisionOutput {
    /// The output of a batch of images with `grids` split back into one output per image
    /// (`unit` patches merge into one row).
    pub(crate) fn split(&self, grids: &[GridThw], unit: usize) -> Result<Vec<VisionOutput>> {
        let mut start = 0;
        grids
            .iter()
            .map(|g| {
                let rows = g.num_patches() / unit;
                start += rows;
                self.rows(start - rows, rows)
            })
            .collect()
    }

    /// Rows `start..start + len` of the embeddings and of every deepstack level.
    pub fn rows(&self, start: usize, len: usize) -> Result<VisionOutput> {
        Ok(VisionOutput {
            embeddings: self.embeddings.narrow_rows(start, len)?,
            deepstack: self
                .deepstack
                .iter()
                .map(|d| d.narrow_rows(start, len))
                .collect::<std::result::Result<_, _>>()?,
        })
    }
}

/// The Qwen3-VL vision encoder with its weights (never quantized; kept in the checkpoint dtype).
///
/// ```no_run
/// use mllm_engine::models::qwen3_vl::VisionTower;
/// use mllm_engine::multimodal::{ImageProcessorConfig, Rgb8Image};
///
/// let tower = VisionTower::from_dir("Qwen3-VL-2B-Instruct")?;
/// let img = Rgb8Image::new(64, 64, vec![128; 64 * 64 * 3]).expect("64x64 RGB");
/// let patches = ImageProcessorConfig::default().preprocess(&img)?;
/// let out = tower.forward_images(&[patches])?;
/// assert_eq!(out.embeddings.shape()[1], tower.config().out_hidden_size);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct VisionTower {
    cfg: VisionConfig,
    weights: VisionWeights,
}

impl std::fmt::Debug for VisionTower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VisionTower")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl VisionTower {
    /// Loads the tower of `cfg` from `src` (names under `model.visual.`, `visual.` or bare).
    pub fn load(cfg: VisionConfig, src: &dyn WeightSource) -> Result<Self> {
        cfg.validate().map_err(|e| ModelError::Invalid(e.to_string()))?;
        let weights = VisionWeights::load(&cfg, src)?;
        Ok(Self { cfg, weights })
    }

    /// Loads from a directory with `config.json` (a full Qwen3-VL config, or a bare vision
    /// config) and safetensors weights.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let path = dir.join("config.json");
        let json = std::fs::read_to_string(&path)
            .map_err(|e| ModelError::Invalid(format!("reading {}: {e}", path.display())))?;
        let parsed = if json.contains("\"vision_config\"") {
            VisionConfig::from_model_config_json(&json)
        } else {
            VisionConfig::from_json(&json)
        };
        let cfg = parsed.map_err(|e| ModelError::Invalid(format!("{}: {e}", path.display())))?;
        let src = SafetensorsModel::open(dir)?;
        Self::load(cfg, &src)
    }

    /// The config.
    pub fn config(&self) -> &VisionConfig {
        &self.cfg
    }

    /// The parameters (for a backend that uploads them).
    pub(crate) fn weights(&self) -> &VisionWeights {
        &self.weights
    }

    /// Runs preprocessed images (see [`crate::multimodal::ImageProcessorConfig::preprocess`]).
    pub fn forward_images(&self, images: &[ImagePatches]) -> Result<VisionOutput> {
        let images: Vec<&ImagePatches> = images.iter().collect();
        let (pixels, grids) = self.stack(&images)?;
        self.forward(&pixels, &grids)
    }

    /// Runs `images` (of any number of requests) in one forward and returns each image's own
    /// output. Patch rows are concatenated, but attention stays within each image's frames and
    /// position embeddings and rotary follow each image's grid, so an image gets the rows it
    /// gets alone; batching only saves the per-call overhead and feeds the matmuls more rows.
    pub fn forward_each(&self, images: &[&ImagePatches]) -> Result<Vec<VisionOutput>> {
        let (pixels, grids) = self.stack(images)?;
        self.forward(&pixels, &grids)?.split(&grids, self.cfg.merge_unit())
    }

    /// Errors unless `image`'s pixel values fit the tower: `patch_dim` columns, one row per patch
    /// of its grid, `h` and `w` multiples of the merge size. What [`VisionTower::forward`] would
    /// reject, checked per image so a batch can leave a bad one out.
    pub fn check_image(&self, image: &ImagePatches) -> Result<()> {
        let cols = self.cfg.patch_dim();
        let g = image.grid;
        if image.patch_dim != cols || image.pixel_values.len() != g.num_patches() * cols {
            return Err(ModelError::Invalid(format!(
                "vision tower: {} values of patch_dim {} for grid {g:?}, expected {} x {cols}",
                image.pixel_values.len(),
                image.patch_dim,
                g.num_patches()
            )));
        }
        self.check_grid(&g)
    }

    fn check_grid(&self, g: &GridThw) -> Result<()> {
        let merge = self.cfg.spatial_merge_size as u32;
        if g.t == 0 || g.h == 0 || g.w == 0 || g.h % merge + g.w % merge != 0 {
            return Err(ModelError::Invalid(format!(
                "vision tower: grid {g:?} must be non-empty with h and w multiples of spatial_merge_size {merge}"
            )));
        }
        Ok(())
    }

    /// The images' patch rows concatenated in order, and their grids.
    pub(crate) fn stack(&self, images: &[&ImagePatches]) -> Result<(Tensor, Vec<GridThw>)> {
        let cols = self.cfg.patch_dim();
        let mut data = Vec::with_capacity(images.iter().map(|i| i.pixel_values.len()).sum());
        for (i, img) in images.iter().enumerate() {
            self.check_image(img)
                .map_err(|e| ModelError::Invalid(format!("image {i}: {e}")))?;
            data.extend_from_slice(&img.pixel_values);
        }
        let pixels = Tensor::from_vec(data, &[images.iter().map(|i| i.grid.num_patches()).sum(), cols])?;
        Ok((pixels, images.iter().map(|i| i.grid).collect()))
    }

    /// `pixel_values` `[Σ t·h·w, patch_dim]` (rows of all inputs concatenated, HF order) with
    /// one [`GridThw`] per input → merged embeddings and deepstack features.
    pub fn forward(&self, pixel_values: &Tensor, grids: &[GridThw]) -> Result<VisionOutput> {
        self.check_inputs(pixel_values, grids)?;
        let merge = self.cfg.spatial_merge_size;
        let mut h = self.weights.patch_embed.forward(pixel_values)?;
        h = h.add(&self.position_embeddings(grids)?)?;
        let coords: Vec<(usize, usize)> = grids.iter().flat_map(|g| patch_coords(*g, merge)).collect();
        let rope = Rotary::new(&coords, self.cfg.head_dim(), self.cfg.rope_parameters.rope_theta);
        let bounds = frame_bounds(grids);
        let mut deepstack = Vec::new();
        for (i, block) in self.weights.blocks.iter().enumerate() {
            h = self.block(block, &h, &rope, &bounds)?;
            if let Some(j) = self.cfg.deepstack_visual_indexes.iter().position(|&d| d == i) {
                deepstack.push(self.merge(&self.weights.deepstack[j], &h)?);
            }
        }
        let embeddings = self.merge(&self.weights.merger, &h)?;
        Ok(VisionOutput { embeddings, deepstack })
    }

    /// Errors unless `pixel_values` is `[Σ patches, patch_dim]` of float and every grid is
    /// non-empty with `h` and `w` multiples of the merge size.
    fn check_inputs(&self, pixel_values: &Tensor, grids: &[GridThw]) -> Result<()> {
        if grids.is_empty() {
            return Err(ModelError::Invalid("vision tower: no image grids given".into()));
        }
        grids.iter().try_for_each(|g| self.check_grid(g))?;
        let rows: usize = grids.iter().map(GridThw::num_patches).sum();
        let want = [rows, self.cfg.patch_dim()];
        if pixel_values.shape() != want || !pixel_values.dtype().is_float() {
            return Err(ModelError::Invalid(format!(
                "vision tower: pixel_values is {:?} {}, expected float {want:?} (Σ t·h·w of the grids, patch_dim)",
                pixel_values.shape(),
                pixel_values.dtype()
            )));
        }
        Ok(())
    }

    /// The learned table resampled to every input's grid, `[Σ patches, hidden]`.
    pub(crate) fn position_embeddings(&self, grids: &[GridThw]) -> Result<Tensor> {
        let d = self.cfg.hidden_size;
        let (side, merge) = (self.cfg.grid_side(), self.cfg.spatial_merge_size);
        let table = &self.weights.pos_embed;
        let taps: Vec<_> = grids.iter().flat_map(|g| position_taps(*g, side, merge)).collect();
        let mut out = vec![0f32; taps.len() * d];
        // Rows are independent; a 448x448 image has 784 of them, four table rows each.
        out.par_chunks_mut(d).zip(taps.par_iter()).for_each(|(row, taps)| {
            for &(idx, w) in taps.iter() {
                let src = &table[idx * d..(idx + 1) * d];
                row.iter_mut().zip(src).for_each(|(o, &s)| *o += s * w);
            }
        });
        Ok(Tensor::from_vec(out, &[taps.len(), d])?)
    }

    fn block(&self, w: &BlockWeights, h: &Tensor, rope: &Rotary, bounds: &[usize]) -> Result<Tensor> {
        let qkv = w.qkv.forward(&w.norm1.forward(h)?)?;
        let attn = segment_attention(&qkv, self.cfg.num_heads, rope, bounds)?;
        let h = h.add(&w.proj.forward(&attn)?)?;
        let mlp_in = w.fc1.forward(&w.norm2.forward(&h)?)?;
        let mlp = w.fc2.forward(&activate(&mlp_in, self.cfg.hidden_act)?)?;
        Ok(h.add(&mlp)?)
    }

    /// A patch merger over `h` `[patches, hidden]`: groups of `merge²` consecutive rows become
    /// one row, normalised before (main merger) or after (deepstack) grouping, then the MLP.
    fn merge(&self, w: &MergerWeights, h: &Tensor) -> Result<Tensor> {
        let merged = self.cfg.hidden_size * self.cfg.merge_unit();
        let groups = h.shape()[0] / self.cfg.merge_unit();
        let x = if w.post_shuffle {
            w.norm.forward(&h.reshape(&[groups, merged])?)?
        } else {
            w.norm.forward(h)?.reshape(&[groups, merged])?
        };
        let x = activate(&w.fc1.forward(&x)?, VisionAct::GeluErf)?;
        w.fc2.forward(&x)
    }
}

/// Runs a vision tower over a step's images: [`VisionTower`] on the CPU, or a GPU copy of it.
pub trait VisionEncoder: Send + Sync + std::fmt::Debug {
    /// One forward over all `images` (checked against the tower first), split back per image.
    fn encode(&self, images: &[&ImagePatches]) -> Result<Vec<VisionOutput>>;

    /// Where the encoder's time went, if it keeps a profile (`MLLM_CUDA_PROFILE=1` on a GPU).
    fn profile_report(&self) -> Option<String> {
        None
    }
}

impl VisionEncoder for VisionTower {
    fn encode(&self, images: &[&ImagePatches]) -> Result<Vec<VisionOutput>> {
        self.forward_each(images)
    }
}
