//! The MLP block of a one-row step as one kernel (`MLLM_DECODE_MLP`).
//!
//! At batch 1 a W8A8 layer's MLP is four kernels: add + RMSNorm + quantization, the gate/up
//! GEMM, SiLU × up + quantization and the down GEMM. Both GEMMs stream their weights at HBM
//! speed, but each boundary drains the memory pipe. `ops::decode_mlp_w8a8_into` runs the
//! four as one persistent kernel that keeps the next weight streaming across them. It takes
//! a layer whose gate/up and down projections are W8A8 with per-channel scales and no bias,
//! on SM90; any other layer, and every step of more than one row, runs the four kernels.
//!
//! `MLLM_DECODE_MLP`: `off` (the default) or `on`. Opt-in until it measures faster than the
//! four kernels: on an H100 it is on par (Qwen3-8B's block 59.6 against 60.9 us alone; W8A8
//! B=1 @ 2048 3.97 against 3.99 ms a step), after a first form that took 90 us a layer.

use std::sync::Mutex;

use mllm_kernel::ops::{self, DecodeMlpScratch, DecodeMlpWeights};
use mllm_kernel::{DeviceTensor, Gpu};

use super::weights::{GpuLayer, GpuLinear};
use crate::models::{ModelError, Result};

/// The fused block's grid-barrier scratch, held by a model that can use it.
pub(super) struct FusedMlp {
    scratch: Mutex<DecodeMlpScratch>,
}

/// The residual stream and the buffers the block reads and writes.
pub(super) struct MlpRow<'a> {
    /// o_proj's output, added to the residual.
    pub x: &'a DeviceTensor,
    pub residual: &'a mut DeviceTensor,
    /// `silu(gate) * up`, `[1, inter]`.
    pub act: &'a mut DeviceTensor,
    /// The down projection's output.
    pub out: &'a mut DeviceTensor,
}

impl FusedMlp {
    /// The fused block for a model whose layers are `layers` (activations of `dtype`,
    /// `hidden` x `inter`), or `None` when `MLLM_DECODE_MLP=off`, the GPU or the sizes do not
    /// support it, or no layer qualifies. A bad `MLLM_DECODE_MLP` is an error.
    pub fn for_model(
        gpu: &Gpu,
        layers: &[GpuLayer],
        (hidden, inter): (usize, usize),
        dtype: mllm_kernel::DType,
    ) -> Result<Option<Self>> {
        if !enabled_by_env()? {
            return Ok(None);
        }
        let supported = ops::decode_mlp_w8a8_unsupported(gpu.arch(), hidden, inter, dtype).is_none();
        if !supported || !layers.iter().any(|l| int8_scales(l).is_some()) {
            return Ok(None);
        }
        Ok(Some(Self {
            scratch: Mutex::new(DecodeMlpScratch::new(gpu)?),
        }))
    }

    /// Runs `layer`'s MLP block (post-attention norm included) over one row when the layer
    /// qualifies; `false` when it does not (nothing was launched).
    pub fn run(&self, gpu: &Gpu, layer: &GpuLayer, eps: f32, row: MlpRow<'_>) -> Result<bool> {
        let Some((gate_up_scales, down_scales)) = int8_scales(layer) else {
            return Ok(false);
        };
        let weights = DecodeMlpWeights {
            norm: &layer.post_norm,
            gate_up: &layer.gate_up.weight,
            gate_up_scales,
            down: &layer.down.weight,
            down_scales,
            eps,
        };
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        ops::decode_mlp_w8a8_into(gpu, row.x, row.residual, &weights, row.act, &mut scratch, row.out)?;
        Ok(true)
    }
}

/// The per-channel scales of `layer`'s gate/up and down projections when both are W8A8 with
/// one scale per output channel and no bias (what the kernel takes), else `None`.
fn int8_scales(layer: &GpuLayer) -> Option<(&DeviceTensor, &DeviceTensor)> {
    Some((per_channel_scales(&layer.gate_up)?, per_channel_scales(&layer.down)?))
}

fn per_channel_scales(l: &GpuLinear) -> Option<&DeviceTensor> {
    let s = l.int8_scales.as_ref()?;
    (l.bias.is_none() && s.numel() == l.weight.shape().first().copied().unwrap_or(0)).then_some(s)
}

fn enabled_by_env() -> Result<bool> {
    match std::env::var("MLLM_DECODE_MLP").as_deref() {
        Ok("on") | Ok("1") => Ok(true),
        Err(_) | Ok("off") | Ok("0") => Ok(false),
        Ok(other) => Err(ModelError::Invalid(format!(
            "MLLM_DECODE_MLP must be `on` or `off`, got `{other}`"
        ))),
    }
}
