//! KV-cache memory management, modelled on SGLang/pymllm's `mem_cache` (page size 1).
//!
//! Two levels of indirection, as in SGLang:
//!
//! - [`ReqToTokenPool`] maps `(request slot, token position)` to a KV slot index: one row of
//!   `max_context_len` `i32`s per running request.
//! - [`TokenToKvPool`] owns the KV slots themselves: a free-list allocator over `capacity`
//!   slots (slot 0 is the reserved padding slot) plus per-layer K and V buffers of shape
//!   `[capacity + 1, num_kv_heads, head_dim]`, stored as f32 or bf16.
//!
//! [`attention`] runs causal (extend/prefill) and decode attention on the CPU directly over the
//! pool, gathering a sequence's K/V through its slot indices.

pub mod attention;
#[cfg(target_arch = "x86_64")]
mod attention_avx512;
pub mod radix_cache;
pub mod req_to_token;
pub mod token_to_kv;

use thiserror::Error;

pub use attention::{decode_attention, extend_attention};
pub use req_to_token::ReqToTokenPool;
pub use token_to_kv::{capacity_for_budget, KvBuffer, KvDtype, TokenToKvPool};

/// Errors from the KV-cache pools and the paged attention.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MemCacheError {
    /// Host access to a pool whose K/V live on a GPU ([`TokenToKvPool::allocator_only`]).
    #[error("this KV pool's buffers live on the GPU; only its slot allocator is on the host")]
    DeviceResident,
    /// [`ReqToTokenPool::alloc`] asked for more request slots than are free.
    #[error("req_to_token pool exhausted: requested {requested} request slot(s), only {free} free (pool size {size})")]
    ReqPoolFull {
        /// Slots asked for.
        requested: usize,
        /// Slots free at the time.
        free: usize,
        /// Total slots in the pool.
        size: usize,
    },
    /// A request slot index outside `0..size`.
    #[error("request slot {slot} out of range (pool size {size})")]
    ReqSlotOutOfRange {
        /// The offending slot.
        slot: usize,
        /// Total slots in the pool.
        size: usize,
    },
    /// A request slot freed twice (or never allocated).
    #[error("double free of request slot {slot} (it is not allocated)")]
    ReqDoubleFree {
        /// The offending slot.
        slot: usize,
    },
    /// A read or write on a request slot that is not allocated.
    #[error("request slot {slot} is not allocated")]
    ReqSlotNotAllocated {
        /// The offending slot.
        slot: usize,
    },
    /// A position range past `max_context_len`.
    #[error("positions {start}..{end} of request slot {slot} out of range (max_context_len {max_context_len})")]
    PositionOutOfRange {
        /// The request slot.
        slot: usize,
        /// First position.
        start: usize,
        /// One past the last position.
        end: usize,
        /// Row length of the table.
        max_context_len: usize,
    },
    /// [`TokenToKvPool::alloc`] asked for more KV slots than are free.
    #[error("KV cache exhausted: requested {requested} KV slot(s), only {available} available (capacity {capacity})")]
    KvPoolFull {
        /// Slots asked for.
        requested: usize,
        /// Slots free at the time.
        available: usize,
        /// Usable slots in the pool.
        capacity: usize,
    },
    /// A KV slot index outside the pool (`0..=capacity`, or `1..=capacity` when freeing).
    #[error("KV slot {slot} out of range (valid slots 1..={capacity}, slot 0 is the padding slot)")]
    KvSlotOutOfRange {
        /// The offending slot.
        slot: u64,
        /// Usable slots in the pool.
        capacity: usize,
    },
    /// A KV slot freed twice (or never allocated).
    #[error("double free of KV slot {slot} (it is not allocated)")]
    KvDoubleFree {
        /// The offending slot.
        slot: u32,
    },
    /// A layer index outside `0..num_layers`.
    #[error("layer {layer} out of range (num_layers {num_layers})")]
    LayerOutOfRange {
        /// The offending layer.
        layer: usize,
        /// Layers in the pool.
        num_layers: usize,
    },
    /// A buffer or dimension that does not match what is expected.
    #[error("shape mismatch for {what}: expected {expected}, got {got}")]
    Shape {
        /// What was being checked.
        what: &'static str,
        /// Expected value (length or dimension).
        expected: usize,
        /// Actual value.
        got: usize,
    },
    /// Any other invalid argument.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, MemCacheError>;
