//! [`TokenToKvPool`]: KV slot allocator plus per-layer K/V buffers on the CPU.

use half::bf16;
use half::slice::HalfFloatSliceExt;

use super::{MemCacheError, Result};

/// Storage element type of the K/V buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvDtype {
    /// 32-bit float.
    F32,
    /// bfloat16 (half the memory, ~3 significant digits).
    BF16,
}

impl KvDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::BF16 => 2,
        }
    }

    /// `f32` or `bf16`, as `--kv-cache-dtype` spells it.
    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "f32",
            KvDtype::BF16 => "bf16",
        }
    }
}

/// One layer's K or V buffer, row-major `[num_slots, num_kv_heads, head_dim]`.
#[derive(Debug, Clone)]
pub enum KvBuffer {
    /// f32 storage.
    F32(Vec<f32>),
    /// bf16 storage.
    BF16(Vec<bf16>),
}

impl KvBuffer {
    fn zeros(dtype: KvDtype, len: usize) -> Self {
        match dtype {
            KvDtype::F32 => KvBuffer::F32(vec![0.0; len]),
            KvDtype::BF16 => KvBuffer::BF16(vec![bf16::ZERO; len]),
        }
    }

    /// Element type.
    pub fn dtype(&self) -> KvDtype {
        match self {
            KvBuffer::F32(_) => KvDtype::F32,
            KvBuffer::BF16(_) => KvDtype::BF16,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            KvBuffer::F32(b) => b.len(),
            KvBuffer::BF16(b) => b.len(),
        }
    }

    /// Whether the buffer has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn write_f32(&mut self, off: usize, src: &[f32]) {
        match self {
            KvBuffer::F32(b) => b[off..off + src.len()].copy_from_slice(src),
            KvBuffer::BF16(b) => b[off..off + src.len()].convert_from_f32_slice(src),
        }
    }

    fn read_f32(&self, off: usize, dst: &mut [f32]) {
        match self {
            KvBuffer::F32(b) => dst.copy_from_slice(&b[off..off + dst.len()]),
            KvBuffer::BF16(b) => b[off..off + dst.len()].convert_to_f32_slice(dst),
        }
    }
}

/// How many tokens of KV cache fit in `bytes`: each token takes
/// `2 (K and V) × layers × kv_heads × head_dim × dtype_size` bytes. One token's worth is kept
/// back for the padding slot 0, so `TokenToKvPool::new(capacity_for_budget(..), ..)` stays
/// within the budget.
///
/// ```
/// use mllm_engine::mem_cache::capacity_for_budget;
/// // 1 layer, 1 KV head, head_dim 4, f32: 32 bytes per token.
/// assert_eq!(capacity_for_budget(32 * 11, 1, 1, 4, 4), 10);
/// ```
pub fn capacity_for_budget(bytes: usize, layers: usize, kv_heads: usize, head_dim: usize, dtype_size: usize) -> usize {
    let per_token = 2usize
        .checked_mul(layers)
        .and_then(|x| x.checked_mul(kv_heads))
        .and_then(|x| x.checked_mul(head_dim))
        .and_then(|x| x.checked_mul(dtype_size));
    match per_token {
        Some(0) | None => 0,
        Some(p) => (bytes / p).saturating_sub(1),
    }
}

/// The token-to-KV pool (page size 1): a free-list allocator over `capacity` KV slots plus,
/// for every layer, a K and a V buffer of shape `[capacity + 1, num_kv_heads, head_dim]`.
///
/// Slot 0 is the padding slot, as in SGLang: it is never handed out by [`alloc`](Self::alloc)
/// (padded positions write their KV there), so usable slots are `1..=capacity`.
///
/// ```
/// use mllm_engine::mem_cache::{KvDtype, TokenToKvPool};
///
/// // 2 layers, 1 KV head, head_dim 2, room for 4 tokens, stored as bf16.
/// let mut pool = TokenToKvPool::new(4, 2, 1, 2, KvDtype::BF16);
/// let slots = pool.alloc(3).unwrap();
/// assert!(!slots.contains(&0)); // the padding slot is never handed out
/// assert_eq!(pool.available(), 1);
///
/// // Write K/V rows ([n, kv_heads, head_dim]) for layer 1 and read one back.
/// let k = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
/// let v = [0.5; 6];
/// pool.set_kv(1, &slots, &k, &v).unwrap();
/// assert_eq!(pool.k_f32(1, slots[2]).unwrap(), vec![5.0, 6.0]);
///
/// assert!(pool.alloc(2).is_err()); // only 1 left
/// pool.free(&slots).unwrap();
/// assert!(pool.free(&slots[..1]).is_err()); // double free
/// assert_eq!(pool.available(), 4);
/// ```
#[derive(Debug, Clone)]
pub struct TokenToKvPool {
    capacity: usize,
    num_layers: usize,
    num_kv_heads: usize,
    head_dim: usize,
    dtype: KvDtype,
    k_buffers: Vec<KvBuffer>,
    v_buffers: Vec<KvBuffer>,
    /// Free slots; `alloc` pops from the end, so slots come out lowest first.
    free_slots: Vec<u32>,
    /// `allocated[s]` for `s` in `0..=capacity` (slot 0 is always false).
    allocated: Vec<bool>,
}

impl TokenToKvPool {
    /// A pool with `capacity` usable slots (`1..=capacity`), all free, and zeroed buffers.
    ///
    /// # Panics
    /// If `capacity >= u32::MAX` or `i32::MAX` (slots must fit the `i32` req-to-token table).
    pub fn new(capacity: usize, num_layers: usize, num_kv_heads: usize, head_dim: usize, dtype: KvDtype) -> Self {
        assert!(
            capacity < i32::MAX as usize,
            "KV capacity {capacity} too large for i32 slot indices"
        );
        let len = (capacity + 1) * num_kv_heads * head_dim;
        Self {
            capacity,
            num_layers,
            num_kv_heads,
            head_dim,
            dtype,
            k_buffers: (0..num_layers).map(|_| KvBuffer::zeros(dtype, len)).collect(),
            v_buffers: (0..num_layers).map(|_| KvBuffer::zeros(dtype, len)).collect(),
            free_slots: (1..=capacity as u32).rev().collect(),
            allocated: vec![false; capacity + 1],
        }
    }

    /// The slot allocator alone, for a backend that keeps the K/V buffers itself (CUDA): the
    /// same slots and accounting, no host buffers (host reads and writes return
    /// [`MemCacheError::DeviceResident`]).
    pub fn allocator_only(
        capacity: usize,
        num_layers: usize,
        num_kv_heads: usize,
        head_dim: usize,
        dtype: KvDtype,
    ) -> Self {
        assert!(
            capacity < i32::MAX as usize,
            "KV capacity {capacity} too large for i32 slot indices"
        );
        let mut pool = Self::new(0, num_layers, num_kv_heads, head_dim, dtype);
        pool.k_buffers.clear();
        pool.v_buffers.clear();
        pool.capacity = capacity;
        pool.free_slots = (1..=capacity as u32).rev().collect();
        pool.allocated = vec![false; capacity + 1];
        pool
    }

    /// Usable slots (excluding the padding slot).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Free slots.
    pub fn available(&self) -> usize {
        self.free_slots.len()
    }

    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.num_layers
    }

    /// KV heads per layer.
    pub fn num_kv_heads(&self) -> usize {
        self.num_kv_heads
    }

    /// Head dimension.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Storage element type.
    pub fn dtype(&self) -> KvDtype {
        self.dtype
    }

    /// Elements per slot per layer (`num_kv_heads × head_dim`).
    pub fn row_len(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Bytes held by all K and V buffers.
    pub fn memory_bytes(&self) -> usize {
        2 * self.num_layers * (self.capacity + 1) * self.row_len() * self.dtype.size()
    }

    /// Whether `slot` is currently allocated.
    pub fn is_allocated(&self, slot: u32) -> bool {
        self.allocated.get(slot as usize).copied().unwrap_or(false)
    }

    /// Takes `n` free slots (never slot 0); errors (allocating nothing) when fewer are free.
    pub fn alloc(&mut self, n: usize) -> Result<Vec<u32>> {
        if n > self.free_slots.len() {
            return Err(MemCacheError::KvPoolFull {
                requested: n,
                available: self.free_slots.len(),
                capacity: self.capacity,
            });
        }
        let slots = self.free_slots.split_off(self.free_slots.len() - n);
        let slots: Vec<u32> = slots.into_iter().rev().collect();
        for &s in &slots {
            self.allocated[s as usize] = true;
        }
        Ok(slots)
    }

    /// Returns `slots` to the pool. All-or-nothing: if any slot is 0, out of range, not
    /// allocated, or repeated in `slots`, nothing is freed and an error is returned.
    pub fn free(&mut self, slots: &[u32]) -> Result<()> {
        for (i, &s) in slots.iter().enumerate() {
            if s == 0 || s as usize > self.capacity {
                self.restore(&slots[..i]);
                return Err(MemCacheError::KvSlotOutOfRange {
                    slot: s as u64,
                    capacity: self.capacity,
                });
            }
            if !self.allocated[s as usize] {
                self.restore(&slots[..i]);
                return Err(MemCacheError::KvDoubleFree { slot: s });
            }
            self.allocated[s as usize] = false;
        }
        self.free_slots.extend(slots.iter().rev());
        Ok(())
    }

    fn restore(&mut self, slots: &[u32]) {
        for &s in slots {
            self.allocated[s as usize] = true;
        }
    }

    /// Frees every slot (buffers are left as is).
    pub fn clear(&mut self) {
        self.free_slots = (1..=self.capacity as u32).rev().collect();
        self.allocated.fill(false);
    }

    fn check_layer(&self, layer: usize) -> Result<()> {
        if self.k_buffers.is_empty() && self.num_layers > 0 {
            return Err(MemCacheError::DeviceResident);
        }
        if layer >= self.num_layers {
            return Err(MemCacheError::LayerOutOfRange {
                layer,
                num_layers: self.num_layers,
            });
        }
        Ok(())
    }

    pub(super) fn check_slots(&self, slots: &[u32]) -> Result<()> {
        match slots.iter().find(|&&s| s as usize > self.capacity) {
            Some(&s) => Err(MemCacheError::KvSlotOutOfRange {
                slot: s as u64,
                capacity: self.capacity,
            }),
            None => Ok(()),
        }
    }

    /// Writes K and V rows for `slots` of `layer`: `k_rows`/`v_rows` are row-major
    /// `[slots.len(), num_kv_heads, head_dim]` (converted to the storage dtype). Slot 0 (padding)
    /// may be written; slots need not be allocated. Validates everything before writing.
    pub fn set_kv(&mut self, layer: usize, slots: &[u32], k_rows: &[f32], v_rows: &[f32]) -> Result<()> {
        let row = self.check_rows(
            layer,
            slots,
            [
                ("set_kv k_rows length", k_rows.len()),
                ("set_kv v_rows length", v_rows.len()),
            ],
        )?;
        for (i, &s) in slots.iter().enumerate() {
            let off = s as usize * row;
            self.k_buffers[layer].write_f32(off, &k_rows[i * row..(i + 1) * row]);
            self.v_buffers[layer].write_f32(off, &v_rows[i * row..(i + 1) * row]);
        }
        Ok(())
    }

    /// Validates `layer`, `slots` and that each buffer holds `slots.len()` rows; returns the row length.
    fn check_rows(&self, layer: usize, slots: &[u32], buffers: [(&'static str, usize); 2]) -> Result<usize> {
        self.check_layer(layer)?;
        self.check_slots(slots)?;
        let row = self.row_len();
        let expected = slots.len() * row;
        for (what, got) in buffers {
            if got != expected {
                return Err(MemCacheError::Shape { what, expected, got });
            }
        }
        Ok(row)
    }

    /// Gathers K and V of `slots` of `layer` into `k_out`/`v_out` as f32,
    /// `[slots.len(), num_kv_heads, head_dim]`.
    pub fn gather_kv(&self, layer: usize, slots: &[u32], k_out: &mut [f32], v_out: &mut [f32]) -> Result<()> {
        let row = self.check_rows(
            layer,
            slots,
            [
                ("gather_kv k_out length", k_out.len()),
                ("gather_kv v_out length", v_out.len()),
            ],
        )?;
        for (i, &s) in slots.iter().enumerate() {
            let off = s as usize * row;
            self.k_buffers[layer].read_f32(off, &mut k_out[i * row..(i + 1) * row]);
            self.v_buffers[layer].read_f32(off, &mut v_out[i * row..(i + 1) * row]);
        }
        Ok(())
    }

    /// K of one slot of `layer` as f32, `[num_kv_heads, head_dim]`.
    pub fn k_f32(&self, layer: usize, slot: u32) -> Result<Vec<f32>> {
        self.row_f32(layer, slot, true)
    }

    /// V of one slot of `layer` as f32, `[num_kv_heads, head_dim]`.
    pub fn v_f32(&self, layer: usize, slot: u32) -> Result<Vec<f32>> {
        self.row_f32(layer, slot, false)
    }

    fn row_f32(&self, layer: usize, slot: u32, k: bool) -> Result<Vec<f32>> {
        self.check_layer(layer)?;
        self.check_slots(&[slot])?;
        let mut out = vec![0.0; self.row_len()];
        let buf = if k {
            &self.k_buffers[layer]
        } else {
            &self.v_buffers[layer]
        };
        buf.read_f32(slot as usize * self.row_len(), &mut out);
        Ok(out)
    }

    /// Raw K buffer of `layer`, `[capacity + 1, num_kv_heads, head_dim]`.
    pub fn k_buffer(&self, layer: usize) -> Result<&KvBuffer> {
        self.check_layer(layer)?;
        Ok(&self.k_buffers[layer])
    }

    /// Raw V buffer of `layer`, `[capacity + 1, num_kv_heads, head_dim]`.
    pub fn v_buffer(&self, layer: usize) -> Result<&KvBuffer> {
        self.check_layer(layer)?;
        Ok(&self.v_buffers[layer])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_free_reuse_and_padding_slot() {
        let mut p = TokenToKvPool::new(5, 1, 1, 2, KvDtype::F32);
        assert_eq!(p.available(), 5);
        let a = p.alloc(3).unwrap();
        assert_eq!(a, vec![1, 2, 3]);
        let b = p.alloc(2).unwrap();
        assert_eq!(b, vec![4, 5]);
        assert_eq!(p.available(), 0);
        p.free(&a[1..]).unwrap();
        assert_eq!(p.available(), 2);
        let c = p.alloc(2).unwrap();
        let mut sorted = c.clone();
        sorted.sort();
        assert_eq!(sorted, vec![2, 3]);
        // Cycle everything many times: slot 0 is never handed out, no slot twice.
        p.clear();
        for _ in 0..10 {
            let all = p.alloc(5).unwrap();
            assert!(!all.contains(&0));
            let mut s = all.clone();
            s.sort();
            s.dedup();
            assert_eq!(s.len(), 5);
            p.free(&all[2..]).unwrap();
            p.free(&all[..2]).unwrap();
        }
        assert!(p.alloc(0).unwrap().is_empty());
    }

    #[test]
    fn exhaustion_message() {
        let mut p = TokenToKvPool::new(4, 1, 1, 2, KvDtype::F32);
        p.alloc(3).unwrap();
        let err = p.alloc(2).unwrap_err();
        assert_eq!(
            err,
            MemCacheError::KvPoolFull {
                requested: 2,
                available: 1,
                capacity: 4
            }
        );
        let msg = err.to_string();
        assert!(msg.contains("requested 2") && msg.contains("only 1 available"), "{msg}");
        assert_eq!(p.available(), 1, "failed alloc must not take slots");
    }

    #[test]
    fn double_free_and_out_of_range() {
        let mut p = TokenToKvPool::new(4, 1, 1, 2, KvDtype::F32);
        let a = p.alloc(2).unwrap();
        p.free(&a).unwrap();
        assert_eq!(p.free(&a).unwrap_err(), MemCacheError::KvDoubleFree { slot: a[0] });
        assert!(matches!(
            p.free(&[0]).unwrap_err(),
            MemCacheError::KvSlotOutOfRange { slot: 0, .. }
        ));
        assert!(matches!(
            p.free(&[5]).unwrap_err(),
            MemCacheError::KvSlotOutOfRange { slot: 5, .. }
        ));
        // Duplicate within one call, and all-or-nothing.
        let b = p.alloc(2).unwrap();
        assert_eq!(
            p.free(&[b[0], b[1], b[0]]).unwrap_err(),
            MemCacheError::KvDoubleFree { slot: b[0] }
        );
        assert!(p.is_allocated(b[0]) && p.is_allocated(b[1]));
        assert_eq!(p.available(), 2);
        assert!(p.free(&[b[0], 99]).is_err());
        assert!(p.is_allocated(b[0]));
        p.free(&b).unwrap();
        assert_eq!(p.available(), 4);
    }

    #[test]
    fn set_and_read_kv() {
        for dtype in [KvDtype::F32, KvDtype::BF16] {
            let mut p = TokenToKvPool::new(6, 2, 2, 3, dtype);
            let slots = p.alloc(2).unwrap();
            let k: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
            let v: Vec<f32> = (0..12).map(|i| -(i as f32)).collect();
            p.set_kv(1, &slots, &k, &v).unwrap();
            assert_eq!(p.k_f32(1, slots[1]).unwrap(), k[6..].to_vec());
            assert_eq!(p.v_f32(1, slots[0]).unwrap(), v[..6].to_vec());
            assert_eq!(p.k_f32(0, slots[1]).unwrap(), vec![0.0; 6], "other layer untouched");
            let (mut ko, mut vo) = (vec![0.0; 12], vec![0.0; 12]);
            p.gather_kv(1, &[slots[1], slots[0]], &mut ko, &mut vo).unwrap();
            assert_eq!(&ko[..6], &k[6..]);
            assert_eq!(&vo[6..], &v[..6]);
            assert_eq!(p.k_buffer(1).unwrap().dtype(), dtype);
            assert_eq!(p.k_buffer(1).unwrap().len(), 7 * 6);
            // Errors.
            assert_eq!(
                p.set_kv(2, &slots, &k, &v).unwrap_err(),
                MemCacheError::LayerOutOfRange {
                    layer: 2,
                    num_layers: 2
                }
            );
            assert!(matches!(
                p.set_kv(0, &slots, &k[..11], &v).unwrap_err(),
                MemCacheError::Shape { .. }
            ));
            assert!(matches!(
                p.set_kv(0, &[7, 1], &k, &v).unwrap_err(),
                MemCacheError::KvSlotOutOfRange { .. }
            ));
            assert!(p.k_f32(0, 7).is_err());
            assert_eq!(p.memory_bytes(), 2 * 2 * 7 * 6 * dtype.size());
        }
    }

    #[test]
    fn bf16_rounds() {
        let mut p = TokenToKvPool::new(1, 1, 1, 2, KvDtype::BF16);
        let s = p.alloc(1).unwrap();
        p.set_kv(0, &s, &[1.0 / 3.0, 1000.1], &[0.1, -7.77]).unwrap();
        let k = p.k_f32(0, s[0]).unwrap();
        assert!((k[0] - 1.0 / 3.0).abs() < 1.0 / 3.0 * 2f32.powi(-8));
        assert!((k[1] - 1000.1).abs() < 1000.1 * 2f32.powi(-8));
    }

    #[test]
    fn budget() {
        // 32 layers, 8 KV heads, head_dim 128, bf16: 2*32*8*128*2 = 131072 bytes per token.
        let per_token = 2 * 32 * 8 * 128 * 2;
        assert_eq!(capacity_for_budget(1 << 30, 32, 8, 128, 2), (1 << 30) / per_token - 1);
        assert_eq!(capacity_for_budget(per_token * 101 + 5, 32, 8, 128, 2), 100);
        assert_eq!(capacity_for_budget(per_token - 1, 32, 8, 128, 2), 0);
        assert_eq!(capacity_for_budget(1 << 20, 0, 8, 128, 2), 0);
        assert_eq!(capacity_for_budget(usize::MAX, usize::MAX, 2, 2, 2), 0);
        // The resulting pool fits in the budget.
        let budget = 10_000;
        let cap = capacity_for_budget(budget, 2, 2, 8, 4);
        let pool = TokenToKvPool::new(cap, 2, 2, 8, KvDtype::F32);
        assert!(pool.memory_bytes() <= budget);
        let bigger = TokenToKvPool::new(cap + 1, 2, 2, 8, KvDtype::F32);
        assert!(bigger.memory_bytes() > budget);
    }
}
