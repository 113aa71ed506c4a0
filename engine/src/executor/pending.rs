//! Steps launched but not yet read (overlap scheduling). [`ModelRunner::launch`] queues a
//! step and returns a [`PendingStep`]; on a GPU whose requests all sample there, the sampled
//! ids stay on the device and a non-blocking download is queued, so the host can build and
//! launch the next step before it waits. That next step may take the ids it continues from as
//! [`FutureToken`]s: fed on the device from the previous step's ids, or on the host when that
//! step's tokens are already there (the CPU backend, the host sampler).
//!
//! [`ModelRunner::launch`]: super::model_runner::ModelRunner::launch

use mllm_kernel::readback::Readback;
use mllm_kernel::DeviceTensor;

use super::forward_batch::{ForwardBatch, FutureToken};
use super::sampler::SampleOutput;
use crate::models::{ModelError, Result};

/// A launched step; [`ModelRunner::finish`](super::model_runner::ModelRunner::finish) gives
/// its samples. Dropping it unread loses them (the step still runs).
#[must_use = "a launched step's samples are read with ModelRunner::finish"]
pub struct PendingStep {
    pub(super) inner: Pending,
}

pub(super) enum Pending {
    /// Sampled at launch; already recorded in the sequences' states.
    Done(Vec<SampleOutput>),
    /// `rows` ids on their way to the host; recorded in the states at finish.
    OnDevice { readback: Readback, rows: usize },
}

impl PendingStep {
    /// Whether the samples are on the host already (the finish will not wait).
    pub fn is_done(&self) -> bool {
        matches!(self.inner, Pending::Done(_))
    }
}

impl std::fmt::Debug for PendingStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Pending::Done(out) => write!(f, "PendingStep(done, {} samples)", out.len()),
            Pending::OnDevice { rows, .. } => write!(f, "PendingStep(on the device, {rows} samples)"),
        }
    }
}

/// The last launched step's sampled ids: where the next step's future tokens come from.
pub(super) enum LastSamples {
    Host(Vec<u32>),
    /// `[rows (+ padding)]` i32 ids and the real row count.
    Device(DeviceTensor, usize),
}

impl std::fmt::Debug for LastSamples {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Host(ids) => write!(f, "LastSamples::Host({} ids)", ids.len()),
            Self::Device(_, rows) => write!(f, "LastSamples::Device({rows} ids)"),
        }
    }
}

/// Checks the batch's future tokens against `rows` samples of the last step.
pub(super) fn check_futures(batch: &ForwardBatch, rows: usize) -> Result<()> {
    for &FutureToken { row, sample } in &batch.future_tokens {
        if sample >= rows || row >= batch.num_tokens() {
            return Err(ModelError::Invalid(format!(
                "future token (input row {row}, sample {sample}) outside a batch of {} tokens fed by \
                 a step of {rows} samples",
                batch.num_tokens()
            )));
        }
    }
    Ok(())
}

/// A copy of `batch` with its future tokens written in from host `samples`.
pub(super) fn resolve_on_host(batch: &ForwardBatch, samples: &[u32]) -> Result<ForwardBatch> {
    check_futures(batch, samples.len())?;
    let mut b = batch.clone();
    for f in std::mem::take(&mut b.future_tokens) {
        b.input_ids[f.row] = samples[f.sample];
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::forward_batch::{LogitsMode, SequenceInput};
    use crate::mem_cache::{KvDtype, ReqToTokenPool, TokenToKvPool};

    #[test]
    fn host_resolution_writes_the_samples_and_checks_rows() {
        let mut req = ReqToTokenPool::new(4, 16);
        let mut kv = TokenToKvPool::new(32, 1, 1, 2, KvDtype::F32);
        let s = req.alloc(2).unwrap();
        let inputs = [
            SequenceInput {
                req_slot: s[0],
                prefix_len: 0,
                new_tokens: vec![4, 0],
            },
            SequenceInput {
                req_slot: s[1],
                prefix_len: 0,
                new_tokens: vec![0],
            },
        ];
        let b = ForwardBatch::build(&inputs, &mut req, &mut kv, LogitsMode::LastPerSequence)
            .unwrap()
            .with_future_tokens(&[(1, 0), (0, 2)])
            .unwrap();
        let r = resolve_on_host(&b, &[70, 71, 72]).unwrap();
        assert_eq!((r.input_ids, r.future_tokens.len()), (vec![4, 72, 70], 0));
        let err = resolve_on_host(&b, &[70, 71]).unwrap_err().to_string();
        assert!(err.contains("2 samples"), "{err}");
    }
}
