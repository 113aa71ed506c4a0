//! GGUF metadata → [`ModelConfig`].
//!
//! The `{arch}.*` keys llama.cpp writes are translated into the HF
//! `config.json` they came from, which then goes through
//! [`ModelConfig::from_value`], so defaults and validation are shared with the
//! safetensors path and [`ModelConfig::raw`] holds an equivalent `config.json`.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::{GgufFile, GgufValue};
use crate::loader::config::{ConfigError, ModelConfig};

/// The GGUF architectures mapped to a [`ModelConfig`], with their HF class names.
pub const SUPPORTED_ARCHITECTURES: [(&str, &str); 3] = [
    ("llama", "LlamaForCausalLM"),
    ("qwen2", "Qwen2ForCausalLM"),
    ("qwen3", "Qwen3ForCausalLM"),
];

/// Errors of deriving a [`ModelConfig`] from GGUF metadata.
#[derive(Debug, thiserror::Error)]
pub enum GgufConfigError {
    /// `general.architecture` is absent.
    #[error("GGUF metadata has no `general.architecture`")]
    NoArchitecture,
    /// The architecture is not one mllm runs.
    #[error("unsupported GGUF architecture `{arch}` (supported: {})", supported_list())]
    UnknownArchitecture {
        /// The architecture found.
        arch: String,
    },
    /// A required key is absent.
    #[error("GGUF metadata is missing required key `{key}`")]
    MissingKey {
        /// The full key.
        key: String,
    },
    /// A key holds a value of the wrong type.
    #[error("GGUF metadata key `{key}` should be {expected}, found {found}")]
    WrongType {
        /// The full key.
        key: String,
        /// What was expected.
        expected: &'static str,
        /// The value found (debug form).
        found: String,
    },
    /// `{arch}.rope.scaling.type` names a scaling mllm does not implement.
    #[error("GGUF key `{key}`: unsupported rope scaling `{kind}` (supported: none, linear)")]
    UnsupportedRopeScaling {
        /// The full key.
        key: String,
        /// The scaling type found.
        kind: String,
    },
    /// The translated config failed validation.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

fn supported_list() -> String {
    SUPPORTED_ARCHITECTURES.map(|(a, _)| a).join(", ")
}

/// Typed access to `{arch}.*` keys with errors naming the key.
struct ArchKeys<'a> {
    gguf: &'a GgufFile,
    arch: &'a str,
}

impl ArchKeys<'_> {
    fn key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.arch)
    }

    fn typed<T>(
        &self,
        key: String,
        expected: &'static str,
        conv: impl Fn(&GgufValue) -> Option<T>,
    ) -> Result<Option<T>, GgufConfigError> {
        match self.gguf.get(&key) {
            None => Ok(None),
            Some(v) => conv(v).map(Some).ok_or_else(|| GgufConfigError::WrongType {
                key,
                expected,
                found: format!("{v:?}"),
            }),
        }
    }

    fn usize(&self, suffix: &str) -> Result<Option<usize>, GgufConfigError> {
        self.typed(self.key(suffix), "an unsigned integer", GgufValue::as_usize)
    }

    fn f64(&self, suffix: &str) -> Result<Option<f64>, GgufConfigError> {
        self.typed(self.key(suffix), "a float", GgufValue::as_f64)
    }

    fn required_usize(&self, suffix: &str) -> Result<usize, GgufConfigError> {
        self.usize(suffix)?
            .ok_or_else(|| GgufConfigError::MissingKey { key: self.key(suffix) })
    }
}

/// Inserts `value` under `key` when it is `Some`.
fn put<T: Into<Value>>(map: &mut Map<String, Value>, key: &str, value: Option<T>) {
    if let Some(v) = value {
        map.insert(key.to_string(), v.into());
    }
}

impl ModelConfig {
    /// Builds the model config from a GGUF file's metadata (architectures
    /// `llama`, `qwen2`, `qwen3`).
    ///
    /// The vocabulary size is the length of `tokenizer.ggml.tokens` (or
    /// `{arch}.vocab_size`); embeddings are tied when there is no
    /// `output.weight` tensor; q/k/v biases are implied by `qwen2` (or a
    /// `blk.0.attn_q.bias` tensor). QK-norm is implied by `model_type == "qwen3"`.
    ///
    /// ```no_run
    /// use mllm_engine::loader::{config::ModelConfig, gguf::GgufFile};
    /// let gguf = GgufFile::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
    /// let cfg = ModelConfig::from_gguf(&gguf)?;
    /// assert_eq!(cfg.architectures, ["LlamaForCausalLM"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, GgufConfigError> {
        let arch = gguf.architecture().ok_or(GgufConfigError::NoArchitecture)?;
        let hf_arch = SUPPORTED_ARCHITECTURES
            .iter()
            .find(|(a, _)| *a == arch)
            .map(|(_, hf)| *hf)
            .ok_or_else(|| GgufConfigError::UnknownArchitecture { arch: arch.to_string() })?;
        let keys = ArchKeys { gguf, arch };

        let vocab_size = match gguf.get_array("tokenizer.ggml.tokens") {
            Some(tokens) => Some(tokens.len()),
            None => keys.usize("vocab_size")?,
        }
        .ok_or_else(|| GgufConfigError::MissingKey {
            key: "tokenizer.ggml.tokens".into(),
        })?;

        let mut cfg = Map::new();
        cfg.insert("architectures".into(), json!([hf_arch]));
        cfg.insert("model_type".into(), json!(arch));
        cfg.insert("hidden_size".into(), json!(keys.required_usize("embedding_length")?));
        cfg.insert(
            "intermediate_size".into(),
            json!(keys.required_usize("feed_forward_length")?),
        );
        cfg.insert("num_hidden_layers".into(), json!(keys.required_usize("block_count")?));
        cfg.insert(
            "num_attention_heads".into(),
            json!(keys.required_usize("attention.head_count")?),
        );
        cfg.insert("vocab_size".into(), json!(vocab_size));
        put(&mut cfg, "num_key_value_heads", keys.usize("attention.head_count_kv")?);
        put(&mut cfg, "head_dim", keys.usize("attention.key_length")?);
        put(&mut cfg, "rms_norm_eps", keys.f64("attention.layer_norm_rms_epsilon")?);
        put(&mut cfg, "rope_theta", keys.f64("rope.freq_base")?);
        put(&mut cfg, "max_position_embeddings", keys.usize("context_length")?);
        put(&mut cfg, "rope_scaling", rope_scaling(&keys)?);
        cfg.insert(
            "tie_word_embeddings".into(),
            json!(gguf.tensor_info("output.weight").is_none()),
        );
        let bias = arch == "qwen2" || gguf.tensor_info("blk.0.attn_q.bias").is_some();
        cfg.insert("attention_bias".into(), json!(bias));
        cfg.insert("hidden_act".into(), json!("silu"));
        put(&mut cfg, "bos_token_id", gguf.get_u64("tokenizer.ggml.bos_token_id"));
        put(&mut cfg, "eos_token_id", gguf.get_u64("tokenizer.ggml.eos_token_id"));

        Ok(ModelConfig::from_value(
            Value::Object(cfg),
            Path::new("<GGUF metadata>"),
        )?)
    }
}

/// `{arch}.rope.scaling.type` / `.factor` as an HF `rope_scaling` object.
fn rope_scaling(keys: &ArchKeys<'_>) -> Result<Option<Value>, GgufConfigError> {
    let type_key = keys.key("rope.scaling.type");
    let Some(kind) = keys.typed(type_key.clone(), "a string", |v| v.as_str().map(str::to_owned))? else {
        return Ok(None);
    };
    match kind.as_str() {
        "none" => Ok(None),
        "linear" => {
            let factor = keys
                .f64("rope.scaling.factor")?
                .ok_or_else(|| GgufConfigError::MissingKey {
                    key: keys.key("rope.scaling.factor"),
                })?;
            Ok(Some(json!({"rope_type": "linear", "factor": factor})))
        }
        _ => Err(GgufConfigError::UnsupportedRopeScaling { key: type_key, kind }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::config::RopeScaling;
    use crate::tokenizer::test_gguf::{GgufBuilder, V};

    fn smol_like(arch: &str) -> GgufBuilder {
        GgufBuilder::new()
            .kv("general.architecture", V::Str(arch.into()))
            .kv(&format!("{arch}.block_count"), V::U32(30))
            .kv(&format!("{arch}.context_length"), V::U32(8192))
            .kv(&format!("{arch}.embedding_length"), V::U32(576))
            .kv(&format!("{arch}.feed_forward_length"), V::U32(1536))
            .kv(&format!("{arch}.attention.head_count"), V::U32(9))
            .kv(&format!("{arch}.attention.head_count_kv"), V::U32(3))
            .kv(&format!("{arch}.rope.freq_base"), V::F32(100000.0))
            .kv(&format!("{arch}.attention.layer_norm_rms_epsilon"), V::F32(1e-5))
            .kv(
                "tokenizer.ggml.tokens",
                V::StrArr(vec!["a".into(), "b".into(), "c".into()]),
            )
            .kv("tokenizer.ggml.bos_token_id", V::U32(1))
            .kv("tokenizer.ggml.eos_token_id", V::U32(2))
    }

    #[test]
    fn llama_maps_every_field() {
        let cfg = ModelConfig::from_gguf(&smol_like("llama").tensor("token_embd.weight").open()).unwrap();
        assert_eq!(cfg.architectures, ["LlamaForCausalLM"]);
        assert_eq!(cfg.model_type, "llama");
        assert_eq!(cfg.num_hidden_layers, 30);
        assert_eq!(cfg.hidden_size, 576);
        assert_eq!(cfg.intermediate_size, 1536);
        assert_eq!(cfg.num_attention_heads, 9);
        assert_eq!(cfg.num_key_value_heads, 3);
        assert_eq!(cfg.head_dim, 64);
        assert_eq!(cfg.vocab_size, 3);
        assert_eq!(cfg.max_position_embeddings, 8192);
        assert_eq!(cfg.rope_theta, 100000.0);
        assert!((cfg.rms_norm_eps - 1e-5).abs() < 1e-9);
        assert!(cfg.tie_word_embeddings);
        assert!(!cfg.attention_bias);
        assert_eq!(cfg.rope_scaling, None);
        assert_eq!(cfg.bos_token_id, Some(1));
        assert_eq!(cfg.eos_token_ids, [2]);
        assert_eq!(cfg.raw["model_type"], "llama");
    }

    #[test]
    fn qwen_variants_head_dim_bias_untied_and_linear_rope() {
        let g = smol_like("qwen3")
            .kv("qwen3.attention.key_length", V::U32(128))
            .kv("qwen3.rope.scaling.type", V::Str("linear".into()))
            .kv("qwen3.rope.scaling.factor", V::F32(4.0))
            .tensor("output.weight")
            .open();
        let cfg = ModelConfig::from_gguf(&g).unwrap();
        assert_eq!(cfg.architectures, ["Qwen3ForCausalLM"]);
        assert_eq!(cfg.head_dim, 128);
        assert!(!cfg.tie_word_embeddings);
        assert!(!cfg.attention_bias);
        assert_eq!(cfg.rope_scaling, Some(RopeScaling::Linear { factor: 4.0 }));

        let cfg = ModelConfig::from_gguf(&smol_like("qwen2").open()).unwrap();
        assert_eq!(cfg.architectures, ["Qwen2ForCausalLM"]);
        assert!(cfg.attention_bias);
    }

    #[test]
    fn errors_name_the_key_or_the_architecture() {
        let e = ModelConfig::from_gguf(&smol_like("gemma3").open()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("gemma3") && msg.contains("llama, qwen2, qwen3"), "{msg}");

        let g = GgufBuilder::new()
            .kv("general.architecture", V::Str("llama".into()))
            .open();
        let e = ModelConfig::from_gguf(&g).unwrap_err();
        assert!(e.to_string().contains("tokenizer.ggml.tokens"), "{e}");

        let g = GgufBuilder::new()
            .kv("general.architecture", V::Str("llama".into()))
            .kv("llama.vocab_size", V::U32(10))
            .open();
        let e = ModelConfig::from_gguf(&g).unwrap_err();
        assert!(e.to_string().contains("llama.embedding_length"), "{e}");

        let g = smol_like("llama").kv("llama.block_count", V::Str("x".into()));
        // Duplicate keys are rejected by the reader, so build a fresh one with a bad type.
        assert!(GgufFile::from_bytes(g.bytes()).is_err());
        let g = GgufBuilder::new()
            .kv("general.architecture", V::Str("llama".into()))
            .kv("llama.vocab_size", V::U32(10))
            .kv("llama.embedding_length", V::Str("wide".into()))
            .open();
        let e = ModelConfig::from_gguf(&g).unwrap_err();
        assert!(
            matches!(e, GgufConfigError::WrongType { ref key, .. } if key == "llama.embedding_length"),
            "{e}"
        );

        let e = ModelConfig::from_gguf(&GgufBuilder::new().open()).unwrap_err();
        assert!(matches!(e, GgufConfigError::NoArchitecture));

        let g = smol_like("llama")
            .kv("llama.rope.scaling.type", V::Str("yarn".into()))
            .open();
        let e = ModelConfig::from_gguf(&g).unwrap_err();
        assert!(e.to_string().contains("yarn"), "{e}");
    }
}
