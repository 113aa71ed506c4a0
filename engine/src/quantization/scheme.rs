//! The [`Scheme`] trait (one quantized weight layout and its compute) and
//! [`SchemeLinearMethod`], the [`LinearMethod`] that owns a layer's lifecycle around a scheme.
//!
//! A scheme sees only its layer's parameters: it never knows which model or layer it is in.
//! `apply` dispatches on the input's device; the CPU arm runs the reference path, and a CUDA arm
//! (per-token quant fused into the preceding norm + `int8_scaled_mm`) is added next to it when
//! [`crate::tensor::Device`] gains a CUDA variant — the match is exhaustive, so the compiler
//! points at every scheme that needs it.

use std::fmt::Debug;
use std::sync::Arc;

use crate::layers::linear::{LinearMethod, LinearWeights, WeightSpec};
use crate::models::{ModelError, Result};
use crate::tensor::Tensor;

/// One quantized weight layout: its checkpoint parameters, their one-time conversion and the
/// run-time product.
pub trait Scheme: Send + Sync + Debug {
    /// The checkpoint-facing parameters of a layer `in_features → out_features` (no bias: the
    /// method adds it).
    fn create_weights(&self, in_features: usize, out_features: usize) -> Vec<WeightSpec>;

    /// Converts the loaded parameters to the run-time layout, once. `output_sizes` are the rows
    /// of each stacked shard (per-shard parameters arrive concatenated in that order).
    fn process_weights_after_loading(&self, output_sizes: &[usize], weights: &mut LinearWeights) -> Result<()>;

    /// `y = x · Wᵀ (+ bias)` for `x` `[..., in]`; returns f32 `[..., out]`.
    fn apply(&self, weights: &LinearWeights, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor>;
}

/// The [`LinearMethod`] of a quantized layer: the scheme's parameters plus an optional float
/// bias `[out]`.
#[derive(Debug, Clone)]
pub struct SchemeLinearMethod {
    scheme: Arc<dyn Scheme>,
}

impl SchemeLinearMethod {
    /// Wraps `scheme`.
    pub fn new(scheme: Arc<dyn Scheme>) -> Self {
        Self { scheme }
    }

    /// The scheme.
    pub fn scheme(&self) -> &Arc<dyn Scheme> {
        &self.scheme
    }
}

impl LinearMethod for SchemeLinearMethod {
    fn create_weights(&self, in_features: usize, out_features: usize, bias: bool) -> Vec<WeightSpec> {
        let mut specs = self.scheme.create_weights(in_features, out_features);
        if bias {
            specs.push(WeightSpec::bias(out_features));
        }
        specs
    }

    fn process_weights_after_loading(&self, output_sizes: &[usize], weights: &mut LinearWeights) -> Result<()> {
        if let Some(b) = weights.get_mut("bias") {
            *b = b.to_dtype(crate::tensor::DType::F32)?;
        }
        self.scheme.process_weights_after_loading(output_sizes, weights)
    }

    fn apply(&self, weights: &LinearWeights, x: &Tensor) -> Result<Tensor> {
        if !weights.contains_key("weight") {
            return Err(ModelError::Invalid(
                "quantized linear layer used before its weight was loaded".into(),
            ));
        }
        self.scheme.apply(weights, x, weights.get("bias"))
    }
}
