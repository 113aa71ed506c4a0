//! Which weight each W8A8 GEMM of a small batch asks to be pulled into L2 as it finishes
//! (mllm-kernel's [`L2Hint`]): the next GEMM's, whose first bytes then travel while the short
//! kernels in between (norms, RoPE, attention) run.

use mllm_kernel::ops::L2Hint;
use mllm_kernel::DeviceTensor;

use crate::models::{ModelError, Result};

/// Larger batches compute long enough in their GEMMs that the gaps matter little.
const DEFAULT_MAX_TOKENS: usize = 16;

/// The policy of one model: `budget` leading bytes of the next weight (0: off) for batches
/// of at most `max_tokens` rows.
pub(super) struct WeightPrefetch {
    budget: usize,
    max_tokens: usize,
}

fn env_usize(name: &str) -> Result<Option<usize>> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| ModelError::Invalid(format!("{name}={v:?} is not a non-negative integer"))),
        Err(_) => Ok(None),
    }
}

impl WeightPrefetch {
    /// `MLLM_L2_PREFETCH_MB` MiB of the next weight (default 0: off, until measured on the
    /// GPU) for batches of up to `MLLM_L2_PREFETCH_MAX_TOKENS` (16) rows.
    pub fn from_env() -> Result<Self> {
        Ok(Self {
            budget: env_usize("MLLM_L2_PREFETCH_MB")?.unwrap_or(0) << 20,
            max_tokens: env_usize("MLLM_L2_PREFETCH_MAX_TOKENS")?.unwrap_or(DEFAULT_MAX_TOKENS),
        })
    }

    /// The hint naming `next` for a GEMM over `tokens` rows, if the policy prefetches.
    pub fn hint<'a>(&self, tokens: usize, next: &'a DeviceTensor) -> Option<L2Hint<'a>> {
        (self.budget > 0 && tokens <= self.max_tokens).then(|| L2Hint::new(next, self.budget))
    }
}
