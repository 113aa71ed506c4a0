//! Model selection flags shared by `generate` and `bench-one-batch`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::generation::{LoadedModel, ModelSource};
use crate::models::LoadOptions;
use crate::tensor::DType;

/// Storage dtype of the weights after loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum WeightDtype {
    /// As in the checkpoint; GGUF: bf16; dummy weights: f32.
    #[default]
    Auto,
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16 (half the memory traffic of decode).
    Bf16,
}

impl WeightDtype {
    /// The dtype to convert to, if any.
    pub fn dtype(self) -> Option<DType> {
        match self {
            Self::Auto => None,
            Self::F32 => Some(DType::F32),
            Self::F16 => Some(DType::F16),
            Self::Bf16 => Some(DType::BF16),
        }
    }
}

/// `--model` and `--weight-dtype`.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A GGUF file or an HF model directory [default: the embedded SmolLM2-135M-Instruct Q4_1,
    /// fetched on first use].
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Storage dtype of the weights in memory.
    #[arg(long, value_enum, default_value_t = WeightDtype::Auto)]
    pub weight_dtype: WeightDtype,
}

impl ModelArgs {
    /// Where the model comes from (checks that `--model` exists).
    pub fn source(&self) -> anyhow::Result<ModelSource> {
        match &self.model {
            None => Ok(ModelSource::Default),
            Some(path) => Ok(ModelSource::from_path(path).context("invalid --model")?),
        }
    }

    /// Loads the model, reporting progress on stderr.
    pub fn load(&self) -> anyhow::Result<LoadedModel> {
        let source = self.source()?;
        load_source(&source, self.weight_dtype)
    }
}

/// Loads `source` with a note on stderr.
pub(crate) fn load_source(source: &ModelSource, weight_dtype: WeightDtype) -> anyhow::Result<LoadedModel> {
    let what = match source {
        ModelSource::Default => "the default model (SmolLM2-135M-Instruct Q4_1)".to_string(),
        ModelSource::Gguf(p) | ModelSource::Dir(p) => p.display().to_string(),
        ModelSource::Dummy { config, .. } => format!("random weights for {}", config.display()),
    };
    let t = std::time::Instant::now();
    let opts = LoadOptions {
        weight_dtype: weight_dtype.dtype(),
    };
    let loaded = LoadedModel::load(source, &opts).with_context(|| format!("cannot load {what}"))?;
    let info = loaded.info();
    eprintln!(
        "mllm: loaded {} ({} {}, weights {}) in {:.2} s",
        info.name,
        info.format,
        info.quant,
        info.weight_dtype,
        t.elapsed().as_secs_f64()
    );
    Ok(loaded)
}
