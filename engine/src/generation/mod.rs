//! Single-process text generation: load a model and its tokenizer ([`LoadedModel`]), then run
//! prefill + decode for one prompt at a time ([`Generator`]) with the [`ModelRunner`] and the
//! sampler, stopping on EOS, a token budget or a stop string, and streaming text pieces through
//! a [`DecodeStream`].
//!
//! This is the loop behind `mllm generate`; the server's scheduler replaces it later.
//!
//! ```no_run
//! use mllm_engine::executor::sampler::SamplingParams;
//! use mllm_engine::generation::{GenerateRequest, LoadedModel, ModelSource};
//!
//! let loaded = LoadedModel::load(&ModelSource::Default, &Default::default())?;
//! let prompt = loaded.chat_prompt(None, "What is the capital of France?")?;
//! let ids = loaded.tokenizer()?.encode(&prompt, false)?;
//! let req = GenerateRequest { max_tokens: 32, params: SamplingParams::greedy(), ..Default::default() };
//! let mut generator = loaded.into_generator(ids.len() + req.max_tokens)?;
//! let out = generator.generate(&ids, &req, |piece| print!("{piece}"))?;
//! eprintln!("\n{} tokens, finished by {:?}", out.tokens.len(), out.finish);
//! # Ok::<(), mllm_engine::generation::GenerationError>(())
//! ```
//!
//! [`ModelRunner`]: crate::executor::model_runner::ModelRunner
//! [`DecodeStream`]: crate::tokenizer::DecodeStream

mod load;
mod session;
mod stop;

use std::path::PathBuf;

pub use load::{LoadedModel, ModelInfo, ModelSource};
pub use session::{FinishReason, GenerateOutput, GenerateRequest, GenerateStats, Generator, GeneratorTarget};
pub use stop::StopMatcher;

use crate::executor::sampler::SamplingError;
use crate::hub::HubError;
use crate::loader::config::ConfigError;
use crate::loader::gguf::config::GgufConfigError;
use crate::loader::gguf::GgufError;
use crate::models::ModelError;
use crate::tokenizer::{ChatTemplateError, TokenizerError};

/// Errors of loading a model for generation or of generating.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    /// Fetching the default model failed.
    #[error("default model: {0}")]
    Hub(#[from] HubError),
    /// The model path does not exist or is neither a `.gguf` file nor a directory.
    #[error("model path {}: {reason}", path.display())]
    ModelPath {
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The GGUF file could not be read.
    #[error("cannot read GGUF {}: {source}", path.display())]
    Gguf {
        /// The file.
        path: PathBuf,
        /// The reader's error.
        #[source]
        source: GgufError,
    },
    /// The GGUF metadata does not describe a supported model.
    #[error("GGUF {}: {source}", path.display())]
    GgufConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: GgufConfigError,
    },
    /// `config.json` is missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The tokenizer could not be loaded or failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The model failed to load or run.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Invalid sampling parameters, or sampling failed.
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    /// A chat prompt was asked for but the model ships no chat template.
    #[error("model `{model}` has no chat template; run without --chat and write the prompt in full")]
    NoChatTemplate {
        /// The model's name.
        model: String,
    },
    /// The chat template failed to render.
    #[error("chat template: {0}")]
    ChatTemplate(#[from] ChatTemplateError),
    /// A model built with `--load-format dummy` has no tokenizer.
    #[error("model `{model}` has random weights and no tokenizer; text generation needs a real checkpoint")]
    NoTokenizer {
        /// The model's name.
        model: String,
    },
    /// The prompt encodes to no tokens.
    #[error("the prompt is empty (0 tokens)")]
    EmptyPrompt,
    /// The prompt does not fit the model's context window.
    #[error(
        "prompt is {prompt_tokens} tokens but the model's context window is {max_context} tokens \
         (at least one more is needed to generate); shorten the prompt"
    )]
    PromptTooLong {
        /// Prompt length in tokens.
        prompt_tokens: usize,
        /// The model's context window (`max_position_embeddings`).
        max_context: usize,
    },
    /// The generator was sized for shorter sequences than the request needs.
    #[error(
        "request needs {needed} tokens of context (prompt {prompt_tokens} + max_tokens {max_tokens}) \
         but the generator was built for {capacity}"
    )]
    OverCapacity {
        /// Prompt plus maximum output.
        needed: usize,
        /// Prompt length in tokens.
        prompt_tokens: usize,
        /// Maximum new tokens.
        max_tokens: usize,
        /// The generator's context capacity.
        capacity: usize,
    },
}

/// Result alias of this module.
pub type Result<T, E = GenerationError> = std::result::Result<T, E>;
