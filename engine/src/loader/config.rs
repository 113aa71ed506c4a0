//! HF `config.json` and `generation_config.json`.
//!
//! [`ModelConfig`] covers the decoder-only families the engine runs (Qwen3, Qwen2, Llama).
//! Configs written by transformers 5 nest `rope_theta` / `rope_scaling` under `rope_parameters`
//! and name the dtype `dtype`; both layouts are accepted.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

/// Errors of reading a config file.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read (missing, permissions, ...).
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid JSON or a field has the wrong type.
    #[error("invalid JSON in {path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The serde error (with line/column).
        source: serde_json::Error,
    },
    /// A required field is absent (or null).
    #[error("{path}: missing required field `{field}`")]
    MissingField {
        /// The file.
        path: PathBuf,
        /// The field name.
        field: &'static str,
    },
    /// `rope_scaling` names a type the engine does not implement.
    #[error("{path}: unsupported rope_scaling type `{rope_type}` (supported: linear, llama3, default)")]
    UnknownRopeType {
        /// The file.
        path: PathBuf,
        /// The type found.
        rope_type: String,
    },
    /// Values are present but inconsistent.
    #[error("{path}: {msg}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
}

/// Result type of config parsing.
pub type Result<T> = std::result::Result<T, ConfigError>;

/// RoPE frequency scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Position interpolation: positions divided by `factor`.
    Linear {
        /// Scaling factor.
        factor: f64,
    },
    /// Llama 3.x frequency-dependent scaling.
    Llama3 {
        /// Scaling factor.
        factor: f64,
        /// Low-frequency factor.
        low_freq_factor: f64,
        /// High-frequency factor.
        high_freq_factor: f64,
        /// Context length the model was pretrained with.
        original_max_position_embeddings: usize,
    },
}

/// The model hyper-parameters of an HF `config.json`.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// `architectures`, e.g. `["Qwen3ForCausalLM"]` (empty if absent).
    pub architectures: Vec<String>,
    /// `model_type`, e.g. `"qwen3"`, `"qwen2"`, `"llama"`.
    pub model_type: String,
    /// Model width.
    pub hidden_size: usize,
    /// MLP inner width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (defaults to `num_attention_heads`).
    pub num_key_value_heads: usize,
    /// Per-head dimension (defaults to `hidden_size / num_attention_heads`).
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// RMSNorm epsilon (default 1e-6).
    pub rms_norm_eps: f64,
    /// RoPE base (default 10000).
    pub rope_theta: f64,
    /// RoPE scaling, `None` for plain RoPE.
    pub rope_scaling: Option<RopeScaling>,
    /// Maximum context length (default 2048).
    pub max_position_embeddings: usize,
    /// Whether `lm_head` shares the embedding matrix (default false).
    pub tie_word_embeddings: bool,
    /// Whether q/k/v projections have a bias: always true for `qwen2`, else `attention_bias` (default false).
    pub attention_bias: bool,
    /// Activation of the MLP (default `"silu"`).
    pub hidden_act: String,
    /// `torch_dtype` (or transformers 5 `dtype`), e.g. `"bfloat16"`.
    pub torch_dtype: Option<String>,
    /// Beginning-of-sequence token id.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token ids (`eos_token_id` may be an int or a list).
    pub eos_token_ids: Vec<u32>,
    /// The whole JSON document, for fields not modelled here.
    pub raw: Value,
}

/// Token id(s): an int, a list of ints, or null.
#[derive(Deserialize, Default)]
#[serde(untagged)]
enum TokenIds {
    One(u32),
    Many(Vec<u32>),
    #[default]
    None,
}

impl TokenIds {
    fn into_vec(self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![id],
            TokenIds::Many(ids) => ids,
            TokenIds::None => vec![],
        }
    }
}

#[derive(Deserialize)]
struct RawRope {
    rope_type: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<usize>,
    rope_theta: Option<f64>,
}

#[derive(Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<RawRope>,
    rope_parameters: Option<RawRope>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    hidden_act: Option<String>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    bos_token_id: Option<u32>,
    #[serde(default)]
    eos_token_id: TokenIds,
}

fn read_json(path: &Path) -> Result<(String, Value)> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let value = serde_json::from_str(&text).map_err(|source| ConfigError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((text, value))
}

fn parse_rope(path: &Path, r: RawRope) -> Result<Option<RopeScaling>> {
    let Some(kind) = r.rope_type.or(r.kind) else {
        return Err(ConfigError::MissingField {
            path: path.to_path_buf(),
            field: "rope_scaling.rope_type",
        });
    };
    let need = |v: Option<f64>, field: &'static str| {
        v.ok_or(ConfigError::MissingField {
            path: path.to_path_buf(),
            field,
        })
    };
    match kind.as_str() {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear {
            factor: need(r.factor, "rope_scaling.factor")?,
        })),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: need(r.factor, "rope_scaling.factor")?,
            low_freq_factor: need(r.low_freq_factor, "rope_scaling.low_freq_factor")?,
            high_freq_factor: need(r.high_freq_factor, "rope_scaling.high_freq_factor")?,
            original_max_position_embeddings: r.original_max_position_embeddings.ok_or(ConfigError::MissingField {
                path: path.to_path_buf(),
                field: "rope_scaling.original_max_position_embeddings",
            })?,
        })),
        other => Err(ConfigError::UnknownRopeType {
            path: path.to_path_buf(),
            rope_type: other.to_string(),
        }),
    }
}

impl ModelConfig {
    /// Reads `<dir>/config.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_file(dir.as_ref().join("config.json"))
    }

    /// Reads a `config.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let (_, value) = read_json(path)?;
        Self::from_value(value, path)
    }

    /// Parses config JSON text; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let value = serde_json::from_str(text).map_err(|source| ConfigError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_value(value, path)
    }

    /// The checkpoint's `quantization_config` object (compressed-tensors, GPTQ, ...), if any;
    /// [`crate::quantization`] interprets it.
    ///
    /// ```
    /// use mllm_engine::loader::config::ModelConfig;
    /// let c = ModelConfig::from_json_str(r#"{"model_type": "llama", "hidden_size": 8, "intermediate_size": 16,
    ///     "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 10,
    ///     "quantization_config": {"quant_method": "compressed-tensors"}}"#, "config.json").unwrap();
    /// assert_eq!(c.quantization_config().unwrap()["quant_method"], "compressed-tensors");
    /// ```
    pub fn quantization_config(&self) -> Option<&Value> {
        self.raw.get("quantization_config").filter(|v| !v.is_null())
    }

    /// Builds the config from a parsed JSON document; `path` is only used in error messages.
    ///
    /// A vision-language config (`text_config` object, no top-level `hidden_size`, e.g.
    /// Qwen3-VL) is read from its `text_config`, keeping the top level's `architectures`,
    /// `tie_word_embeddings`, dtype and `quantization_config`: what KV sizing and the scheduler
    /// need.
    ///
    /// ```
    /// use mllm_engine::loader::config::ModelConfig;
    /// let c = ModelConfig::from_json_str(r#"{"architectures": ["Qwen3VLForConditionalGeneration"],
    ///     "model_type": "qwen3_vl", "tie_word_embeddings": true, "vision_config": {},
    ///     "text_config": {"model_type": "qwen3_vl_text", "hidden_size": 64, "intermediate_size": 128,
    ///       "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
    ///       "head_dim": 32, "vocab_size": 256, "max_position_embeddings": 512}}"#, "config.json")?;
    /// assert_eq!(c.architectures, ["Qwen3VLForConditionalGeneration"]);
    /// assert_eq!((c.num_hidden_layers, c.head_dim, c.max_position_embeddings), (3, 32, 512));
    /// assert!(c.tie_word_embeddings);
    /// # Ok::<(), mllm_engine::loader::config::ConfigError>(())
    /// ```
    pub fn from_value(value: Value, path: &Path) -> Result<Self> {
        let value = text_config_of(value);
        let raw: RawConfig = serde_json::from_value(value.clone()).map_err(|source| ConfigError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let missing = |field: &'static str| ConfigError::MissingField {
            path: path.to_path_buf(),
            field,
        };
        let invalid = |msg: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            msg,
        };
        let model_type = raw.model_type.ok_or_else(|| missing("model_type"))?;
        let hidden_size = raw.hidden_size.ok_or_else(|| missing("hidden_size"))?;
        let intermediate_size = raw.intermediate_size.ok_or_else(|| missing("intermediate_size"))?;
        let num_hidden_layers = raw.num_hidden_layers.ok_or_else(|| missing("num_hidden_layers"))?;
        let num_attention_heads = raw.num_attention_heads.ok_or_else(|| missing("num_attention_heads"))?;
        let vocab_size = raw.vocab_size.ok_or_else(|| missing("vocab_size"))?;
        if num_attention_heads == 0 {
            return Err(invalid("num_attention_heads must be > 0".into()));
        }
        let num_key_value_heads = raw.num_key_value_heads.unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(invalid(format!(
                "num_attention_heads ({num_attention_heads}) must be a multiple of num_key_value_heads ({num_key_value_heads})"
            )));
        }
        let head_dim = match raw.head_dim {
            Some(d) => d,
            None if hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
            None => {
                return Err(invalid(format!(
                    "hidden_size ({hidden_size}) is not divisible by num_attention_heads ({num_attention_heads}) and head_dim is absent"
                )))
            }
        };
        // transformers 5: rope_parameters = {rope_type, rope_theta, factor, ...}
        let mut rope_theta = raw.rope_theta;
        let mut rope_scaling = None;
        if let Some(rp) = raw.rope_parameters {
            rope_theta = rope_theta.or(rp.rope_theta);
            if rp.rope_type.is_some() || rp.kind.is_some() {
                rope_scaling = parse_rope(path, rp)?;
            }
        }
        if let Some(rs) = raw.rope_scaling {
            rope_scaling = parse_rope(path, rs)?;
        }
        let attention_bias = model_type == "qwen2" || raw.attention_bias.unwrap_or(false);
        Ok(Self {
            architectures: raw.architectures.unwrap_or_default(),
            model_type,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: rope_theta.unwrap_or(10000.0),
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            attention_bias,
            hidden_act: raw.hidden_act.unwrap_or_else(|| "silu".into()),
            torch_dtype: raw.torch_dtype.or(raw.dtype),
            bos_token_id: raw.bos_token_id,
            eos_token_ids: raw.eos_token_id.into_vec(),
            raw: value,
        })
    }
}

/// The `text_config` of a vision-language config with the top level's model-wide keys merged
/// in; any other config unchanged.
fn text_config_of(value: Value) -> Value {
    let Some(Value::Object(text)) = value.get("text_config") else {
        return value;
    };
    if value.get("hidden_size").is_some() {
        return value;
    }
    let mut merged = text.clone();
    for key in [
        "architectures",
        "tie_word_embeddings",
        "torch_dtype",
        "dtype",
        "quantization_config",
    ] {
        match value.get(key) {
            Some(v) if !v.is_null() => {
                if key == "architectures" || key == "tie_word_embeddings" {
                    merged.insert(key.into(), v.clone());
                } else {
                    merged.entry(key).or_insert_with(|| v.clone());
                }
            }
            _ => {}
        }
    }
    Value::Object(merged)
}

/// Sampling defaults of an HF `generation_config.json`. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationConfig {
    /// Beginning-of-sequence token id.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token ids (int or list in the file; empty if absent).
    pub eos_token_ids: Vec<u32>,
    /// Padding token id.
    pub pad_token_id: Option<u32>,
    /// Whether sampling (rather than greedy decoding) is the default.
    pub do_sample: Option<bool>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Nucleus sampling threshold.
    pub top_p: Option<f32>,
    /// Top-k sampling.
    pub top_k: Option<usize>,
    /// Repetition penalty.
    pub repetition_penalty: Option<f32>,
    /// Maximum number of generated tokens.
    pub max_new_tokens: Option<usize>,
    /// Maximum total length (prompt + generated).
    pub max_length: Option<usize>,
}

#[derive(Deserialize)]
struct RawGeneration {
    bos_token_id: Option<u32>,
    #[serde(default)]
    eos_token_id: TokenIds,
    pad_token_id: Option<u32>,
    do_sample: Option<bool>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    repetition_penalty: Option<f32>,
    max_new_tokens: Option<usize>,
    max_length: Option<usize>,
}

impl GenerationConfig {
    /// Reads `<dir>/generation_config.json`; `Ok(None)` if the file does not exist.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Option<Self>> {
        let path = dir.as_ref().join("generation_config.json");
        if !path.exists() {
            return Ok(None);
        }
        Self::from_file(path).map(Some)
    }

    /// Reads a `generation_config.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let (text, _) = read_json(path)?;
        Self::from_json_str(&text, path)
    }

    /// Parses generation-config JSON text; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let raw: RawGeneration = serde_json::from_str(text).map_err(|source| ConfigError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            bos_token_id: raw.bos_token_id,
            eos_token_ids: raw.eos_token_id.into_vec(),
            pad_token_id: raw.pad_token_id,
            do_sample: raw.do_sample,
            temperature: raw.temperature,
            top_p: raw.top_p,
            top_k: raw.top_k,
            repetition_penalty: raw.repetition_penalty,
            max_new_tokens: raw.max_new_tokens,
            max_length: raw.max_length,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QWEN3_8B: &str = include_str!("../../tests/fixtures/qwen3-8b.config.json");

    const LLAMA3: &str = r#"{
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": false,
        "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009],
        "hidden_act": "silu",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "max_position_embeddings": 131072,
        "model_type": "llama",
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3"
        },
        "rope_theta": 500000.0,
        "tie_word_embeddings": false,
        "torch_dtype": "bfloat16",
        "vocab_size": 128256
    }"#;

    const QWEN2: &str = r#"{
        "architectures": ["Qwen2ForCausalLM"],
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "hidden_size": 896,
        "intermediate_size": 4864,
        "max_position_embeddings": 32768,
        "model_type": "qwen2",
        "num_attention_heads": 14,
        "num_hidden_layers": 24,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": true,
        "torch_dtype": "bfloat16",
        "vocab_size": 151936
    }"#;

    fn p() -> &'static Path {
        Path::new("config.json")
    }

    #[test]
    fn qwen3_8b_real_config() {
        let c = ModelConfig::from_json_str(QWEN3_8B, p()).unwrap();
        assert_eq!(c.architectures, ["Qwen3ForCausalLM"]);
        assert_eq!(c.model_type, "qwen3");
        assert_eq!(
            (c.hidden_size, c.intermediate_size, c.num_hidden_layers),
            (4096, 12288, 36)
        );
        assert_eq!((c.num_attention_heads, c.num_key_value_heads, c.head_dim), (32, 8, 128));
        assert_eq!(c.vocab_size, 151936);
        assert_eq!(c.rms_norm_eps, 1e-6);
        assert_eq!(c.rope_theta, 1_000_000.0);
        assert_eq!(c.rope_scaling, None);
        assert_eq!(c.max_position_embeddings, 40960);
        assert!(!c.tie_word_embeddings && !c.attention_bias);
        assert_eq!(c.torch_dtype.as_deref(), Some("bfloat16"));
        assert_eq!(c.bos_token_id, Some(151643));
        assert_eq!(c.eos_token_ids, [151645]);
        assert_eq!(c.raw["max_window_layers"], 36);
    }

    #[test]
    fn llama3_config_with_rope_scaling() {
        let c = ModelConfig::from_json_str(LLAMA3, p()).unwrap();
        assert_eq!(c.model_type, "llama");
        assert_eq!(c.head_dim, 128); // default hidden / heads
        assert_eq!(c.eos_token_ids, [128001, 128008, 128009]);
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(
            c.rope_scaling,
            Some(RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192
            })
        );
        assert!(!c.attention_bias);
    }

    #[test]
    fn qwen2_config_defaults_and_bias() {
        let c = ModelConfig::from_json_str(QWEN2, p()).unwrap();
        assert!(c.attention_bias, "qwen2 has qkv bias");
        assert!(c.tie_word_embeddings);
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.num_key_value_heads, 2);
        assert_eq!(c.hidden_act, "silu");

        // minimal config: defaults
        let c = ModelConfig::from_json_str(
            r#"{"model_type":"llama","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
                "num_attention_heads":4,"vocab_size":100,"rope_scaling":{"type":"linear","factor":2.0}}"#,
            p(),
        )
        .unwrap();
        assert_eq!((c.num_key_value_heads, c.head_dim), (4, 16));
        assert_eq!(c.rope_theta, 10000.0);
        assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 2.0 }));
        assert!(!c.tie_word_embeddings);
        assert!(c.eos_token_ids.is_empty());
    }

    #[test]
    fn transformers5_rope_parameters() {
        let c = ModelConfig::from_json_str(
            r#"{"model_type":"qwen3","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
                "num_attention_heads":4,"vocab_size":100,"dtype":"bfloat16",
                "rope_parameters":{"rope_type":"default","rope_theta":1000000.0}}"#,
            p(),
        )
        .unwrap();
        assert_eq!(c.rope_theta, 1_000_000.0);
        assert_eq!(c.rope_scaling, None);
        assert_eq!(c.torch_dtype.as_deref(), Some("bfloat16"));
    }

    #[test]
    fn config_errors() {
        let err = ModelConfig::from_dir("/nonexistent/model").unwrap_err();
        assert!(
            matches!(&err, ConfigError::Io { path, .. } if path.ends_with("config.json")),
            "{err}"
        );
        assert!(err.to_string().contains("/nonexistent/model/config.json"));

        let err = ModelConfig::from_json_str("{not json", "x/config.json").unwrap_err();
        assert!(matches!(err, ConfigError::Json { .. }));
        assert!(err.to_string().contains("x/config.json"), "{err}");

        let no_vocab = QWEN2.replace("\"vocab_size\": 151936", "\"unused\": 0");
        let err = ModelConfig::from_json_str(&no_vocab, p()).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::MissingField {
                    field: "vocab_size",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("vocab_size"));

        let yarn = LLAMA3.replace("\"llama3\"", "\"yarn\"");
        let err = ModelConfig::from_json_str(&yarn, p()).unwrap_err();
        assert!(
            matches!(&err, ConfigError::UnknownRopeType { rope_type, .. } if rope_type == "yarn"),
            "{err}"
        );

        let bad_kv = QWEN2.replace("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3");
        assert!(matches!(
            ModelConfig::from_json_str(&bad_kv, p()).unwrap_err(),
            ConfigError::Invalid { .. }
        ));

        let wrong_type = QWEN2.replace("\"hidden_size\": 896", "\"hidden_size\": \"big\"");
        assert!(matches!(
            ModelConfig::from_json_str(&wrong_type, p()).unwrap_err(),
            ConfigError::Json { .. }
        ));
    }

    #[test]
    fn generation_config() {
        let g = GenerationConfig::from_json_str(
            r#"{"bos_token_id":151643,"do_sample":true,"eos_token_id":[151645,151643],"pad_token_id":151643,
                "temperature":0.6,"top_k":20,"top_p":0.95,"transformers_version":"4.51.0"}"#,
            p(),
        )
        .unwrap();
        assert_eq!(g.eos_token_ids, [151645, 151643]);
        assert_eq!(g.temperature, Some(0.6));
        assert_eq!(g.top_k, Some(20));
        assert_eq!(g.top_p, Some(0.95));
        assert_eq!(g.do_sample, Some(true));
        assert_eq!(g.repetition_penalty, None);

        let g = GenerationConfig::from_json_str(
            r#"{"eos_token_id":2,"max_new_tokens":64,"max_length":4096,"repetition_penalty":1.1}"#,
            p(),
        )
        .unwrap();
        assert_eq!(g.eos_token_ids, [2]);
        assert_eq!(
            (g.max_new_tokens, g.max_length, g.repetition_penalty),
            (Some(64), Some(4096), Some(1.1))
        );

        assert_eq!(GenerationConfig::from_dir("/nonexistent/model").unwrap(), None);
        assert!(matches!(
            GenerationConfig::from_json_str("[", p()).unwrap_err(),
            ConfigError::Json { .. }
        ));
    }
}
