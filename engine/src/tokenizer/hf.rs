//! HF checkpoints: `tokenizer.json`, `tokenizer_config.json`, `chat_template.jinja`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::{Result, SpecialIds, Tokenizer, TokenizerError, DEFAULT_TEMPLATE};
use crate::loader::config::GenerationConfig;

/// The parts of `tokenizer_config.json` the engine uses.
#[derive(Deserialize, Default)]
struct TokenizerConfig {
    bos_token: Option<Value>,
    eos_token: Option<Value>,
    pad_token: Option<Value>,
    chat_template: Option<Value>,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn invalid(path: &Path, msg: impl Into<String>) -> TokenizerError {
    TokenizerError::InvalidFile {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// A token given as `"<s>"` or as an added-token object `{"content": "<s>", ...}`.
fn token_content<'a>(v: &'a Option<Value>, path: &Path, field: &str) -> Result<Option<&'a str>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Object(o)) => match o.get("content") {
            Some(Value::String(s)) => Ok(Some(s)),
            _ => Err(invalid(path, format!("`{field}` object has no string `content`"))),
        },
        Some(other) => Err(invalid(path, format!("`{field}` should be a string, found {other}"))),
    }
}

/// `chat_template`: a string, or a list of `{"name", "template"}`.
fn templates(v: &Option<Value>, path: &Path) -> Result<Vec<(String, String)>> {
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::String(s)) => Ok(vec![(DEFAULT_TEMPLATE.to_string(), s.clone())]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match (item.get("name"), item.get("template")) {
                (Some(Value::String(n)), Some(Value::String(t))) => Ok((n.clone(), t.clone())),
                _ => Err(invalid(
                    path,
                    "`chat_template` list entries need string `name` and `template`",
                )),
            })
            .collect(),
        Some(other) => Err(invalid(
            path,
            format!("`chat_template` should be a string or a list, found {other}"),
        )),
    }
}

impl Tokenizer {
    /// Loads a bare `tokenizer.json` (no special-token ids, no chat template).
    ///
    /// ```no_run
    /// let tok = mllm_engine::tokenizer::Tokenizer::from_file("/models/x/tokenizer.json")?;
    /// # Ok::<(), mllm_engine::tokenizer::TokenizerError>(())
    /// ```
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let inner = load_tokenizer_json(path)?;
        Self::assemble(inner, SpecialIds::default(), vec![])
    }

    /// Loads an HF model directory: `tokenizer.json`, then `tokenizer_config.json`
    /// (bos/eos/pad tokens, chat templates), `chat_template.jinja` (overrides the
    /// default template) and `generation_config.json` (extra EOS ids), each if present.
    ///
    /// ```no_run
    /// let tok = mllm_engine::tokenizer::Tokenizer::from_dir("/models/Qwen3-0.6B")?;
    /// assert!(tok.chat_template().is_some());
    /// # Ok::<(), mllm_engine::tokenizer::TokenizerError>(())
    /// ```
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let inner = load_tokenizer_json(&dir.join("tokenizer.json"))?;
        let config_path = dir.join("tokenizer_config.json");
        let config: TokenizerConfig = if config_path.exists() {
            serde_json::from_str(&read(&config_path)?).map_err(|e| invalid(&config_path, e.to_string()))?
        } else {
            TokenizerConfig::default()
        };
        let id_of = |field: &str, v: &Option<Value>| -> Result<Option<u32>> {
            let Some(tok) = token_content(v, &config_path, field)? else {
                return Ok(None);
            };
            inner
                .token_to_id(tok)
                .map(Some)
                .ok_or_else(|| invalid(&config_path, format!("`{field}` {tok:?} is not in the vocabulary")))
        };
        let mut special = SpecialIds {
            bos: id_of("bos_token", &config.bos_token)?,
            eos: id_of("eos_token", &config.eos_token)?.into_iter().collect(),
            pad: id_of("pad_token", &config.pad_token)?,
        };
        let generation =
            GenerationConfig::from_dir(dir).map_err(|e| invalid(&dir.join("generation_config.json"), e.to_string()))?;
        for id in generation.map(|g| g.eos_token_ids).unwrap_or_default() {
            if !special.eos.contains(&id) {
                special.eos.push(id);
            }
        }
        let mut sources = templates(&config.chat_template, &config_path)?;
        let jinja: PathBuf = dir.join("chat_template.jinja");
        if jinja.exists() {
            let source = read(&jinja)?;
            sources.retain(|(name, _)| name != DEFAULT_TEMPLATE);
            sources.push((DEFAULT_TEMPLATE.to_string(), source));
        }
        Self::assemble(inner, special, sources)
    }
}

fn load_tokenizer_json(path: &Path) -> Result<tokenizers::Tokenizer> {
    let bytes = read(path)?;
    tokenizers::Tokenizer::from_bytes(bytes.as_bytes()).map_err(|e| invalid(path, e.to_string()))
}
