//! The W8A8 int8 scheme: int8 weights `[n, k]` with f32 per-channel scales, int8 activations
//! quantized per token at run time (or with a static per-tensor scale), an int8 GEMM with i32
//! accumulation and the scales applied in the epilogue.
//!
//! Checkpoint layout (compressed-tensors `int-quantized`): `weight` int8 `[n, k]`,
//! `weight_scale` `[n, 1]` / `[n]` (channel) or `[1]` per stacked part (tensor), f32 or bf16;
//! `input_scale` `[1]` per part for static activations. After loading: `weight` int8 `[n, k]`,
//! `weight_scale` f32 `[n]` (a per-tensor scale is expanded over its part's rows, exactly),
//! `input_scale` f32 `[1]` (the max over parts, as vLLM does).
//!
//! ```
//! use std::sync::Arc;
//! use mllm_engine::layers::linear::{Linear, Shard};
//! use mllm_engine::quantization::scheme::SchemeLinearMethod;
//! use mllm_engine::quantization::w8a8::W8A8Int8;
//! use mllm_engine::tensor::Tensor;
//!
//! let method = Arc::new(SchemeLinearMethod::new(Arc::new(W8A8Int8::at_load())));
//! let mut l = Linear::new(2, vec![2], false, method);
//! l.weight_loader("weight", Shard::Whole, Tensor::from_vec(vec![1.0f32, 0.0, 0.5, -1.0], &[2, 2]).unwrap()).unwrap();
//! l.finish("proj").unwrap();
//! let y = l.forward(&Tensor::from_vec(vec![2.0f32, 4.0], &[1, 2]).unwrap()).unwrap().to_f32_vec().unwrap();
//! assert!((y[0] - 2.0).abs() < 0.05 && (y[1] + 3.0).abs() < 0.05, "{y:?}");
//! ```

use super::int8_gemm::int8_scaled_mm;
use super::quantize::quantize_per_channel;
use super::scheme::Scheme;
use crate::layers::linear::{LinearWeights, Stacking, WeightSpec};
use crate::models::{ModelError, Result};
use crate::tensor::{DType, Device, Tensor};

/// What one weight scale covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightScale {
    /// One scale per output channel.
    PerChannel,
    /// One scale per (stacked part of the) tensor.
    PerTensor,
}

/// How activations are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationScale {
    /// Per-token absmax at run time.
    DynamicPerToken,
    /// One scale from the checkpoint (`input_scale`).
    StaticPerTensor,
}

/// The W8A8 int8 scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct W8A8Int8 {
    /// Weight scale granularity in the checkpoint.
    pub weight: WeightScale,
    /// Activation quantization.
    pub activations: ActivationScale,
    /// The checkpoint holds float weights, quantized in `process_weights_after_loading`
    /// (`--quantization w8a8`).
    pub from_float: bool,
}

impl W8A8Int8 {
    /// Float weights quantized at load time: per-channel absmax, symmetric; dynamic per-token
    /// activations.
    pub fn at_load() -> Self {
        Self {
            weight: WeightScale::PerChannel,
            activations: ActivationScale::DynamicPerToken,
            from_float: true,
        }
    }

    fn param<'a>(weights: &'a LinearWeights, name: &str) -> Result<&'a Tensor> {
        weights
            .get(name)
            .ok_or_else(|| ModelError::Invalid(format!("W8A8 layer has no `{name}` (weights not processed?)")))
    }

    /// The reference CPU path: quantize `x` per token (or with the static scale), int8 GEMM
    /// with i32 accumulation, scales and bias in the f32 epilogue.
    fn apply_cpu(&self, weights: &LinearWeights, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let w = Self::param(weights, "weight")?;
        let &[n, k] = w.shape() else {
            return Err(ModelError::Invalid(format!("W8A8 weight has shape {:?}", w.shape())));
        };
        let x_k = x.shape().last().copied().unwrap_or(0);
        if x_k != k {
            return Err(ModelError::WeightShape {
                name: "input".into(),
                expected: vec![k],
                got: vec![x_k],
            });
        }
        let m = x.numel() / k.max(1);
        let xf = x.to_f32_vec()?;
        let (qa, sa) = match self.activations {
            ActivationScale::DynamicPerToken => mllm_kernel::reference::per_token_quant_int8::<f32>(&xf, k.max(1)),
            ActivationScale::StaticPerTensor => {
                let s = Self::param(weights, "input_scale")?.to_f32_vec()?[0];
                let inv = 1.0 / s;
                let q = xf
                    .iter()
                    .map(|v| (v * inv).round().clamp(-127.0, 127.0) as i8)
                    .collect();
                (q, vec![s])
            }
        };
        let ws = Self::param(weights, "weight_scale")?.as_slice::<f32>()?;
        let bias = bias.map(|b| b.as_slice::<f32>()).transpose()?;
        let y = int8_scaled_mm(&qa, w.as_slice::<i8>()?, m, n, k, &sa, ws, bias);
        let mut shape = x.shape().to_vec();
        *shape.last_mut().expect("x has rank >= 1") = n;
        Ok(Tensor::from_vec(y, &shape)?)
    }
}

fn spec(name: &'static str, shape: Vec<usize>, dtype: Option<DType>, stacking: Stacking) -> WeightSpec {
    WeightSpec {
        name,
        shape,
        dtype,
        stacking,
    }
}

impl Scheme for W8A8Int8 {
    fn create_weights(&self, in_features: usize, out_features: usize) -> Vec<WeightSpec> {
        if self.from_float {
            return vec![spec("weight", vec![out_features, in_features], None, Stacking::Rows)];
        }
        let mut specs = vec![spec(
            "weight",
            vec![out_features, in_features],
            Some(DType::I8),
            Stacking::Rows,
        )];
        specs.push(match self.weight {
            WeightScale::PerChannel => spec("weight_scale", vec![out_features, 1], None, Stacking::Rows),
            WeightScale::PerTensor => spec("weight_scale", vec![1], None, Stacking::PerShard),
        });
        if self.activations == ActivationScale::StaticPerTensor {
            specs.push(spec("input_scale", vec![1], None, Stacking::PerShard));
        }
        specs
    }

    fn process_weights_after_loading(&self, output_sizes: &[usize], weights: &mut LinearWeights) -> Result<()> {
        let w = Self::param(weights, "weight")?.clone();
        let n = w.shape()[0];
        if self.from_float {
            let (q, s) = quantize_per_channel(&w)?;
            weights.insert("weight", q);
            weights.insert("weight_scale", s);
            return Ok(());
        }
        let s = Self::param(weights, "weight_scale")?.to_f32_vec()?;
        let per_channel = match self.weight {
            WeightScale::PerChannel => s,
            WeightScale::PerTensor => {
                if s.len() != output_sizes.len() {
                    return Err(ModelError::Invalid(format!(
                        "per-tensor weight_scale has {} values for {} stacked parts",
                        s.len(),
                        output_sizes.len()
                    )));
                }
                output_sizes
                    .iter()
                    .zip(&s)
                    .flat_map(|(&rows, &v)| std::iter::repeat_n(v, rows))
                    .collect()
            }
        };
        weights.insert("weight_scale", Tensor::from_vec(per_channel, &[n])?);
        if let Some(is) = weights.get("input_scale") {
            let max = is.to_f32_vec()?.into_iter().fold(f32::MIN, f32::max);
            if !(max > 0.0 && max.is_finite()) {
                return Err(ModelError::Invalid(format!("input_scale must be positive, got {max}")));
            }
            weights.insert("input_scale", Tensor::from_vec(vec![max], &[1])?);
        }
        Ok(())
    }

    fn apply(&self, weights: &LinearWeights, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        match x.device() {
            Device::Cpu => self.apply_cpu(weights, x, bias),
        }
    }
}
