//! `mllm quantize`: writes a quantized compressed-tensors checkpoint from a float HF model
//! directory.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::quantization::observe::CALIBRATION_TEXT;
use crate::quantization::writer::{write_w8a8_with, Smoothing};
use crate::tokenizer::Tokenizer;

/// The scheme to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QuantizeScheme {
    /// Int8 per-channel weights + dynamic per-token int8 activations (compressed-tensors
    /// `int-quantized`).
    W8a8,
}

/// Arguments of `mllm quantize`.
///
/// ```
/// use clap::Parser;
/// use mllm_engine::cli::{Cli, Command};
/// let cli = Cli::try_parse_from(["mllm", "quantize", "--model", "in", "--out", "out",
///     "--ignore", "re:.*down_proj", "--ignore", "model.layers.0.mlp.up_proj"]).unwrap();
/// let Command::Quantize(args) = cli.command else { unreachable!() };
/// assert_eq!(args.ignore.len(), 2);
/// ```
#[derive(Debug, Clone, Args)]
pub struct QuantizeArgs {
    /// The float HF model directory (config.json + safetensors, f32/bf16/f16).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Output directory (created; weights, config.json with `quantization_config`, tokenizer
    /// and other files of the input).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Quantization scheme.
    #[arg(long, value_enum, default_value_t = QuantizeScheme::W8a8)]
    pub scheme: QuantizeScheme,
    /// Layers to keep float, by prefixed name (`model.layers.0.mlp.down_proj`) or `re:<regex>`;
    /// repeatable. Embeddings, norms, lm_head and vision layers are always kept.
    #[arg(long, value_name = "PATTERN")]
    pub ignore: Vec<String>,
    /// Apply SmoothQuant with this migration strength α in [0, 1] before quantizing (0.5 is
    /// a good start): calibrates on a built-in text with the model's tokenizer and folds the
    /// factors into the norm and linear weights. Off by default.
    #[arg(long, value_name = "ALPHA")]
    pub smoothquant_alpha: Option<f32>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs `mllm quantize`.
pub fn run(args: &QuantizeArgs) -> anyhow::Result<()> {
    let t = std::time::Instant::now();
    let smoothing = match args.smoothquant_alpha {
        Some(alpha) => {
            let tok =
                Tokenizer::from_dir(&args.model).context("SmoothQuant calibration needs the model's tokenizer")?;
            Some(Smoothing {
                alpha,
                calibration_ids: tok.encode(CALIBRATION_TEXT, false)?,
            })
        }
        None => None,
    };
    let summary = match args.scheme {
        QuantizeScheme::W8a8 => write_w8a8_with(&args.model, &args.out, &args.ignore, !args.quiet, smoothing.as_ref()),
    }
    .with_context(|| format!("cannot quantize {}", args.model.display()))?;
    eprintln!(
        "mllm: wrote {} in {:.1} s: {} linear layers W8A8 int8, {} tensors smoothed, {} tensors kept, ignore {:?}, copied {}",
        args.out.display(),
        t.elapsed().as_secs_f64(),
        summary.quantized,
        summary.smoothed,
        summary.copied,
        summary.ignore,
        summary.files.join(", ")
    );
    Ok(())
}
