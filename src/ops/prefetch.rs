//! L2 prefetch hints that kernels issue beside their own work.

use crate::tensor::DeviceTensor;

/// Asks a kernel to pull the first `max_bytes` of `tensor` into L2 once its own main work is
/// done.
///
/// Between two weight-streaming GEMMs of a small batch run short kernels (norms, RoPE,
/// attention) that leave DRAM mostly idle. A GEMM hinted with the next GEMM's weight issues
/// those reads from its whole grid as it finishes, so they travel while the short kernels
/// run and the next GEMM finds part of its weight in L2. Only a hint: results never depend
/// on it, and kernels without support ignore it.
///
/// ```
/// # fn f(w: &mllm_kernel::DeviceTensor) {
/// use mllm_kernel::ops::L2Hint;
/// let hint = L2Hint::new(w, 16 << 20);
/// assert!(hint.bytes() <= 16 << 20 && hint.bytes() % 16 == 0);
/// # }
/// ```
#[derive(Clone, Copy)]
pub struct L2Hint<'a> {
    pub(crate) tensor: &'a DeviceTensor,
    max_bytes: usize,
}

impl<'a> L2Hint<'a> {
    pub fn new(tensor: &'a DeviceTensor, max_bytes: usize) -> Self {
        Self { tensor, max_bytes }
    }

    /// The bytes requested: the tensor's size or `max_bytes`, whichever is smaller, rounded
    /// down to the 16-byte granule of a bulk prefetch.
    pub fn bytes(&self) -> usize {
        self.tensor.nbytes().min(self.max_bytes) & !15
    }
}
