//! The tokenizer stage: chat-template rendering and encoding, run on blocking threads so the
//! async handlers never tokenize on the runtime.

use std::sync::Arc;

use crate::tokenizer::{ChatMessage, Tokenizer};

/// What to tokenize.
#[derive(Debug, Clone)]
pub enum PromptInput {
    /// Plain text, encoded with special tokens (BOS) as the tokenizer adds them.
    Text(String),
    /// A conversation rendered with the model's chat template (generation prompt appended);
    /// `extra` holds template kwargs such as `enable_thinking`.
    Chat {
        /// The messages.
        messages: Vec<ChatMessage>,
        /// Extra template variables (a JSON object).
        extra: Option<serde_json::Value>,
    },
}

/// Errors of the tokenizer stage; each becomes a 400 naming `param`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TokenizeError {
    /// The request field at fault.
    pub param: &'static str,
    /// What went wrong.
    pub message: String,
}

/// Renders (for chats) and encodes `input` on a blocking thread.
pub async fn tokenize(tokenizer: Option<Arc<Tokenizer>>, input: PromptInput) -> Result<Vec<u32>, TokenizeError> {
    let param = match input {
        PromptInput::Text(_) => "prompt",
        PromptInput::Chat { .. } => "messages",
    };
    let Some(tok) = tokenizer else {
        return Err(TokenizeError {
            param,
            message: "the model has no tokenizer (random weights); send input_ids to /generate".into(),
        });
    };
    let job = tokio::task::spawn_blocking(move || tokenize_blocking(&tok, &input));
    job.await.unwrap_or_else(|e| {
        Err(TokenizeError {
            param,
            message: format!("tokenizer failed: {e}"),
        })
    })
}

/// The synchronous body of [`tokenize`].
pub fn tokenize_blocking(tok: &Tokenizer, input: &PromptInput) -> Result<Vec<u32>, TokenizeError> {
    match input {
        PromptInput::Text(text) => tok.encode(text, true).map_err(|e| TokenizeError {
            param: "prompt",
            message: e.to_string(),
        }),
        PromptInput::Chat { messages, extra } => {
            let bad = |message: String| TokenizeError {
                param: "messages",
                message,
            };
            let template = tok
                .chat_template()
                .ok_or_else(|| bad("the model has no chat template; use /v1/completions".into()))?;
            let text = template
                .render(messages, true, extra.as_ref())
                .map_err(|e| bad(format!("chat template: {e}")))?;
            tok.encode(&text, false).map_err(|e| bad(e.to_string()))
        }
    }
}
