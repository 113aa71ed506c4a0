//! `mllm-kernel bench decode-mlp`: the W8A8 MLP block of one decode row as one
//! kernel (`ops::decode_mlp_w8a8_into`) against the four kernels it replaces
//! (add + RMSNorm + quant, gate/up GEMM, SiLU × up + quant, down GEMM), both
//! in the same run, with the device copy of the block's weight bytes as the
//! bandwidth peer.

use serde::Serialize;

use super::{copy_bandwidth, time_gpu, xorshift, TimingPlan};
use crate::device::Gpu;
use crate::dtype::DType;
use crate::ops::{self, DecodeMlpScratch, DecodeMlpWeights};
use crate::tensor::DeviceTensor;
use crate::Result;

/// One block size, both forms.
#[derive(Debug, Clone, Serialize)]
pub struct DecodeMlpRow {
    pub hidden: usize,
    pub inter: usize,
    /// int8 weight bytes a call streams (gate/up + down).
    pub weight_bytes: usize,
    pub fused_us: f64,
    pub unfused_us: f64,
    /// Weight bytes over the fused kernel's time, GB/s.
    pub fused_gbps: f64,
    /// Weight bytes over the four kernels' time, GB/s.
    pub unfused_gbps: f64,
    /// Device copy of the weight bytes (read + write counted), GB/s.
    pub copy_gbps: f64,
}

/// One block's device tensors (weights and the row's buffers).
struct Block {
    norm: DeviceTensor,
    gate_up: DeviceTensor,
    gate_up_scales: DeviceTensor,
    down: DeviceTensor,
    down_scales: DeviceTensor,
}

impl Block {
    fn random(gpu: &Gpu, hidden: usize, inter: usize, seed: u64) -> Result<Self> {
        let int8 = |n: usize, s: u64| xorshift(n, s, |v| ((v % 255) as i16 - 127) as i8);
        let scales = |n: usize, k: usize| vec![1.0 / (40.0 * 73.0 * (k as f32).sqrt()); n];
        Ok(Self {
            norm: DeviceTensor::from_host(gpu, &super::random_bf16(hidden, seed), &[hidden])?,
            gate_up: DeviceTensor::from_host(gpu, &int8(2 * inter * hidden, seed + 1), &[2 * inter, hidden])?,
            gate_up_scales: DeviceTensor::from_host(gpu, &scales(2 * inter, hidden), &[2 * inter])?,
            down: DeviceTensor::from_host(gpu, &int8(hidden * inter, seed + 2), &[hidden, inter])?,
            down_scales: DeviceTensor::from_host(gpu, &scales(hidden, inter), &[hidden])?,
        })
    }
}

/// Times a `hidden` x `inter` block (bf16 activations, one row) both ways; two
/// weight sets alternate so neither form reads the previous call's tail from L2.
pub fn bench_decode_mlp(gpu: &Gpu, hidden: usize, inter: usize, plan: TimingPlan) -> Result<DecodeMlpRow> {
    let blocks = [
        Block::random(gpu, hidden, inter, 1)?,
        Block::random(gpu, hidden, inter, 5)?,
    ];
    let row = |cols: usize, dt: DType| DeviceTensor::zeros(gpu, &[1, cols], dt);
    // o_proj's output; the four kernels' norm overwrites it in place, the one kernel reads it.
    let x = DeviceTensor::from_host(gpu, &super::random_bf16(hidden, 9), &[1, hidden])?;
    let mut a = DeviceTensor::from_host(gpu, &super::random_bf16(hidden, 9), &[1, hidden])?;
    let (mut residual, mut out) = (row(hidden, DType::BF16)?, row(hidden, DType::BF16)?);
    let (mut gu, mut act) = (row(2 * inter, DType::BF16)?, row(inter, DType::BF16)?);
    let (mut xq, mut aq) = (row(hidden, DType::I8)?, row(inter, DType::I8)?);
    let scale = || DeviceTensor::zeros(gpu, &[1], DType::F32);
    let (mut xs, mut as_) = (scale()?, scale()?);
    let mut scratch = DecodeMlpScratch::new(gpu)?;
    let eps = 1e-6;
    let mut i = 0;
    let fused = time_gpu(gpu, plan, || {
        i ^= 1;
        let b = &blocks[i];
        let w = DecodeMlpWeights {
            norm: &b.norm,
            gate_up: &b.gate_up,
            gate_up_scales: &b.gate_up_scales,
            down: &b.down,
            down_scales: &b.down_scales,
            eps,
        };
        ops::decode_mlp_w8a8_into(gpu, &x, &mut residual, &w, &mut act, &mut scratch, &mut out)
    })?;
    let unfused = time_gpu(gpu, plan, || {
        i ^= 1;
        let b = &blocks[i];
        ops::fused_add_rms_norm_quant(gpu, &mut a, &mut residual, &b.norm, eps, &mut xq, &mut xs)?;
        ops::int8_scaled_mm_into(gpu, &xq, &b.gate_up, &xs, &b.gate_up_scales, None, &mut gu, None)?;
        ops::silu_and_mul_quant_into(gpu, &gu, &mut act, &mut aq, &mut as_)?;
        ops::int8_scaled_mm_into(gpu, &aq, &b.down, &as_, &b.down_scales, None, &mut out, None)
    })?;
    let weight_bytes = 3 * hidden * inter;
    let gbps = |us: f64| weight_bytes as f64 / us / 1e3;
    Ok(DecodeMlpRow {
        hidden,
        inter,
        weight_bytes,
        fused_us: fused.median_us,
        unfused_us: unfused.median_us,
        fused_gbps: gbps(fused.median_us),
        unfused_gbps: gbps(unfused.median_us),
        copy_gbps: copy_bandwidth(gpu, weight_bytes, plan)?,
    })
}
