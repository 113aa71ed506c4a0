//! Model selection flags shared by `generate`, `serve` and `bench-one-batch`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::executor::device::Device;
use crate::generation::{LoadedModel, ModelSource};
use crate::mem_cache::KvDtype;
use crate::models::LoadOptions;
use crate::quantization::writer::Smoothing;
use crate::quantization::QuantMethod;
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

/// `--kv-cache-dtype`: storage of the CPU KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum KvCacheDtype {
    /// Follow the weights: bf16 weights keep bf16 KV, others f32.
    #[default]
    Auto,
    /// 32-bit float.
    F32,
    /// bfloat16: half the memory and bandwidth of f32.
    Bf16,
}

impl KvCacheDtype {
    /// The explicit choice, or `None` for auto.
    pub fn dtype(self) -> Option<KvDtype> {
        match self {
            Self::Auto => None,
            Self::F32 => Some(KvDtype::F32),
            Self::Bf16 => Some(KvDtype::BF16),
        }
    }
}

/// `--quantization`: quantize a float checkpoint's linear layers at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Quantization {
    /// Int8 weights (per-channel absmax, symmetric) and dynamic per-token int8 activations;
    /// embeddings, norms, the LM head and vision layers stay float.
    W8a8,
}

impl Quantization {
    /// The engine's method.
    pub fn method(self) -> QuantMethod {
        match self {
            Self::W8a8 => QuantMethod::W8A8,
        }
    }
}

/// `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum DeviceArg {
    /// The first GPU when a CUDA driver and device are present, else the CPU.
    #[default]
    Auto,
    /// The host CPU.
    Cpu,
    /// GPU 0 (an error when there is none).
    Cuda,
}

impl DeviceArg {
    /// The device to run on; `cuda` without a usable GPU is an error naming why.
    pub fn resolve(self) -> anyhow::Result<Device> {
        match self {
            Self::Auto => Ok(Device::auto()),
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda => {
                mllm_kernel::device::cuda_device_count().context("--device cuda")?;
                Ok(Device::Cuda(0))
            }
        }
    }
}

/// `--model`, `--weight-dtype`, `--quantization`, `--device` and `--kv-cache-dtype`.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A GGUF file or an HF model directory [default: the embedded SmolLM2-135M-Instruct Q4_1,
    /// fetched on first use].
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Storage dtype of the weights in memory.
    #[arg(long, value_enum, default_value_t = WeightDtype::Auto)]
    pub weight_dtype: WeightDtype,
    /// Quantize the linear layers of a float checkpoint at load time (a GGUF is dequantized
    /// first). Checkpoints with their own `quantization_config` load quantized without it.
    #[arg(long, value_enum, value_name = "METHOD")]
    pub quantization: Option<Quantization>,
    /// With `--quantization w8a8`: apply SmoothQuant with this migration strength α in [0, 1]
    /// first (0.5 is the usual choice), calibrated on a built-in text, as `mllm quantize
    /// --smoothquant-alpha` does. Text-only models.
    #[arg(long, value_name = "ALPHA", requires = "quantization")]
    pub smoothquant_alpha: Option<f32>,
    /// Where the model runs: auto picks the GPU when one is usable.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// GPU: decode batches of up to this many sequences replay CUDA graphs (captured per
    /// batch size 1, 2, 4, 8, 16, ... on first use; larger batches run eagerly).
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub cuda_graph_max_bs: usize,
    /// GPU: run every step eagerly.
    #[arg(long)]
    pub disable_cuda_graph: bool,
    /// CPU KV cache storage (a GPU always keeps bf16).
    #[arg(long, value_enum, default_value_t = KvCacheDtype::Auto)]
    pub kv_cache_dtype: KvCacheDtype,
    /// Batch-invariant inference: a sequence's output does not depend on which requests share
    /// its batch (greedy answers repeat exactly under any load). CPU only; prefill runs slower.
    #[arg(long)]
    pub enable_deterministic_inference: bool,
}

impl ModelArgs {
    /// Where the model comes from (checks that `--model` exists).
    pub fn source(&self) -> anyhow::Result<ModelSource> {
        match &self.model {
            None => Ok(ModelSource::Default),
            Some(path) => Ok(ModelSource::from_path(path).context("invalid --model")?),
        }
    }

    /// The load options these flags ask for.
    ///
    /// ```
    /// use clap::Parser;
    /// use mllm_engine::cli::{Cli, Command};
    /// use mllm_engine::quantization::QuantMethod;
    /// let cli = Cli::try_parse_from(["mllm", "generate", "--prompt", "Hi", "--quantization", "w8a8"]).unwrap();
    /// let Command::Generate(args) = cli.command else { unreachable!() };
    /// assert_eq!(args.model.load_options().quantization, Some(QuantMethod::W8A8));
    /// ```
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            weight_dtype: self.weight_dtype.dtype(),
            quantization: self.quantization.map(Quantization::method),
            // The loader tokenizes the calibration text once the tokenizer is open.
            smoothing: self.smoothquant_alpha.map(|alpha| Smoothing {
                alpha,
                calibration_ids: Vec::new(),
            }),
        }
    }

    /// The device to run on (`--device`), with `--enable-deterministic-inference` applied: it
    /// switches the CPU linear layers to their batch-invariant kernels, and is an error on a
    /// GPU, whose GEMMs pick tiles and split-K by batch size.
    ///
    /// ```
    /// use clap::Parser;
    /// use mllm_engine::cli::{Cli, Command};
    /// use mllm_engine::executor::device::Device;
    /// let cli = Cli::try_parse_from(["mllm", "generate", "--prompt", "Hi", "--device", "cpu"]).unwrap();
    /// let Command::Generate(args) = cli.command else { unreachable!() };
    /// assert_eq!(args.model.resolve_device().unwrap(), Device::Cpu);
    /// ```
    pub fn resolve_device(&self) -> anyhow::Result<Device> {
        let device = self.device.resolve()?;
        if self.enable_deterministic_inference {
            if device.is_cuda() {
                anyhow::bail!(
                    "--enable-deterministic-inference is implemented for the CPU backend only \
                     (the GPU GEMMs pick tiles and split-K by batch size); add --device cpu"
                );
            }
            crate::layers::linear::set_batch_invariant(true);
        }
        Ok(device)
    }

    /// The largest decode batch that runs on a CUDA graph (0 with `--disable-cuda-graph`).
    pub fn cuda_graph_max_bs(&self) -> usize {
        if self.disable_cuda_graph {
            0
        } else {
            self.cuda_graph_max_bs
        }
    }

    /// Loads the model, reporting progress on stderr.
    pub fn load(&self) -> anyhow::Result<LoadedModel> {
        let source = self.source()?;
        self.load_source(&source)
    }

    /// Loads `source` (e.g. [`ModelArgs::source`] or a dummy config) with these flags' options.
    pub fn load_source(&self, source: &ModelSource) -> anyhow::Result<LoadedModel> {
        load_with(source, &self.load_options())
    }
}

/// Loads `source` with `opts`, with a note on stderr.
fn load_with(source: &ModelSource, opts: &LoadOptions) -> anyhow::Result<LoadedModel> {
    let what = match source {
        ModelSource::Default => "the default model (SmolLM2-135M-Instruct Q4_1)".to_string(),
        ModelSource::Gguf(p) | ModelSource::Dir(p) => p.display().to_string(),
        ModelSource::Dummy { config, .. } => format!("random weights for {}", config.display()),
    };
    let t = std::time::Instant::now();
    let loaded = LoadedModel::load(source, opts).with_context(|| format!("cannot load {what}"))?;
    let info = loaded.info();
    let quantized = match opts.quantization {
        Some(QuantMethod::W8A8) => ", linear layers W8A8 int8 (quantized at load)",
        None => "",
    };
    eprintln!(
        "mllm: loaded {} ({} {}, weights {}{quantized}) in {:.2} s",
        info.name,
        info.format,
        info.quant,
        info.weight_dtype_name(),
        t.elapsed().as_secs_f64()
    );
    Ok(loaded)
}
