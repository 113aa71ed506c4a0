//! [`CudaVisionTower`]: the Qwen3-VL vision tower on the GPU, built from mllm-kernel ops —
//! cuBLAS patch embedding and linears, LayerNorm fused with each residual add, 2-D rotary
//! through the RoPE kernel with per-patch rows, dense attention within each frame, GELU — in
//! the text decoder's compute dtype. The learned position table is resampled on the host (a
//! few taps per patch) and the per-patch rotary angles computed there, like the CPU tower.

use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use mllm_kernel::ops::{self, Gelu, QkHeads, QkNormRope, Scatter};
use mllm_kernel::profile::OpProfiler;
use mllm_kernel::{DeviceTensor, Gpu};

use super::weights::kernel_dtype;
use crate::models::qwen3_vl::{
    frame_bounds, patch_coords, MergerWeights, VisionAct, VisionEncoder, VisionLayerNorm, VisionLinear, VisionOutput,
    VisionRotary, VisionTower,
};
use crate::models::Result;
use crate::multimodal::ImagePatches;
use crate::tensor::{DType, Tensor};

/// LayerNorm epsilon of the Qwen3-VL vision tower (HF's `nn.LayerNorm(eps=1e-6)`).
const LN_EPS: f32 = 1e-6;

struct Linear {
    weight: DeviceTensor,
    bias: DeviceTensor,
}

struct Norm {
    weight: DeviceTensor,
    bias: DeviceTensor,
}

struct Block {
    norm1: Norm,
    norm2: Norm,
    qkv: Linear,
    proj: Linear,
    fc1: Linear,
    fc2: Linear,
}

struct Merger {
    norm: Norm,
    fc1: Linear,
    fc2: Linear,
    post_shuffle: bool,
}

/// The vision tower resident on a GPU; the host tower keeps the config, the position table
/// and the input checks.
pub struct CudaVisionTower {
    gpu: Arc<Gpu>,
    host: Arc<VisionTower>,
    dtype: DType,
    patch_embed: Linear,
    blocks: Vec<Block>,
    merger: Merger,
    deepstack: Vec<Merger>,
    /// Per-op GPU time of tower forwards (`MLLM_CUDA_PROFILE=1`).
    prof: Mutex<OpProfiler>,
}

impl std::fmt::Debug for CudaVisionTower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaVisionTower({} blocks, {})", self.blocks.len(), self.dtype)
    }
}

impl CudaVisionTower {
    /// Uploads `tower`'s parameters in `dtype` (bf16 or f16).
    pub fn upload(gpu: Arc<Gpu>, tower: Arc<VisionTower>, dtype: DType) -> Result<Self> {
        let kd = kernel_dtype(dtype)?;
        let up = |t: &Tensor| -> Result<DeviceTensor> {
            let t = t.to_dtype(dtype)?;
            Ok(DeviceTensor::from_bytes(&gpu, t.as_bytes(), t.shape(), kd)?)
        };
        let up_f32 = |v: &[f32]| -> Result<DeviceTensor> { up(&Tensor::from_vec(v.to_vec(), &[v.len()])?) };
        let linear = |l: &VisionLinear| -> Result<Linear> {
            Ok(Linear {
                weight: up(&l.weight)?,
                bias: up(&l.bias)?,
            })
        };
        let norm = |n: &VisionLayerNorm| -> Result<Norm> {
            Ok(Norm {
                weight: up_f32(&n.weight)?,
                bias: up_f32(&n.bias)?,
            })
        };
        let merger = |m: &MergerWeights| -> Result<Merger> {
            Ok(Merger {
                norm: norm(&m.norm)?,
                fc1: linear(&m.fc1)?,
                fc2: linear(&m.fc2)?,
                post_shuffle: m.post_shuffle,
            })
        };
        let w = tower.weights();
        let blocks = w
            .blocks
            .iter()
            .map(|b| {
                Ok(Block {
                    norm1: norm(&b.norm1)?,
                    norm2: norm(&b.norm2)?,
                    qkv: linear(&b.qkv)?,
                    proj: linear(&b.proj)?,
                    fc1: linear(&b.fc1)?,
                    fc2: linear(&b.fc2)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            patch_embed: linear(&w.patch_embed)?,
            blocks,
            merger: merger(&w.merger)?,
            deepstack: w.deepstack.iter().map(merger).collect::<Result<_>>()?,
            dtype,
            host: tower,
            gpu,
            prof: Mutex::new(OpProfiler::from_env()),
        })
    }

    /// Uploads a host tensor in the compute dtype; f32 inputs (pixels, position rows) are
    /// converted on all cores (a 448x448 image is 1.2 M pixel values).
    fn upload_host(&self, t: &Tensor) -> Result<DeviceTensor> {
        if let (DType::F32, DType::BF16 | DType::F16) = (t.dtype(), self.dtype) {
            let v = t.as_slice::<f32>()?;
            return Ok(match self.dtype {
                DType::F16 => {
                    let h: Vec<half::f16> = v.par_iter().map(|&x| half::f16::from_f32(x)).collect();
                    DeviceTensor::from_host(&self.gpu, &h, t.shape())?
                }
                _ => {
                    let h: Vec<half::bf16> = v.par_iter().map(|&x| half::bf16::from_f32(x)).collect();
                    DeviceTensor::from_host(&self.gpu, &h, t.shape())?
                }
            });
        }
        let t = t.to_dtype(self.dtype)?;
        Ok(DeviceTensor::from_bytes(
            &self.gpu,
            t.as_bytes(),
            t.shape(),
            kernel_dtype(self.dtype)?,
        )?)
    }

    fn linear(&self, x: &DeviceTensor, l: &Linear) -> Result<DeviceTensor> {
        Ok(ops::linear(&self.gpu, x, &l.weight, Some(&l.bias))?)
    }

    /// LayerNorm of `x` (`residual += x` first when given).
    fn norm(&self, x: &DeviceTensor, residual: Option<&mut DeviceTensor>, n: &Norm) -> Result<DeviceTensor> {
        let mut out = DeviceTensor::empty(&self.gpu, x.shape(), x.dtype())?;
        ops::layer_norm_into(&self.gpu, x, residual, &n.weight, &n.bias, LN_EPS, &mut out)?;
        Ok(out)
    }

    /// Patch merger over the stream `h` `[n, d]` (pending: an MLP output not yet added;
    /// `iota`: the row ids `0..n` the row scatter adds through).
    fn merge(
        &self,
        m: &Merger,
        h: &mut DeviceTensor,
        pending: Option<DeviceTensor>,
        iota: &DeviceTensor,
    ) -> Result<DeviceTensor> {
        let cfg = self.host.config();
        let (n, d, unit) = (h.shape()[0], cfg.hidden_size, cfg.merge_unit());
        let x = if m.post_shuffle {
            if let Some(p) = pending {
                ops::scatter_rows_into(&self.gpu, iota, &p, h, Scatter::Add, None)?;
            }
            let grouped = std::mem::replace(h, DeviceTensor::empty(&self.gpu, &[0, d], h.dtype())?);
            let grouped = grouped.reshape(&[n / unit, d * unit])?;
            let out = self.norm(&grouped, None, &m.norm);
            *h = grouped.reshape(&[n, d])?;
            out?
        } else {
            let normed = match pending {
                Some(p) => self.norm(&p, Some(h), &m.norm)?,
                None => self.norm(h, None, &m.norm)?,
            };
            normed.reshape(&[n / unit, d * unit])?
        };
        let mut x = self.linear(&x, &m.fc1)?;
        ops::gelu_inplace(&self.gpu, &mut x, Gelu::Erf)?;
        self.linear(&x, &m.fc2)
    }

    fn to_host(&self, t: &DeviceTensor) -> Result<Tensor> {
        let shape = t.shape().to_vec();
        Ok(match self.dtype {
            DType::F16 => Tensor::from_vec(t.to_host::<half::f16>(&self.gpu)?, &shape)?,
            _ => Tensor::from_vec(t.to_host::<half::bf16>(&self.gpu)?, &shape)?,
        })
    }

    /// The tower over `images` (one batch), split back per image like
    /// [`VisionTower::forward_each`].
    pub fn forward_each(&self, images: &[&ImagePatches]) -> Result<Vec<VisionOutput>> {
        let prof = self.prof.lock().unwrap_or_else(|e| e.into_inner());
        prof.begin(&self.gpu)?;
        let out = self.forward_profiled(images, &prof);
        prof.end()?;
        out
    }

    /// The per-op GPU time report of tower forwards, when `MLLM_CUDA_PROFILE=1`.
    pub fn profile_report(&self) -> Option<String> {
        let prof = self.prof.lock().unwrap_or_else(|e| e.into_inner());
        prof.enabled().then(|| prof.report())
    }

    fn forward_profiled(&self, images: &[&ImagePatches], prof: &OpProfiler) -> Result<Vec<VisionOutput>> {
        let cfg = self.host.config();
        let (pixels, grids) = self.host.stack(images)?;
        let n = pixels.shape()[0];
        let (d, heads, hd, merge) = (cfg.hidden_size, cfg.num_heads, cfg.head_dim(), cfg.spatial_merge_size);
        let gpu = &self.gpu;
        // Patch embedding, plus the resampled position table (HF rounds the sum once).
        let mut h = self.linear(&self.upload_host(&pixels)?, &self.patch_embed)?;
        let pos = self.upload_host(&self.host.position_embeddings(&grids)?)?;
        let iota: Vec<i32> = (0..n as i32).collect();
        let iota = DeviceTensor::from_host(gpu, &iota, &[n])?;
        ops::scatter_rows_into(gpu, &iota, &pos, &mut h, Scatter::Add, None)?;
        // Per-patch rotary rows in the RoPE kernel's layout: cos of the d/2 angles, then sin.
        let coords: Vec<(usize, usize)> = grids.iter().flat_map(|g| patch_coords(*g, merge)).collect();
        let rot = VisionRotary::new(&coords, hd, cfg.rope_parameters.rope_theta);
        let table = rot.kernel_table();
        let cos_sin = DeviceTensor::from_host(gpu, &table, &[n, hd])?;
        let bounds = frame_bounds(&grids);
        prof.mark(gpu, "vision.inputs")?;
        let act = match cfg.hidden_act {
            VisionAct::GeluTanh => Gelu::Tanh,
            VisionAct::GeluErf => Gelu::Erf,
        };
        let mut pending: Option<DeviceTensor> = None;
        let mut deepstack = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            let x = match pending.take() {
                Some(p) => self.norm(&p, Some(&mut h), &b.norm1)?,
                None => self.norm(&h, None, &b.norm1)?,
            };
            let mut qkv = self.linear(&x, &b.qkv)?;
            prof.mark(gpu, "vision.norm1+qkv")?;
            let rope = QkNormRope {
                heads: QkHeads {
                    q_col: 0,
                    q_heads: heads,
                    k_col: d,
                    k_heads: heads,
                    head_dim: hd,
                },
                positions: &iota,
                cos_sin: &cos_sin,
                q_norm: None,
                k_norm: None,
                eps: 0.0,
            };
            ops::qk_norm_rope(gpu, &mut qkv, &rope)?;
            prof.mark(gpu, "vision.rope")?;
            let mut attn = DeviceTensor::empty(gpu, &[n, d], qkv.dtype())?;
            ops::segment_attention_into(gpu, &qkv, heads, &bounds, (hd as f32).powf(-0.5), &mut attn)?;
            prof.mark(gpu, "vision.attention")?;
            let o = self.linear(&attn, &b.proj)?;
            let x = self.norm(&o, Some(&mut h), &b.norm2)?;
            prof.mark(gpu, "vision.proj+norm2")?;
            let mut f = self.linear(&x, &b.fc1)?;
            ops::gelu_inplace(gpu, &mut f, act)?;
            pending = Some(self.linear(&f, &b.fc2)?);
            prof.mark(gpu, "vision.mlp")?;
            if let Some(j) = cfg.deepstack_visual_indexes.iter().position(|&k| k == i) {
                deepstack.push(self.merge(&self.deepstack[j], &mut h, pending.take(), &iota)?);
                prof.mark(gpu, "vision.mergers")?;
            }
        }
        let embeddings = self.merge(&self.merger, &mut h, pending, &iota)?;
        prof.mark(gpu, "vision.mergers")?;
        let out = VisionOutput {
            embeddings: self.to_host(&embeddings)?,
            deepstack: deepstack.iter().map(|t| self.to_host(t)).collect::<Result<_>>()?,
        };
        prof.mark(gpu, "vision.download")?;
        out.split(&grids, cfg.merge_unit())
    }
}

impl VisionEncoder for CudaVisionTower {
    fn encode(&self, images: &[&ImagePatches]) -> Result<Vec<VisionOutput>> {
        self.forward_each(images)
    }

    fn profile_report(&self) -> Option<String> {
        CudaVisionTower::profile_report(self)
    }
}
