//! Quantization, in three layers as in vLLM / SGLang:
//!
//! 1. [`QuantizationConfig`] reads the checkpoint's `quantization_config` (compressed-tensors,
//!    [`config`]) or the `--quantization` request and decides, per linear layer, which
//!    [`LinearMethod`] it gets — unquantized for ignored layers ([`ignore`]); a fused layer
//!    (`qkv_proj`) is quantized only if all its parts are, and a mix is an error.
//! 2. The [`LinearMethod`] ([`scheme::SchemeLinearMethod`]) owns the layer's lifecycle: it adds
//!    the bias and delegates the rest to a scheme.
//! 3. The [`scheme::Scheme`] ([`w8a8::W8A8Int8`]) registers the checkpoint-facing parameters
//!    (`create_weights`), converts their layout once (`process_weights_after_loading`, the only
//!    conversion boundary; float weights are quantized there for `--quantization w8a8`) and does
//!    only run-time compute in `apply`.
//!
//! Model files never look at a quantization format: they ask [`QuantizationConfig::linear_method`]
//! for each linear layer. [`quantize`] holds the weight quantizer and the default skip list,
//! [`writer`] writes compressed-tensors checkpoints (`mllm quantize`).
//!
//! ```
//! use mllm_engine::quantization::{QuantMethod, QuantizationConfig};
//! let q = QuantizationConfig::new(None, Some(QuantMethod::W8A8), None).unwrap();
//! let m = q.linear_method("model.layers.0.self_attn", &["q_proj", "k_proj", "v_proj"]).unwrap();
//! assert!(format!("{m:?}").contains("W8A8Int8"));
//! ```

pub mod config;
pub mod ignore;
pub mod int8_gemm;
pub mod observe;
pub mod quantize;
pub mod scheme;
pub mod smooth;
pub mod w8a8;
pub mod writer;

use std::sync::Arc;

use serde_json::Value;
use thiserror::Error;

use crate::layers::linear::{LinearMethod, UnquantizedLinearMethod};
use crate::tensor::DType;
use config::CompressedTensorsConfig;
use ignore::{fused_decision, PatternList};
use observe::{ActivationStats, ObservedLinearMethod};
use scheme::SchemeLinearMethod;
use w8a8::W8A8Int8;

/// Errors of quantization configs, schemes and the checkpoint writer.
#[derive(Debug, Error)]
pub enum QuantError {
    /// The `quantization_config` is malformed or of an unknown kind.
    #[error("quantization config: {0}")]
    Config(String),
    /// A layer's scheme is recognized but not implemented.
    #[error("layer `{layer}`: unsupported quantization scheme {scheme} (supported: W8A8 int8 — int8 symmetric channel/tensor weights with dynamic per-token or static per-tensor int8 activations, format int-quantized)")]
    UnsupportedScheme {
        /// The prefixed layer name.
        layer: String,
        /// The scheme as the config describes it.
        scheme: String,
    },
    /// The parts of a fused layer (q/k/v, gate/up) are not all quantized the same way.
    #[error("fused layer `{layer}` mixes schemes across its parts ({}); quantize all parts or none", parts.join("; "))]
    MixedFusedLayer {
        /// The fused layer, e.g. `model.layers.0.self_attn.{q_proj,k_proj,v_proj}`.
        layer: String,
        /// `<part>: <decision>` per part.
        parts: Vec<String>,
    },
    /// An `ignore` / `targets` / `--ignore` entry is not a valid pattern.
    #[error("invalid layer pattern `{pattern}`: {reason}")]
    BadPattern {
        /// The pattern as written.
        pattern: String,
        /// The regex error.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Something else is wrong (message says what).
    #[error("{0}")]
    Invalid(String),
}

impl From<QuantError> for crate::models::ModelError {
    fn from(e: QuantError) -> Self {
        crate::models::ModelError::Invalid(e.to_string())
    }
}

/// A quantization method requested for a float checkpoint (`--quantization`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantMethod {
    /// Int8 weights (per-channel absmax, symmetric) and dynamic per-token int8 activations.
    W8A8,
}

#[derive(Debug, Clone)]
enum Kind {
    /// Every linear layer stays float.
    None,
    /// The checkpoint's compressed-tensors config decides.
    CompressedTensors(CompressedTensorsConfig),
    /// Float weights quantized at load time, except layers matching `skip`.
    AtLoad { skip: PatternList },
    /// Every linear layer stays float and records its inputs (calibration).
    Observe(Arc<ActivationStats>),
}

/// Decides, per linear layer, which [`LinearMethod`] it gets.
#[derive(Debug, Clone)]
pub struct QuantizationConfig {
    kind: Kind,
    float: Arc<dyn LinearMethod>,
    /// `(model prefix, checkpoint prefix)`: layer names are matched as the checkpoint spells
    /// them (see [`QuantizationConfig::with_checkpoint_prefix`]).
    rename: Option<(String, String)>,
}

impl QuantizationConfig {
    /// From the checkpoint's `quantization_config` (if any) and the requested method (if any);
    /// `float_dtype` is the storage dtype of layers that stay float (`None`: as loaded).
    ///
    /// A compressed-tensors checkpoint is used as quantized (`--quantization w8a8` is then
    /// redundant but allowed); any other `quant_method` is an error naming it.
    pub fn new(
        checkpoint: Option<&Value>,
        requested: Option<QuantMethod>,
        float_dtype: Option<DType>,
    ) -> Result<Self, QuantError> {
        let kind = match (checkpoint, requested) {
            (Some(v), _) => {
                let method = v.get("quant_method").and_then(Value::as_str).unwrap_or("<missing>");
                if method != "compressed-tensors" {
                    return Err(QuantError::Config(format!(
                        "checkpoint quant_method `{method}` is not supported (supported: compressed-tensors)"
                    )));
                }
                Kind::CompressedTensors(CompressedTensorsConfig::from_value(v)?)
            }
            (None, Some(QuantMethod::W8A8)) => Kind::AtLoad {
                skip: quantize::default_skip(),
            },
            (None, None) => Kind::None,
        };
        Ok(Self {
            kind,
            float: Arc::new(UnquantizedLinearMethod { target: float_dtype }),
            rename: None,
        })
    }

    /// No quantization; float layers stored as `float_dtype`.
    pub fn unquantized(float_dtype: Option<DType>) -> Self {
        Self {
            kind: Kind::None,
            float: Arc::new(UnquantizedLinearMethod { target: float_dtype }),
            rename: None,
        }
    }

    /// Every linear layer float, recording its inputs' per-channel max into `stats` under the
    /// name of its first part (calibration for [`smooth`]).
    pub fn observing(stats: Arc<ActivationStats>) -> Self {
        Self {
            kind: Kind::Observe(stats),
            ..Self::unquantized(None)
        }
    }

    /// Matches layers under the checkpoint's names: a model that loads a nested decoder under
    /// shorter names asks for `model.layers.0.mlp` where the checkpoint (and so its `ignore` /
    /// `targets` and `--ignore`) says `model.language_model.layers.0.mlp`. Names starting with
    /// `model_prefix` are matched with it replaced by `checkpoint_prefix`; others (`lm_head`)
    /// as given. Errors name layers the checkpoint's way too.
    ///
    /// ```
    /// use mllm_engine::quantization::QuantizationConfig;
    /// let ct = serde_json::json!({"quant_method": "compressed-tensors", "format": "int-quantized",
    ///     "config_groups": {"g": {"targets": ["Linear"],
    ///         "weights": {"num_bits": 8, "type": "int", "strategy": "channel", "dynamic": false},
    ///         "input_activations": {"num_bits": 8, "type": "int", "strategy": "token", "dynamic": true}}},
    ///     "ignore": ["lm_head", "model.language_model.layers.0.mlp.down_proj"]});
    /// let q = QuantizationConfig::new(Some(&ct), None, None)
    ///     .unwrap()
    ///     .with_checkpoint_prefix("model.", "model.language_model.");
    /// let quantized = |p: &str| format!("{:?}", q.linear_method(p, &["down_proj"]).unwrap()).contains("W8A8");
    /// assert!(!quantized("model.layers.0.mlp") && quantized("model.layers.1.mlp"));
    /// ```
    pub fn with_checkpoint_prefix(mut self, model_prefix: &str, checkpoint_prefix: &str) -> Self {
        self.rename = Some((model_prefix.to_string(), checkpoint_prefix.to_string()));
        self
    }

    /// `name` as the checkpoint spells it.
    fn checkpoint_name(&self, name: &str) -> String {
        match &self.rename {
            Some((from, to)) => match name.strip_prefix(from.as_str()) {
                Some(rest) => format!("{to}{rest}"),
                None => name.to_string(),
            },
            None => name.to_string(),
        }
    }

    /// Whether any layer may be quantized.
    pub fn is_quantized(&self) -> bool {
        !matches!(self.kind, Kind::None | Kind::Observe(_))
    }

    /// A short name for logs: `none`, `compressed-tensors` or `w8a8 (at load)`.
    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::None => "none",
            Kind::CompressedTensors(_) => "compressed-tensors",
            Kind::AtLoad { .. } => "w8a8 (at load)",
            Kind::Observe(_) => "none (calibrating)",
        }
    }

    /// The method of the linear layer made of `parts` under `prefix` (one part for a plain
    /// layer, several for a fused one: `["q_proj", "k_proj", "v_proj"]`).
    pub fn linear_method(&self, prefix: &str, parts: &[&str]) -> Result<Arc<dyn LinearMethod>, QuantError> {
        let prefix = &self.checkpoint_name(prefix);
        let scheme: Option<W8A8Int8> = match &self.kind {
            Kind::None => None,
            Kind::Observe(stats) => {
                let layer = format!("{prefix}.{}", parts.first().copied().unwrap_or_default());
                return Ok(Arc::new(ObservedLinearMethod::new(
                    layer,
                    self.float.clone(),
                    stats.clone(),
                )));
            }
            Kind::AtLoad { skip } => fused_decision(prefix, parts, |name| {
                Ok(match skip.first_match(name) {
                    Some(p) => (None, format!("skipped by `{}`", p.as_str())),
                    None => (Some(W8A8Int8::at_load()), "w8a8".to_string()),
                })
            })?,
            Kind::CompressedTensors(ct) => {
                let group = fused_decision(prefix, parts, |name| {
                    Ok(match ct.group_for(name) {
                        Some(g) => (Some(g.name.clone()), format!("group {}", g.name)),
                        None => (None, "not quantized".to_string()),
                    })
                })?;
                match group {
                    None => None,
                    Some(g) => {
                        let group = ct.groups.iter().find(|x| x.name == g).expect("group found above");
                        let layer = if parts.len() == 1 {
                            format!("{prefix}.{}", parts[0])
                        } else {
                            format!("{prefix}.{{{}}}", parts.join(","))
                        };
                        Some(ct.scheme(&layer, group)?)
                    }
                }
            }
        };
        Ok(match scheme {
            Some(s) => Arc::new(SchemeLinearMethod::new(Arc::new(s))),
            None => self.float.clone(),
        })
    }

    /// Errors if `layer` (e.g. `lm_head`, which the engine keeps float) would be quantized.
    pub fn require_float(&self, layer: &str) -> Result<(), QuantError> {
        let layer = &self.checkpoint_name(layer);
        let quantized = match &self.kind {
            Kind::None | Kind::AtLoad { .. } | Kind::Observe(_) => None,
            Kind::CompressedTensors(ct) => ct.group_for(layer).map(|g| g.describe(ct.format)),
        };
        match quantized {
            None => Ok(()),
            Some(scheme) => Err(QuantError::UnsupportedScheme {
                layer: layer.to_string(),
                scheme: format!("{scheme}; this layer must stay float (add it to `ignore`)"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ct(ignore: Value) -> Value {
        let args =
            |s: &str, d: bool| json!({"num_bits": 8, "type": "int", "symmetric": true, "strategy": s, "dynamic": d});
        json!({"quant_method": "compressed-tensors", "format": "int-quantized",
               "config_groups": {"group_0": {"targets": ["Linear"], "weights": args("channel", false),
                                             "input_activations": args("token", true)}},
               "ignore": ignore})
    }

    fn is_w8a8(m: &Arc<dyn LinearMethod>) -> bool {
        format!("{m:?}").contains("W8A8Int8")
    }

    #[test]
    fn per_layer_decisions_and_fused_errors() {
        let v = ct(json!([
            "lm_head",
            "re:model\\.layers\\.1\\.mlp\\.",
            "model.layers.2.self_attn.v_proj"
        ]));
        let q = QuantizationConfig::new(Some(&v), None, None).unwrap();
        let qkv = ["q_proj", "k_proj", "v_proj"];
        assert!(is_w8a8(&q.linear_method("model.layers.0.self_attn", &qkv).unwrap()));
        assert!(!is_w8a8(
            &q.linear_method("model.layers.1.mlp", &["gate_proj", "up_proj"])
                .unwrap()
        ));
        assert!(is_w8a8(
            &q.linear_method("model.layers.1.self_attn", &["o_proj"]).unwrap()
        ));
        let err = q
            .linear_method("model.layers.2.self_attn", &qkv)
            .unwrap_err()
            .to_string();
        assert!(err.contains("model.layers.2.self_attn.v_proj: not quantized"), "{err}");
        assert!(err.contains("model.layers.2.self_attn.q_proj: group group_0"), "{err}");
        q.require_float("lm_head").unwrap();

        let v = ct(json!([]));
        let q = QuantizationConfig::new(Some(&v), Some(QuantMethod::W8A8), None).unwrap();
        let err = q.require_float("lm_head").unwrap_err().to_string();
        assert!(err.contains("`lm_head`") && err.contains("ignore"), "{err}");
    }

    #[test]
    fn other_methods_and_at_load_skips() {
        let err = QuantizationConfig::new(Some(&json!({"quant_method": "gptq"})), None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`gptq`"), "{err}");
        let q = QuantizationConfig::new(None, Some(QuantMethod::W8A8), None).unwrap();
        assert!(is_w8a8(&q.linear_method("model.layers.0.mlp", &["down_proj"]).unwrap()));
        assert!(!is_w8a8(
            &q.linear_method("model.vision_tower.layers.0.mlp", &["fc1"]).unwrap()
        ));
        let none = QuantizationConfig::new(None, None, None).unwrap();
        assert!(!none.is_quantized());
        assert!(!is_w8a8(
            &none.linear_method("model.layers.0.mlp", &["down_proj"]).unwrap()
        ));
    }

    #[test]
    fn nested_decoder_names_match_as_the_checkpoint_spells_them() {
        // Qwen3-VL: the decoder loads as `model.layers.*`, the checkpoint says
        // `model.language_model.layers.*`; ignore entries use the checkpoint's names.
        let v = ct(json!([
            "lm_head",
            "re:model.visual.*",
            "re:.*visual.*",
            "model.language_model.layers.0.mlp.down_proj",
            "re:model\\.language_model\\.layers\\.1\\.self_attn\\.",
            "model.language_model.layers.2.self_attn.k_proj"
        ]));
        let q = QuantizationConfig::new(Some(&v), None, None)
            .unwrap()
            .with_checkpoint_prefix("model.", "model.language_model.");
        let method = |p: &str, parts: &[&str]| q.linear_method(p, parts).map(|m| is_w8a8(&m));
        let qkv = ["q_proj", "k_proj", "v_proj"];
        assert!(!method("model.layers.0.mlp", &["down_proj"]).unwrap());
        assert!(method("model.layers.0.mlp", &["gate_proj", "up_proj"]).unwrap());
        assert!(method("model.layers.0.self_attn", &qkv).unwrap());
        assert!(!method("model.layers.1.self_attn", &qkv).unwrap());
        assert!(!method("model.layers.1.self_attn", &["o_proj"]).unwrap());
        assert!(method("model.layers.1.mlp", &["down_proj"]).unwrap());
        let err = method("model.layers.2.self_attn", &qkv).unwrap_err().to_string();
        assert!(
            err.contains("model.language_model.layers.2.self_attn.{q_proj,k_proj,v_proj}")
                && err.contains("model.language_model.layers.2.self_attn.k_proj: not quantized"),
            "{err}"
        );
        q.require_float("lm_head").unwrap();

        // Without the mapping the same list misses the decoder's layers.
        let plain = QuantizationConfig::new(Some(&v), None, None).unwrap();
        assert!(is_w8a8(
            &plain.linear_method("model.layers.0.mlp", &["down_proj"]).unwrap()
        ));

        // At load, the default skips still see the nested names (nothing of the decoder skipped).
        let q = QuantizationConfig::new(None, Some(QuantMethod::W8A8), None)
            .unwrap()
            .with_checkpoint_prefix("model.", "model.language_model.");
        assert!(is_w8a8(&q.linear_method("model.layers.0.mlp", &["down_proj"]).unwrap()));
        assert!(!is_w8a8(
            &q.linear_method("model.visual.blocks.0.attn", &["qkv"]).unwrap()
        ));
    }
}
