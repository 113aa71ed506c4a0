//! A Qwen3-VL step on the GPU text decoder: [`VisualStep`] gathers, for every sequence of a
//! batch, its tokens' 3-axis positions and the vision tower's rows of the image placeholders it
//! reaches, and turns them into what the forward reads — 1-D positions (with the request's rope
//! delta), a per-token rotary table when some token's three axes differ, and the image rows to
//! splice into the embeddings and to add after the deepstack layers.

use mllm_kernel::{DeviceTensor, Gpu};

use super::forward::to_i32;
use crate::executor::forward_batch::ForwardBatch;
use crate::models::qwen3_vl::{MropePos, VlFront, VlRequests};
use crate::models::{ModelError, Result};
use crate::tensor::{cat, DType, Tensor};

/// The image rows of a step, on the GPU.
pub(super) struct DeviceVisual {
    /// `[n]` i32 batch rows of the image tokens, ascending.
    pub rows: DeviceTensor,
    /// `[n, hidden]` merged patch embeddings (replace the placeholder embeddings).
    pub embeddings: DeviceTensor,
    /// Per deepstack level `k`, `[n, hidden]` added after decoder layer `k`.
    pub deepstack: Vec<DeviceTensor>,
}

/// One step's Qwen3-VL inputs on the host.
#[derive(Debug, Clone)]
pub struct VisualStep {
    /// Per token: its 1-D position, or (with `rope_rows`) its row in that table.
    pub(super) positions: Vec<i32>,
    /// `[T, head_dim]` rotary rows, when some token's three axes differ.
    rope_rows: Option<Vec<f32>>,
    /// Batch rows of image tokens, with their embeddings and deepstack rows, one piece per
    /// sequence (in the tower's dtype; concatenated at upload).
    rows: Vec<i32>,
    embeddings: Vec<Tensor>,
    deepstack: Vec<Vec<Tensor>>,
    hidden: usize,
}

impl VisualStep {
    /// Positions and image rows of `batch` from each sequence's request state (text-only
    /// sequences get positions `prefix + i`). Encodes any image a prefill chunk reaches that is
    /// not encoded yet (one tower pass for the whole step) and marks images whose placeholders
    /// are all prefilled after this step.
    pub fn build(front: &VlFront, reqs: &mut VlRequests, batch: &ForwardBatch) -> Result<Self> {
        let hidden = front.config().text.hidden_size;
        let mut positions: Vec<MropePos> = Vec::with_capacity(batch.input_ids.len());
        let mut step = Self {
            positions: Vec::new(),
            rope_rows: None,
            rows: Vec::new(),
            embeddings: Vec::new(),
            deepstack: Vec::new(),
            hidden,
        };
        for s in &batch.seqs {
            let range = s.prefix_len..s.prefix_len + s.extend_len;
            positions.extend(reqs.positions_of(s.req_slot, range.clone()));
            reqs.encode(front, s.req_slot, range.clone())?;
            if let Some(v) = reqs.visual_rows(s.req_slot, range.clone())? {
                v.check(s.extend_len, hidden, front.config().text.num_hidden_layers)?;
                step.push_rows(s.start, &v.rows, &v.embeddings, &v.deepstack)?;
            }
        }
        for s in &batch.seqs {
            reqs.prefilled(s.req_slot, s.prefix_len + s.extend_len);
        }
        if positions.iter().all(|p| p[0] == p[1] && p[1] == p[2]) {
            step.positions = to_i32("position", positions.iter().map(|p| p[0] as usize))?;
        } else {
            step.rope_rows = Some(front.mrope().cos_sin_rows(&positions));
            step.positions = to_i32("token", 0..positions.len())?;
        }
        Ok(step)
    }

    fn push_rows(&mut self, start: usize, rows: &[usize], emb: &Tensor, deepstack: &[Tensor]) -> Result<()> {
        if !self.rows.is_empty() && deepstack.len() != self.deepstack.len() {
            return Err(ModelError::Invalid(format!(
                "images of one step carry {} and {} deepstack levels",
                self.deepstack.len(),
                deepstack.len()
            )));
        }
        self.deepstack.resize(deepstack.len(), Vec::new());
        self.rows.extend(to_i32("image row", rows.iter().map(|r| start + r))?);
        self.embeddings.push(emb.clone());
        for (acc, d) in self.deepstack.iter_mut().zip(deepstack) {
            acc.push(d.clone());
        }
        Ok(())
    }

    /// Whether the step reads anything a decode CUDA graph does not: image rows or per-token
    /// rotary rows (then it runs eagerly).
    pub fn needs_eager(&self) -> bool {
        self.rope_rows.is_some() || !self.rows.is_empty()
    }

    /// The rotary rows (`None`: the model's 1-D table) and image rows on the GPU, in `dtype`.
    pub(super) fn upload(
        &self,
        gpu: &Gpu,
        dtype: DType,
        head_dim: usize,
    ) -> Result<(Option<DeviceTensor>, Option<DeviceVisual>)> {
        let rope = self
            .rope_rows
            .as_ref()
            .map(|r| DeviceTensor::from_host(gpu, r, &[r.len() / head_dim, head_dim]))
            .transpose()?;
        if self.rows.is_empty() {
            return Ok((rope, None));
        }
        let shape = [self.rows.len(), self.hidden];
        let up = |pieces: &[Tensor]| -> Result<DeviceTensor> {
            let t = cat(&pieces.iter().collect::<Vec<_>>())?.to_dtype(dtype)?;
            if t.shape() != shape {
                return Err(ModelError::Invalid(format!(
                    "image rows are {:?}, expected {shape:?}",
                    t.shape()
                )));
            }
            Ok(DeviceTensor::from_bytes(
                gpu,
                t.as_bytes(),
                &shape,
                super::weights::kernel_dtype(dtype)?,
            )?)
        };
        let visual = DeviceVisual {
            rows: DeviceTensor::from_host(gpu, &self.rows, &[self.rows.len()])?,
            embeddings: up(&self.embeddings)?,
            deepstack: self.deepstack.iter().map(|d| up(d)).collect::<Result<_>>()?,
        };
        Ok((rope, Some(visual)))
    }
}
