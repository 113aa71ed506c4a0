//! The `vision_config` block of a Qwen3-VL `config.json` ([`VisionConfig`]), parsed with serde
//! and checked once.

use serde::Deserialize;
use thiserror::Error;

/// Errors of reading or checking a vision config. Each names the field.
#[derive(Debug, Error)]
pub enum VisionConfigError {
    /// The JSON does not parse or lacks a required field.
    #[error("Qwen3-VL vision config: {0}")]
    Parse(#[from] serde_json::Error),
    /// A full model config has no `vision_config` object.
    #[error("Qwen3-VL config has no `vision_config` object")]
    MissingVisionConfig,
    /// A field holds a value the vision tower cannot run with.
    #[error("Qwen3-VL vision config: `{field}` = {got}, expected {expected}")]
    Invalid {
        /// The config field.
        field: &'static str,
        /// What the field must satisfy.
        expected: String,
        /// The value found.
        got: String,
    },
}

/// Activation of the vision blocks' MLP (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum VisionAct {
    /// `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))` (HF `gelu_pytorch_tanh`, also `gelu_new`).
    #[serde(rename = "gelu_pytorch_tanh", alias = "gelu_new")]
    GeluTanh,
    /// Exact `0.5 x (1 + erf(x / √2))` (HF `gelu`).
    #[serde(rename = "gelu")]
    GeluErf,
}

/// Rotary settings of the vision tower (HF `rope_parameters`; only `rope_theta` matters).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct VisionRope {
    /// Base of the axial 2-D rotary frequencies.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
}

impl Default for VisionRope {
    fn default() -> Self {
        Self {
            rope_theta: default_theta(),
        }
    }
}

fn default_theta() -> f64 {
    10_000.0
}
fn default_patch() -> usize {
    16
}
fn default_two() -> usize {
    2
}
fn default_channels() -> usize {
    3
}
fn default_act() -> VisionAct {
    VisionAct::GeluTanh
}

/// Qwen3-VL vision tower hyper-parameters (HF `Qwen3VLVisionConfig`). The sizes are required;
/// patch, temporal and merge sizes, channels, activation and rope default to HF's values.
///
/// ```
/// use mllm_engine::models::qwen3_vl::VisionConfig;
///
/// let cfg = VisionConfig::from_json(r#"{"depth": 2, "hidden_size": 64, "intermediate_size": 128,
///     "num_heads": 4, "out_hidden_size": 96, "num_position_embeddings": 64,
///     "deepstack_visual_indexes": [0]}"#)?;
/// assert_eq!((cfg.head_dim(), cfg.grid_side(), cfg.patch_dim()), (16, 8, 1536));
/// # Ok::<(), mllm_engine::models::qwen3_vl::VisionConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VisionConfig {
    /// Number of transformer blocks.
    pub depth: usize,
    /// Width of the blocks.
    pub hidden_size: usize,
    /// Width of the blocks' MLP.
    pub intermediate_size: usize,
    /// Attention heads (`hidden_size / num_heads` = head dim).
    pub num_heads: usize,
    /// Width of the merged output (the text model's hidden size).
    pub out_hidden_size: usize,
    /// Entries of the learned position table, a square `side²`.
    pub num_position_embeddings: usize,
    /// Blocks whose output feeds a deepstack merger, in merger order.
    pub deepstack_visual_indexes: Vec<usize>,
    /// Spatial patch side in pixels.
    #[serde(default = "default_patch")]
    pub patch_size: usize,
    /// Frames per temporal patch.
    #[serde(default = "default_two")]
    pub temporal_patch_size: usize,
    /// Side of the square group of patches merged into one output token.
    #[serde(default = "default_two")]
    pub spatial_merge_size: usize,
    /// Image channels.
    #[serde(default = "default_channels")]
    pub in_channels: usize,
    /// MLP activation.
    #[serde(default = "default_act")]
    pub hidden_act: VisionAct,
    /// Rotary parameters (absent in released checkpoints: θ = 10000).
    #[serde(default)]
    pub rope_parameters: VisionRope,
}

impl VisionConfig {
    /// Parses and checks a `vision_config` object.
    pub fn from_json(json: &str) -> Result<Self, VisionConfigError> {
        let cfg: VisionConfig = serde_json::from_str(json)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses the `vision_config` block of a full Qwen3-VL `config.json`.
    pub fn from_model_config_json(json: &str) -> Result<Self, VisionConfigError> {
        let mut root: serde_json::Value = serde_json::from_str(json)?;
        let vision = root
            .get_mut("vision_config")
            .filter(|v| v.is_object())
            .ok_or(VisionConfigError::MissingVisionConfig)?
            .take();
        let cfg: VisionConfig = serde_json::from_value(vision)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the relations between fields that the forward pass relies on.
    pub fn validate(&self) -> Result<(), VisionConfigError> {
        let positive = [
            ("depth", self.depth),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_heads", self.num_heads),
            ("out_hidden_size", self.out_hidden_size),
            ("patch_size", self.patch_size),
            ("temporal_patch_size", self.temporal_patch_size),
            ("spatial_merge_size", self.spatial_merge_size),
            ("in_channels", self.in_channels),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(invalid(field, "> 0", v));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_heads) {
            let want = format!("a divisor of hidden_size {}", self.hidden_size);
            return Err(invalid("num_heads", &want, self.num_heads));
        }
        if !self.head_dim().is_multiple_of(4) {
            return Err(invalid(
                "hidden_size / num_heads",
                "a multiple of 4 (2-D rotary)",
                self.head_dim(),
            ));
        }
        let side = self.grid_side();
        if side < 2 || side * side != self.num_position_embeddings {
            return Err(invalid(
                "num_position_embeddings",
                "a square side² with side >= 2",
                self.num_position_embeddings,
            ));
        }
        if let Some(&i) = self.deepstack_visual_indexes.iter().find(|&&i| i >= self.depth) {
            let want = format!("block indices < depth {}", self.depth);
            return Err(invalid("deepstack_visual_indexes", &want, i));
        }
        let theta = self.rope_parameters.rope_theta;
        if !(theta.is_finite() && theta > 0.0) {
            return Err(invalid("rope_parameters.rope_theta", "a positive number", theta));
        }
        Ok(())
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Side of the square learned position table.
    pub fn grid_side(&self) -> usize {
        (self.num_position_embeddings as f64).sqrt().round() as usize
    }

    /// Values per input patch row: `in_channels · temporal_patch_size · patch_size²`.
    pub fn patch_dim(&self) -> usize {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    /// Patches merged into one output token: `spatial_merge_size²`.
    pub fn merge_unit(&self) -> usize {
        self.spatial_merge_size * self.spatial_merge_size
    }
}

fn invalid(field: &'static str, expected: &str, got: impl ToString) -> VisionConfigError {
    VisionConfigError::Invalid {
        field,
        expected: expected.to_string(),
        got: got.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = r#"{"depth": 3, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
        "out_hidden_size": 48, "num_position_embeddings": 64, "deepstack_visual_indexes": [0, 2],
        "model_type": "qwen3_vl", "initializer_range": 0.02}"#;

    #[test]
    fn defaults_follow_hf() {
        let c = VisionConfig::from_json(TINY).unwrap();
        assert_eq!((c.patch_size, c.temporal_patch_size, c.spatial_merge_size), (16, 2, 2));
        assert_eq!(c.hidden_act, VisionAct::GeluTanh);
        assert_eq!(c.rope_parameters.rope_theta, 10_000.0);
        assert_eq!(c.merge_unit(), 4);
    }

    #[test]
    fn reads_the_block_of_a_model_config() {
        let full = format!(r#"{{"model_type": "qwen3_vl", "vision_config": {TINY}}}"#);
        assert_eq!(VisionConfig::from_model_config_json(&full).unwrap().depth, 3);
        let err = VisionConfig::from_model_config_json("{}").unwrap_err();
        assert!(matches!(err, VisionConfigError::MissingVisionConfig));
    }

    #[test]
    fn rejects_bad_fields_by_name() {
        let cases = [
            (TINY.replace("\"num_heads\": 2", "\"num_heads\": 3"), "num_heads"),
            (TINY.replace(": 64,", ": 60,"), "num_position_embeddings"),
            (TINY.replace("[0, 2]", "[0, 3]"), "deepstack_visual_indexes"),
        ];
        for (json, field) in cases {
            let err = VisionConfig::from_json(&json).unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
        let err = VisionConfig::from_json(&TINY.replace("\"depth\": 3,", "")).unwrap_err();
        assert!(err.to_string().contains("missing field `depth`"), "{err}");
        let err = VisionConfig::from_json(&TINY.replace("}", r#", "hidden_act": "relu"}"#)).unwrap_err();
        assert!(err.to_string().contains("relu"), "{err}");
    }
}
