//! [`ForwardBatch`]: everything one model forward needs to know about a batch of sequences —
//! flattened token ids and positions, the KV slots the new tokens write to (`out_cache_loc`)
//! and, per sequence, the KV slots of its whole context.

use crate::mem_cache::{ReqToTokenPool, TokenToKvPool};
use crate::models::{ModelError, Result};

/// What kind of step a batch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardMode {
    /// Prefill: every sequence brings new prompt tokens (possibly after a cached prefix).
    Extend,
    /// Every sequence brings exactly one token after a non-empty context.
    Decode,
    /// Both kinds of sequences in one batch.
    Mixed,
}

/// Which positions get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogitsMode {
    /// The last new token of each sequence (`[batch, vocab]`), like SGLang's LogitsProcessor.
    #[default]
    LastPerSequence,
    /// Every new token (`[tokens, vocab]`), for tests and perplexity.
    All,
}

/// One sequence's input to a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceInput {
    /// Its row in the [`ReqToTokenPool`].
    pub req_slot: usize,
    /// Tokens whose K/V are already in the cache (their slots are in the req→token row).
    pub prefix_len: usize,
    /// The tokens to run this step.
    pub new_tokens: Vec<u32>,
}

/// Per-sequence layout inside a [`ForwardBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceMeta {
    /// Row in the [`ReqToTokenPool`].
    pub req_slot: usize,
    /// Cached tokens before this step.
    pub prefix_len: usize,
    /// New tokens this step.
    pub extend_len: usize,
    /// Offset of its first new token in the flattened batch.
    pub start: usize,
    /// KV slots of the whole context (`prefix_len + extend_len`), prefix first.
    pub kv_indices: Vec<u32>,
}

/// A batch ready for `model.forward`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardBatch {
    /// Extend, decode or mixed.
    pub mode: ForwardMode,
    /// New tokens of all sequences, concatenated.
    pub input_ids: Vec<u32>,
    /// Position of each new token (`prefix_len + i`).
    pub positions: Vec<usize>,
    /// KV slot each new token writes to.
    pub out_cache_loc: Vec<u32>,
    /// Per-sequence layout, in input order.
    pub seqs: Vec<SequenceMeta>,
    /// Which positions get logits.
    pub logits: LogitsMode,
    /// Tokens the previous launched step samples (overlap scheduling): their `input_ids`
    /// entries are placeholders until the runner feeds them, on the device where that step's
    /// ids are. See [`ForwardBatch::with_future_tokens`].
    pub future_tokens: Vec<FutureToken>,
}

/// An input token that is the previous launched step's sample of row `sample`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FutureToken {
    /// Its row in [`ForwardBatch::input_ids`].
    pub row: usize,
    /// The row of the previous step's samples (its sequence order) it takes.
    pub sample: usize,
}

impl ForwardBatch {
    /// Builds a batch: validates the inputs, allocates KV slots for all new tokens, records them in
    /// each sequence's req→token row and reads back each full context. On error nothing stays
    /// allocated.
    ///
    /// ```
    /// use mllm_engine::executor::forward_batch::{ForwardBatch, ForwardMode, LogitsMode, SequenceInput};
    /// use mllm_engine::mem_cache::{KvDtype, ReqToTokenPool, TokenToKvPool};
    ///
    /// let mut req = ReqToTokenPool::new(4, 16);
    /// let mut kv = TokenToKvPool::new(32, 1, 1, 2, KvDtype::F32);
    /// let slot = req.alloc(1).unwrap()[0];
    /// let seq = SequenceInput { req_slot: slot, prefix_len: 0, new_tokens: vec![5, 6, 7] };
    /// let b = ForwardBatch::build(&[seq], &mut req, &mut kv, LogitsMode::LastPerSequence).unwrap();
    /// assert_eq!((b.mode, b.positions.clone()), (ForwardMode::Extend, vec![0, 1, 2]));
    /// let next = SequenceInput { req_slot: slot, prefix_len: 3, new_tokens: vec![8] };
    /// let d = ForwardBatch::build(&[next], &mut req, &mut kv, LogitsMode::LastPerSequence).unwrap();
    /// assert_eq!((d.mode, d.seqs[0].kv_indices.len()), (ForwardMode::Decode, 4));
    /// ```
    pub fn build(
        inputs: &[SequenceInput],
        req_pool: &mut ReqToTokenPool,
        kv_pool: &mut TokenToKvPool,
        logits: LogitsMode,
    ) -> Result<Self> {
        if inputs.is_empty() {
            return Err(ModelError::Invalid("empty batch".into()));
        }
        for (i, s) in inputs.iter().enumerate() {
            if s.new_tokens.is_empty() {
                return Err(ModelError::Invalid(format!("sequence {i} has no new tokens")));
            }
            req_pool.read(s.req_slot, 0..s.prefix_len + s.new_tokens.len())?;
        }
        let total: usize = inputs.iter().map(|s| s.new_tokens.len()).sum();
        let out_cache_loc = kv_pool.alloc(total)?;
        match Self::layout(inputs, req_pool, out_cache_loc.clone()) {
            Ok(mut b) => {
                b.logits = logits;
                Ok(b)
            }
            Err(e) => {
                kv_pool.free(&out_cache_loc)?;
                Err(e)
            }
        }
    }

    fn layout(inputs: &[SequenceInput], req_pool: &mut ReqToTokenPool, out_cache_loc: Vec<u32>) -> Result<Self> {
        let mut input_ids = Vec::with_capacity(out_cache_loc.len());
        let mut positions = Vec::with_capacity(out_cache_loc.len());
        let mut seqs = Vec::with_capacity(inputs.len());
        for s in inputs {
            let start = input_ids.len();
            let n = s.new_tokens.len();
            req_pool.write(s.req_slot, s.prefix_len, &out_cache_loc[start..start + n])?;
            input_ids.extend_from_slice(&s.new_tokens);
            positions.extend(s.prefix_len..s.prefix_len + n);
            seqs.push(SequenceMeta {
                req_slot: s.req_slot,
                prefix_len: s.prefix_len,
                extend_len: n,
                start,
                kv_indices: req_pool.kv_indices(s.req_slot, 0..s.prefix_len + n)?,
            });
        }
        let decode_like = |m: &SequenceMeta| m.extend_len == 1 && m.prefix_len > 0;
        let mode = match seqs.iter().filter(|m| decode_like(m)).count() {
            0 => ForwardMode::Extend,
            d if d == seqs.len() => ForwardMode::Decode,
            _ => ForwardMode::Mixed,
        };
        Ok(Self {
            mode,
            input_ids,
            positions,
            out_cache_loc,
            seqs,
            logits: LogitsMode::default(),
            future_tokens: Vec::new(),
        })
    }

    /// Marks the last new token of sequence `seq` (index into [`ForwardBatch::seqs`]) as the
    /// previous launched step's sample of row `sample`, for each `(seq, sample)` pair: the
    /// runner feeds it before the forward. Each sequence at most once.
    ///
    /// ```
    /// use mllm_engine::executor::forward_batch::{ForwardBatch, FutureToken, LogitsMode, SequenceInput};
    /// use mllm_engine::mem_cache::{KvDtype, ReqToTokenPool, TokenToKvPool};
    ///
    /// let mut req = ReqToTokenPool::new(4, 16);
    /// let mut kv = TokenToKvPool::new(32, 1, 1, 2, KvDtype::F32);
    /// let slot = req.alloc(1).unwrap()[0];
    /// let seq = SequenceInput { req_slot: slot, prefix_len: 0, new_tokens: vec![5, 6, 0] };
    /// let b = ForwardBatch::build(&[seq], &mut req, &mut kv, LogitsMode::LastPerSequence).unwrap();
    /// let b = b.with_future_tokens(&[(0, 3)]).unwrap();
    /// assert_eq!(b.future_tokens, [FutureToken { row: 2, sample: 3 }]);
    /// assert!(b.with_future_tokens(&[(1, 0)]).is_err());
    /// ```
    pub fn with_future_tokens(mut self, pairs: &[(usize, usize)]) -> Result<Self> {
        let mut marked = vec![false; self.seqs.len()];
        for &(seq, sample) in pairs {
            let Some(m) = self.seqs.get(seq) else {
                return Err(ModelError::Invalid(format!(
                    "future token for sequence {seq} of a batch of {}",
                    self.seqs.len()
                )));
            };
            if std::mem::replace(&mut marked[seq], true) {
                return Err(ModelError::Invalid(format!("sequence {seq} has two future tokens")));
            }
            self.future_tokens.push(FutureToken {
                row: m.start + m.extend_len - 1,
                sample,
            });
        }
        Ok(self)
    }

    /// Number of sequences.
    pub fn batch_size(&self) -> usize {
        self.seqs.len()
    }

    /// Number of new tokens.
    pub fn num_tokens(&self) -> usize {
        self.input_ids.len()
    }

    /// Rows of the hidden states that get logits (see [`LogitsMode`]).
    pub fn logit_rows(&self) -> Vec<usize> {
        match self.logits {
            LogitsMode::All => (0..self.num_tokens()).collect(),
            LogitsMode::LastPerSequence => self.seqs.iter().map(|s| s.start + s.extend_len - 1).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem_cache::KvDtype;

    #[test]
    fn mixed_batch_and_rollback() {
        let mut req = ReqToTokenPool::new(4, 8);
        let mut kv = TokenToKvPool::new(10, 1, 1, 2, KvDtype::F32);
        let s = req.alloc(2).unwrap();
        let a = SequenceInput {
            req_slot: s[0],
            prefix_len: 0,
            new_tokens: vec![1, 2, 3],
        };
        ForwardBatch::build(&[a], &mut req, &mut kv, LogitsMode::All).unwrap();
        let batch = [
            SequenceInput {
                req_slot: s[0],
                prefix_len: 3,
                new_tokens: vec![4],
            },
            SequenceInput {
                req_slot: s[1],
                prefix_len: 0,
                new_tokens: vec![7, 8],
            },
        ];
        let b = ForwardBatch::build(&batch, &mut req, &mut kv, LogitsMode::LastPerSequence).unwrap();
        assert_eq!(b.mode, ForwardMode::Mixed);
        assert_eq!(b.positions, vec![3, 0, 1]);
        assert_eq!(b.logit_rows(), vec![0, 2]);
        assert_eq!(b.seqs[1].start, 1);
        assert_eq!(&b.seqs[0].kv_indices[3..], &b.out_cache_loc[..1]);
        // Past max_context_len: rejected before allocating.
        let free = kv.available();
        let long = SequenceInput {
            req_slot: s[1],
            prefix_len: 2,
            new_tokens: vec![0; 7],
        };
        assert!(ForwardBatch::build(&[long], &mut req, &mut kv, LogitsMode::All).is_err());
        assert_eq!(kv.available(), free);
        // Out of KV slots.
        let big = SequenceInput {
            req_slot: s[1],
            prefix_len: 0,
            new_tokens: vec![0; 8],
        };
        let err = ForwardBatch::build(&[big], &mut req, &mut kv, LogitsMode::All).unwrap_err();
        assert!(err.to_string().contains("KV cache exhausted"), "{err}");
        assert!(ForwardBatch::build(&[], &mut req, &mut kv, LogitsMode::All).is_err());
    }
}
