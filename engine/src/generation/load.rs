//! Where a model comes from ([`ModelSource`]) and loading it with its tokenizer
//! ([`LoadedModel`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::session::{Generator, GeneratorTarget};
use super::{GenerationError, Result};
use crate::executor::model_runner::RunnerModel;
use crate::loader::config::ModelConfig;
use crate::loader::gguf::GgufFile;
use crate::mem_cache::KvDtype;
use crate::models::qwen3_vl::{Qwen3VlConfig, Qwen3VlModel};
use crate::models::random::{random_vl_weights, random_weights};
use crate::models::{CausalLM, LoadOptions, ModelError};
use crate::quantization::observe::CALIBRATION_TEXT;
use crate::quantization::QuantMethod;
use crate::tensor::DType;
use crate::tokenizer::{ChatMessage, Tokenizer};

/// Where to load a model from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// The embedded default (SmolLM2-135M-Instruct GGUF, fetched by [`crate::hub`]).
    Default,
    /// A GGUF file (weights, config and tokenizer in one).
    Gguf(PathBuf),
    /// An HF model directory (`config.json`, safetensors, `tokenizer.json`).
    Dir(PathBuf),
    /// Random weights for a `config.json` (a file, or a directory holding one); no tokenizer.
    Dummy {
        /// The config file or its directory.
        config: PathBuf,
        /// Storage dtype of the random weights.
        dtype: DType,
        /// RNG seed of the weights.
        seed: u64,
    },
}

impl ModelSource {
    /// A GGUF file or an HF directory, decided by what `path` is.
    ///
    /// ```
    /// use mllm_engine::generation::ModelSource;
    /// let dir = std::env::temp_dir();
    /// assert_eq!(ModelSource::from_path(&dir)?, ModelSource::Dir(dir.clone()));
    /// assert!(ModelSource::from_path(dir.join("no-such-model.gguf")).is_err());
    /// # Ok::<(), mllm_engine::generation::GenerationError>(())
    /// ```
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bad = |reason: String| GenerationError::ModelPath {
            path: path.to_path_buf(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| bad(format!("cannot access it: {e}")))?;
        if meta.is_dir() {
            Ok(Self::Dir(path.to_path_buf()))
        } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            Ok(Self::Gguf(path.to_path_buf()))
        } else {
            Err(bad(
                "expected a .gguf file or an HF model directory (config.json + safetensors)".into(),
            ))
        }
    }
}

/// What was loaded, for logs and performance records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// Model name (GGUF `general.name`, else the file or directory name).
    pub name: String,
    /// Checkpoint format: `gguf`, `safetensors` or `dummy`.
    pub format: &'static str,
    /// Quantization / dtype of the checkpoint, e.g. `Q4_1` or `bf16`.
    pub quant: String,
    /// Storage dtype of the float weights in memory after loading (GGUF is dequantized);
    /// `None` when a checkpoint names no dtype and none was asked for.
    pub weight_dtype: Option<DType>,
}

impl ModelInfo {
    /// The CPU KV cache dtype that follows the weights: bf16 for bf16 weights (half the KV
    /// memory and bandwidth, the precision a GPU keeps), f32 otherwise.
    ///
    /// ```
    /// use mllm_engine::generation::ModelInfo;
    /// use mllm_engine::mem_cache::KvDtype;
    /// use mllm_engine::tensor::DType;
    /// let info = |w| ModelInfo { name: "m".into(), format: "gguf", quant: "Q4_1".into(), weight_dtype: w };
    /// assert_eq!(info(Some(DType::BF16)).default_kv_dtype(), KvDtype::BF16);
    /// assert_eq!(info(Some(DType::F32)).default_kv_dtype(), KvDtype::F32);
    /// assert_eq!(info(None).default_kv_dtype(), KvDtype::F32);
    /// ```
    pub fn default_kv_dtype(&self) -> KvDtype {
        if self.weight_dtype == Some(DType::BF16) {
            KvDtype::BF16
        } else {
            KvDtype::F32
        }
    }

    /// [`ModelInfo::weight_dtype`] for logs and records: `bf16`, ..., or `unknown`.
    pub fn weight_dtype_name(&self) -> &'static str {
        self.weight_dtype.map_or("unknown", DType::name)
    }
}

/// `opts` with SmoothQuant's calibration tokens (the built-in calibration text in `tokenizer`'s
/// ids) when smoothing was asked for without them.
fn with_calibration(opts: &LoadOptions, tokenizer: &Tokenizer) -> Result<LoadOptions> {
    let mut opts = opts.clone();
    if let Some(sm) = opts.smoothing.as_mut().filter(|sm| sm.calibration_ids.is_empty()) {
        sm.calibration_ids = tokenizer.encode(CALIBRATION_TEXT, false)?;
    }
    Ok(opts)
}

/// The HF architecture loaded as [`Qwen3VlModel`] (text and images, served on the CPU).
pub const QWEN3_VL_ARCH: &str = "Qwen3VLForConditionalGeneration";

/// A loaded model with its tokenizer (none for dummy weights): a text decoder, or Qwen3-VL for
/// an HF directory whose `architectures` is `Qwen3VLForConditionalGeneration`.
#[derive(Debug)]
pub struct LoadedModel {
    model: RunnerModel,
    tokenizer: Option<Tokenizer>,
    info: ModelInfo,
}

impl LoadedModel {
    /// Loads `source` (fetching the default model on first use).
    pub fn load(source: &ModelSource, opts: &LoadOptions) -> Result<Self> {
        match source {
            ModelSource::Default => Self::load_gguf(&crate::hub::default_model_path()?, opts),
            ModelSource::Gguf(path) => Self::load_gguf(path, opts),
            ModelSource::Dir(dir) => Self::load_dir(dir, opts),
            ModelSource::Dummy { config, dtype, seed } => Self::load_dummy(config, *dtype, *seed, opts),
        }
    }

    fn load_gguf(path: &Path, opts: &LoadOptions) -> Result<Self> {
        // Dequantized GGUF blocks carry ~4-8 bits of information; bf16 keeps
        // them to 2^-9 relative at half the decode memory traffic of f32, and
        // its prefill GEMM is faster than f16's on AVX-512 (measured).
        let opts = &LoadOptions {
            weight_dtype: Some(opts.weight_dtype.unwrap_or(DType::BF16)),
            ..opts.clone()
        };
        let file = GgufFile::open(path).map_err(|source| GenerationError::Gguf {
            path: path.into(),
            source,
        })?;
        let config = ModelConfig::from_gguf(&file).map_err(|source| GenerationError::GgufConfig {
            path: path.into(),
            source,
        })?;
        let tokenizer = Tokenizer::from_gguf(&file)?;
        let opts = &with_calibration(opts, &tokenizer)?;
        let model = CausalLM::from_gguf(&file, config, opts)?.into();
        let name = file
            .get_str("general.name")
            .map(str::to_string)
            .unwrap_or_else(|| file_name(path));
        let info = ModelInfo {
            name,
            format: "gguf",
            quant: gguf_quant(&file),
            weight_dtype: Some(opts.weight_dtype.unwrap_or(DType::BF16)),
        };
        Ok(Self {
            model,
            tokenizer: Some(tokenizer),
            info,
        })
    }

    fn load_dir(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let config = ModelConfig::from_dir(dir)?;
        let tokenizer = Tokenizer::from_dir(dir)?;
        let opts = &with_calibration(opts, &tokenizer)?;
        let model: RunnerModel = if config.architectures.iter().any(|a| a == QWEN3_VL_ARCH) {
            Qwen3VlModel::from_dir(dir, opts)?.into()
        } else {
            CausalLM::from_dir(dir, opts)?.into()
        };
        let quant = model.config().torch_dtype.clone().unwrap_or_else(|| "unknown".into());
        let info = ModelInfo {
            name: file_name(dir),
            format: "safetensors",
            // Unconverted tensors keep the checkpoint's dtype, which `torch_dtype` names.
            weight_dtype: opts.weight_dtype.or_else(|| DType::from_torch_name(&quant)),
            quant,
        };
        Ok(Self {
            model,
            tokenizer: Some(tokenizer),
            info,
        })
    }

    /// Random weights in `dtype`; `opts.quantization` applies as to a checkpoint (the weight
    /// dtype is the dummy's own).
    fn load_dummy(config: &Path, dtype: DType, seed: u64, opts: &LoadOptions) -> Result<Self> {
        let cfg = if config.is_dir() {
            ModelConfig::from_dir(config)?
        } else {
            ModelConfig::from_file(config)?
        };
        let opts = LoadOptions {
            weight_dtype: None,
            ..opts.clone()
        };
        let (name, model): (String, RunnerModel) = if cfg.architectures.iter().any(|a| a == QWEN3_VL_ARCH) {
            let file = if config.is_dir() {
                config.join("config.json")
            } else {
                config.to_path_buf()
            };
            let text =
                std::fs::read_to_string(&file).map_err(|e| ModelError::Invalid(format!("{}: {e}", file.display())))?;
            let vl = Qwen3VlConfig::from_json_str(&text)?;
            let weights = random_vl_weights(&vl, seed, dtype)?;
            (
                format!("{QWEN3_VL_ARCH} ({})", config.display()),
                Qwen3VlModel::load(vl, &weights, &opts)?.into(),
            )
        } else {
            let weights = random_weights(&cfg, seed, dtype)?;
            let model = CausalLM::load(cfg, &weights, &opts)?;
            (config_name(&model, config), model.into())
        };
        let quant = match opts.quantization {
            Some(QuantMethod::W8A8) => "w8a8".to_string(),
            None => dtype.to_string(),
        };
        let info = ModelInfo {
            name,
            format: "dummy",
            quant,
            weight_dtype: Some(dtype),
        };
        Ok(Self {
            model,
            tokenizer: None,
            info,
        })
    }

    /// The text model; an error for a Qwen3-VL model ([`LoadedModel::is_vision_language`]),
    /// which runs only through [`LoadedModel::into_runner_parts`] (`mllm serve`).
    pub fn model(&self) -> Result<&CausalLM> {
        match &self.model {
            RunnerModel::Text(m) => Ok(m),
            RunnerModel::Qwen3Vl(_) => Err(ModelError::Invalid(vl_only_serves(&self.info.name)).into()),
        }
    }

    /// Whether the model is Qwen3-VL (text and images; served by `mllm serve` on the CPU).
    pub fn is_vision_language(&self) -> bool {
        matches!(self.model, RunnerModel::Qwen3Vl(_))
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        self.model.config()
    }

    /// What was loaded.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The tokenizer; [`GenerationError::NoTokenizer`] for dummy weights.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| GenerationError::NoTokenizer {
            model: self.info.name.clone(),
        })
    }

    /// The model's context window (`max_position_embeddings`).
    pub fn max_context(&self) -> usize {
        self.config().max_position_embeddings
    }

    /// Renders a one-turn chat (optional system message, then `user`) with the model's chat
    /// template and the generation prompt appended.
    pub fn chat_prompt(&self, system: Option<&str>, user: &str) -> Result<String> {
        let template = self
            .tokenizer()?
            .chat_template()
            .ok_or_else(|| GenerationError::NoChatTemplate {
                model: self.info.name.clone(),
            })?;
        let mut messages = Vec::with_capacity(2);
        if let Some(system) = system {
            messages.push(ChatMessage::new("system", system));
        }
        messages.push(ChatMessage::new("user", user));
        Ok(template.render(&messages, true, None)?)
    }

    /// Checks that a prompt of `prompt_tokens` tokens leaves room for at least one generated
    /// token in the model's context window.
    pub fn check_prompt_len(&self, prompt_tokens: usize) -> Result<()> {
        let max_context = self.max_context();
        if prompt_tokens == 0 {
            Err(GenerationError::EmptyPrompt)
        } else if prompt_tokens >= max_context {
            Err(GenerationError::PromptTooLong {
                prompt_tokens,
                max_context,
            })
        } else {
            Ok(())
        }
    }

    /// A [`Generator`] whose KV cache holds one sequence of up to `max_context_len` tokens.
    pub fn into_generator(self, max_context_len: usize) -> Result<Generator> {
        self.into_generator_on(max_context_len, GeneratorTarget::cpu())
    }

    /// Like [`LoadedModel::into_generator`], running on `target` (device, decode CUDA graphs,
    /// KV cache type).
    /// A Qwen3-VL model errors: it runs only through `mllm serve`.
    pub fn into_generator_on(self, max_context_len: usize, target: GeneratorTarget) -> Result<Generator> {
        let tokenizer = self.tokenizer()?.clone();
        match self.model {
            RunnerModel::Text(m) => Generator::on_device(*m, tokenizer, self.info, max_context_len, target),
            RunnerModel::Qwen3Vl(_) => Err(ModelError::Invalid(vl_only_serves(&self.info.name)).into()),
        }
    }

    /// The text model, its tokenizer and info; an error for a Qwen3-VL model (use
    /// [`LoadedModel::into_runner_parts`]).
    pub fn into_parts(self) -> Result<(CausalLM, Option<Tokenizer>, ModelInfo)> {
        match self.model {
            RunnerModel::Text(m) => Ok((*m, self.tokenizer, self.info)),
            RunnerModel::Qwen3Vl(_) => Err(ModelError::Invalid(vl_only_serves(&self.info.name)).into()),
        }
    }

    /// The model as a [`crate::executor::model_runner::ModelRunner`] takes it (text or
    /// Qwen3-VL), its tokenizer and info.
    pub fn into_runner_parts(self) -> (RunnerModel, Option<Tokenizer>, ModelInfo) {
        (self.model, self.tokenizer, self.info)
    }
}

fn vl_only_serves(name: &str) -> String {
    format!("model `{name}` is Qwen3-VL, which runs only through `mllm serve` (on the CPU) for now")
}

fn file_name(path: &Path) -> String {
    path.file_stem()
        .or_else(|| path.file_name())
        .map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned())
}

/// `<architecture> (<config file>)` for dummy models.
fn config_name(model: &CausalLM, config: &Path) -> String {
    let c = model.config();
    let arch = c.architectures.first().unwrap_or(&c.model_type);
    format!("{arch} ({})", config.display())
}

/// The ggml type holding most of the GGUF's weight elements (e.g. `Q4_1`); 1-D tensors (norms,
/// biases) are left out as they stay f32 in every quantization.
fn gguf_quant(file: &GgufFile) -> String {
    let mut elems: HashMap<&'static str, u64> = HashMap::new();
    for t in file.tensors().filter(|t| t.shape().len() > 1) {
        *elems.entry(t.ggml_type().name()).or_default() += t.n_elements();
    }
    elems
        .into_iter()
        .max_by_key(|&(name, n)| (n, name))
        .map_or_else(|| "unknown".into(), |(name, _)| name.to_string())
}
