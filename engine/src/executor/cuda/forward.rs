//! One forward pass on the GPU, op by op as the CPU decoder does it: embedding → per layer
//! (fused add+RMSNorm, qkv GEMM, q/k norm + RoPE fused with the KV store, paged attention, o GEMM,
//! fused add+RMSNorm, gate/up GEMM, SiLU-and-mul, down GEMM) → final norm on the logit rows →
//! LM-head GEMM with f32 output. A Qwen3-VL step also splices image rows into the embeddings,
//! rotates by per-token M-RoPE rows and adds deepstack features after the first layers.

use mllm_kernel::ops::{self, QkHeads, QkNormRope, RopeStoreOut, Scatter};
use mllm_kernel::profile::OpProfiler;
use mllm_kernel::staging::{Staging, Upload};
use mllm_kernel::{DeviceTensor, Gpu};

use super::attention::{Attention, BatchLayout, Plan};
use super::fused_mlp::MlpRow;
use super::prefetch::L2Prefetch;
use super::visual::DeviceVisual;
use super::weights::{GpuLayer, GpuLinear, GpuWeights, LinearInput};
use super::Dims;
use crate::executor::forward_batch::ForwardBatch;
use crate::models::{ModelError, Result};

/// The batch's per-token inputs on the host.
pub(super) struct HostInputs {
    pub ids: Vec<i32>,
    pub positions: Vec<i32>,
    pub out_loc: Vec<i32>,
    /// Rows of the last hidden state that get logits.
    pub logit_rows: Vec<i32>,
}

/// The same on the GPU, uploaded once per forward (or written into a captured graph's
/// fixed buffers).
pub(super) struct StepInputs {
    pub ids: DeviceTensor,
    pub positions: DeviceTensor,
    pub out_loc: DeviceTensor,
    /// Rows of the last hidden state that get logits; `None` when every row does in order
    /// (decode), so the final norm and LM head run on the hidden state itself.
    pub logit_rows: Option<DeviceTensor>,
    /// Qwen3-VL: per-token rotary rows (`positions` then index them) instead of the model's
    /// 1-D table, and image rows; never set in a graph.
    pub rope: Option<DeviceTensor>,
    pub visual: Option<DeviceVisual>,
}

pub(super) fn to_i32(what: &str, v: impl IntoIterator<Item = usize>) -> Result<Vec<i32>> {
    v.into_iter()
        .map(|x| i32::try_from(x).map_err(|_| ModelError::Invalid(format!("{what} value {x} exceeds i32"))))
        .collect()
}

impl HostInputs {
    /// Bytes its vectors take in a [`Staging`] upload.
    pub fn staged_bytes(&self) -> usize {
        let rows = if self.logits_every_row() {
            0
        } else {
            self.logit_rows.len()
        };
        Staging::bytes_for(&[self.ids.len(), self.positions.len(), self.out_loc.len(), rows].map(|n| 4 * n))
    }

    /// Whether every token's row gets logits, in order (a decode batch, padded or not).
    pub fn logits_every_row(&self) -> bool {
        self.logit_rows.len() == self.ids.len() && self.logit_rows.iter().enumerate().all(|(i, &r)| r as usize == i)
    }

    pub fn of(batch: &ForwardBatch) -> Result<Self> {
        Ok(Self {
            ids: to_i32("token id", batch.input_ids.iter().map(|&i| i as usize))?,
            positions: to_i32("position", batch.positions.iter().copied())?,
            out_loc: to_i32("KV slot", batch.out_cache_loc.iter().map(|&s| s as usize))?,
            logit_rows: to_i32("logit row", batch.logit_rows())?,
        })
    }

    /// A decode batch padded to `size` rows: the padding rows read token 0 at position 0 and
    /// write their K/V to the padding slot 0.
    pub fn padded(mut self, size: usize) -> Self {
        let n = self.ids.len();
        self.ids.resize(size, 0);
        self.positions.resize(size, 0);
        self.out_loc.resize(size, 0);
        self.logit_rows.extend(n as i32..size as i32);
        self
    }
}

impl StepInputs {
    /// New buffers holding `h`, filled through the page-locked upload `up`
    /// ([`HostInputs::staged_bytes`] of it).
    pub fn stage(up: &mut Upload, h: &HostInputs) -> Result<Self> {
        let mut vector = |v: &[i32]| up.tensor(v, &[v.len()]);
        Ok(Self {
            ids: vector(&h.ids)?,
            positions: vector(&h.positions)?,
            out_loc: vector(&h.out_loc)?,
            logit_rows: (!h.logits_every_row()).then(|| vector(&h.logit_rows)).transpose()?,
            rope: None,
            visual: None,
        })
    }

    /// Overwrites the buffers with `h` (same lengths) through a page-locked upload. Inputs
    /// staged with every row getting logits take only inputs that have them so.
    pub fn write(&mut self, up: &mut Upload, h: &HostInputs) -> Result<()> {
        up.write(&mut self.ids, &h.ids)?;
        up.write(&mut self.positions, &h.positions)?;
        up.write(&mut self.out_loc, &h.out_loc)?;
        match &mut self.logit_rows {
            Some(rows) => up.write(rows, &h.logit_rows)?,
            None if h.logits_every_row() => {}
            None => {
                return Err(ModelError::Invalid(
                    "a step that takes logits at every row cannot be rewritten with a subset of rows".into(),
                ))
            }
        }
        Ok(())
    }
}

/// Runs the model over `inputs` with the attention `plan` made for `layout`; writes f32 logits
/// `[rows, vocab]` into `logits`. Launches only (no host sync, no allocation outside the
/// stream-ordered pool), so a decode step can be captured in a CUDA graph. `prof` (off inside
/// a capture) charges GPU time to each op.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward_into(
    gpu: &Gpu,
    dims: &Dims,
    w: &GpuWeights,
    kv: &mut [(DeviceTensor, DeviceTensor)],
    (attn, plan, layout): (&Attention, &Plan, &BatchLayout),
    inputs: &StepInputs,
    logits: &mut DeviceTensor,
    prof: &OpProfiler,
) -> Result<()> {
    let t = inputs.ids.numel();
    let dt = w.embed.dtype();
    prof.begin(gpu)?;
    let logit_rows = inputs.logit_rows.as_ref().map(DeviceTensor::numel);
    let mut acts = Activations::new(gpu, dims, w, (t, logit_rows), dt)?;
    ops::embedding_into(gpu, &inputs.ids, &w.embed, &mut acts.residual, None)?;
    if let Some(v) = &inputs.visual {
        ops::scatter_rows_into(gpu, &v.rows, &v.embeddings, &mut acts.residual, Scatter::Replace, None)?;
    }
    let cos_sin = inputs.rope.as_ref().unwrap_or(&w.cos_sin);
    let first = w
        .layers
        .first()
        .ok_or_else(|| ModelError::Invalid("model has no layers".into()))?;
    ops::rms_norm_into(gpu, &acts.residual, &first.input_norm, dims.eps, &mut acts.h)?;
    prof.mark(gpu, "embed+norm")?;
    for (i, (layer, (k_cache, v_cache))) in w.layers.iter().zip(kv.iter_mut()).enumerate() {
        let h_quantized = i > 0
            && add_norm(
                gpu,
                dims,
                (&mut acts.h, &mut acts.residual),
                &layer.input_norm,
                &layer.qkv,
                &mut acts.hidden_q,
                prof,
            )?;
        let cache = (k_cache, v_cache);
        let step = (attn, plan, layout);
        let with_prefetch = (layer, &w.l2_prefetch);
        self_attention(
            gpu,
            dims,
            with_prefetch,
            cache,
            cos_sin,
            step,
            inputs,
            (&mut acts, h_quantized),
            prof,
        )?;
        if !fused_mlp(gpu, dims, w, layer, &mut acts, prof)? {
            let a_quantized = add_norm(
                gpu,
                dims,
                (&mut acts.a, &mut acts.residual),
                &layer.post_norm,
                &layer.gate_up,
                &mut acts.hidden_q,
                prof,
            )?;
            mlp(gpu, layer, (&mut acts, a_quantized), prof)?;
        }
        // Qwen3-VL deepstack: the layer's output (residual + h) gains level i at the image rows.
        if let Some((v, d)) = inputs.visual.as_ref().and_then(|v| Some((v, v.deepstack.get(i)?))) {
            ops::scatter_rows_into(gpu, &v.rows, d, &mut acts.h, Scatter::Add, None)?;
            prof.mark(gpu, "deepstack")?;
        }
    }
    // Final norm and LM head on the logit rows only (gathered like an embedding lookup),
    // in place when every row gets logits.
    let (hr, rr) = match (&inputs.logit_rows, &mut acts.logit_rows) {
        (Some(rows), Some((hr, rr))) => {
            ops::embedding_into(gpu, rows, &acts.h, hr, None)?;
            ops::embedding_into(gpu, rows, &acts.residual, rr, None)?;
            (hr, rr)
        }
        _ => (&mut acts.h, &mut acts.residual),
    };
    ops::fused_add_rms_norm(gpu, hr, rr, &w.norm, dims.eps)?;
    prof.mark(gpu, "final_norm")?;
    ops::linear_into(gpu, hr, w.lm_head(), None, logits)?;
    prof.mark(gpu, "lm_head")?;
    Ok(())
}

/// `residual += x; x = rms_norm(residual) * w` in place; when `next` is a W8A8 layer the same
/// kernel also quantizes `x` per token for it into `xq` (saving a quantization kernel), and
/// the result says so.
fn add_norm(
    gpu: &Gpu,
    dims: &Dims,
    (x, residual): (&mut DeviceTensor, &mut DeviceTensor),
    w: &DeviceTensor,
    next: &GpuLinear,
    xq: &mut Option<RowsInt8>,
    prof: &OpProfiler,
) -> Result<bool> {
    match xq.as_mut().filter(|_| next.is_int8()) {
        Some((q, scales)) => {
            ops::fused_add_rms_norm_quant(gpu, x, residual, w, dims.eps, q, scales)?;
            prof.mark(gpu, "add_rms_norm_quant")?;
            Ok(true)
        }
        None => {
            ops::fused_add_rms_norm(gpu, x, residual, w, dims.eps)?;
            prof.mark(gpu, "add_rms_norm")?;
            Ok(false)
        }
    }
}

/// `x` as a linear layer's input: its int8 form in `xq` when the kernel before made one,
/// else the float rows (with `xq` as the buffer a W8A8 layer quantizes them into).
fn linear_input<'a>(
    x: &'a DeviceTensor,
    xq: &'a mut Option<RowsInt8>,
    quantized: bool,
) -> (LinearInput<'a>, Option<(&'a mut DeviceTensor, &'a mut DeviceTensor)>) {
    match (xq, quantized) {
        (Some((q, s)), true) => (LinearInput::Int8(q, s), None),
        (Some((q, s)), false) => (LinearInput::Float(x), Some((q, s))),
        (None, _) => (LinearInput::Float(x), None),
    }
}

/// q/k norm + RoPE + KV store, paged attention and o_proj over the normalized input in
/// `acts.h` (or its int8 form, `quantized`); writes o_proj's output into `acts.a`.
#[allow(clippy::too_many_arguments)]
fn self_attention(
    gpu: &Gpu,
    dims: &Dims,
    (layer, prefetch): (&GpuLayer, &L2Prefetch),
    (k_cache, v_cache): (&mut DeviceTensor, &mut DeviceTensor),
    cos_sin: &DeviceTensor,
    (attn, plan, layout): (&Attention, &Plan, &BatchLayout),
    inputs: &StepInputs,
    (acts, quantized): (&mut Activations, bool),
    prof: &OpProfiler,
) -> Result<()> {
    let t = inputs.ids.numel();
    let (nh, nkv, d) = (dims.num_heads, dims.num_kv_heads, dims.head_dim);
    let (x, scratch) = linear_input(&acts.h, &mut acts.hidden_q, quantized);
    layer.qkv.forward_into(gpu, x, scratch, &mut acts.qkv)?;
    prof.mark(gpu, "qkv_proj")?;
    if !prefetch.is_off() {
        prefetch.issue(gpu, t, layer)?;
        prof.mark(gpu, "l2_prefetch")?;
    }
    let args = QkNormRope {
        heads: QkHeads::packed_qkv(nh, nkv, d),
        positions: &inputs.positions,
        cos_sin,
        q_norm: layer.qk_norm.as_ref().map(|(q, _)| q),
        k_norm: layer.qk_norm.as_ref().map(|(_, k)| k),
        eps: dims.eps,
    };
    // q/k norm + RoPE, the K/V store and the q copy in one kernel.
    let out = RopeStoreOut {
        q_out: &mut acts.q,
        k_cache,
        v_cache,
        out_loc: &inputs.out_loc,
    };
    ops::qk_norm_rope_store(gpu, &acts.qkv, &args, out)?;
    prof.mark(gpu, "qk_norm_rope_store")?;
    acts.attn.reshape_in_place(&[t, nh, d])?;
    attn.run(gpu, (plan, layout), &acts.q, (k_cache, v_cache), &mut acts.attn)?;
    prof.mark(gpu, "attention")?;
    acts.attn.reshape_in_place(&[t, nh * d])?;
    let (x, scratch) = linear_input(&acts.attn, &mut acts.attn_q, false);
    layer.o.forward_into(gpu, x, scratch, &mut acts.a)?;
    prof.mark(gpu, "o_proj")?;
    Ok(())
}

/// gate/up GEMM, SiLU-and-mul (quantizing for a W8A8 down projection in the same kernel),
/// down GEMM, over the normalized `acts.a` (or its int8 form, `quantized`); writes the down
/// projection's output into `acts.h`.
fn mlp(gpu: &Gpu, layer: &GpuLayer, (acts, quantized): (&mut Activations, bool), prof: &OpProfiler) -> Result<()> {
    let (x, scratch) = linear_input(&acts.a, &mut acts.hidden_q, quantized);
    layer.gate_up.forward_into(gpu, x, scratch, &mut acts.gate_up)?;
    prof.mark(gpu, "gate_up_proj")?;
    let act_quantized = match acts.act_q.as_mut().filter(|_| layer.down.is_int8()) {
        Some((q, scales)) => {
            ops::silu_and_mul_quant_into(gpu, &acts.gate_up, &mut acts.act, q, scales)?;
            true
        }
        None => {
            ops::silu_and_mul_into(gpu, &acts.gate_up, &mut acts.act)?;
            false
        }
    };
    prof.mark(gpu, "silu_and_mul")?;
    let (x, scratch) = linear_input(&acts.act, &mut acts.act_q, act_quantized);
    layer.down.forward_into(gpu, x, scratch, &mut acts.h)?;
    prof.mark(gpu, "down_proj")?;
    Ok(())
}

/// The post-attention norm and the MLP as one kernel (`fused_mlp`), when the step has one
/// row and the layer qualifies: reads o_proj's output in `acts.a`, updates the residual and
/// writes the down projection's output into `acts.h`, as `add_norm` + `mlp` do. `false` when
/// it did not run.
fn fused_mlp(
    gpu: &Gpu,
    dims: &Dims,
    w: &GpuWeights,
    layer: &GpuLayer,
    acts: &mut Activations,
    prof: &OpProfiler,
) -> Result<bool> {
    let Some(fused) = w.fused_mlp.as_ref().filter(|_| acts.h.shape().first() == Some(&1)) else {
        return Ok(false);
    };
    let row = MlpRow {
        x: &acts.a,
        residual: &mut acts.residual,
        act: &mut acts.act,
        out: &mut acts.h,
    };
    let ran = fused.run(gpu, layer, dims.eps, row)?;
    if ran {
        prof.mark(gpu, "decode_mlp")?;
    }
    Ok(ran)
}

/// Per-token int8 rows `[T, K]` and their f32 scales `[T]`.
type RowsInt8 = (DeviceTensor, DeviceTensor);

/// Every activation buffer of one forward, allocated before its first kernel and reused by
/// each layer. Inside a CUDA-graph capture a stream-ordered allocation or free becomes a
/// memory node, and a kernel behind one cannot launch early behind the kernel before it
/// (programmatic dependent launch): per-op allocations put one between almost every two
/// kernels of the decode graph.
struct Activations {
    /// The residual stream (the embeddings, then each layer's sum).
    residual: DeviceTensor,
    /// The layer's normalized input; the down projection writes the next layer's input here.
    h: DeviceTensor,
    /// The fused q/k/v projection `[T, (heads + 2 kv heads) * head_dim]`.
    qkv: DeviceTensor,
    /// Rotated q `[T, heads, head_dim]`.
    q: DeviceTensor,
    /// Attention's output (o_proj's input), `[T, heads * head_dim]` between layers.
    attn: DeviceTensor,
    /// o_proj's output, normalized in place for the MLP.
    a: DeviceTensor,
    gate_up: DeviceTensor,
    act: DeviceTensor,
    /// int8 forms (W8A8 layers only): of a hidden-sized input (`h` or `a`), of attention's
    /// output, of the SiLU-and-mul output.
    hidden_q: Option<RowsInt8>,
    attn_q: Option<RowsInt8>,
    act_q: Option<RowsInt8>,
    /// The logit rows of `h` and `residual`, when only some rows get logits.
    logit_rows: Option<(DeviceTensor, DeviceTensor)>,
}

impl Activations {
    /// For `t` tokens, of which `logit_rows` (when not all) get logits.
    fn new(
        gpu: &Gpu,
        dims: &Dims,
        w: &GpuWeights,
        (t, logit_rows): (usize, Option<usize>),
        dt: mllm_kernel::DType,
    ) -> Result<Self> {
        let (nh, nkv, d) = (dims.num_heads, dims.num_kv_heads, dims.head_dim);
        let empty = |cols: usize| DeviceTensor::empty(gpu, &[t, cols], dt);
        let any_int8 = |f: fn(&GpuLayer) -> &GpuLinear| w.layers.iter().any(|l| f(l).is_int8());
        let int8_rows = |needed: bool, cols: usize| -> Result<Option<RowsInt8>> {
            if !needed {
                return Ok(None);
            }
            let q = DeviceTensor::empty(gpu, &[t, cols], mllm_kernel::DType::I8)?;
            Ok(Some((q, DeviceTensor::empty(gpu, &[t], mllm_kernel::DType::F32)?)))
        };
        let hidden_int8 = any_int8(|l| &l.qkv) || any_int8(|l| &l.gate_up);
        Ok(Self {
            residual: empty(dims.hidden)?,
            h: empty(dims.hidden)?,
            qkv: empty((nh + 2 * nkv) * d)?,
            q: DeviceTensor::empty(gpu, &[t, nh, d], dt)?,
            attn: empty(nh * d)?,
            a: empty(dims.hidden)?,
            gate_up: empty(2 * dims.intermediate)?,
            act: empty(dims.intermediate)?,
            hidden_q: int8_rows(hidden_int8, dims.hidden)?,
            attn_q: int8_rows(any_int8(|l| &l.o), nh * d)?,
            act_q: int8_rows(any_int8(|l| &l.down), dims.intermediate)?,
            logit_rows: logit_rows
                .map(|r| -> Result<_> {
                    let rows = || DeviceTensor::empty(gpu, &[r, dims.hidden], dt);
                    Ok((rows()?, rows()?))
                })
                .transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(tokens: usize, logit_rows: &[i32]) -> HostInputs {
        HostInputs {
            ids: vec![7; tokens],
            positions: (0..tokens as i32).collect(),
            out_loc: (0..tokens as i32).collect(),
            logit_rows: logit_rows.to_vec(),
        }
    }

    #[test]
    fn logits_at_every_row_only_for_all_rows_in_order() {
        assert!(inputs(3, &[0, 1, 2]).logits_every_row());
        assert!(!inputs(3, &[2]).logits_every_row());
        assert!(!inputs(3, &[1, 0, 2]).logits_every_row());
        assert!(!inputs(3, &[0, 1]).logits_every_row());
        // A decode batch stays so when padded for a graph; the rows are not staged.
        let padded = inputs(2, &[0, 1]).padded(4);
        assert!(padded.logits_every_row());
        assert_eq!(padded.staged_bytes(), inputs(4, &[0, 1, 2, 3]).staged_bytes());
        assert!(inputs(4, &[3]).staged_bytes() > padded.staged_bytes());
    }
}
