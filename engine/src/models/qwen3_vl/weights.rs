//! Loading the vision tower's parameters by HF name from any [`WeightSource`], under the
//! prefix the checkpoint uses (`model.visual.`, older `visual.`, or none for a bare vision model).

use std::collections::BTreeSet;

use super::config::VisionConfig;
use super::layers::{LayerNorm, Linear};
use crate::models::weights::{WeightReader, WeightSource};
use crate::models::{ModelError, Result};
use crate::tensor::Tensor;

/// Name prefixes tried, in order: a full Qwen3-VL checkpoint (transformers ≥ 4.57 layout), the
/// older top-level `visual.`, a saved bare `Qwen3VLVisionModel`.
pub const VISION_PREFIXES: [&str; 3] = ["model.visual.", "visual.", ""];

/// One transformer block.
pub(crate) struct BlockWeights {
    pub(crate) norm1: LayerNorm,
    pub(crate) norm2: LayerNorm,
    pub(crate) qkv: Linear,
    pub(crate) proj: Linear,
    pub(crate) fc1: Linear,
    pub(crate) fc2: Linear,
}

/// A patch merger: LayerNorm (over `hidden`, or over `4·hidden` after grouping when
/// `post_shuffle`), then `fc1` → GELU → `fc2`.
pub(crate) struct MergerWeights {
    pub(crate) norm: LayerNorm,
    pub(crate) fc1: Linear,
    pub(crate) fc2: Linear,
    pub(crate) post_shuffle: bool,
}

/// Every parameter of the tower.
pub(crate) struct VisionWeights {
    /// Conv3d kernel flattened to `[hidden, patch_dim]`.
    pub(crate) patch_embed: Linear,
    /// The learned `side² × hidden` position table, f32.
    pub(crate) pos_embed: Vec<f32>,
    pub(crate) blocks: Vec<BlockWeights>,
    pub(crate) merger: MergerWeights,
    pub(crate) deepstack: Vec<MergerWeights>,
}

/// A [`WeightReader`] under one prefix that remembers what it took.
struct PrefixedReader<'a> {
    reader: WeightReader<'a>,
    prefix: &'static str,
    taken: BTreeSet<String>,
}

impl PrefixedReader<'_> {
    fn tensor(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let full = format!("{}{name}", self.prefix);
        let t = self.reader.take_shaped(&full, shape)?;
        self.taken.insert(full);
        Ok(t)
    }

    fn f32s(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        Ok(self.tensor(name, shape)?.to_f32_vec()?)
    }

    fn linear(&mut self, name: &str, out: usize, inp: usize) -> Result<Linear> {
        Ok(Linear {
            weight: self.tensor(&format!("{name}.weight"), &[out, inp])?,
            bias: self.tensor(&format!("{name}.bias"), &[out])?,
        })
    }

    fn norm(&mut self, name: &str, d: usize) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: self.f32s(&format!("{name}.weight"), &[d])?,
            bias: self.f32s(&format!("{name}.bias"), &[d])?,
        })
    }
}

impl VisionWeights {
    /// Loads every vision parameter of `cfg` from `src`; errors name the missing or mis-shaped
    /// weight, or list vision weights the config does not account for.
    pub(crate) fn load(cfg: &VisionConfig, src: &dyn WeightSource) -> Result<Self> {
        let names = src.names();
        let prefix = detect_prefix(&names);
        let mut r = PrefixedReader {
            reader: WeightReader::new(src),
            prefix,
            taken: BTreeSet::new(),
        };
        let weights = Self::read(cfg, &mut r)?;
        check_unused(&names, prefix, &r.taken)?;
        Ok(weights)
    }

    fn read(cfg: &VisionConfig, r: &mut PrefixedReader<'_>) -> Result<Self> {
        let (d, pd) = (cfg.hidden_size, cfg.patch_dim());
        let (c, t, p) = (cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size);
        let patch_embed = Linear {
            weight: r
                .tensor("patch_embed.proj.weight", &[d, c, t, p, p])?
                .reshape(&[d, pd])?,
            bias: r.tensor("patch_embed.proj.bias", &[d])?,
        };
        let pos_embed = r.f32s("pos_embed.weight", &[cfg.num_position_embeddings, d])?;
        let blocks = (0..cfg.depth)
            .map(|i| read_block(cfg, r, &format!("blocks.{i}")))
            .collect::<Result<_>>()?;
        let merger = read_merger(cfg, r, "merger", false)?;
        let deepstack = (0..cfg.deepstack_visual_indexes.len())
            .map(|j| read_merger(cfg, r, &format!("deepstack_merger_list.{j}"), true))
            .collect::<Result<_>>()?;
        Ok(Self {
            patch_embed,
            pos_embed,
            blocks,
            merger,
            deepstack,
        })
    }
}

fn read_block(cfg: &VisionConfig, r: &mut PrefixedReader<'_>, at: &str) -> Result<BlockWeights> {
    let (d, ff) = (cfg.hidden_size, cfg.intermediate_size);
    Ok(BlockWeights {
        norm1: r.norm(&format!("{at}.norm1"), d)?,
        norm2: r.norm(&format!("{at}.norm2"), d)?,
        qkv: r.linear(&format!("{at}.attn.qkv"), 3 * d, d)?,
        proj: r.linear(&format!("{at}.attn.proj"), d, d)?,
        fc1: r.linear(&format!("{at}.mlp.linear_fc1"), ff, d)?,
        fc2: r.linear(&format!("{at}.mlp.linear_fc2"), d, ff)?,
    })
}

fn read_merger(cfg: &VisionConfig, r: &mut PrefixedReader<'_>, at: &str, post_shuffle: bool) -> Result<MergerWeights> {
    let merged = cfg.hidden_size * cfg.merge_unit();
    let norm_dim = if post_shuffle { merged } else { cfg.hidden_size };
    Ok(MergerWeights {
        norm: r.norm(&format!("{at}.norm"), norm_dim)?,
        fc1: r.linear(&format!("{at}.linear_fc1"), merged, merged)?,
        fc2: r.linear(&format!("{at}.linear_fc2"), cfg.out_hidden_size, merged)?,
        post_shuffle,
    })
}

/// The first prefix of [`VISION_PREFIXES`] under which the checkpoint has a patch embedding
/// (the first one when none has, so the missing-weight error names the usual full name).
fn detect_prefix(names: &[String]) -> &'static str {
    VISION_PREFIXES
        .into_iter()
        .find(|p| names.iter().any(|n| *n == format!("{p}patch_embed.proj.weight")))
        .unwrap_or(VISION_PREFIXES[0])
}

/// Errors if the checkpoint holds vision-looking weights under `prefix` that were not loaded
/// (e.g. more blocks or deepstack mergers than the config has).
fn check_unused(names: &[String], prefix: &str, taken: &BTreeSet<String>) -> Result<()> {
    let vision_part = |rest: &str| {
        [
            "patch_embed.",
            "pos_embed.",
            "blocks.",
            "merger.",
            "deepstack_merger_list.",
        ]
        .iter()
        .any(|p| rest.starts_with(p))
    };
    let mut extra: Vec<String> = names
        .iter()
        .filter(|n| n.strip_prefix(prefix).is_some_and(vision_part) && !taken.contains(*n))
        .cloned()
        .collect();
    if extra.is_empty() {
        return Ok(());
    }
    extra.sort();
    extra.truncate(10);
    Err(ModelError::UnexpectedWeights { names: extra })
}
