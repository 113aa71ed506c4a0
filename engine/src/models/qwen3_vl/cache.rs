//! [`VlKvCache`]: the K/V of one Qwen3-VL sequence, every layer, on the CPU. A thin owner of a
//! [`TokenToKvPool`] and the sequence's slots in it, so attention runs through the engine's
//! paged CPU kernels (`extend_attention`) exactly as the text models do.

use crate::mem_cache::{KvDtype, TokenToKvPool};
use crate::models::{ModelError, Result};

/// K/V cache of one sequence: `capacity` tokens for `layers` layers.
///
/// ```
/// use mllm_engine::models::qwen3_vl::VlKvCache;
///
/// let cache = VlKvCache::new(128, 2, 1, 16);
/// assert_eq!((cache.len(), cache.capacity()), (0, 128));
/// ```
#[derive(Debug, Clone)]
pub struct VlKvCache {
    pool: TokenToKvPool,
    /// Slot of each cached token, in sequence order.
    slots: Vec<u32>,
}

impl VlKvCache {
    /// An empty f32 cache of `capacity` tokens.
    pub fn new(capacity: usize, layers: usize, kv_heads: usize, head_dim: usize) -> Self {
        Self {
            pool: TokenToKvPool::new(capacity, layers, kv_heads, head_dim, KvDtype::F32),
            slots: Vec::new(),
        }
    }

    /// Tokens cached.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Tokens the cache can hold.
    pub fn capacity(&self) -> usize {
        self.pool.capacity()
    }

    /// Forgets every token.
    pub fn clear(&mut self) {
        self.pool.clear();
        self.slots.clear();
    }

    /// Keeps the first `len` tokens (e.g. to re-run from a shared prefix).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len < self.slots.len() {
            self.pool.free(&self.slots[len..])?;
            self.slots.truncate(len);
        }
        Ok(())
    }

    /// Runs `step` on `n` freshly allocated slots appended to the sequence; the step sees the
    /// pool and the slots of the whole sequence (old, then new). On error the new slots are
    /// released and the cache is as before.
    pub(crate) fn extend<T>(
        &mut self,
        n: usize,
        step: impl FnOnce(&mut TokenToKvPool, &[u32], usize) -> Result<T>,
    ) -> Result<T> {
        let prefix = self.slots.len();
        if n > self.pool.available() {
            return Err(ModelError::Invalid(format!(
                "KV cache full: {n} new tokens after {prefix}, capacity {}",
                self.pool.capacity()
            )));
        }
        let new = self.pool.alloc(n)?;
        self.slots.extend_from_slice(&new);
        match step(&mut self.pool, &self.slots, prefix) {
            Ok(v) => Ok(v),
            Err(e) => {
                self.slots.truncate(prefix);
                self.pool.free(&new)?;
                Err(e)
            }
        }
    }

    /// Layers the cache holds.
    pub(crate) fn num_layers(&self) -> usize {
        self.pool.num_layers()
    }

    /// `(kv_heads, head_dim)` of each cached row.
    pub(crate) fn kv_shape(&self) -> (usize, usize) {
        (self.pool.num_kv_heads(), self.pool.head_dim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_steps_leave_the_cache_unchanged() {
        let mut c = VlKvCache::new(4, 1, 1, 2);
        c.extend(2, |_, slots, prefix| {
            assert_eq!((slots.len(), prefix), (2, 0));
            Ok(())
        })
        .unwrap();
        let err = c.extend(1, |_, _, _| -> Result<()> { Err(ModelError::Invalid("boom".into())) });
        assert!(err.is_err());
        assert_eq!(c.len(), 2);
        let err = c.extend(3, |_, _, _| Ok(())).unwrap_err().to_string();
        assert!(err.contains("KV cache full"), "{err}");
        c.truncate(1).unwrap();
        assert_eq!(c.len(), 1);
        c.extend(3, |_, slots, prefix| {
            assert_eq!((slots.len(), prefix), (4, 1));
            Ok(())
        })
        .unwrap();
    }
}
