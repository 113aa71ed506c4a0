//! The image processor settings (`preprocessor_config.json`) and the
//! per-request image limits.

use std::path::Path;

use serde::Deserialize;

use super::error::ImageConfigError;

/// Image processor settings of a Qwen2-VL/Qwen3-VL checkpoint, validated.
///
/// Parsed from `preprocessor_config.json` the way HF's `Qwen2VLImageProcessor`
/// reads it: `size.shortest_edge` / `size.longest_edge` are the min/max pixel
/// counts (`size.min_pixels` / `size.max_pixels` and top-level `min_pixels` /
/// `max_pixels` are accepted too, the top-level ones winning as in HF). A field
/// the file leaves out takes Qwen3-VL's published value (see [`Default`]),
/// not the HF class default (which is Qwen2-VL's).
///
/// ```
/// use mllm_engine::multimodal::ImageProcessorConfig;
///
/// let cfg = ImageProcessorConfig::from_json(
///     r#"{"size": {"shortest_edge": 65536, "longest_edge": 16777216}, "patch_size": 16}"#,
/// )
/// .unwrap();
/// assert_eq!(cfg.factor(), 32);
/// assert_eq!(cfg, ImageProcessorConfig::default());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessorConfig {
    /// Lower bound of resized `height * width` (`size.shortest_edge`).
    pub min_pixels: u64,
    /// Upper bound of resized `height * width` (`size.longest_edge`).
    pub max_pixels: u64,
    /// Side of one vision patch in pixels (16 for Qwen3-VL, 14 for Qwen2-VL).
    pub patch_size: u32,
    /// Frames per temporal patch; a still image is repeated this many times.
    pub temporal_patch_size: u32,
    /// Side of the square of patches merged into one LLM token.
    pub merge_size: u32,
    /// Per-channel mean, in the 0..1 scale.
    pub image_mean: [f32; 3],
    /// Per-channel standard deviation, in the 0..1 scale.
    pub image_std: [f32; 3],
    /// `rescale_factor` when `do_rescale` (1/255), else `None`.
    pub rescale_factor: Option<f64>,
    /// `do_normalize`.
    pub do_normalize: bool,
}

impl Default for ImageProcessorConfig {
    /// Qwen3-VL's `preprocessor_config.json`: pixels 256² ..= 4096², patch
    /// 16, temporal patch 2, merge 2, mean = std = 0.5, rescale 1/255.
    fn default() -> Self {
        Self {
            min_pixels: 65_536,
            max_pixels: 16_777_216,
            patch_size: 16,
            temporal_patch_size: 2,
            merge_size: 2,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
            rescale_factor: Some(1.0 / 255.0),
            do_normalize: true,
        }
    }
}

/// `image_mean` / `image_std` may be one number or one per channel.
#[derive(Deserialize)]
#[serde(untagged)]
enum PerChannel {
    One(f32),
    Three([f32; 3]),
}

impl PerChannel {
    fn expand(self) -> [f32; 3] {
        match self {
            Self::One(v) => [v; 3],
            Self::Three(v) => v,
        }
    }
}

#[derive(Deserialize, Default)]
struct RawSize {
    shortest_edge: Option<u64>,
    longest_edge: Option<u64>,
    min_pixels: Option<u64>,
    max_pixels: Option<u64>,
}

/// The file as written; unknown keys (`processor_class`, ...) are ignored.
#[derive(Deserialize, Default)]
struct RawConfig {
    #[serde(default)]
    size: Option<RawSize>,
    min_pixels: Option<u64>,
    max_pixels: Option<u64>,
    patch_size: Option<u32>,
    temporal_patch_size: Option<u32>,
    merge_size: Option<u32>,
    image_mean: Option<PerChannel>,
    image_std: Option<PerChannel>,
    do_resize: Option<bool>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f64>,
    do_normalize: Option<bool>,
    do_convert_rgb: Option<bool>,
    resample: Option<u32>,
}

/// PIL's `Image.Resampling.BICUBIC`, the only filter implemented.
const PIL_BICUBIC: u32 = 3;

impl ImageProcessorConfig {
    /// Reads and validates `preprocessor_config.json`.
    ///
    /// ```no_run
    /// let cfg = mllm_engine::multimodal::ImageProcessorConfig::from_file(
    ///     "/models/Qwen3-VL-2B-Instruct/preprocessor_config.json".as_ref(),
    /// )?;
    /// # Ok::<(), mllm_engine::multimodal::ImageConfigError>(())
    /// ```
    pub fn from_file(path: &Path) -> Result<Self, ImageConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ImageConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let raw: RawConfig = serde_json::from_str(&text).map_err(|source| ImageConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_raw(raw)
    }

    /// Parses and validates the JSON text of `preprocessor_config.json`.
    pub fn from_json(text: &str) -> Result<Self, ImageConfigError> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|source| ImageConfigError::Parse {
            path: "<preprocessor config>".into(),
            source,
        })?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: RawConfig) -> Result<Self, ImageConfigError> {
        let d = Self::default();
        let size = raw.size.unwrap_or_default();
        let min_pixels = raw
            .min_pixels
            .or(size.shortest_edge)
            .or(size.min_pixels)
            .unwrap_or(d.min_pixels);
        let max_pixels = raw
            .max_pixels
            .or(size.longest_edge)
            .or(size.max_pixels)
            .unwrap_or(d.max_pixels);
        let do_rescale = raw.do_rescale.unwrap_or(true);
        let cfg = Self {
            min_pixels,
            max_pixels,
            patch_size: raw.patch_size.unwrap_or(d.patch_size),
            temporal_patch_size: raw.temporal_patch_size.unwrap_or(d.temporal_patch_size),
            merge_size: raw.merge_size.unwrap_or(d.merge_size),
            image_mean: raw.image_mean.map_or(d.image_mean, PerChannel::expand),
            image_std: raw.image_std.map_or(d.image_std, PerChannel::expand),
            rescale_factor: do_rescale.then(|| raw.rescale_factor.unwrap_or(1.0 / 255.0)),
            do_normalize: raw.do_normalize.unwrap_or(true),
        };
        let invalid = |field, reason: &str| ImageConfigError::Invalid {
            field,
            reason: reason.to_string(),
        };
        if raw.do_resize == Some(false) {
            return Err(invalid(
                "do_resize",
                "false is not supported (images must be resized to the patch grid)",
            ));
        }
        if raw.do_convert_rgb == Some(false) {
            return Err(invalid(
                "do_convert_rgb",
                "false is not supported (images are always converted to RGB)",
            ));
        }
        if let Some(r) = raw.resample.filter(|&r| r != PIL_BICUBIC) {
            return Err(ImageConfigError::Invalid {
                field: "resample",
                reason: format!("{r} is not supported; only 3 (bicubic) is implemented"),
            });
        }
        if cfg.patch_size == 0 || cfg.temporal_patch_size == 0 || cfg.merge_size == 0 {
            return Err(invalid(
                "patch_size",
                "patch_size, temporal_patch_size and merge_size must be positive",
            ));
        }
        if cfg.max_pixels < cfg.min_pixels || cfg.max_pixels == 0 {
            return Err(ImageConfigError::Invalid {
                field: "size",
                reason: format!(
                    "longest_edge (max pixels {}) must be positive and at least shortest_edge (min pixels {})",
                    cfg.max_pixels, cfg.min_pixels
                ),
            });
        }
        if cfg.do_normalize && cfg.image_std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
            return Err(invalid("image_std", "every channel must be finite and non-zero"));
        }
        if cfg.rescale_factor.is_some_and(|r| r == 0.0 || !r.is_finite()) {
            return Err(invalid("rescale_factor", "must be finite and non-zero"));
        }
        Ok(cfg)
    }

    /// The side every resized image is a multiple of: `patch_size * merge_size`.
    pub fn factor(&self) -> u32 {
        self.patch_size * self.merge_size
    }

    /// Length of one row of `pixel_values`: `3 * temporal_patch_size * patch_size²`.
    pub fn patch_dim(&self) -> usize {
        3 * self.temporal_patch_size as usize * (self.patch_size as usize).pow(2)
    }
}

/// Per-request limits on images, checked before any decoding work.
///
/// ```
/// use mllm_engine::multimodal::ImageLimits;
///
/// let limits = ImageLimits::default();
/// assert!(limits.check_count(1).is_ok());
/// assert!(limits.check_count(limits.max_images + 1).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Images per request.
    pub max_images: usize,
    /// Encoded bytes per image (after base64 decoding).
    pub max_bytes: usize,
    /// Decoded `width * height` per image, before resizing.
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    /// 16 images, 20 MiB each, 2^25 (about 33.5 M) source pixels each.
    fn default() -> Self {
        Self {
            max_images: 16,
            max_bytes: 20 << 20,
            max_pixels: 1 << 25,
        }
    }
}

impl ImageLimits {
    /// Errors when a request carries more than `max_images` images.
    pub fn check_count(&self, given: usize) -> Result<(), super::ImageInputError> {
        if given > self.max_images {
            return Err(super::ImageInputError::TooManyImages {
                max: self.max_images,
                given,
            });
        }
        Ok(())
    }

    /// Errors when an encoded image is over `max_bytes`.
    pub fn check_bytes(&self, given: usize) -> Result<(), super::ImageInputError> {
        if given > self.max_bytes {
            return Err(super::ImageInputError::TooManyBytes {
                max: self.max_bytes,
                given,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_and_top_level_pixel_keys() {
        let c = ImageProcessorConfig::from_json(r#"{"size": {"min_pixels": 100, "max_pixels": 200}}"#).unwrap();
        assert_eq!((c.min_pixels, c.max_pixels), (100, 200));
        let c = ImageProcessorConfig::from_json(
            r#"{"size": {"shortest_edge": 1, "longest_edge": 2}, "min_pixels": 3136, "max_pixels": 1003520,
                "patch_size": 14, "image_mean": 0.25, "do_rescale": false}"#,
        )
        .unwrap();
        assert_eq!((c.min_pixels, c.max_pixels, c.factor()), (3136, 1_003_520, 28));
        assert_eq!((c.image_mean, c.rescale_factor), ([0.25; 3], None));
        assert_eq!(c.patch_dim(), 3 * 2 * 14 * 14);
    }

    #[test]
    fn unsupported_settings_are_named() {
        let err = |j: &str| ImageProcessorConfig::from_json(j).unwrap_err().to_string();
        assert!(err(r#"{"resample": 2}"#).contains("`resample`"));
        assert!(err(r#"{"do_resize": false}"#).contains("`do_resize`"));
        assert!(err(r#"{"do_convert_rgb": false}"#).contains("`do_convert_rgb`"));
        assert!(err(r#"{"merge_size": 0}"#).contains("must be positive"));
        assert!(err(r#"{"size": {"shortest_edge": 10, "longest_edge": 5}}"#).contains("`size`"));
        assert!(err(r#"{"image_std": [0.5, 0, 0.5]}"#).contains("`image_std`"));
        assert!(err(r#"{"patch_size": "16"}"#).contains("cannot parse"));
    }
}
