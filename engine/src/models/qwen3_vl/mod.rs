//! Qwen3-VL on the CPU. For now the vision tower ([`VisionTower`]): pixel patches from
//! [`crate::multimodal`] → patch embedding (Conv3d as a matmul), bilinearly resampled learned
//! position embeddings, axial 2-D rotary, `depth` pre-LayerNorm blocks of per-frame non-causal
//! attention and GELU MLP, then the 2×2 patch merger and the deepstack mergers.
//!
//! Parity with transformers' `Qwen3VLVisionModel` is checked by `engine/tests/qwen3_vl_vision.rs`
//! against fixtures from `scripts/fixtures/qwen3_vl_vision.py`.
//!
//! ```no_run
//! use mllm_engine::models::qwen3_vl::VisionTower;
//! use mllm_engine::multimodal::GridThw;
//! use mllm_engine::tensor::{DType, Tensor};
//!
//! let tower = VisionTower::from_dir("Qwen3-VL-2B-Instruct")?;
//! let grid = GridThw { t: 1, h: 4, w: 6 };
//! let pixels = Tensor::zeros(&[grid.num_patches(), tower.config().patch_dim()], DType::F32);
//! let out = tower.forward(&pixels, &[grid])?;
//! assert_eq!(out.embeddings.shape()[0], 6); // 24 patches / 2x2
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod config;
mod layers;
mod positions;
mod vision;
mod weights;

pub use config::{VisionAct, VisionConfig, VisionConfigError, VisionRope};
pub use positions::{frame_bounds, patch_coords, position_taps, PosTaps};
pub use vision::{VisionOutput, VisionTower};
pub use weights::VISION_PREFIXES;
