//! The full Qwen3-VL `config.json` ([`Qwen3VlConfig`]): the text decoder's `text_config` (read
//! as a [`ModelConfig`] plus the M-RoPE section), the `vision_config` and the special token ids.

use std::path::Path;

use serde_json::Value;

use super::config::VisionConfig;
use super::mrope::MropeLayout;
use crate::loader::config::ModelConfig;
use crate::models::{ModelError, Result};

/// Qwen3-VL hyper-parameters, checked once at parse time.
///
/// ```
/// use mllm_engine::models::qwen3_vl::Qwen3VlConfig;
///
/// let cfg = Qwen3VlConfig::from_json_str(r#"{"model_type": "qwen3_vl", "image_token_id": 250,
///   "text_config": {"model_type": "qwen3_vl_text", "vocab_size": 256, "hidden_size": 64,
///     "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "head_dim": 16,
///     "rope_scaling": {"rope_type": "default", "mrope_section": [4, 2, 2]}},
///   "vision_config": {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
///     "out_hidden_size": 64, "num_position_embeddings": 64, "deepstack_visual_indexes": [0]}}"#)?;
/// assert_eq!((cfg.image_token_id, cfg.mrope_section), (250, [4, 2, 2]));
/// assert_eq!(cfg.text.rope_theta, 5_000_000.0); // Qwen3-VL's default θ
/// # Ok::<(), mllm_engine::models::ModelError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Qwen3VlConfig {
    /// The text decoder (`text_config`; `tie_word_embeddings` from the top level when set there).
    pub text: ModelConfig,
    /// The vision tower.
    pub vision: VisionConfig,
    /// Rotary frequencies per axis (t, h, w); sums to `head_dim / 2`.
    pub mrope_section: [usize; 3],
    /// How the axes share the frequencies (`mrope_interleaved`, default true).
    pub mrope_layout: MropeLayout,
    /// The image placeholder (`<|image_pad|>`, default 151655).
    pub image_token_id: u32,
    /// `<|vision_start|>` (default 151652).
    pub vision_start_token_id: u32,
    /// `<|vision_end|>` (default 151653).
    pub vision_end_token_id: u32,
}

/// Qwen3-VL's default text θ when the config names none.
const DEFAULT_THETA: f64 = 5_000_000.0;

fn invalid(path: &Path, msg: impl std::fmt::Display) -> ModelError {
    ModelError::Invalid(format!("{}: {msg}", path.display()))
}

impl Qwen3VlConfig {
    /// Reads `<dir>/config.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let path = dir.as_ref().join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| invalid(&path, e))?;
        Self::parse(&text, &path)
    }

    /// Parses config JSON text.
    pub fn from_json_str(text: &str) -> Result<Self> {
        Self::parse(text, Path::new("config.json"))
    }

    fn parse(text: &str, path: &Path) -> Result<Self> {
        let root: Value = serde_json::from_str(text).map_err(|e| invalid(path, e))?;
        let mut text_cfg = root
            .get("text_config")
            .filter(|v| v.is_object())
            .cloned()
            .ok_or_else(|| invalid(path, "Qwen3-VL config has no `text_config` object"))?;
        let rope = ["rope_parameters", "rope_scaling"]
            .iter()
            .find_map(|k| text_cfg.get(*k).filter(|v| v.is_object()).cloned())
            .unwrap_or(Value::Null);
        let obj = text_cfg.as_object_mut().expect("checked object");
        if let Some(archs) = root.get("architectures").filter(|v| v.is_array()) {
            obj.insert("architectures".into(), archs.clone());
        }
        if let Some(tie) = root.get("tie_word_embeddings").filter(|v| v.is_boolean()) {
            obj.insert("tie_word_embeddings".into(), tie.clone());
        }
        if let Some(q) = root.get("quantization_config").filter(|v| !v.is_null()) {
            obj.entry("quantization_config").or_insert_with(|| q.clone());
        }
        let mut text = ModelConfig::from_value(text_cfg, path).map_err(|e| ModelError::Invalid(e.to_string()))?;
        if text.rope_scaling.is_some() {
            return Err(invalid(
                path,
                "Qwen3-VL text rope scaling other than `default` is not supported",
            ));
        }
        if !has_theta(&text.raw) {
            text.rope_theta = DEFAULT_THETA;
        }
        let vision = root
            .get("vision_config")
            .filter(|v| v.is_object())
            .cloned()
            .ok_or_else(|| invalid(path, "Qwen3-VL config has no `vision_config` object"))?;
        let vision: VisionConfig =
            serde_json::from_value(vision).map_err(|e| invalid(path, format!("vision_config: {e}")))?;
        vision.validate().map_err(|e| invalid(path, e))?;
        let mrope_section = match rope.get("mrope_section") {
            None | Some(Value::Null) => [24, 20, 20],
            Some(v) => serde_json::from_value::<[usize; 3]>(v.clone())
                .map_err(|e| invalid(path, format!("text_config mrope_section: {e}")))?,
        };
        let mrope_layout = match rope.get("mrope_interleaved").and_then(Value::as_bool) {
            Some(false) => MropeLayout::Chunked,
            _ => MropeLayout::Interleaved,
        };
        let id = |key: &str, default: u32| -> Result<u32> {
            match root.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v
                    .as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or_else(|| invalid(path, format!("`{key}` = {v}, expected a token id"))),
            }
        };
        let cfg = Self {
            image_token_id: id("image_token_id", 151_655)?,
            vision_start_token_id: id("vision_start_token_id", 151_652)?,
            vision_end_token_id: id("vision_end_token_id", 151_653)?,
            text,
            vision,
            mrope_section,
            mrope_layout,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Cross-checks between the towers.
    fn validate(&self, path: &Path) -> Result<()> {
        let t = &self.text;
        if self.vision.out_hidden_size != t.hidden_size {
            return Err(invalid(
                path,
                format!(
                    "vision_config.out_hidden_size {} must equal text_config.hidden_size {}",
                    self.vision.out_hidden_size, t.hidden_size
                ),
            ));
        }
        if self.vision.deepstack_visual_indexes.len() > t.num_hidden_layers {
            return Err(invalid(
                path,
                format!(
                    "{} deepstack levels need at least as many text layers, got {}",
                    self.vision.deepstack_visual_indexes.len(),
                    t.num_hidden_layers
                ),
            ));
        }
        if self.mrope_section.iter().sum::<usize>() * 2 != t.head_dim {
            return Err(invalid(
                path,
                format!(
                    "mrope_section {:?} must sum to head_dim / 2 = {}",
                    self.mrope_section,
                    t.head_dim / 2
                ),
            ));
        }
        if self.image_token_id as usize >= t.vocab_size {
            return Err(invalid(
                path,
                format!(
                    "image_token_id {} is outside the vocabulary ({})",
                    self.image_token_id, t.vocab_size
                ),
            ));
        }
        Ok(())
    }
}

/// Whether `text_config` names a θ where [`ModelConfig`] reads it (top level or under
/// `rope_parameters`).
fn has_theta(raw: &Value) -> bool {
    let set = |v: Option<&Value>| v.is_some_and(|v| !v.is_null());
    set(raw.get("rope_theta")) || set(raw.get("rope_parameters").and_then(|r| r.get("rope_theta")))
}
