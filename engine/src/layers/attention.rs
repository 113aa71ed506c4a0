//! Paged attention layer: stores this step's K/V in the [`TokenToKvPool`] at the batch's
//! `out_cache_loc`, then runs causal extend (or decode) attention per sequence, sequences in parallel.

use rayon::prelude::*;

use crate::executor::forward_batch::ForwardBatch;
use crate::mem_cache::{decode_attention, extend_attention, TokenToKvPool};
use crate::models::{ModelError, Result};

/// Attention of one decoder layer (GQA: `num_heads` a multiple of `num_kv_heads`).
#[derive(Debug, Clone)]
pub struct RadixAttention {
    /// Layer index in the KV pool.
    pub layer_id: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Per-head dim.
    pub head_dim: usize,
    /// Softmax scale (`1/sqrt(head_dim)`).
    pub scale: f32,
}

impl RadixAttention {
    /// Attention for layer `layer_id` with the usual `1/sqrt(head_dim)` scale.
    pub fn new(layer_id: usize, num_heads: usize, num_kv_heads: usize, head_dim: usize) -> Self {
        Self {
            layer_id,
            num_heads,
            num_kv_heads,
            head_dim,
            scale: 1.0 / (head_dim as f32).sqrt(),
        }
    }

    /// `q` `[tokens, heads * head_dim]`, `k`/`v` `[tokens, kv_heads * head_dim]` (after RoPE);
    /// returns `[tokens, heads * head_dim]`.
    pub fn forward(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        batch: &ForwardBatch,
        pool: &mut TokenToKvPool,
    ) -> Result<Vec<f32>> {
        let qrow = self.num_heads * self.head_dim;
        if q.len() != batch.num_tokens() * qrow {
            return Err(ModelError::Invalid(format!(
                "attention: q has {} values, expected {} tokens x {qrow}",
                q.len(),
                batch.num_tokens()
            )));
        }
        pool.set_kv(self.layer_id, &batch.out_cache_loc, k, v)?;
        let pool = &*pool;
        // Sequences in parallel: a decode sequence is one query row, which the kernel cannot
        // split, so a serial loop left all but one core idle for a whole decode batch.
        let per_seq = batch
            .seqs
            .par_iter()
            .map(|s| {
                let qs = &q[s.start * qrow..(s.start + s.extend_len) * qrow];
                let dims = [s.extend_len, self.num_heads, self.head_dim];
                if s.extend_len == 1 {
                    decode_attention(qs, dims, pool, self.layer_id, &s.kv_indices, self.scale)
                } else {
                    extend_attention(qs, dims, pool, self.layer_id, &s.kv_indices, s.prefix_len, self.scale)
                }
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(q.len());
        for o in per_seq {
            out.extend_from_slice(&o);
        }
        Ok(out)
    }
}
