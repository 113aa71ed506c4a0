//! [`ReqToTokenPool`]: the `(request slot, position) -> KV slot` table.

use std::ops::Range;

use super::{MemCacheError, Result};

/// A table of `size` request slots × `max_context_len` positions (`i32`, as in SGLang), where
/// entry `(slot, pos)` is the [`TokenToKvPool`](super::TokenToKvPool) slot holding the KV of
/// token `pos` of the request in `slot`. Entries start at 0, the padding KV slot.
///
/// ```
/// use mllm_engine::mem_cache::ReqToTokenPool;
///
/// let mut pool = ReqToTokenPool::new(4, 16);
/// let slots = pool.alloc(2).unwrap();
/// pool.write(slots[0], 0, &[7, 8, 9]).unwrap();
/// assert_eq!(pool.read(slots[0], 0..3).unwrap(), &[7, 8, 9]);
/// pool.free(slots[0]).unwrap();
/// assert!(pool.free(slots[0]).is_err()); // double free
/// ```
#[derive(Debug, Clone)]
pub struct ReqToTokenPool {
    size: usize,
    max_context_len: usize,
    table: Vec<i32>,
    /// Free request slots; `alloc` pops from the end, so slots come out lowest first.
    free_slots: Vec<usize>,
    allocated: Vec<bool>,
}

impl ReqToTokenPool {
    /// A pool of `size` request slots with rows of `max_context_len` positions, all free.
    pub fn new(size: usize, max_context_len: usize) -> Self {
        Self {
            size,
            max_context_len,
            table: vec![0; size * max_context_len],
            free_slots: (0..size).rev().collect(),
            allocated: vec![false; size],
        }
    }

    /// Number of request slots.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Positions per request slot.
    pub fn max_context_len(&self) -> usize {
        self.max_context_len
    }

    /// Number of free request slots.
    pub fn available(&self) -> usize {
        self.free_slots.len()
    }

    /// Whether `slot` is currently allocated.
    pub fn is_allocated(&self, slot: usize) -> bool {
        self.allocated.get(slot).copied().unwrap_or(false)
    }

    /// Takes `n` free request slots; errors (allocating nothing) when fewer than `n` are free.
    pub fn alloc(&mut self, n: usize) -> Result<Vec<usize>> {
        if n > self.free_slots.len() {
            return Err(MemCacheError::ReqPoolFull {
                requested: n,
                free: self.free_slots.len(),
                size: self.size,
            });
        }
        let slots: Vec<usize> = (0..n).map(|_| self.free_slots.pop().expect("checked above")).collect();
        for &s in &slots {
            self.allocated[s] = true;
        }
        Ok(slots)
    }

    /// Returns `slot` to the pool. Its row is left as is (it is overwritten on reuse).
    pub fn free(&mut self, slot: usize) -> Result<()> {
        if slot >= self.size {
            return Err(MemCacheError::ReqSlotOutOfRange { slot, size: self.size });
        }
        if !self.allocated[slot] {
            return Err(MemCacheError::ReqDoubleFree { slot });
        }
        self.allocated[slot] = false;
        self.free_slots.push(slot);
        Ok(())
    }

    /// Frees every slot and zeroes the table.
    pub fn clear(&mut self) {
        self.table.fill(0);
        self.free_slots = (0..self.size).rev().collect();
        self.allocated.fill(false);
    }

    fn check(&self, slot: usize, start: usize, len: usize) -> Result<usize> {
        if slot >= self.size {
            return Err(MemCacheError::ReqSlotOutOfRange { slot, size: self.size });
        }
        if !self.allocated[slot] {
            return Err(MemCacheError::ReqSlotNotAllocated { slot });
        }
        let end = start.checked_add(len).filter(|&e| e <= self.max_context_len);
        match end {
            Some(_) => Ok(slot * self.max_context_len + start),
            None => Err(MemCacheError::PositionOutOfRange {
                slot,
                start,
                end: start.saturating_add(len),
                max_context_len: self.max_context_len,
            }),
        }
    }

    /// Writes `kv_indices` at positions `start_pos..start_pos + kv_indices.len()` of `slot`.
    ///
    /// Errors if `slot` is out of range or not allocated, the positions run past
    /// `max_context_len`, or an index does not fit in `i32`; nothing is written then.
    pub fn write(&mut self, slot: usize, start_pos: usize, kv_indices: &[u32]) -> Result<()> {
        let off = self.check(slot, start_pos, kv_indices.len())?;
        if let Some(&bad) = kv_indices.iter().find(|&&i| i > i32::MAX as u32) {
            return Err(MemCacheError::InvalidArgument(format!(
                "KV index {bad} does not fit in i32"
            )));
        }
        for (dst, &src) in self.table[off..off + kv_indices.len()].iter_mut().zip(kv_indices) {
            *dst = src as i32;
        }
        Ok(())
    }

    /// The KV slot indices at positions `range` of `slot`.
    pub fn read(&self, slot: usize, range: Range<usize>) -> Result<&[i32]> {
        let len = range.end.checked_sub(range.start).ok_or_else(|| {
            MemCacheError::InvalidArgument(format!("reversed position range {}..{}", range.start, range.end))
        })?;
        let off = self.check(slot, range.start, len)?;
        Ok(&self.table[off..off + len])
    }

    /// Like [`read`](Self::read), converted to the `u32` slots that
    /// [`TokenToKvPool`](super::TokenToKvPool) and the attention functions take.
    pub fn kv_indices(&self, slot: usize, range: Range<usize>) -> Result<Vec<u32>> {
        Ok(self.read(slot, range)?.iter().map(|&i| i as u32).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_free_reuse() {
        let mut p = ReqToTokenPool::new(3, 8);
        assert_eq!(p.available(), 3);
        let a = p.alloc(2).unwrap();
        assert_eq!(a, vec![0, 1]);
        assert_eq!(p.available(), 1);
        p.free(0).unwrap();
        let b = p.alloc(2).unwrap();
        assert_eq!(b.len(), 2);
        assert!(b.contains(&0) && b.contains(&2));
        assert_eq!(p.available(), 0);
        p.clear();
        assert_eq!(p.available(), 3);
    }

    #[test]
    fn exhaustion_message() {
        let mut p = ReqToTokenPool::new(2, 4);
        p.alloc(1).unwrap();
        let err = p.alloc(3).unwrap_err();
        assert_eq!(
            err,
            MemCacheError::ReqPoolFull {
                requested: 3,
                free: 1,
                size: 2
            }
        );
        let msg = err.to_string();
        assert!(msg.contains("requested 3") && msg.contains("only 1 free"), "{msg}");
        assert_eq!(p.available(), 1, "failed alloc must not take slots");
    }

    #[test]
    fn double_free_and_out_of_range() {
        let mut p = ReqToTokenPool::new(2, 4);
        let s = p.alloc(1).unwrap()[0];
        p.free(s).unwrap();
        assert_eq!(p.free(s).unwrap_err(), MemCacheError::ReqDoubleFree { slot: s });
        assert_eq!(
            p.free(5).unwrap_err(),
            MemCacheError::ReqSlotOutOfRange { slot: 5, size: 2 }
        );
        assert!(p.free(1).is_err(), "never-allocated slot");
        assert!(p.free(s).unwrap_err().to_string().contains("double free"));
    }

    #[test]
    fn write_read_bounds() {
        let mut p = ReqToTokenPool::new(2, 4);
        let s = p.alloc(1).unwrap()[0];
        p.write(s, 1, &[10, 11, 12]).unwrap();
        assert_eq!(p.read(s, 0..4).unwrap(), &[0, 10, 11, 12]);
        assert_eq!(p.kv_indices(s, 1..3).unwrap(), vec![10, 11]);
        assert_eq!(p.read(s, 4..4).unwrap(), &[] as &[i32]);
        // Past max_context_len: error, nothing written.
        let err = p.write(s, 2, &[1, 2, 3]).unwrap_err();
        assert_eq!(
            err,
            MemCacheError::PositionOutOfRange {
                slot: s,
                start: 2,
                end: 5,
                max_context_len: 4
            }
        );
        assert_eq!(p.read(s, 0..4).unwrap(), &[0, 10, 11, 12]);
        assert!(p.read(s, 3..5).is_err());
        #[allow(clippy::reversed_empty_ranges)]
        let rev = 3..1;
        assert!(p.read(s, rev).is_err());
        assert!(p.write(s, usize::MAX, &[1]).is_err());
        // Slot checks.
        assert_eq!(
            p.write(7, 0, &[1]).unwrap_err(),
            MemCacheError::ReqSlotOutOfRange { slot: 7, size: 2 }
        );
        assert_eq!(
            p.read(1, 0..1).unwrap_err(),
            MemCacheError::ReqSlotNotAllocated { slot: 1 }
        );
        assert!(p.write(s, 0, &[u32::MAX]).is_err());
        // Rows are independent.
        let t = p.alloc(1).unwrap()[0];
        p.write(t, 0, &[5, 6, 7, 8]).unwrap();
        assert_eq!(p.read(s, 0..4).unwrap(), &[0, 10, 11, 12]);
        assert_eq!(p.read(t, 0..4).unwrap(), &[5, 6, 7, 8]);
    }
}
