//! Request and response types shared by the serving stages: the HTTP handlers build a
//! [`TokenizedRequest`], the scheduler answers on the request's channel with [`TokenEvent`]s.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::executor::sampler::{SampleOutput, SamplingParams};
use crate::multimodal::MultimodalInputs;

/// Identifies one sequence in flight: the request id and, for `n > 1`, the choice index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeqId {
    /// The request id (`rid`), shared by the `n` choices of one request.
    pub rid: String,
    /// The choice index, `0..n`.
    pub index: usize,
}

/// A validated, tokenized sequence ready for the scheduler.
#[derive(Debug, Clone)]
pub struct TokenizedRequest {
    /// Which sequence.
    pub id: SeqId,
    /// Prompt token ids (non-empty).
    pub input_ids: Vec<u32>,
    /// Sampling parameters (already validated).
    pub params: SamplingParams,
    /// Most new tokens (at least 1).
    pub max_new_tokens: usize,
    /// Tokens that end generation (EOS unless `ignore_eos`, plus the request's `stop_token_ids`).
    pub stop_token_ids: Vec<u32>,
    /// The prompt's images (pixels, grids, placeholder ranges in `input_ids`, hashes), shared by
    /// the `n` choices of a request; `None` for text.
    pub mm: Option<Arc<MultimodalInputs>>,
}

/// Why a sequence ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// `max_new_tokens` reached.
    Length,
    /// A stop token was sampled (it is not part of the text).
    StopToken(u32),
    /// A stop string appeared in the text (detected by the detokenizer).
    StopString(String),
    /// Aborted (client gone, `/abort_request`, shutdown).
    Abort,
}

impl Finish {
    /// The OpenAI `finish_reason`: `length`, `stop` or `abort`.
    ///
    /// ```
    /// use mllm_engine::io_struct::Finish;
    /// assert_eq!(Finish::StopToken(2).openai_reason(), "stop");
    /// assert_eq!(Finish::Length.openai_reason(), "length");
    /// ```
    pub fn openai_reason(&self) -> &'static str {
        match self {
            Self::Length => "length",
            Self::StopToken(_) | Self::StopString(_) => "stop",
            Self::Abort => "abort",
        }
    }
}

/// What the scheduler sends back for one sequence.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenEvent {
    /// A generated token; `finish` is set on the last one.
    Token {
        /// The sampler's output (token and logprobs).
        sample: SampleOutput,
        /// Set when this token ends the sequence.
        finish: Option<Finish>,
    },
    /// The sequence was aborted (`/abort_request`, shutdown); no more events follow.
    Aborted,
    /// The sequence failed; no more events follow.
    Error(String),
}

/// The channel a sequence's [`TokenEvent`]s arrive on.
pub type EventSender = mpsc::UnboundedSender<TokenEvent>;

/// Messages into the scheduler thread.
#[derive(Debug)]
pub enum SchedulerMsg {
    /// A new sequence and where to send its events.
    Add(Box<TokenizedRequest>, EventSender),
    /// Abort every sequence of this request id.
    Abort(String),
    /// Abort one sequence.
    AbortSeq(SeqId),
    /// Abort every sequence (shutdown timeout reached).
    AbortAll,
    /// Drop the prefix cache if no sequence is in flight; replies whether it did.
    FlushCache(tokio::sync::oneshot::Sender<bool>),
    /// Finish the running sequences, then exit.
    Shutdown,
}
