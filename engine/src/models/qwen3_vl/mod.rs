//! Qwen3-VL (`Qwen3VLForConditionalGeneration`) on the CPU.
//!
//! * The vision tower ([`VisionTower`]): pixel patches from [`crate::multimodal`] → patch
//!   embedding (Conv3d as a matmul), bilinearly resampled learned position embeddings, axial
//!   2-D rotary, `depth` pre-LayerNorm blocks of per-frame non-causal attention and GELU MLP,
//!   then the 2×2 patch merger and the deepstack mergers.
//! * The full model ([`Qwen3VlModel`]): image embeddings replace the placeholder tokens'
//!   embeddings ([`VisualRows`]), the Qwen3 text decoder runs with interleaved M-RoPE
//!   ([`MRotaryEmbedding`]) at 3-axis positions ([`rope_positions`]), and deepstack level `k`
//!   is added to the image rows after decoder layer `k`. [`Qwen3VlModel::forward_step`] runs
//!   one KV-cached step ([`VlKvCache`]) at explicit positions; `forward` and greedy `generate`
//!   sit on top.
//!
//! Serving: the engine's `ModelRunner` runs [`Qwen3VlModel::forward_paged`] per sequence on
//! its shared KV pool, with [`VlRequests`] holding each image request's positions and tower
//! rows.
//!
//! Parity with transformers is checked by `engine/tests/qwen3_vl_vision.rs` (tower) and
//! `engine/tests/qwen3_vl_model.rs` (positions, logits, greedy continuation), against fixtures
//! from `scripts/fixtures/qwen3_vl_vision.py` and `scripts/fixtures/qwen3_vl_model.py`.
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

mod cache;
mod config;
mod front;
mod layers;
mod model;
mod model_config;
mod mrope;
mod positions;
mod requests;
mod rope_index;
mod splice;
mod text;
mod vision;
mod weights;

pub use cache::VlKvCache;
pub use config::{VisionAct, VisionConfig, VisionConfigError, VisionRope};
pub use front::VlFront;
pub(crate) use layers::{LayerNorm as VisionLayerNorm, Linear as VisionLinear, Rotary as VisionRotary};
pub use model::{PreparedPrompt, Qwen3VlModel};
pub use model_config::Qwen3VlConfig;
pub use mrope::{MRotaryEmbedding, MropeLayout, MropePos};
pub use positions::{frame_bounds, patch_coords, position_taps, PosTaps};
pub use requests::VlRequests;
pub use rope_index::{rope_positions, text_position, RopeIndexError, RopePositions};
pub use splice::VisualRows;
pub use text::StepLogits;
pub use vision::{VisionEncoder, VisionOutput, VisionTower};
pub(crate) use weights::MergerWeights;
pub use weights::VISION_PREFIXES;
