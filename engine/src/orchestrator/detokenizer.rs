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

/// Per-sequence detokenizer; without a tokenizer (dummy weights) it produces no text.
#[derive(Debug)]
pub struct Detokenizer {
    tokenizer: Option<Arc<Tokenizer>>,
    stream: DecodeStream,
    stops: StopMatcher,
}

impl Detokenizer {
    /// A detokenizer with the given stop strings.
    pub fn new(tokenizer: Option<Arc<Tokenizer>>, stops: Vec<String>) -> Self {
        Self {
            tokenizer,
            stream: DecodeStream::new(true),
            stops: StopMatcher::new(stops),
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
        let (text, stopped) = self.stops.push(&piece);
        Ok(DetokOutput {
            text,
            stopped: if stopped {
                self.stops.matched().map(str::to_string)
            } else {
                None
            },
        })
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
