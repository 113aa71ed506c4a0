//! Tool-call ids: `call_` + 24 hex characters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Makes tool-call ids from a seed and a counter: `call_` followed by 24
/// hex characters of a hash of both. [`with_seed`](Self::with_seed) is
/// deterministic (tests, replays); [`Default`] seeds from the clock and a
/// process-wide counter so parallel requests differ.
///
/// ```
/// use mllm_engine::parsers::CallIdGenerator;
///
/// let mut a = CallIdGenerator::with_seed(7);
/// let mut b = CallIdGenerator::with_seed(7);
/// let id = a.next_id();
/// assert_eq!(id, b.next_id());
/// assert!(id.starts_with("call_") && id.len() == 29);
/// assert_ne!(a.next_id(), id);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallIdGenerator {
    seed: u64,
    counter: u64,
}

impl CallIdGenerator {
    /// A generator whose ids depend only on `seed` and how many came before.
    pub fn with_seed(seed: u64) -> Self {
        Self { seed, counter: 0 }
    }

    /// The next id.
    pub fn next_id(&mut self) -> String {
        let high = mix(self.seed ^ mix(self.counter));
        let low = mix(high ^ self.counter);
        self.counter += 1;
        format!("call_{high:016x}{:08x}", low as u32)
    }
}

impl Default for CallIdGenerator {
    fn default() -> Self {
        static STREAMS: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let stream = STREAMS.fetch_add(1, Ordering::Relaxed);
        Self::with_seed(mix(nanos) ^ mix(stream.wrapping_add(0x5851_f42d_4c95_7f2d)))
    }
}

/// splitmix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
