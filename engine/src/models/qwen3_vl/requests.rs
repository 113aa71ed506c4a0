//! [`VlRequests`]: what a serving runner keeps per in-flight Qwen3-VL request, keyed by its
//! request slot: the prompt's 3-axis positions and rope delta (computed once from the whole
//! prompt, so chunks and prefix-cache hits get the positions of a single prefill), and the
//! vision tower's rows of each image from when its placeholders first enter a prefill chunk
//! until they are all prefilled.
//!
//! Encoding is batched across requests: [`VlRequests::encode`] checks and queues a request's
//! images (its errors concern that request only), and the step's first
//! [`VlRequests::visual_rows`] runs the tower once over every queued image of every request
//! ([`VlRequests::encode_queued`]), then splits the rows back per image.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use super::front::VlFront;
use super::mrope::MropePos;
use super::rope_index::text_position;
use super::splice::VisualRows;
use super::vision::{VisionEncoder, VisionOutput};
use crate::models::{ModelError, Result};
use crate::multimodal::{GridThw, MultimodalInputs};
use crate::tensor::{cat, Tensor};

/// One request with images.
#[derive(Debug)]
struct Request {
    /// Positions of the prompt's tokens.
    positions: Vec<MropePos>,
    /// Rope delta: a token at index `i` past the prompt sits at `i + delta`.
    delta: i64,
    mm: Arc<MultimodalInputs>,
    /// Per image: where its tower rows are.
    encoded: Vec<Encoding>,
}

/// The tower's rows of one image of a request.
#[derive(Debug, Clone)]
enum Encoding {
    /// Not reached by a prefill chunk yet, or already prefilled (rows dropped).
    Absent,
    /// Checked and waiting for the batched tower forward.
    Queued,
    /// The rows, while the image is being prefilled.
    Ready(VisionOutput),
}

/// Image state of the requests of one runner. Requests without an entry are text: token `i`
/// sits at `(i, i, i)`.
#[derive(Debug, Default)]
pub struct VlRequests {
    by_slot: HashMap<usize, Request>,
    /// The tower that runs queued images (the model's, kept from the first `encode`).
    tower: Option<Arc<dyn VisionEncoder>>,
    /// Tower forwards run so far.
    tower_forwards: u64,
    /// Seconds spent in those forwards.
    tower_seconds: f64,
}

impl VlRequests {
    /// Checks that `mm` matches `prompt`'s placeholders for `model`: one run of
    /// `grid.num_tokens(merge)` image tokens per image at its `token_range`, none elsewhere
    /// (none at all for a text request, `mm = None`).
    pub fn check(model: &VlFront, prompt: &[u32], mm: Option<&MultimodalInputs>) -> Result<()> {
        match mm {
            Some(mm) => Self::positions(model, prompt, mm).map(|_| ()),
            None => model.visual_rows(prompt, None, 0..0).map(|_| ()),
        }
    }

    fn positions(model: &VlFront, prompt: &[u32], mm: &MultimodalInputs) -> Result<(Vec<MropePos>, i64)> {
        let cfg = model.config();
        let (pad, merge) = (cfg.image_token_id, cfg.vision.spatial_merge_size as u32);
        if mm.tokens.image_pad != pad {
            return Err(ModelError::Invalid(format!(
                "the request's image token id {} is not the model's ({pad})",
                mm.tokens.image_pad
            )));
        }
        let mut placed = 0;
        for (i, im) in mm.images.iter().enumerate() {
            let r = &im.token_range;
            let want = im.patches.grid.num_tokens(merge);
            let all_pads = r.end <= prompt.len() && prompt[r.clone()].iter().all(|&t| t == pad);
            if !all_pads || r.len() != want {
                return Err(ModelError::Invalid(format!(
                    "image features and image tokens do not match: image {i} (grid {:?}) needs {want} \
                     placeholder tokens, its token range {}..{} of the {}-token prompt does not hold them",
                    im.patches.grid,
                    r.start,
                    r.end,
                    prompt.len()
                )));
            }
            placed += r.len();
        }
        let total = prompt.iter().filter(|&&t| t == pad).count();
        if total != placed {
            return Err(ModelError::Invalid(format!(
                "image features and image tokens do not match: {total} placeholder token(s) (id {pad}), \
                 {placed} belong to the request's {} image(s)",
                mm.images.len()
            )));
        }
        let grids: Vec<GridThw> = mm.grids();
        let rope = model.rope_positions(prompt, &grids, 0..prompt.len())?;
        Ok((rope.positions, rope.delta))
    }

    /// Registers the request in `slot` with its prompt and images (replacing what the slot held).
    pub fn attach(&mut self, model: &VlFront, slot: usize, prompt: &[u32], mm: Arc<MultimodalInputs>) -> Result<()> {
        let (positions, delta) = Self::positions(model, prompt, &mm)?;
        let encoded = vec![Encoding::Absent; mm.images.len()];
        self.by_slot.insert(
            slot,
            Request {
                positions,
                delta,
                mm,
                encoded,
            },
        );
        Ok(())
    }

    /// Forgets the request in `slot` (it finished, failed or was retracted).
    pub fn detach(&mut self, slot: usize) {
        self.by_slot.remove(&slot);
    }

    /// Whether `slot` holds a request with images.
    pub fn has(&self, slot: usize) -> bool {
        self.by_slot.contains_key(&slot)
    }

    /// Queues every image of `slot`'s request whose placeholders meet `range` and that is not
    /// encoded yet, after checking it against the tower: an error here concerns this request
    /// only, and the batched forward ([`VlRequests::encode_queued`]) then meets only images
    /// that fit. Nothing is queued when any image fails.
    pub fn encode(&mut self, model: &VlFront, slot: usize, range: Range<usize>) -> Result<()> {
        let Some(req) = self.by_slot.get_mut(&slot) else {
            return Ok(());
        };
        let tower = model.vision();
        let unit = tower.config().merge_unit();
        let mut reached = Vec::new();
        for (k, (im, enc)) in req.mm.images.iter().zip(&req.encoded).enumerate() {
            let r = &im.token_range;
            if !matches!(enc, Encoding::Absent) || r.start >= range.end || r.end <= range.start {
                continue;
            }
            tower
                .check_image(&im.patches)
                .map_err(|e| ModelError::Invalid(format!("image {k}: {e}")))?;
            let rows = im.patches.grid.num_patches() / unit;
            if rows != r.len() {
                return Err(ModelError::Invalid(format!(
                    "image features and image tokens do not match: the vision tower gives {rows} rows \
                     for image {k}, its {} placeholder tokens are at {}..{}",
                    r.len(),
                    r.start,
                    r.end
                )));
            }
            reached.push(k);
        }
        for k in reached {
            req.encoded[k] = Encoding::Queued;
        }
        if self.tower.is_none() {
            self.tower = Some(model.encoder());
        }
        Ok(())
    }

    /// Runs the tower once over every queued image of every request and keeps each image's
    /// rows; a no-op when nothing is queued. Called by [`VlRequests::visual_rows`], so a step's
    /// images are encoded together before its first sequence runs.
    pub fn encode_queued(&mut self) -> Result<()> {
        let mut queued: Vec<(usize, usize)> = Vec::new();
        for (&slot, req) in &self.by_slot {
            for (k, enc) in req.encoded.iter().enumerate() {
                if matches!(enc, Encoding::Queued) {
                    queued.push((slot, k));
                }
            }
        }
        if queued.is_empty() {
            return Ok(());
        }
        let tower = self
            .tower
            .clone()
            .ok_or_else(|| ModelError::Invalid("images queued without a vision tower".into()))?;
        // Slot order, so a step's batch does not depend on the map's iteration order.
        queued.sort_unstable();
        let images: Vec<&_> = queued
            .iter()
            .map(|&(slot, k)| &self.by_slot[&slot].mm.images[k].patches)
            .collect();
        let start = std::time::Instant::now();
        let outputs = tower.encode(&images)?;
        self.tower_forwards += 1;
        self.tower_seconds += start.elapsed().as_secs_f64();
        for ((slot, k), out) in queued.into_iter().zip(outputs) {
            if let Some(req) = self.by_slot.get_mut(&slot) {
                req.encoded[k] = Encoding::Ready(out);
            }
        }
        Ok(())
    }

    /// How many vision-tower forwards this runner ran (one per step with new images).
    pub fn tower_forwards(&self) -> u64 {
        self.tower_forwards
    }

    /// Wall time spent in vision-tower forwards so far, in seconds.
    pub fn tower_seconds(&self) -> f64 {
        self.tower_seconds
    }

    /// The 3-axis positions of tokens `range` of `slot`'s sequence.
    pub fn positions_of(&self, slot: usize, range: Range<usize>) -> Vec<MropePos> {
        match self.by_slot.get(&slot) {
            None => range.map(|i| text_position(i, 0)).collect(),
            Some(req) => range
                .map(|i| {
                    req.positions
                        .get(i)
                        .copied()
                        .unwrap_or_else(|| text_position(i, req.delta))
                })
                .collect(),
        }
    }

    /// The image rows of the step running tokens `range` of `slot`'s sequence (`None` when the
    /// range holds no image token). Their images must be queued ([`VlRequests::encode`]); the
    /// first call of a step encodes every queued image ([`VlRequests::encode_queued`]).
    pub fn visual_rows(&mut self, slot: usize, range: Range<usize>) -> Result<Option<VisualRows>> {
        self.encode_queued()?;
        let Some(req) = self.by_slot.get(&slot) else {
            return Ok(None);
        };
        let mut rows = Vec::new();
        let mut embeddings: Vec<Tensor> = Vec::new();
        let mut deepstack: Vec<Vec<Tensor>> = Vec::new();
        for (k, (im, out)) in req.mm.images.iter().zip(&req.encoded).enumerate() {
            let r = &im.token_range;
            let (lo, hi) = (r.start.max(range.start), r.end.min(range.end));
            if lo >= hi {
                continue;
            }
            let Encoding::Ready(out) = out else {
                return Err(ModelError::Invalid(format!(
                    "image {k} is not encoded before its tokens {lo}..{hi} run"
                )));
            };
            rows.extend(lo - range.start..hi - range.start);
            embeddings.push(out.embeddings.narrow_rows(lo - r.start, hi - lo)?);
            deepstack.resize(out.deepstack.len(), Vec::new());
            for (acc, d) in deepstack.iter_mut().zip(&out.deepstack) {
                acc.push(d.narrow_rows(lo - r.start, hi - lo)?);
            }
        }
        if rows.is_empty() {
            return Ok(None);
        }
        // Rows keep the tower's dtype (bf16 from a GPU tower): no f32 round trip.
        let cat_all = |v: &[Tensor]| cat(&v.iter().collect::<Vec<_>>());
        Ok(Some(VisualRows {
            embeddings: cat_all(&embeddings)?,
            deepstack: deepstack
                .iter()
                .map(|d| cat_all(d))
                .collect::<std::result::Result<_, _>>()?,
            rows,
        }))
    }

    pub fn prefilled(&mut self, slot: usize, len: usize) {
        if let Some(req) = self.by_slot.get_mut(&slot) {
            for (im, out) in req.mm.images.iter().zip(req.encoded.iter_mut()) {
                if im.token_range.end <= len {
                    *out = Encoding::Absent;
                }
            }
        }
    }
}
