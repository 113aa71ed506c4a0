//! [`VisionSetup`]: what the server needs to turn a request's image URLs into model inputs,
//! present only for checkpoints with a vision tower.

use std::path::Path;

use super::config::{ImageLimits, ImageProcessorConfig};
use super::decode::decode_image;
use super::error::{ImageConfigError, ImageInputError};
use super::inputs::{image_hash, ImageHash};
use super::patches::ImagePatches;
use super::placeholders::VisionTokenIds;
use super::resize::smart_resize;
use super::source::{load_image_url, LocalMediaRoot};
use crate::tokenizer::Tokenizer;

/// Image handling of a vision-language checkpoint plus the server's image limits.
#[derive(Debug, Clone)]
pub struct VisionSetup {
    /// The checkpoint's `preprocessor_config.json`.
    pub processor: ImageProcessorConfig,
    /// The checkpoint's vision token ids.
    pub tokens: VisionTokenIds,
    /// Per-request limits (`--max-images-per-request`, `--max-image-bytes`, `--max-image-pixels`).
    pub limits: ImageLimits,
    /// `--allowed-local-media-path`, if local files may be read.
    pub local_root: Option<LocalMediaRoot>,
}

/// The vision token names of Qwen-VL tokenizers and the `config.json` keys of their ids.
const TOKEN_NAMES: [(&str, &str); 3] = [
    ("<|image_pad|>", "image_token_id"),
    ("<|vision_start|>", "vision_start_token_id"),
    ("<|vision_end|>", "vision_end_token_id"),
];

impl VisionSetup {
    /// The setup for the HF model directory `dir`: `None` when its `config.json` has no
    /// `vision_config` (a text-only model). For a vision model, `preprocessor_config.json` must
    /// be there and the vision token ids must be known (from `config.json`, else `tokenizer`).
    pub fn from_model_dir(
        dir: &Path,
        tokenizer: Option<&Tokenizer>,
        limits: ImageLimits,
        local_root: Option<LocalMediaRoot>,
    ) -> Result<Option<Self>, ImageConfigError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| ImageConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let config: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| ImageConfigError::Parse { path, source })?;
        if config.get("vision_config").is_none_or(serde_json::Value::is_null) {
            return Ok(None);
        }
        let processor = ImageProcessorConfig::from_file(&dir.join("preprocessor_config.json"))?;
        let tokens = vision_token_ids(&config, tokenizer)?;
        Ok(Some(Self {
            processor,
            tokens,
            limits,
            local_root,
        }))
    }

    /// Loads, decodes and preprocesses the image at `url` (see [`load_image_url`]).
    /// `token_budget` is how many placeholder tokens the image may need at most; it is checked
    /// after decoding and before the (costly) resize.
    pub fn prepare(&self, url: &str, token_budget: usize) -> Result<(ImagePatches, ImageHash), ImageInputError> {
        let bytes = load_image_url(url, self.local_root.as_ref(), &self.limits)?;
        let hash = image_hash(&bytes);
        let img = decode_image(&bytes, &self.limits)?;
        drop(bytes);
        let p = &self.processor;
        let (h, w) = smart_resize(img.height(), img.width(), p.factor(), p.min_pixels, p.max_pixels)?;
        let tokens = (h / p.factor()) as usize * (w / p.factor()) as usize;
        if tokens > token_budget {
            return Err(ImageInputError::TooManyTokens {
                width: img.width(),
                height: img.height(),
                tokens,
                budget: token_budget,
            });
        }
        Ok((p.preprocess(&img)?, hash))
    }
}

/// The ids from `config.json` (`image_token_id`, ...), else looked up in the tokenizer.
fn vision_token_ids(
    config: &serde_json::Value,
    tokenizer: Option<&Tokenizer>,
) -> Result<VisionTokenIds, ImageConfigError> {
    let mut ids = [0u32; 3];
    for (slot, (name, key)) in ids.iter_mut().zip(TOKEN_NAMES) {
        let from_config = config.get(key).and_then(serde_json::Value::as_u64);
        let id = from_config
            .and_then(|v| u32::try_from(v).ok())
            .or_else(|| tokenizer.and_then(|t| t.token_to_id(name)));
        *slot = id.ok_or_else(|| ImageConfigError::Invalid {
            field: key,
            reason: format!("config.json has no `{key}` and the tokenizer has no `{name}` token"),
        })?;
    }
    Ok(VisionTokenIds {
        image_pad: ids[0],
        vision_start: ids[1],
        vision_end: ids[2],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn text_models_have_no_setup_and_vision_models_need_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let limits = ImageLimits::default();
        write(d, "config.json", r#"{"model_type": "qwen3"}"#);
        assert!(VisionSetup::from_model_dir(d, None, limits, None).unwrap().is_none());
        write(
            d,
            "config.json",
            r#"{"vision_config": {}, "image_token_id": 151655, "vision_start_token_id": 151652, "vision_end_token_id": 151653}"#,
        );
        let err = VisionSetup::from_model_dir(d, None, limits, None).unwrap_err();
        assert!(err.to_string().contains("preprocessor_config.json"), "{err}");
        write(d, "preprocessor_config.json", r#"{"patch_size": 16}"#);
        let s = VisionSetup::from_model_dir(d, None, limits, None).unwrap().unwrap();
        assert_eq!(s.tokens, VisionTokenIds::QWEN3_VL);
        write(d, "config.json", r#"{"vision_config": {"depth": 1}}"#);
        let err = VisionSetup::from_model_dir(d, None, limits, None).unwrap_err();
        assert!(err.to_string().contains("`image_token_id`"), "{err}");
    }

    #[test]
    fn prepare_checks_the_token_budget_before_resizing() {
        let setup = VisionSetup {
            processor: ImageProcessorConfig::default(),
            tokens: VisionTokenIds::QWEN3_VL,
            limits: ImageLimits::default(),
            local_root: None,
        };
        let mut png = Vec::new();
        image::RgbImage::from_pixel(300, 200, image::Rgb([1, 2, 3]))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        use base64::Engine;
        let url = format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(&png)
        );
        let (p, hash) = setup.prepare(&url, 70).unwrap();
        assert_eq!((p.grid.num_tokens(2), hash), (70, image_hash(&png)));
        let err = setup.prepare(&url, 69).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the 300x200 image needs 70 tokens but only 69 are left in the context"
        );
    }
}
