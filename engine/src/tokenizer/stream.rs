//! Incremental detokenization for streaming.

use super::{Result, Tokenizer, TokenizerError};

/// Turns generated ids into text pieces, holding back bytes until they form
/// valid UTF-8 (a multi-byte character split over several byte tokens) and
/// decoding with enough left context that word-boundary decoders (spaces,
/// `Ġ`) produce the same text as decoding the whole sequence.
///
/// It owns no reference to the tokenizer, so one stream per request can live
/// in the detokenizer stage; pass the tokenizer to each [`DecodeStream::step`].
///
/// ```no_run
/// use mllm_engine::tokenizer::Tokenizer;
/// let tok = Tokenizer::from_dir("/models/Qwen3-0.6B")?;
/// let mut stream = tok.decode_stream(true);
/// let mut text = String::new();
/// for id in tok.encode("héllo wörld", false)? {
///     if let Some(piece) = stream.step(&tok, id)? {
///         text.push_str(&piece);
///     }
/// }
/// assert_eq!(text, "héllo wörld");
/// # Ok::<(), mllm_engine::tokenizer::TokenizerError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct DecodeStream {
    skip_special_tokens: bool,
    /// The context window: ids already emitted as `prefix`, then pending ids.
    ids: Vec<u32>,
    /// Decoded text of `ids[..prefix_len]`.
    prefix: String,
    prefix_len: usize,
}

impl DecodeStream {
    /// A new stream; see [`Tokenizer::decode_stream`].
    pub fn new(skip_special_tokens: bool) -> Self {
        Self {
            skip_special_tokens,
            ..Self::default()
        }
    }

    /// Feeds one id; returns the new text once it is complete UTF-8, else `None`.
    pub fn step(&mut self, tok: &Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = tok.decode(&self.ids, self.skip_special_tokens)?;
        if text.len() <= self.prefix.len() || text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let Some(new_text) = text.strip_prefix(self.prefix.as_str()) else {
            return Err(TokenizerError::Decode(format!(
                "streaming decode of token {id}: {text:?} does not extend the previous text {:?}",
                self.prefix
            )));
        };
        let new_text = new_text.to_string();
        // Keep only the last emitted chunk as left context for the next step.
        self.ids.drain(..self.prefix_len);
        self.prefix_len = self.ids.len();
        self.prefix = tok.decode(&self.ids, self.skip_special_tokens)?;
        Ok(Some(new_text))
    }

    /// Ids fed but not yet emitted as text (an incomplete character at the end of generation).
    pub fn pending(&self) -> &[u32] {
        &self.ids[self.prefix_len..]
    }
}
