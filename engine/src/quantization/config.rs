//! The compressed-tensors `quantization_config` of a checkpoint's `config.json` (what
//! llm-compressor writes and vLLM reads): format, config groups (targets + weight / activation
//! quantization arguments) and the ignore list, and which scheme a layer gets.

use serde::Deserialize;
use serde_json::Value;

use super::ignore::{Pattern, PatternList};
use super::w8a8::{ActivationScale, W8A8Int8, WeightScale};
use super::QuantError;

/// `format`: how quantized tensors are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One int8 (or smaller, unpacked) value per element.
    IntQuantized,
    /// Sub-byte integers packed into int32.
    PackQuantized,
    /// FP8 values.
    FloatQuantized,
}

impl Format {
    fn parse(s: &str) -> Result<Self, QuantError> {
        match s {
            "int-quantized" => Ok(Self::IntQuantized),
            "pack-quantized" => Ok(Self::PackQuantized),
            "float-quantized" => Ok(Self::FloatQuantized),
            other => Err(QuantError::Config(format!(
                "unsupported compressed-tensors format `{other}` (recognized: int-quantized, pack-quantized, float-quantized)"
            ))),
        }
    }

    /// The name in `config.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IntQuantized => "int-quantized",
            Self::PackQuantized => "pack-quantized",
            Self::FloatQuantized => "float-quantized",
        }
    }
}

/// `type` of quantized values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantType {
    /// Integers.
    Int,
    /// Floating point (FP8).
    Float,
}

/// `strategy`: what one scale covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// One scale for the whole tensor.
    Tensor,
    /// One scale per output channel (weights).
    Channel,
    /// One scale per group of `group_size` input columns.
    Group,
    /// One scale per 2-D block.
    Block,
    /// One scale per token (activations).
    Token,
    /// Groups within a per-tensor scale (NVFP4).
    TensorGroup,
}

/// Quantization arguments of weights or activations.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct QuantArgs {
    /// Bits per value.
    pub num_bits: u32,
    /// Integer or float values.
    #[serde(rename = "type")]
    pub kind: QuantType,
    /// Symmetric (no zero point).
    #[serde(default = "yes")]
    pub symmetric: bool,
    /// What one scale covers.
    pub strategy: Strategy,
    /// Scales computed at run time (`true`, or `"local"` in newer writers) rather than stored.
    #[serde(default, deserialize_with = "dynamic")]
    pub dynamic: bool,
    /// Group size of `group` strategies.
    #[serde(default)]
    pub group_size: Option<usize>,
}

fn yes() -> bool {
    true
}

fn dynamic<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Bool(b) => b,
        Value::String(s) => s == "local" || s == "true",
        _ => false,
    })
}

impl QuantArgs {
    /// A short description, e.g. `int8 channel symmetric static`.
    pub fn describe(&self) -> String {
        let kind = match self.kind {
            QuantType::Int => "int",
            QuantType::Float => "float",
        };
        let group = self.group_size.map(|g| format!("({g})")).unwrap_or_default();
        format!(
            "{kind}{} {:?}{group} {} {}",
            self.num_bits,
            self.strategy,
            if self.symmetric { "symmetric" } else { "asymmetric" },
            if self.dynamic { "dynamic" } else { "static" }
        )
        .to_lowercase()
    }

    fn is_int8_symmetric(&self) -> bool {
        self.kind == QuantType::Int && self.num_bits == 8 && self.symmetric
    }
}

/// One `config_groups` entry.
#[derive(Debug, Clone)]
pub struct ConfigGroup {
    /// The group's key, e.g. `group_0`.
    pub name: String,
    /// Layer targets: `Linear` (every linear layer), exact names or `re:` patterns.
    pub targets: Vec<String>,
    /// Weight arguments (`None`: weights stay float).
    pub weights: Option<QuantArgs>,
    /// Input-activation arguments (`None`: activations stay float).
    pub input_activations: Option<QuantArgs>,
    /// Output-activation arguments (none of our schemes uses them).
    pub output_activations: Option<QuantArgs>,
}

impl ConfigGroup {
    /// A description of the scheme for error messages.
    pub fn describe(&self, format: Format) -> String {
        let args = |a: &Option<QuantArgs>| a.as_ref().map_or_else(|| "none".to_string(), QuantArgs::describe);
        format!(
            "{} (format {}, weights {}, input activations {}{})",
            self.name,
            format.as_str(),
            args(&self.weights),
            args(&self.input_activations),
            self.output_activations
                .as_ref()
                .map(|a| format!(", output activations {}", a.describe()))
                .unwrap_or_default()
        )
    }
}

#[derive(Deserialize)]
struct RawGroup {
    #[serde(default)]
    targets: Vec<String>,
    #[serde(default)]
    weights: Option<QuantArgs>,
    #[serde(default)]
    input_activations: Option<QuantArgs>,
    #[serde(default)]
    output_activations: Option<QuantArgs>,
}

#[derive(Deserialize)]
struct RawConfig {
    quant_method: String,
    format: Option<String>,
    #[serde(default)]
    config_groups: serde_json::Map<String, Value>,
    #[serde(default)]
    ignore: Vec<String>,
}

/// A parsed compressed-tensors `quantization_config`.
#[derive(Debug, Clone)]
pub struct CompressedTensorsConfig {
    /// Storage format.
    pub format: Format,
    /// Config groups in file order.
    pub groups: Vec<ConfigGroup>,
    /// Layers left unquantized.
    pub ignore: PatternList,
    /// Per group, its targets parsed as patterns.
    target_patterns: Vec<Vec<Pattern>>,
}

impl CompressedTensorsConfig {
    /// Parses the `quantization_config` object.
    ///
    /// ```
    /// use mllm_engine::quantization::config::{CompressedTensorsConfig, Format, Strategy};
    /// let cfg: serde_json::Value = serde_json::json!({
    ///     "quant_method": "compressed-tensors", "format": "int-quantized",
    ///     "config_groups": {"group_0": {"targets": ["Linear"],
    ///         "weights": {"num_bits": 8, "type": "int", "symmetric": true, "strategy": "channel", "dynamic": false},
    ///         "input_activations": {"num_bits": 8, "type": "int", "symmetric": true, "strategy": "token", "dynamic": true}}},
    ///     "ignore": ["lm_head"]});
    /// let ct = CompressedTensorsConfig::from_value(&cfg).unwrap();
    /// assert_eq!(ct.format, Format::IntQuantized);
    /// assert_eq!(ct.groups[0].weights.as_ref().unwrap().strategy, Strategy::Channel);
    /// assert!(ct.group_for("model.layers.0.mlp.up_proj").is_some());
    /// assert!(ct.group_for("lm_head").is_none());
    /// ```
    pub fn from_value(value: &Value) -> Result<Self, QuantError> {
        let raw: RawConfig = serde_json::from_value(value.clone())
            .map_err(|e| QuantError::Config(format!("invalid quantization_config: {e}")))?;
        if raw.quant_method != "compressed-tensors" {
            return Err(QuantError::Config(format!(
                "quant_method `{}` is not compressed-tensors",
                raw.quant_method
            )));
        }
        let format = Format::parse(raw.format.as_deref().unwrap_or("int-quantized"))?;
        let mut groups = Vec::with_capacity(raw.config_groups.len());
        let mut target_patterns = Vec::with_capacity(raw.config_groups.len());
        for (name, v) in raw.config_groups {
            let g: RawGroup = serde_json::from_value(v)
                .map_err(|e| QuantError::Config(format!("invalid config group `{name}`: {e}")))?;
            target_patterns.push(
                g.targets
                    .iter()
                    .map(|t| Pattern::parse(t))
                    .collect::<Result<Vec<_>, _>>()?,
            );
            groups.push(ConfigGroup {
                name,
                targets: g.targets,
                weights: g.weights,
                input_activations: g.input_activations,
                output_activations: g.output_activations,
            });
        }
        Ok(Self {
            format,
            groups,
            ignore: PatternList::parse(&raw.ignore)?,
            target_patterns,
        })
    }

    /// The group that quantizes linear layer `layer` (a prefixed name), `None` if the layer is
    /// ignored or no group targets it. A target naming the layer (exactly or by `re:`) wins over
    /// the class target `Linear`.
    pub fn group_for(&self, layer: &str) -> Option<&ConfigGroup> {
        if self.ignore.matches(layer) {
            return None;
        }
        let by_name = self
            .target_patterns
            .iter()
            .position(|ts| ts.iter().any(|t| t.as_str() != "Linear" && t.matches(layer)));
        let by_class = || {
            self.target_patterns
                .iter()
                .position(|ts| ts.iter().any(|t| t.as_str() == "Linear"))
        };
        by_name.or_else(by_class).map(|i| &self.groups[i])
    }

    /// The scheme of `group` for `layer`, or [`QuantError::UnsupportedScheme`] naming both.
    pub fn scheme(&self, layer: &str, group: &ConfigGroup) -> Result<W8A8Int8, QuantError> {
        let unsupported = || QuantError::UnsupportedScheme {
            layer: layer.to_string(),
            scheme: group.describe(self.format),
        };
        let w = group.weights.as_ref().ok_or_else(unsupported)?;
        let a = group.input_activations.as_ref().ok_or_else(unsupported)?;
        if self.format != Format::IntQuantized
            || group.output_activations.is_some()
            || !w.is_int8_symmetric()
            || !a.is_int8_symmetric()
            || w.dynamic
        {
            return Err(unsupported());
        }
        let weight = match w.strategy {
            Strategy::Channel => WeightScale::PerChannel,
            Strategy::Tensor => WeightScale::PerTensor,
            _ => return Err(unsupported()),
        };
        let activations = match (a.strategy, a.dynamic) {
            (Strategy::Token, true) => ActivationScale::DynamicPerToken,
            (Strategy::Tensor, false) => ActivationScale::StaticPerTensor,
            _ => return Err(unsupported()),
        };
        Ok(W8A8Int8 {
            weight,
            activations,
            from_float: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn args(bits: u32, kind: &str, strategy: &str, dynamic: Value) -> Value {
        json!({"num_bits": bits, "type": kind, "symmetric": true, "strategy": strategy, "dynamic": dynamic})
    }

    fn cfg(format: &str, groups: Value, ignore: Value) -> Value {
        json!({"quant_method": "compressed-tensors", "format": format, "config_groups": groups, "ignore": ignore})
    }

    #[test]
    fn w8a8_dynamic_and_static_schemes() {
        let dynamic = cfg(
            "int-quantized",
            json!({"group_0": {"targets": ["Linear"], "weights": args(8, "int", "channel", json!(false)),
                    "input_activations": args(8, "int", "token", json!(true))}}),
            json!(["lm_head"]),
        );
        let ct = CompressedTensorsConfig::from_value(&dynamic).unwrap();
        let layer = "model.layers.0.self_attn.q_proj";
        let s = ct.scheme(layer, ct.group_for(layer).unwrap()).unwrap();
        assert_eq!(
            (s.weight, s.activations),
            (WeightScale::PerChannel, ActivationScale::DynamicPerToken)
        );

        let stat = cfg(
            "int-quantized",
            json!({"g": {"targets": ["Linear"], "weights": args(8, "int", "tensor", json!(false)),
                    "input_activations": args(8, "int", "tensor", json!(false))}}),
            json!([]),
        );
        let ct = CompressedTensorsConfig::from_value(&stat).unwrap();
        let s = ct.scheme(layer, ct.group_for(layer).unwrap()).unwrap();
        assert_eq!(
            (s.weight, s.activations),
            (WeightScale::PerTensor, ActivationScale::StaticPerTensor)
        );
    }

    #[test]
    fn formats_are_recognized_and_unsupported_schemes_named() {
        let w4a16 = cfg(
            "pack-quantized",
            json!({"group_0": {"targets": ["Linear"],
                    "weights": {"num_bits": 4, "type": "int", "symmetric": true, "strategy": "group", "group_size": 128, "dynamic": false}}}),
            json!(["lm_head", "re:.*mlp\\.gate$"]),
        );
        let ct = CompressedTensorsConfig::from_value(&w4a16).unwrap();
        assert_eq!(ct.format, Format::PackQuantized);
        assert!(ct.group_for("model.layers.3.mlp.gate").is_none());
        let layer = "model.layers.3.mlp.down_proj";
        let err = ct.scheme(layer, ct.group_for(layer).unwrap()).unwrap_err().to_string();
        assert!(err.contains(layer), "{err}");
        assert!(
            err.contains("pack-quantized") && err.contains("int4 group(128)"),
            "{err}"
        );

        let fp8 = cfg(
            "float-quantized",
            json!({"group_0": {"targets": ["Linear"], "weights": args(8, "float", "channel", json!(false)),
                    "input_activations": args(8, "float", "token", json!(true))}}),
            json!([]),
        );
        let ct = CompressedTensorsConfig::from_value(&fp8).unwrap();
        assert_eq!(ct.format, Format::FloatQuantized);
        let err = ct.scheme(layer, ct.group_for(layer).unwrap()).unwrap_err().to_string();
        assert!(err.contains("float8 channel"), "{err}");

        let bad = cfg("marlin-24", json!({}), json!([]));
        let err = CompressedTensorsConfig::from_value(&bad).unwrap_err().to_string();
        assert!(err.contains("marlin-24") && err.contains("int-quantized"), "{err}");
        let not_ct = json!({"quant_method": "awq"});
        assert!(CompressedTensorsConfig::from_value(&not_ct)
            .unwrap_err()
            .to_string()
            .contains("awq"));
    }

    #[test]
    fn named_targets_beat_the_class_target() {
        let c = cfg(
            "int-quantized",
            json!({
                "a": {"targets": ["Linear"], "weights": args(8, "int", "channel", json!(false)),
                      "input_activations": args(8, "int", "token", json!(true))},
                "b": {"targets": ["re:.*down_proj$"], "weights": args(8, "int", "tensor", json!(false)),
                      "input_activations": args(8, "int", "tensor", json!(false))}}),
            json!([]),
        );
        let ct = CompressedTensorsConfig::from_value(&c).unwrap();
        assert_eq!(ct.group_for("model.layers.0.mlp.down_proj").unwrap().name, "b");
        assert_eq!(ct.group_for("model.layers.0.mlp.up_proj").unwrap().name, "a");
        let local: QuantArgs = serde_json::from_value(args(8, "int", "token", json!("local"))).unwrap();
        assert!(local.dynamic);
    }
}
