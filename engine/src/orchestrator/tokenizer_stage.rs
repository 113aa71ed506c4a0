//! The tokenizer stage: chat-template rendering and encoding, run on blocking threads so the
//! async handlers never tokenize on the runtime.

use std::sync::Arc;

use crate::tokenizer::{ChatMessage, Tokenizer};

/// What to tokenize.
#[derive(Debug, Clone)]
pub enum PromptInput {
    /// Plain text, encoded with special tokens (BOS) as the tokenizer adds them.
    Text(String),
    /// A conversation rendered with the model's chat template; `extra` holds template kwargs
    /// such as `enable_thinking` and `tools`.
    Chat {
        /// The messages.
        messages: Vec<ChatMessage>,
        /// Extra template variables (a JSON object).
        extra: Option<serde_json::Value>,
        /// Append the assistant turn opener.
        add_generation_prompt: bool,
        /// Continue the last message: the rendering is cut right after its content.
        continue_final_message: bool,
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
        PromptInput::Chat {
            messages,
            extra,
            add_generation_prompt,
            continue_final_message,
        } => {
            let bad = |message: String| TokenizeError {
                param: "messages",
                message,
            };
            let template = tok
                .chat_template()
                .ok_or_else(|| bad("the model has no chat template; use /v1/completions".into()))?;
            let add_prompt = *add_generation_prompt && !*continue_final_message;
            let mut text = template
                .render(messages, add_prompt, extra.as_ref())
                .map_err(|e| bad(format!("chat template: {e}")))?;
            if *continue_final_message {
                text = cut_after_final_message(text, messages).map_err(bad)?;
            }
            tok.encode(&text, false).map_err(|e| bad(e.to_string()))
        }
    }
}

/// The rendering up to the end of the last message's content, so generation continues that
/// message (the template's end-of-turn markup after it is dropped).
fn cut_after_final_message(mut text: String, messages: &[ChatMessage]) -> Result<String, String> {
    let last = messages.last().map(|m| m.content.as_str()).unwrap_or_default();
    if last.is_empty() {
        return Err("continue_final_message needs a last message with content".into());
    }
    let end = text
        .rfind(last)
        .ok_or("continue_final_message: the chat template changed the last message's text")?
        + last.len();
    text.truncate(end);
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::cut_after_final_message;
    use crate::tokenizer::ChatMessage;

    #[test]
    fn continuing_cuts_the_end_of_turn_markup() {
        let msgs = [
            ChatMessage::new("user", "Hi"),
            ChatMessage::new("assistant", "The answer is"),
        ];
        let text = "<|user|>Hi<|end|><|assistant|>The answer is<|end|>\n".to_string();
        assert_eq!(
            cut_after_final_message(text, &msgs).unwrap(),
            "<|user|>Hi<|end|><|assistant|>The answer is"
        );
        let err = cut_after_final_message("x".into(), &msgs).unwrap_err();
        assert!(err.contains("changed"), "{err}");
    }
}
