//! Picking tokens where the logits are: greedy batches take the argmax kernel; batches whose
//! requests use no penalties and no logprobs take the sampling kernel (temperature, top-k,
//! top-p, min-p, a Philox draw seeded from each request's RNG). Only the ids come back to the
//! host, instead of a `[B, vocab]` f32 logits download. Anything else goes to the host sampler.

use mllm_kernel::ops::{self, SampleParams};
use mllm_kernel::{DeviceTensor, Gpu};

use crate::executor::sampler::{SampleOutput, SequenceState};
use crate::models::{ModelError, Result};

/// Whether every request of the batch can be sampled on the GPU.
pub(super) fn all_on_gpu(states: &[SequenceState]) -> bool {
    states.iter().all(|s| s.params().is_plain())
}

/// The kernel's parameters of one request: greedy as top-k 1 (the argmax, lowest id on ties),
/// else its filters with a fresh seed from its RNG.
fn kernel_params(state: &mut SequenceState) -> SampleParams {
    let p = state.params().clone();
    if p.is_greedy() {
        return SampleParams {
            temperature: 1.0,
            top_k: 1,
            ..SampleParams::default()
        };
    }
    SampleParams {
        temperature: p.temperature,
        top_k: p.top_k.max(0),
        top_p: p.top_p,
        min_p: p.min_p,
        seed: state.next_seed(),
        offset: 0,
    }
}

/// Token ids `[rows]` for `logits: [rows (+ padding), vocab]`: the argmax kernel when every
/// request is greedy, else the sampling kernel (padding rows take the argmax).
pub(super) fn pick(gpu: &Gpu, logits: &DeviceTensor, states: &mut [SequenceState]) -> Result<Vec<u32>> {
    let rows = states.len();
    let ids = if states.iter().all(|s| s.params().is_greedy()) {
        ops::argmax(gpu, logits)?.to_host::<i32>(gpu)?
    } else {
        let padded = logits.shape()[0];
        let mut params: Vec<SampleParams> = states.iter_mut().map(kernel_params).collect();
        params.resize(padded, kernel_params_padding());
        let words = SampleParams::pack(&params)?;
        let params = DeviceTensor::from_host(gpu, &words, &[padded, SampleParams::WORDS])?;
        let (ids, _logprobs) = ops::sample(gpu, logits, &params)?;
        ids.to_host::<i32>(gpu)?
    };
    ids.into_iter()
        .take(rows)
        .enumerate()
        .map(|(i, id)| {
            u32::try_from(id).map_err(|_| {
                ModelError::Invalid(format!(
                    "GPU sampling failed for request {i} of the batch: its logits row has NaN or +inf, \
                     or no finite value"
                ))
            })
        })
        .collect()
}

fn kernel_params_padding() -> SampleParams {
    SampleParams {
        temperature: 1.0,
        top_k: 1,
        ..SampleParams::default()
    }
}

/// The outputs for `ids`, recorded in each request's state.
pub(super) fn outputs(ids: Vec<u32>, states: &mut [SequenceState]) -> Vec<SampleOutput> {
    ids.into_iter()
        .zip(states.iter_mut())
        .map(|(token, s)| {
            s.push_output(token);
            SampleOutput {
                token,
                logprob: None,
                top_logprobs: None,
            }
        })
        .collect()
}
