//! Calibration for activation-aware quantization (SmoothQuant, [`super::smooth`]): runs the
//! float model once over token ids and records, per linear layer, the max |x| of every input
//! channel.
//!
//! Recording is a [`LinearMethod`] like any other: [`QuantizationConfig::observing`] hands each
//! layer an [`ObservedLinearMethod`] that computes in float and notes its inputs, so the model
//! code runs unchanged.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::QuantizationConfig;
use crate::executor::forward_batch::LogitsMode;
use crate::layers::linear::{LinearMethod, LinearWeights, WeightSpec};
use crate::loader::config::ModelConfig;
use crate::models::weights::WeightSource;
use crate::models::{CausalLM, LoadOptions, ModelError, Result};
use crate::tensor::Tensor;

/// The built-in calibration text: generic prose, a worked question, code and a letter. It is
/// not the paragraph perplexity is evaluated on (`tests/fixtures/prose.txt`).
pub const CALIBRATION_TEXT: &str = include_str!("calibration.txt");

/// Per linear layer (keyed by the prefixed name of its first part, e.g.
/// `model.layers.0.self_attn.q_proj` for the fused qkv layer), the max |x| per input channel.
#[derive(Debug, Default)]
pub struct ActivationStats {
    max: Mutex<BTreeMap<String, Vec<f32>>>,
}

impl ActivationStats {
    /// Folds `x` `[..., k]` into `layer`'s per-channel max.
    ///
    /// ```
    /// use mllm_engine::quantization::observe::ActivationStats;
    /// use mllm_engine::tensor::Tensor;
    /// let s = ActivationStats::default();
    /// s.record("l", &Tensor::from_vec(vec![1.0f32, -3.0, -2.0, 0.5], &[2, 2]).unwrap()).unwrap();
    /// assert_eq!(s.get("l"), Some(vec![2.0, 3.0]));
    /// ```
    pub fn record(&self, layer: &str, x: &Tensor) -> Result<()> {
        let k = x.shape().last().copied().unwrap_or(0).max(1);
        let v = x.to_f32_vec()?;
        let mut row_max = vec![0f32; k];
        for row in v.chunks(k) {
            for (m, &a) in row_max.iter_mut().zip(row) {
                *m = m.max(a.abs());
            }
        }
        let mut map = self.max.lock().expect("stats lock poisoned");
        let slot = map.entry(layer.to_string()).or_insert_with(|| vec![0.0; k]);
        for (m, r) in slot.iter_mut().zip(row_max) {
            *m = m.max(r);
        }
        Ok(())
    }

    /// `layer`'s per-channel max, if it ran.
    pub fn get(&self, layer: &str) -> Option<Vec<f32>> {
        self.max.lock().expect("stats lock poisoned").get(layer).cloned()
    }
}

/// A float [`LinearMethod`] that records its inputs' per-channel max before computing.
#[derive(Debug)]
pub struct ObservedLinearMethod {
    layer: String,
    inner: Arc<dyn LinearMethod>,
    stats: Arc<ActivationStats>,
}

impl ObservedLinearMethod {
    /// Wraps `inner` for `layer`, recording into `stats`.
    pub fn new(layer: String, inner: Arc<dyn LinearMethod>, stats: Arc<ActivationStats>) -> Self {
        Self { layer, inner, stats }
    }
}

impl LinearMethod for ObservedLinearMethod {
    fn create_weights(&self, in_features: usize, out_features: usize, bias: bool) -> Vec<WeightSpec> {
        self.inner.create_weights(in_features, out_features, bias)
    }

    fn process_weights_after_loading(&self, output_sizes: &[usize], weights: &mut LinearWeights) -> Result<()> {
        self.inner.process_weights_after_loading(output_sizes, weights)
    }

    fn apply(&self, weights: &LinearWeights, x: &Tensor) -> Result<Tensor> {
        self.stats.record(&self.layer, x)?;
        self.inner.apply(weights, x)
    }
}

/// Runs the float model in `src` over `ids` (one prefill) and returns the input statistics of
/// every linear layer.
pub fn calibrate(config: ModelConfig, src: &dyn WeightSource, ids: &[u32]) -> Result<ActivationStats> {
    if ids.is_empty() {
        return Err(ModelError::Invalid("calibration needs at least one token".into()));
    }
    let stats = Arc::new(ActivationStats::default());
    let quant = QuantizationConfig::observing(stats.clone());
    let model = CausalLM::load_with(config, src, &LoadOptions::default(), quant)?;
    model.forward_prompt(ids, LogitsMode::LastPerSequence)?;
    drop(model);
    Ok(Arc::try_unwrap(stats).expect("the model holding the observers was dropped"))
}
