//! HF chat templates rendered with minijinja, configured like `transformers`
//! (`trim_blocks`, `lstrip_blocks`, Python string methods, `tojson`,
//! `raise_exception`, `strftime_now`).

mod json;
#[cfg(test)]
mod tests;
mod time;

use std::collections::BTreeMap;
use std::sync::Arc;

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, Error, ErrorKind, Value};
use serde::{Deserialize, Serialize};

const TEMPLATE_NAME: &str = "chat_template";

/// One piece of a message with images, in order; rendered for the template as HF's processors
/// pass it: `{"type": "text", "text": ...}` or `{"type": "image"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// An image (the template writes the model's placeholder for it).
    Image,
}

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`, ...
    pub role: String,
    /// The text of the turn (of a turn with `parts`: its text parts joined).
    pub content: String,
    /// A turn with images: its parts, given to the template as `content` (a list) instead of
    /// the text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<Vec<ContentPart>>,
    /// Further fields templates read, as given: `tool_calls`, `tool_call_id`, `name`,
    /// `reasoning_content`.
    #[serde(flatten, default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ChatMessage {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            parts: None,
            extra: Default::default(),
        }
    }

    /// A message of text and image parts; the template sees `content` as the list of parts.
    ///
    /// ```
    /// use mllm_engine::tokenizer::{ChatMessage, ContentPart};
    /// let m = ChatMessage::with_parts("user", vec![ContentPart::Image, ContentPart::Text { text: "hi".into() }]);
    /// assert_eq!(m.content, "hi");
    /// ```
    pub fn with_parts(role: impl Into<String>, parts: Vec<ContentPart>) -> Self {
        let content: String = parts
            .iter()
            .filter_map(|p| match p {
                ContentPart::Text { text } => Some(text.as_str()),
                ContentPart::Image => None,
            })
            .collect();
        Self {
            parts: Some(parts),
            ..Self::new(role, content)
        }
    }

    /// This message with field `key` set to `value` (for the template).
    ///
    /// ```
    /// use mllm_engine::tokenizer::ChatMessage;
    /// let m = ChatMessage::new("tool", "22 C").with("tool_call_id", "call_1".into());
    /// assert_eq!(m.extra["tool_call_id"], "call_1");
    /// ```
    pub fn with(mut self, key: &str, value: serde_json::Value) -> Self {
        self.extra.insert(key.to_string(), value);
        self
    }
}

/// Errors of compiling or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    /// The template has a syntax error.
    #[error("syntax error: {0:#}")]
    Syntax(#[source] Error),
    /// The template called `raise_exception(message)`: the request is not
    /// valid for this model (e.g. roles not alternating).
    #[error("chat template rejected the conversation: {message}")]
    Raised {
        /// The template's message.
        message: String,
    },
    /// Rendering failed for another reason.
    #[error("render error: {0:#}")]
    Render(#[source] Error),
    /// `extra` context was not a JSON object.
    #[error("extra template context must be a JSON object, got {0}")]
    ExtraNotObject(String),
}

/// The message of `raise_exception`, carried as the source of a minijinja error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Raised(String);

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, "raise_exception called").with_source(Raised(message)))
}

/// A compiled chat template.
///
/// ```
/// use mllm_engine::tokenizer::{ChatMessage, ChatTemplate};
/// let t = ChatTemplate::new(
///     "{% for m in messages %}<|{{ m.role }}|>{{ m.content.strip() }}{% endfor %}\
///      {% if add_generation_prompt %}<|assistant|>{% endif %}",
///     "<s>",
///     "</s>",
/// )?;
/// let out = t.render(&[ChatMessage::new("user", " hi ")], true, None)?;
/// assert_eq!(out, "<|user|>hi<|assistant|>");
/// # Ok::<(), mllm_engine::tokenizer::ChatTemplateError>(())
/// ```
#[derive(Clone)]
pub struct ChatTemplate {
    env: Arc<Environment<'static>>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token` / `eos_token` become template globals.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, ChatTemplateError> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(ChatTemplateError::Syntax)?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", json::tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", time::strftime_now);
        env.add_global("bos_token", bos_token.to_string());
        env.add_global("eos_token", eos_token.to_string());
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(ChatTemplateError::Syntax)?;
        Ok(Self { env: Arc::new(env) })
    }

    /// Renders `messages`. `extra` is a JSON object whose keys are added to the
    /// context (e.g. `{"tools": [...], "enable_thinking": false}`).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: Option<&serde_json::Value>,
    ) -> Result<String, ChatTemplateError> {
        let mut ctx = BTreeMap::new();
        if let Some(extra) = extra {
            let serde_json::Value::Object(map) = extra else {
                return Err(ChatTemplateError::ExtraNotObject(extra.to_string()));
            };
            for (k, v) in map {
                ctx.insert(k.clone(), json::to_value(v));
            }
        }
        let msgs: Vec<Value> = messages
            .iter()
            .map(|m| {
                let mut map: BTreeMap<&str, Value> =
                    m.extra.iter().map(|(k, v)| (k.as_str(), json::to_value(v))).collect();
                map.insert("role", Value::from(m.role.as_str()));
                let content = match &m.parts {
                    Some(parts) => json::to_value(&serde_json::to_value(parts).unwrap_or_default()),
                    None => Value::from(m.content.as_str()),
                };
                map.insert("content", content);
                Value::from(map)
            })
            .collect();
        ctx.insert("messages".into(), Value::from(msgs));
        ctx.insert("add_generation_prompt".into(), Value::from(add_generation_prompt));
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(ChatTemplateError::Render)?;
        template.render(Value::from(ctx)).map_err(classify)
    }
}

/// Surfaces `raise_exception` as [`ChatTemplateError::Raised`].
fn classify(err: Error) -> ChatTemplateError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        if let Some(raised) = e.downcast_ref::<Raised>() {
            return ChatTemplateError::Raised {
                message: raised.0.clone(),
            };
        }
        source = e.source();
    }
    ChatTemplateError::Render(err)
}
