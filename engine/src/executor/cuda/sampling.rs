//! Picking tokens where the logits are: greedy batches take the argmax kernel; batches whose
//! requests use no penalties take the sampling kernel (temperature, top-k, top-p, min-p, a
//! Philox draw seeded from each request's RNG), which also gives the chosen token's logprob, and
//! requests for logprobs add the top-N kernel over the same (temperature-scaled) rows. Only ids
//! and logprobs come back to the host, instead of a `[B, vocab]` f32 logits download. Penalized
//! requests and more than [`ops::MAX_TOP_LOGPROBS`] logprobs go to the host sampler.

use mllm_kernel::ops::{self, SampleParams};
use mllm_kernel::staging::{Staging, StagingPair};
use mllm_kernel::{DeviceTensor, Gpu};

use crate::executor::sampler::{SampleOutput, SequenceState};
use crate::models::{ModelError, Result};

/// Whether every request of the batch can be sampled on the GPU.
pub(super) fn all_on_gpu(states: &[SequenceState]) -> bool {
    states.iter().all(|s| {
        let p = s.params();
        p.is_unpenalized() && p.logprobs.is_none_or(|n| n <= ops::MAX_TOP_LOGPROBS)
    })
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

/// What [`pick_async`] gives: every output now, or the ids still on the device.
pub(crate) enum Picked {
    /// Tokens (and logprobs), already recorded in the states.
    Host(Vec<SampleOutput>),
    /// `[rows (+ padding)]` i32 ids, queued on the stream; [`record_ids`] takes them once
    /// downloaded.
    Device(DeviceTensor),
}

/// Each request's token (and logprobs when asked) for `logits: [rows (+ padding), vocab]`:
/// the argmax kernel when every request is greedy without logprobs, else the sampling kernel
/// (padding rows take the argmax), plus the top-N kernel for logprobs; downloaded and
/// recorded in the states. With `keep_on_device` and no logprobs asked it only queues the
/// kernel and returns its ids on the device (the states' RNGs advance now; [`record_ids`]
/// records the outputs once downloaded). The sampling kernel's parameters go up through
/// `staging`.
pub(super) fn pick_async(
    (gpu, staging): (&Gpu, &mut StagingPair),
    logits: &DeviceTensor,
    states: &mut [SequenceState],
    keep_on_device: bool,
) -> Result<Picked> {
    let logprobs = states.iter().any(|s| s.params().logprobs.is_some());
    let (ids, chosen) = if !logprobs && states.iter().all(|s| s.params().is_greedy()) {
        (ops::argmax(gpu, logits)?, None)
    } else {
        let padded = logits.shape()[0];
        let mut params: Vec<SampleParams> = states.iter_mut().map(kernel_params).collect();
        params.resize(padded, kernel_params_padding());
        let words = SampleParams::pack(&params)?;
        // Page-locked: a pageable upload may wait for the forward just queued.
        let mut up = staging.begin(gpu, Staging::bytes_for(&[4 * words.len()]))?;
        let params = up.tensor(&words, &[padded, SampleParams::WORDS])?;
        up.finish()?;
        let (ids, chosen) = ops::sample(gpu, logits, &params)?;
        (ids, Some(chosen))
    };
    if !logprobs && keep_on_device {
        return Ok(Picked::Device(ids));
    }
    let chosen = match chosen {
        Some(c) if logprobs => c.to_host::<f32>(gpu)?,
        _ => Vec::new(),
    };
    let mut out = record_ids(&ids.to_host::<i32>(gpu)?, states)?;
    let mut tops = top_lists(gpu, logits, states)?;
    for (i, (o, s)) in out.iter_mut().zip(states.iter()).enumerate() {
        if s.params().logprobs.is_some() {
            o.logprob = chosen.get(i).copied();
            o.top_logprobs = tops.get_mut(i).and_then(Option::take);
        }
    }
    Ok(Picked::Host(out))
}

/// Records each request's sampled id (`ids[i]` for `states[i]`; padding rows past them are
/// ignored) and returns the outputs, without logprobs. A negative id is a row the kernel
/// found no valid logit in.
pub(crate) fn record_ids(ids: &[i32], states: &mut [SequenceState]) -> Result<Vec<SampleOutput>> {
    if ids.len() < states.len() {
        return Err(ModelError::Invalid(format!(
            "{} sampled ids for {} requests",
            ids.len(),
            states.len()
        )));
    }
    let tokens = ids
        .iter()
        .take(states.len())
        .enumerate()
        .map(|(i, &id)| {
            u32::try_from(id).map_err(|_| {
                ModelError::Invalid(format!(
                    "GPU sampling failed for request {i} of the batch: its logits row has NaN or +inf, \
                     or no finite value"
                ))
            })
        })
        .collect::<Result<Vec<u32>>>()?;
    Ok(tokens
        .into_iter()
        .zip(states.iter_mut())
        .map(|(token, s)| {
            s.push_output(token);
            SampleOutput {
                token,
                logprob: None,
                top_logprobs: None,
            }
        })
        .collect())
}

/// One request's top-N `(token id, logprob)` pairs, most likely first.
type TopList = Vec<(u32, f32)>;

/// Each request's top-N `(id, logprob)` list (`None` where it asked for no logprobs) from one
/// top-N kernel launch at the largest N asked, over each row scaled as the host sampler
/// scales it (by 1 / temperature, or not at all when greedy).
fn top_lists(gpu: &Gpu, logits: &DeviceTensor, states: &[SequenceState]) -> Result<Vec<Option<TopList>>> {
    let vocab = logits.shape()[1];
    let asked: Vec<Option<usize>> = states
        .iter()
        .map(|s| s.params().logprobs.map(|n| n.min(vocab)))
        .collect();
    let n = asked.iter().flatten().copied().max().unwrap_or(0);
    if n == 0 {
        return Ok(asked.iter().map(|a| a.map(|_| Vec::new())).collect());
    }
    let padded = logits.shape()[0];
    let mut scale: Vec<f32> = states
        .iter()
        .map(|s| {
            let p = s.params();
            if p.is_greedy() {
                1.0
            } else {
                1.0 / p.temperature
            }
        })
        .collect();
    scale.resize(padded, 1.0);
    let scale = DeviceTensor::from_host(gpu, &scale, &[padded])?;
    let (ids, lps) = ops::top_logprobs(gpu, logits, Some(&scale), n)?;
    let (ids, lps) = (ids.to_host::<i32>(gpu)?, lps.to_host::<f32>(gpu)?);
    Ok(asked
        .iter()
        .enumerate()
        .map(|(row, a)| {
            a.map(|want| {
                let (ids, lps) = (&ids[row * n..][..want], &lps[row * n..][..want]);
                // A valid row (the sampler checked it) fills every slot; -1 ids cannot occur.
                ids.iter()
                    .zip(lps)
                    .filter_map(|(&id, &lp)| Some((u32::try_from(id).ok()?, lp)))
                    .collect()
            })
        })
        .collect())
}

fn kernel_params_padding() -> SampleParams {
    SampleParams {
        temperature: 1.0,
        top_k: 1,
        ..SampleParams::default()
    }
}
