//! Uploading a loaded [`TextDecoder`]'s parameters to one GPU in the compute dtype.

use indicatif::{ProgressBar, ProgressStyle};
use mllm_kernel::{DeviceTensor, Gpu};

use super::fused_mlp::FusedMlp;
use super::prefetch::L2Prefetch;
use crate::layers::linear::Linear;
use crate::layers::norm::RmsNorm;
use crate::models::{LayerParams, ModelError, Result, TextDecoder};
use crate::tensor::{DType, Tensor};

/// A linear layer on the GPU: `[N, K]` weight and optional `[N]` bias.
pub(super) struct GpuLinear {
    pub weight: DeviceTensor,
    pub bias: Option<DeviceTensor>,
    /// W8A8: the weight is int8 with these f32 per-channel scales `[N]`, and activations are
    /// quantized per token at run time (the W8A8 scheme's layout after loading).
    pub int8_scales: Option<DeviceTensor>,
}

/// What a linear layer reads: float rows, or (for a W8A8 layer) their per-token int8
/// quantization `(q [T, K], scales [T])` made by the kernel before it.
#[derive(Clone, Copy)]
pub(super) enum LinearInput<'a> {
    Float(&'a DeviceTensor),
    Int8(&'a DeviceTensor, &'a DeviceTensor),
}

impl GpuLinear {
    /// Whether the layer is W8A8 (wants [`LinearInput::Int8`]).
    pub fn is_int8(&self) -> bool {
        self.int8_scales.is_some()
    }

    /// `out = x · Wᵀ (+ b)` in the activations' dtype: cuBLAS or `stream_linear` for float
    /// weights; `int8_scaled_mm` for W8A8, quantizing float input per token first into
    /// `scratch` (`[T, K]` i8 rows and `[T]` f32 scales; needed only for that case).
    pub fn forward_into(
        &self,
        gpu: &Gpu,
        x: LinearInput<'_>,
        scratch: Option<(&mut DeviceTensor, &mut DeviceTensor)>,
        out: &mut DeviceTensor,
    ) -> Result<()> {
        use mllm_kernel::ops;
        let bias = self.bias.as_ref();
        match (&self.int8_scales, x) {
            (None, LinearInput::Float(x)) => ops::linear_into(gpu, x, &self.weight, bias, out)?,
            (Some(sw), LinearInput::Float(x)) => {
                let (q, sq) = scratch.ok_or_else(|| {
                    ModelError::Invalid("a W8A8 layer fed float rows needs a quantization buffer".into())
                })?;
                ops::int8_scaled_mm_dynamic_into(gpu, x, &self.weight, sw, bias, q, sq, out, None)?
            }
            (Some(sw), LinearInput::Int8(q, sq)) => {
                ops::int8_scaled_mm_into(gpu, q, &self.weight, sq, sw, bias, out, None)?
            }
            (None, LinearInput::Int8(..)) => {
                return Err(ModelError::Invalid(
                    "int8 activations fed to a float linear layer".into(),
                ))
            }
        }
        Ok(())
    }
}

/// One decoder layer's parameters on the GPU.
pub(super) struct GpuLayer {
    pub input_norm: DeviceTensor,
    pub qkv: GpuLinear,
    pub o: GpuLinear,
    pub qk_norm: Option<(DeviceTensor, DeviceTensor)>,
    pub post_norm: DeviceTensor,
    pub gate_up: GpuLinear,
    pub down: GpuLinear,
}

/// The whole model's parameters on the GPU.
pub(super) struct GpuWeights {
    pub embed: DeviceTensor,
    pub layers: Vec<GpuLayer>,
    pub norm: DeviceTensor,
    /// `None` when tied to the embedding.
    pub lm_head: Option<DeviceTensor>,
    /// `[max_pos, head_dim]` f32 RoPE table.
    pub cos_sin: DeviceTensor,
    /// Which weights decode steps prefetch into L2 during attention (`MLLM_L2_PREFETCH`).
    pub l2_prefetch: L2Prefetch,
    /// The one-kernel MLP block for one-row steps, where the model and GPU allow it.
    pub fused_mlp: Option<FusedMlp>,
}

impl GpuWeights {
    /// The LM-head weight (the embedding table when tied).
    pub fn lm_head(&self) -> &DeviceTensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
}

/// The dtype the GPU computes in: the weights' own half dtype, else bf16.
pub(super) fn compute_dtype(model: &dyn TextDecoder) -> DType {
    match model.embed_tokens().weight().dtype() {
        DType::F16 => DType::F16,
        _ => DType::BF16,
    }
}

/// Converts and uploads tensors, advancing a progress bar by bytes.
struct Uploader<'a> {
    gpu: &'a Gpu,
    dtype: DType,
    bar: ProgressBar,
}

impl Uploader<'_> {
    fn tensor(&self, t: &Tensor) -> Result<DeviceTensor> {
        let t = if t.dtype() == self.dtype {
            t.clone()
        } else {
            t.to_dtype(self.dtype)?
        };
        let kernel_dtype = kernel_dtype(self.dtype)?;
        let out = DeviceTensor::from_bytes(self.gpu, t.as_bytes(), t.shape(), kernel_dtype)?;
        self.bar.inc(t.as_bytes().len() as u64);
        Ok(out)
    }

    fn norm(&self, n: &RmsNorm) -> Result<DeviceTensor> {
        self.tensor(n.weight())
    }

    fn linear(&self, l: &Linear, what: &str) -> Result<GpuLinear> {
        let w = l.weights();
        let weight = w
            .get("weight")
            .ok_or_else(|| ModelError::Invalid(format!("{what} has no weight")))?;
        let bias = w.get("bias").map(|b| self.tensor(b)).transpose()?;
        if weight.dtype().is_float() && w.keys().all(|k| matches!(*k, "weight" | "bias")) {
            return Ok(GpuLinear {
                weight: self.tensor(weight)?,
                bias,
                int8_scales: None,
            });
        }
        // The W8A8 scheme's layout after loading, with dynamic per-token activations.
        let w8a8 = weight.dtype() == DType::I8 && w.keys().all(|k| matches!(*k, "weight" | "weight_scale" | "bias"));
        match w.get("weight_scale").filter(|s| s.dtype() == DType::F32) {
            Some(scales) if w8a8 => Ok(GpuLinear {
                weight: self.raw(weight)?,
                bias,
                int8_scales: Some(self.raw(scales)?),
            }),
            _ => Err(ModelError::Invalid(format!(
                "{what}: this quantized layout ({}) has no CUDA kernel (W8A8 with dynamic per-token \
                 activations has); use --device cpu",
                w.keys().copied().collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// Uploads a tensor as it is (int8 weights, f32 scales).
    fn raw(&self, t: &Tensor) -> Result<DeviceTensor> {
        let out = DeviceTensor::from_bytes(self.gpu, t.as_bytes(), t.shape(), kernel_dtype(t.dtype())?)?;
        self.bar.inc(t.as_bytes().len() as u64);
        Ok(out)
    }

    fn layer(&self, p: LayerParams<'_>, i: usize) -> Result<GpuLayer> {
        let name = |s: &str| format!("model.layers.{i}.{s}");
        Ok(GpuLayer {
            input_norm: self.norm(p.input_layernorm)?,
            qkv: self.linear(p.qkv_proj, &name("self_attn.qkv_proj"))?,
            o: self.linear(p.o_proj, &name("self_attn.o_proj"))?,
            qk_norm: p
                .qk_norm
                .map(|(q, k)| Ok::<_, ModelError>((self.norm(q)?, self.norm(k)?)))
                .transpose()?,
            post_norm: self.norm(p.post_attention_layernorm)?,
            gate_up: self.linear(p.gate_up_proj, &name("mlp.gate_up_proj"))?,
            down: self.linear(p.down_proj, &name("mlp.down_proj"))?,
        })
    }
}

/// The kernel library's name for an engine dtype.
pub(super) fn kernel_dtype(dtype: DType) -> Result<mllm_kernel::DType> {
    Ok(match dtype {
        DType::F32 => mllm_kernel::DType::F32,
        DType::BF16 => mllm_kernel::DType::BF16,
        DType::F16 => mllm_kernel::DType::F16,
        DType::I8 => mllm_kernel::DType::I8,
        DType::I32 => mllm_kernel::DType::I32,
        DType::I64 => return Err(ModelError::Invalid("i64 tensors have no GPU kernels".into())),
    })
}

/// Uploads every parameter of `model` in `dtype` (bf16/f16), with a progress bar on stderr;
/// the RoPE table covers `max_pos` positions. Reads `MLLM_L2_PREFETCH` first, so a bad value
/// fails before the upload.
pub(super) fn upload(gpu: &Gpu, model: &dyn TextDecoder, dtype: DType, max_pos: usize) -> Result<GpuWeights> {
    let l2_prefetch = L2Prefetch::from_env()?;
    let c = model.config();
    let tied = c.tie_word_embeddings;
    let floats: usize = model.embed_tokens().weight().numel()
        + if tied { 0 } else { model.lm_head().weight().numel() }
        + model
            .layers()
            .iter()
            .map(|l| {
                let p = l.params();
                [p.qkv_proj, p.o_proj, p.gate_up_proj, p.down_proj]
                    .iter()
                    .flat_map(|lin| lin.weights().values())
                    .map(Tensor::numel)
                    .sum::<usize>()
            })
            .sum::<usize>();
    let bar = ProgressBar::new((floats * dtype.size()) as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "mllm: uploading weights to GPU {bar:30} {binary_bytes}/{binary_total_bytes} ({eta})",
        )
        .expect("static template"),
    );
    let up = Uploader { gpu, dtype, bar };
    let embed = up.tensor(model.embed_tokens().weight())?;
    let layers = model
        .layers()
        .iter()
        .enumerate()
        .map(|(i, l)| up.layer(l.params(), i))
        .collect::<Result<Vec<_>>>()?;
    let lm_head = if tied {
        None
    } else {
        Some(up.tensor(model.lm_head().weight())?)
    };
    let norm = up.norm(model.norm())?;
    up.bar.finish_and_clear();
    let table = model.rope_table(max_pos);
    let cos_sin = DeviceTensor::from_host(gpu, &table, &[max_pos, c.head_dim])?;
    let fused_mlp = FusedMlp::for_model(gpu, &layers, (c.hidden_size, c.intermediate_size), kernel_dtype(dtype)?)?;
    Ok(GpuWeights {
        embed,
        layers,
        norm,
        lm_head,
        cos_sin,
        l2_prefetch,
        fused_mlp,
    })
}
