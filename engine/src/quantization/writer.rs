//! Writes a W8A8 compressed-tensors checkpoint from a float HF model directory (`mllm
//! quantize`): the layout llm-compressor produces and vLLM / pymllm / our loader read.
//!
//! Per quantized linear layer `<name>`: `<name>.weight` int8 `[n, k]` and `<name>.weight_scale`
//! f32 `[n, 1]`; every other tensor (embeddings, norms, LM head, ignored layers, a vision tower)
//! is copied in its original dtype under its name. `config.json` gains `quantization_config`
//! at its top level (format `int-quantized`, one group targeting `Linear`: int8 channel
//! symmetric static weights, int8 token symmetric dynamic input activations) whose `ignore` lists
//! every 2-D linear weight left float by name, and a vision tower as the one pattern
//! [`VISION_SKIP`] (it matches however a reader prefixes the tower: `model.visual.`, `visual.`).
//! Tokenizer and other non-weight files are copied.
//!
//! With [`Smoothing`] the float model is first smoothed ([`super::smooth`]): the factors are
//! folded into the norm and linear weights before quantizing, so the checkpoint is a standard
//! W8A8 one that every reader loads without knowing about SmoothQuant.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use safetensors::tensor::TensorView;
use safetensors::Dtype as StDtype;
use serde_json::{json, Value};

use super::ignore::PatternList;
use super::quantize::{default_skip, quantize_per_channel, VISION_SKIP};
use super::smooth::{smooth, SmoothedWeights};
use super::QuantError;
use crate::loader::config::ModelConfig;
use crate::loader::safetensors::SafetensorsModel;
use crate::models::weights::WeightSource;
use crate::tensor::{DType, Tensor};

/// What [`write_w8a8`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteSummary {
    /// Linear layers quantized to int8.
    pub quantized: usize,
    /// Tensors copied unchanged.
    pub copied: usize,
    /// Non-weight files copied (tokenizer, generation config, ...).
    pub files: Vec<String>,
    /// The `ignore` list written.
    pub ignore: Vec<String>,
    /// Tensors rewritten by SmoothQuant before quantizing (0 without smoothing).
    pub smoothed: usize,
}

/// SmoothQuant before quantizing: strength and the calibration tokens (e.g. the model's
/// tokenization of [`super::observe::CALIBRATION_TEXT`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Smoothing {
    /// Migration strength α in `[0, 1]`.
    pub alpha: f32,
    /// Token ids the float model is calibrated on.
    pub calibration_ids: Vec<u32>,
}

/// The `quantization_config` of a W8A8 int8 checkpoint with `ignore`.
///
/// ```
/// let c = mllm_engine::quantization::writer::w8a8_config(&["lm_head".to_string()]);
/// assert_eq!(c["format"], "int-quantized");
/// let cfg = mllm_engine::quantization::config::CompressedTensorsConfig::from_value(&c).unwrap();
/// assert!(cfg.group_for("lm_head").is_none());
/// ```
pub fn w8a8_config(ignore: &[String]) -> Value {
    let args = |strategy: &str, dynamic: bool| {
        json!({"num_bits": 8, "type": "int", "symmetric": true, "strategy": strategy,
               "dynamic": dynamic, "group_size": null, "block_structure": null, "actorder": null,
               "observer": if dynamic { Value::Null } else { json!("minmax") }, "observer_kwargs": {}})
    };
    json!({
        "quant_method": "compressed-tensors",
        "format": "int-quantized",
        "quantization_status": "compressed",
        "global_compression_ratio": null,
        "kv_cache_scheme": null,
        "sparsity_config": {},
        "config_groups": {"group_0": {
            "targets": ["Linear"],
            "weights": args("channel", false),
            "input_activations": args("token", true),
            "output_activations": null,
            "format": "int-quantized"
        }},
        "ignore": ignore,
    })
}

fn st_dtype(d: DType) -> StDtype {
    match d {
        DType::F32 => StDtype::F32,
        DType::BF16 => StDtype::BF16,
        DType::F16 => StDtype::F16,
        DType::I8 => StDtype::I8,
        DType::I32 => StDtype::I32,
        DType::I64 => StDtype::I64,
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> QuantError + '_ {
    move |source| QuantError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether a checkpoint tensor is the weight of a linear layer we may quantize: 2-D, named
/// `<module>.weight`, module not an embedding / norm / vision layer / LM head.
fn linear_module<'a>(name: &'a str, t: &Tensor, skip: &PatternList) -> Option<&'a str> {
    let module = name.strip_suffix(".weight")?;
    (t.rank() == 2 && t.dtype().is_float() && !skip.matches(module)).then_some(module)
}

/// Embeddings and norms are not linear layers: they never go into `ignore`.
fn is_non_linear(module: &str) -> bool {
    module.contains("embed") || module.ends_with("norm")
}

/// Quantizes the float model in `input` (an HF directory) to W8A8 int8 and writes it to `out`
/// (created if needed; must not be `input`). `ignore` adds layer patterns (exact or `re:`) to
/// keep float; a progress bar is drawn on stderr when `progress`.
pub fn write_w8a8(input: &Path, out: &Path, ignore: &[String], progress: bool) -> Result<WriteSummary, QuantError> {
    write_w8a8_with(input, out, ignore, progress, None)
}

/// [`write_w8a8`], smoothing the float model first when `smoothing` is given.
pub fn write_w8a8_with(
    input: &Path,
    out: &Path,
    ignore: &[String],
    progress: bool,
    smoothing: Option<&Smoothing>,
) -> Result<WriteSummary, QuantError> {
    if !input.is_dir() {
        return Err(QuantError::Invalid(format!(
            "{} is not a directory: `mllm quantize` reads an HF model directory (config.json + safetensors, f32/bf16/f16)",
            input.display()
        )));
    }
    let config_path = input.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(io(&config_path))?;
    let mut config: Value =
        serde_json::from_str(&text).map_err(|e| QuantError::Config(format!("{}: {e}", config_path.display())))?;
    if let Some(q) = config.get("quantization_config") {
        return Err(QuantError::Invalid(format!(
            "{} is already quantized ({}); quantize a float checkpoint",
            input.display(),
            q.get("quant_method")
                .and_then(Value::as_str)
                .unwrap_or("unknown method")
        )));
    }
    if same_dir(input, out) {
        return Err(QuantError::Invalid(format!(
            "--out {} must differ from --model",
            out.display()
        )));
    }
    let user = PatternList::parse(ignore)?;
    let vision = PatternList::parse([VISION_SKIP])?;
    let mut skip = default_skip();
    skip.extend(user.clone());
    let st = SafetensorsModel::open(input).map_err(|e| QuantError::Invalid(e.to_string()))?;
    let smoothed: Option<SmoothedWeights<'_>> = match smoothing {
        None => None,
        Some(sm) => {
            let model_config = ModelConfig::from_dir(input).map_err(|e| QuantError::Invalid(e.to_string()))?;
            let w = smooth(&model_config, &st, &sm.calibration_ids, sm.alpha).map_err(|e| {
                // Calibration runs the text-only decoder; say what works instead.
                let hint = if model_config.architectures.iter().any(|a| a.contains("VL")) {
                    " (SmoothQuant covers text-only decoders; quantize this vision-language checkpoint without --smoothquant-alpha)"
                } else {
                    ""
                };
                QuantError::Invalid(format!("SmoothQuant: {e}{hint}"))
            })?;
            Some(w)
        }
    };
    let names: Vec<String> = st.names().into_iter().map(String::from).collect();

    let bar = if progress {
        let b = ProgressBar::new(names.len() as u64);
        if let Ok(style) = ProgressStyle::with_template("quantizing [{bar:30}] {pos}/{len} {msg}") {
            b.set_style(style.progress_chars("=> "));
        }
        b
    } else {
        ProgressBar::hidden()
    };
    let mut tensors: Vec<(String, Tensor)> = Vec::with_capacity(names.len() + names.len() / 2);
    let mut ignored: Vec<String> = ignore.to_vec();
    let mut summary = WriteSummary {
        quantized: 0,
        copied: 0,
        files: vec![],
        ignore: vec![],
        smoothed: 0,
    };
    for name in &names {
        bar.set_message(name.clone());
        let t = match &smoothed {
            Some(w) if w.is_smoothed(name) => {
                summary.smoothed += 1;
                let t = WeightSource::get(w, name)
                    .map_err(|e| QuantError::Invalid(e.to_string()))?
                    .expect("smoothed tensors exist");
                // Quantized from f32; kept tensors (norms) go back to the checkpoint's dtype.
                match linear_module(name, &t, &skip) {
                    Some(_) => t,
                    None => {
                        let dt = st.dtype(name).map_err(|e| QuantError::Invalid(e.to_string()))?;
                        t.to_dtype(dt).map_err(|e| QuantError::Invalid(e.to_string()))?
                    }
                }
            }
            _ => st.get(name).map_err(|e| QuantError::Invalid(e.to_string()))?,
        };
        let module = name.strip_suffix(".weight");
        match linear_module(name, &t, &skip) {
            Some(module) => {
                let (q, s) = quantize_per_channel(&t).map_err(|e| QuantError::Invalid(format!("{name}: {e}")))?;
                let n = s.numel();
                tensors.push((name.clone(), q));
                tensors.push((
                    format!("{module}.weight_scale"),
                    s.reshape(&[n, 1]).map_err(|e| QuantError::Invalid(e.to_string()))?,
                ));
                summary.quantized += 1;
            }
            None => {
                match module {
                    // Every tower weight, whatever its rank: readers may load the Conv3d patch
                    // embedding as a linear layer.
                    Some(m) if vision.matches(m) => ignored.push(VISION_SKIP.to_string()),
                    Some(m) if t.rank() == 2 && !is_non_linear(m) && !user.matches(m) => ignored.push(m.to_string()),
                    _ => {}
                }
                tensors.push((name.clone(), t));
                summary.copied += 1;
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    check_fused(&tensors)?;

    std::fs::create_dir_all(out).map_err(io(out))?;
    let views = tensors
        .iter()
        .map(|(n, t)| {
            TensorView::new(st_dtype(t.dtype()), t.shape().to_vec(), t.as_bytes())
                .map(|v| (n.clone(), v))
                .map_err(|e| QuantError::Invalid(format!("{n}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let weights = out.join("model.safetensors");
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), &weights)
        .map_err(|e| QuantError::Invalid(format!("writing {}: {e}", weights.display())))?;

    ignored.sort();
    ignored.dedup();
    config["quantization_config"] = w8a8_config(&ignored);
    let out_config = out.join("config.json");
    let pretty = serde_json::to_string_pretty(&config).map_err(|e| QuantError::Invalid(e.to_string()))?;
    std::fs::write(&out_config, pretty + "\n").map_err(io(&out_config))?;
    summary.files = copy_other_files(input, out)?;
    summary.ignore = ignored;
    Ok(summary)
}

/// Parts the engine (like vLLM) loads as one fused layer: all quantized or none.
const FUSED: [&[&str]; 2] = [&["q_proj", "k_proj", "v_proj"], &["gate_proj", "up_proj"]];

/// Errors if an `--ignore` pattern split a fused layer (some parts int8, some float): such a
/// checkpoint would not load here or in vLLM.
fn check_fused(tensors: &[(String, Tensor)]) -> Result<(), QuantError> {
    let dtype: HashMap<&str, DType> = tensors.iter().map(|(n, t)| (n.as_str(), t.dtype())).collect();
    for (name, _) in tensors {
        for parts in FUSED {
            let Some(parent) = name.strip_suffix(&format!(".{}.weight", parts[0])) else {
                continue;
            };
            let kinds: Vec<(String, bool)> = parts
                .iter()
                .filter_map(|p| {
                    let n = format!("{parent}.{p}.weight");
                    dtype
                        .get(n.as_str())
                        .map(|d| (format!("{parent}.{p}"), *d == DType::I8))
                })
                .collect();
            if kinds.iter().any(|k| k.1 != kinds[0].1) {
                return Err(QuantError::MixedFusedLayer {
                    layer: format!("{parent}.{{{}}}", parts.join(",")),
                    parts: kinds
                        .iter()
                        .map(|(n, q)| format!("{n}: {}", if *q { "w8a8" } else { "ignored" }))
                        .collect(),
                });
            }
        }
    }
    Ok(())
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Copies every regular file of `input` except weights, their index and `config.json`.
fn copy_other_files(input: &Path, out: &Path) -> Result<Vec<String>, QuantError> {
    let mut copied = vec![];
    for entry in std::fs::read_dir(input).map_err(io(input))? {
        let entry = entry.map_err(io(input))?;
        let path: PathBuf = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let weights = name.ends_with(".safetensors") || name == "model.safetensors.index.json";
        if !path.is_file() || weights || name == "config.json" {
            continue;
        }
        std::fs::copy(&path, out.join(&name)).map_err(io(&path))?;
        copied.push(name);
    }
    copied.sort();
    Ok(copied)
}
