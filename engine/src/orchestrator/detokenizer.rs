//! The detokenizer stage of one sequence: incremental decoding ([`DecodeStream`]) and stop
//! strings ([`StopMatcher`]), so a stop string is never emitted, not even in part.

use std::sync::Arc;

use crate::generation::StopMatcher;
use crate::tokenizer::{DecodeStream, Tokenizer};

/// Text produced for one token.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DetokOutput {
    /// New text safe to emit.
    pub text: String,
    /// The stop string that ended the text, if one appeared.
    pub stopped: Option<String>,
}

/// How a sequence's tokens become text (SGLang's names).
///
/// ```
/// use mllm_engine::orchestrator::TextOptions;
/// let o = TextOptions::with_stops(vec!["\n\n".into()]);
/// assert!(o.skip_special_tokens && !o.no_stop_trim);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextOptions {
    /// Stop strings: generation ends where one appears.
    pub stop: Vec<String>,
    /// Leave special tokens out of the text (default on).
    pub skip_special_tokens: bool,
    /// Keep the matched stop string at the end of the text instead of cutting it.
    pub no_stop_trim: bool,
}

impl Default for TextOptions {
    fn default() -> Self {
        Self::with_stops(Vec::new())
    }
}

impl TextOptions {
    /// The defaults with stop strings `stop`.
    pub fn with_stops(stop: Vec<String>) -> Self {
        Self {
            stop,
            skip_special_tokens: true,
            no_stop_trim: false,
        }
    }
}

/// Per-sequence detokenizer; without a tokenizer (dummy weights) it produces no text.
#[derive(Debug)]
pub struct Detokenizer {
    tokenizer: Option<Arc<Tokenizer>>,
    stream: DecodeStream,
    stops: StopMatcher,
    no_stop_trim: bool,
}

impl Detokenizer {
    /// A detokenizer applying `opts`.
    pub fn new(tokenizer: Option<Arc<Tokenizer>>, opts: &TextOptions) -> Self {
        Self {
            tokenizer,
            stream: DecodeStream::new(opts.skip_special_tokens),
            stops: StopMatcher::new(opts.stop.clone()),
            no_stop_trim: opts.no_stop_trim,
        }
    }

    /// Feeds a generated token (not a stop token).
    pub fn push(&mut self, token: u32) -> Result<DetokOutput, String> {
        let Some(tok) = &self.tokenizer else {
            return Ok(DetokOutput::default());
        };
        let Some(piece) = self.stream.step(tok, token).map_err(|e| e.to_string())? else {
            return Ok(DetokOutput::default());
        };
        let (mut text, stopped) = self.stops.push(&piece);
        let stopped = if stopped {
            self.stops.matched().map(str::to_string)
        } else {
            None
        };
        if let Some(stop) = stopped.as_deref().filter(|_| self.no_stop_trim) {
            text.push_str(stop);
        }
        Ok(DetokOutput { text, stopped })
    }

    /// The held-back text at the end of generation (none after a stop string).
    pub fn finish(&mut self) -> String {
        if self.stops.matched().is_some() {
            String::new()
        } else {
            self.stops.flush()
        }
    }
}
