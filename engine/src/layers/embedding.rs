//! Token embedding and the LM head (possibly tied to the embedding).

use rayon::prelude::*;

use super::linear::dense;
use crate::models::{ModelError, Result};
use crate::tensor::Tensor;

/// Vocabulary embedding `[vocab, hidden]` (any float dtype; rows converted to f32 on lookup).
///
/// ```
/// use mllm_engine::layers::embedding::Embedding;
/// use mllm_engine::tensor::Tensor;
/// let e = Embedding::new(Tensor::from_vec(vec![0.0f32, 1.0, 2.0, 3.0], &[2, 2]).unwrap()).unwrap();
/// assert_eq!(e.forward(&[1, 0]).unwrap().to_f32_vec().unwrap(), vec![2.0, 3.0, 0.0, 1.0]);
/// assert!(e.forward(&[2]).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct Embedding {
    weight: Tensor,
}

impl Embedding {
    /// Wraps a `[vocab, hidden]` table.
    pub fn new(weight: Tensor) -> Result<Self> {
        if weight.rank() != 2 {
            return Err(ModelError::Invalid(format!(
                "embedding must be [vocab, hidden], got {:?}",
                weight.shape()
            )));
        }
        Ok(Self { weight })
    }

    /// The `[vocab, hidden]` table.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Rows for `ids` as f32 `[ids.len(), hidden]`; errors on an id `>= vocab`.
    pub fn forward(&self, ids: &[u32]) -> Result<Tensor> {
        let (vocab, hidden) = (self.weight.shape()[0], self.weight.shape()[1]);
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(ModelError::Invalid(format!(
                "token id {bad} out of range (vocab size {vocab})"
            )));
        }
        let mut out = vec![0f32; ids.len() * hidden];
        out.par_chunks_mut(hidden.max(1))
            .zip(ids.par_iter())
            .try_for_each(|(o, &id)| -> Result<()> {
                let row = self.weight.narrow_rows(id as usize, 1)?;
                o.copy_from_slice(&row.to_f32_vec()?);
                Ok(())
            })?;
        Ok(Tensor::from_vec(out, &[ids.len(), hidden])?)
    }
}

/// The output projection `hidden → vocab`; when tied, it shares the embedding's storage.
#[derive(Debug, Clone)]
pub struct LmHead {
    weight: Tensor,
}

impl LmHead {
    /// An LM head over `weight` `[vocab, hidden]` (pass the embedding table for tied weights).
    pub fn new(weight: Tensor) -> Result<Self> {
        Embedding::new(weight.clone())?;
        Ok(Self { weight })
    }

    /// The projection weight `[vocab, hidden]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Logits `[rows, vocab]` for hidden states `[rows, hidden]`.
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        dense(hidden, &self.weight)
    }
}
