//! Tokenizer layer: text ↔ token ids, incremental detokenization and chat templates.
//!
//! [`Tokenizer`] wraps a [`tokenizers::Tokenizer`] built either from an HF
//! checkpoint ([`Tokenizer::from_dir`], [`Tokenizer::from_file`]) or from a
//! GGUF file's `tokenizer.ggml.*` metadata ([`Tokenizer::from_gguf`], byte-level
//! BPE only). It also carries the special-token ids and the model's chat
//! templates ([`ChatTemplate`]). [`DecodeStream`] turns generated ids into text
//! pieces for streaming.

mod chat;
mod gguf;
mod hf;
mod pretok;
mod stream;
#[cfg(test)]
pub(crate) mod test_gguf;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use chat::{ChatMessage, ChatTemplate, ChatTemplateError, ContentPart};
pub use pretok::SUPPORTED_PRE_TOKENIZERS;
pub use stream::DecodeStream;

/// Name of the chat template used when a model ships only one.
pub const DEFAULT_TEMPLATE: &str = "default";

/// Errors of loading or running a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file is malformed or has a field of the wrong type.
    #[error("invalid {}: {msg}", path.display())]
    InvalidFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A required GGUF metadata key is absent.
    #[error("GGUF metadata is missing `{key}`, which the tokenizer needs")]
    MissingKey {
        /// The key.
        key: &'static str,
    },
    /// A GGUF metadata value is invalid.
    #[error("GGUF metadata `{key}`: {msg}")]
    InvalidMetadata {
        /// The key.
        key: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// `tokenizer.ggml.model` is a tokenizer family mllm cannot build.
    #[error("unsupported GGUF tokenizer model `{model}`: {reason}")]
    UnsupportedModel {
        /// The model name found.
        model: String,
        /// Why, and what is supported.
        reason: &'static str,
    },
    /// `tokenizer.ggml.pre` names a pre-tokenizer mllm does not know.
    #[error("unsupported GGUF pre-tokenizer `{pre}` (supported: {})", SUPPORTED_PRE_TOKENIZERS.join(", "))]
    UnsupportedPreTokenizer {
        /// The name found.
        pre: String,
    },
    /// The `tokenizers` library rejected the tokenizer being built.
    #[error("cannot build tokenizer: {0}")]
    Build(String),
    /// Encoding failed.
    #[error("encode failed: {0}")]
    Encode(String),
    /// Decoding failed.
    #[error("decode failed: {0}")]
    Decode(String),
    /// A chat template does not compile.
    #[error("chat template `{name}`: {source}")]
    Template {
        /// The template's name.
        name: String,
        /// The compile error.
        #[source]
        source: ChatTemplateError,
    },
}

/// Result alias of this module.
pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;

/// Special-token ids the engine needs besides the vocabulary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SpecialIds {
    pub(crate) bos: Option<u32>,
    pub(crate) eos: Vec<u32>,
    pub(crate) pad: Option<u32>,
}

/// A tokenizer with its special tokens and chat templates.
///
/// ```no_run
/// use mllm_engine::tokenizer::Tokenizer;
/// let tok = Tokenizer::from_dir("/models/Qwen3-0.6B")?;
/// let ids = tok.encode("Hello world", false)?;
/// assert_eq!(tok.decode(&ids, true)?, "Hello world");
/// # Ok::<(), mllm_engine::tokenizer::TokenizerError>(())
/// ```
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    special: SpecialIds,
    templates: BTreeMap<String, ChatTemplate>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("special", &self.special)
            .field("templates", &self.templates.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Tokenizer {
    /// Assembles a tokenizer; compiles every chat template (bos/eos strings
    /// come from the vocabulary).
    fn assemble(
        inner: tokenizers::Tokenizer,
        special: SpecialIds,
        template_sources: Vec<(String, String)>,
    ) -> Result<Self> {
        let mut tok = Self {
            inner,
            special,
            templates: BTreeMap::new(),
        };
        let bos = tok.special.bos.and_then(|id| tok.id_to_token(id)).unwrap_or_default();
        let eos = tok
            .special
            .eos
            .first()
            .and_then(|&id| tok.id_to_token(id))
            .unwrap_or_default();
        for (name, source) in template_sources {
            let template = ChatTemplate::new(&source, &bos, &eos).map_err(|source| TokenizerError::Template {
                name: name.clone(),
                source,
            })?;
            tok.templates.insert(name, template);
        }
        Ok(tok)
    }

    /// Token ids of `text`. With `add_special_tokens`, the model's BOS (and
    /// EOS, if configured) are added as its post-processor says; special
    /// tokens written in `text` (e.g. `<|im_start|>`) always map to their ids.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`; special tokens are left out with `skip_special_tokens`.
    /// Ids outside the vocabulary are skipped.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// A streaming detokenizer over this tokenizer (see [`DecodeStream`]).
    pub fn decode_stream(&self, skip_special_tokens: bool) -> DecodeStream {
        DecodeStream::new(skip_special_tokens)
    }

    /// Ids that end generation (EOS, plus end-of-turn tokens where known).
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.special.eos
    }

    /// The beginning-of-sequence id, if the model has one.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.special.bos
    }

    /// The padding id, if the model has one.
    pub fn pad_token_id(&self) -> Option<u32> {
        self.special.pad
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token string (as stored in the vocabulary, e.g. `"Ġworld"`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary string of `id`.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The model's default chat template, if it ships one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.templates.get(DEFAULT_TEMPLATE)
    }

    /// A named chat template (e.g. `"tool_use"`); [`DEFAULT_TEMPLATE`] is the default one.
    pub fn chat_template_named(&self, name: &str) -> Option<&ChatTemplate> {
        self.templates.get(name)
    }

    /// Names of the chat templates the model ships.
    pub fn chat_template_names(&self) -> impl Iterator<Item = &str> {
        self.templates.keys().map(String::as_str)
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
