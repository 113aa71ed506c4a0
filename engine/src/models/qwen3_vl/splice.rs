//! Where the vision tower's rows enter the text decoder: [`VisualRows`] pairs the image
//! placeholder rows of one step with their merged embeddings (which replace the token
//! embeddings) and deepstack features (added after the first decoder layers).

use std::ops::Range;

use super::vision::VisionOutput;
use crate::models::{ModelError, Result};
use crate::tensor::Tensor;

/// The image rows of one forward step.
#[derive(Debug, Clone)]
pub struct VisualRows {
    /// Row indices within the step's tokens, ascending.
    pub rows: Vec<usize>,
    /// `[rows.len(), hidden]`: replace the embeddings of those rows.
    pub embeddings: Tensor,
    /// One `[rows.len(), hidden]` per deepstack level `k`, added to those rows after decoder
    /// layer `k`.
    pub deepstack: Vec<Tensor>,
}

impl VisualRows {
    /// The rows of `ids[range]` from the tower's output for the whole request: the `j`-th
    /// placeholder of the request takes embedding row `j`. Errors unless the request holds
    /// exactly as many placeholders as the tower produced rows. `None` when the range holds
    /// no placeholder.
    ///
    /// ```
    /// use mllm_engine::models::qwen3_vl::{VisionOutput, VisualRows};
    /// use mllm_engine::tensor::Tensor;
    ///
    /// let rows = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[3, 1])?;
    /// let out = VisionOutput { embeddings: rows.clone(), deepstack: vec![rows] };
    /// let ids = [5, 9, 9, 9, 6];
    /// let v = VisualRows::for_range(&out, &ids, 9, 2..5)?.expect("placeholders in range");
    /// assert_eq!(v.rows, [0, 1]);
    /// assert_eq!(v.embeddings.to_f32_vec()?, [2.0, 3.0]);
    /// assert!(VisualRows::for_range(&out, &ids[..3], 9, 0..3).is_err()); // 2 placeholders, 3 rows
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn for_range(
        out: &VisionOutput,
        ids: &[u32],
        image_token_id: u32,
        range: Range<usize>,
    ) -> Result<Option<Self>> {
        let total = ids.iter().filter(|&&t| t == image_token_id).count();
        let rows_out = out.embeddings.shape().first().copied().unwrap_or(0);
        if total != rows_out {
            return Err(ModelError::Invalid(format!(
                "image features and image tokens do not match: {total} placeholder token(s) (id {image_token_id}), \
                 {rows_out} image feature row(s)"
            )));
        }
        if range.start > range.end || range.end > ids.len() {
            return Err(ModelError::Invalid(format!(
                "token range {}..{} is outside the {} tokens",
                range.start,
                range.end,
                ids.len()
            )));
        }
        let first = ids[..range.start].iter().filter(|&&t| t == image_token_id).count();
        let rows: Vec<usize> = ids[range.clone()]
            .iter()
            .enumerate()
            .filter(|&(_, &t)| t == image_token_id)
            .map(|(i, _)| i)
            .collect();
        if rows.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self {
            embeddings: out.embeddings.narrow_rows(first, rows.len())?,
            deepstack: out
                .deepstack
                .iter()
                .map(|d| d.narrow_rows(first, rows.len()))
                .collect::<std::result::Result<_, _>>()?,
            rows,
        }))
    }

    /// Errors unless the rows fit a step of `tokens` tokens of width `hidden` with at most
    /// `layers` deepstack levels.
    pub(crate) fn check(&self, tokens: usize, hidden: usize, layers: usize) -> Result<()> {
        let n = self.rows.len();
        if self.rows.windows(2).any(|w| w[0] >= w[1]) || self.rows.last().is_some_and(|&r| r >= tokens) {
            return Err(ModelError::Invalid(format!(
                "visual rows must be ascending and < {tokens} tokens, got {:?}",
                self.rows
            )));
        }
        for (what, t) in
            std::iter::once(("embeddings", &self.embeddings)).chain(self.deepstack.iter().map(|d| ("deepstack", d)))
        {
            if t.shape() != [n, hidden] {
                return Err(ModelError::Invalid(format!(
                    "visual {what} is {:?}, expected [{n}, {hidden}] (one row per image token)",
                    t.shape()
                )));
            }
        }
        if self.deepstack.len() > layers {
            return Err(ModelError::Invalid(format!(
                "{} deepstack levels for {layers} decoder layers",
                self.deepstack.len()
            )));
        }
        Ok(())
    }
}

/// Adds (`replace = false`) or writes `src` `[rows.len(), d]` into rows `rows` of `x` `[n, d]`.
pub(crate) fn scatter_rows(x: &Tensor, rows: &[usize], src: &Tensor, replace: bool) -> Result<Tensor> {
    let d = x.shape()[1];
    let mut v = x.to_f32_vec()?;
    let s = src.to_f32_vec()?;
    for (&r, row) in rows.iter().zip(s.chunks_exact(d)) {
        let dst = &mut v[r * d..(r + 1) * d];
        if replace {
            dst.copy_from_slice(row);
        } else {
            dst.iter_mut().zip(row).for_each(|(a, b)| *a += b);
        }
    }
    Ok(Tensor::from_vec(v, x.shape())?)
}
