//! Image input for vision-language models: the Rust port of HF's Qwen2-VL /
//! Qwen3-VL image processor (`Qwen2VLImageProcessor`, the torchvision backend
//! that `AutoProcessor` picks for Qwen3-VL in transformers 5), plus where
//! image bytes may come from.
//!
//! The pipeline for one OpenAI `image_url` part:
//!
//! 1. [`load_image_url`]: `data:` URI or allow-listed local file to bytes;
//! 2. [`decode_image`]: PNG/JPEG/WebP to RGB (alpha over white, as PIL);
//! 3. [`ImageProcessorConfig::preprocess`]: [`smart_resize`], bicubic
//!    antialiased resize ([`resize_bicubic`], torch's uint8 arithmetic),
//!    normalise, repeat the frame, flatten to `pixel_values` rows and a
//!    [`GridThw`];
//! 4. [`expand_image_placeholders`]: each `<|image_pad|>` of the prompt
//!    becomes [`GridThw::num_tokens`] copies.
//!
//! [`VisionSetup::prepare`] runs steps 1-3 for the server; [`MultimodalInputs::expand`] runs
//! step 4 and is what a tokenized request carries to the model, together with the
//! prefix-cache key of its image tokens ([`MultimodalInputs::radix_key`]).
//!
//! Parity with transformers is checked against committed fixtures
//! (`engine/tests/vl_preprocess.rs`, made by
//! `scripts/fixtures/qwen3_vl_processor.py`).
//!
//! ```
//! use mllm_engine::multimodal::*;
//!
//! let cfg = ImageProcessorConfig::default(); // Qwen3-VL
//! let limits = ImageLimits::default();
//! let mut png = Vec::new();
//! image::RgbImage::from_pixel(300, 200, image::Rgb([10, 20, 30]))
//!     .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
//!     .unwrap();
//! let img = decode_image(&png, &limits)?;
//! let patches = cfg.preprocess(&img)?;
//! assert_eq!(patches.grid, GridThw { t: 1, h: 14, w: 20 }); // resized to 320x224
//! let ids = [1, 151_652, 151_655, 151_653, 2];
//! let tokens = patches.grid.num_tokens(cfg.merge_size);
//! let expanded = expand_image_placeholders(&ids, &[tokens], VisionTokenIds::QWEN3_VL)?;
//! assert_eq!(expanded.len(), 4 + 70);
//! # Ok::<(), ImageInputError>(())
//! ```

mod config;
mod decode;
mod error;
mod inputs;
mod jpeg;
mod patches;
mod placeholders;
mod resize;
mod setup;
mod source;

pub use config::{ImageLimits, ImageProcessorConfig};
pub use decode::{decode_image, Rgb8Image};
pub use error::{ImageConfigError, ImageInputError};
pub use inputs::{image_hash, image_key_id, ImageHash, ImageInput, MultimodalInputs, IMAGE_KEY_BASE};
pub use patches::{GridThw, ImagePatches};
pub use placeholders::{expand_image_placeholders, VisionTokenIds};
pub use resize::{resize_bicubic, smart_resize, MAX_ASPECT_RATIO};
pub use setup::VisionSetup;
pub use source::{load_image_url, LocalMediaRoot};
