//! Shared helpers for integration tests.
#![allow(dead_code)]

use mllm_kernel::dtype::FloatElem;
use mllm_kernel::{Error, Gpu};

/// The GPU, or `None` after printing why the test is skipped. Only a missing
/// device skips; any other failure to open it fails the test.
pub fn gpu_or_skip(test: &str) -> Option<Gpu> {
    match Gpu::new(0) {
        Ok(gpu) => Some(gpu),
        Err(e @ Error::NoCudaDevice { .. }) => {
            eprintln!("SKIPPED {test}: {e}");
            None
        }
        Err(e) => panic!("{test}: GPU present but unusable: {e}"),
    }
}

/// Deterministic values in [-scale, scale] (xorshift64).
pub fn random_f32(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// `v` rounded to the element type `T`.
pub fn cast<T: FloatElem>(v: &[f32]) -> Vec<T> {
    v.iter().map(|x| T::from_f32(*x)).collect()
}
