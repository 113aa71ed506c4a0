//! Wire types of the OpenAI-compatible and native endpoints (requests only; responses are
//! built as JSON values in the handlers).

use serde::Deserialize;
use serde_json::Value;

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl StopField {
    /// The strings.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// Sampling and text fields every generation endpoint takes under the same names.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SamplingFields {
    /// Temperature (0 = greedy); default 1.
    pub temperature: Option<f32>,
    /// Nucleus mass.
    pub top_p: Option<f32>,
    /// Top-k (0 or -1: off).
    pub top_k: Option<i32>,
    /// Min-p.
    pub min_p: Option<f32>,
    /// RNG seed.
    pub seed: Option<u64>,
    /// Stop strings.
    pub stop: Option<StopField>,
    /// Extra stop token ids.
    pub stop_token_ids: Option<Vec<u32>>,
    /// Number of choices.
    pub n: Option<i64>,
    /// Frequency penalty.
    pub frequency_penalty: Option<f32>,
    /// Presence penalty.
    pub presence_penalty: Option<f32>,
    /// Repetition penalty.
    pub repetition_penalty: Option<f32>,
    /// Keep going past EOS.
    pub ignore_eos: Option<bool>,
    /// Leave special tokens out of the text (default true).
    pub skip_special_tokens: Option<bool>,
    /// Keep a matched stop string at the end of the text.
    pub no_stop_trim: Option<bool>,
}

/// Sampling fields of `/v1/completions` and `/v1/chat/completions`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct OpenAiSampling {
    /// Most new tokens.
    pub max_tokens: Option<i64>,
    /// Same as `max_tokens` (newer name; wins when both are set).
    pub max_completion_tokens: Option<i64>,
    /// Stream SSE chunks.
    pub stream: Option<bool>,
    /// Stream options.
    pub stream_options: Option<StreamOptions>,
    /// The fields shared with `/generate`.
    #[serde(flatten)]
    pub fields: SamplingFields,
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a final chunk with usage.
    pub include_usage: Option<bool>,
}

/// A chat message's content: a string or content parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Parts: `{"type": "text", "text": ...}`, `{"type": "image_url", "image_url": {"url": ...}}`
    /// or `{"type": "image", "image": <url>}`.
    Parts(Vec<ContentPart>),
}

/// One content part.
#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    /// The part type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a text part.
    pub text: Option<String>,
    /// The image of an `image_url` part.
    pub image_url: Option<ImageUrl>,
    /// The image URL of an `image` part (the HF processor's spelling).
    pub image: Option<String>,
}

/// `image_url` of a content part.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageUrl {
    /// A `data:image/...;base64,` URI, or a local path / `file://` URL when the server allows a
    /// local media directory; `http(s)` URLs are refused.
    pub url: String,
    /// OpenAI's `low`/`high`/`auto`; accepted and ignored (the checkpoint's processor decides).
    pub detail: Option<String>,
}

/// One chat message.
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The content (may be absent for assistant tool calls).
    pub content: Option<Content>,
    /// An assistant turn's earlier tool calls (passed to the chat template as given).
    pub tool_calls: Option<Value>,
    /// A tool result's call id.
    pub tool_call_id: Option<String>,
    /// A participant or tool name.
    pub name: Option<String>,
    /// An assistant turn's reasoning, for templates that render it.
    pub reasoning_content: Option<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// The model name (must be the served one when given).
    pub model: Option<String>,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Return logprobs of the chosen tokens.
    pub logprobs: Option<bool>,
    /// How many alternatives per token (0..=20, needs `logprobs`).
    pub top_logprobs: Option<i64>,
    /// Extra chat template variables.
    pub chat_template_kwargs: Option<Value>,
    /// Functions the model may call (rendered by the chat template).
    pub tools: Option<Vec<Value>>,
    /// `none`, `auto` (default with tools), `required` or a named function.
    pub tool_choice: Option<Value>,
    /// Output format; only `{"type": "text"}` is supported.
    pub response_format: Option<Value>,
    /// Split `<think>` reasoning into `reasoning_content` (default true; needs
    /// `--reasoning-parser`).
    pub separate_reasoning: Option<bool>,
    /// Continue the last (assistant) message instead of starting a new turn.
    #[serde(default)]
    pub continue_final_message: bool,
    /// Append the assistant turn opener (default true; false with `continue_final_message`).
    pub add_generation_prompt: Option<bool>,
    /// Sampling.
    #[serde(flatten)]
    pub sampling: OpenAiSampling,
}

/// `prompt` of `/v1/completions`: one prompt or a batch, as text or token ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    /// Text.
    Text(String),
    /// Token ids.
    Ids(Vec<u32>),
    /// A batch of texts.
    Texts(Vec<String>),
    /// A batch of token-id prompts.
    IdLists(Vec<Vec<u32>>),
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// The model name.
    pub model: Option<String>,
    /// The prompt.
    pub prompt: PromptField,
    /// Number of alternatives per token to return (0..=20).
    pub logprobs: Option<i64>,
    /// Sampling.
    #[serde(flatten)]
    pub sampling: OpenAiSampling,
}

/// `sampling_params` of `/generate`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NativeSampling {
    /// Most new tokens (default 128).
    pub max_new_tokens: Option<i64>,
    /// The fields shared with the OpenAI endpoints.
    #[serde(flatten)]
    pub fields: SamplingFields,
}

/// `POST /generate`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenerateBody {
    /// Prompt text (or `input_ids`).
    pub text: Option<String>,
    /// Prompt token ids.
    pub input_ids: Option<Vec<u32>>,
    /// Sampling.
    #[serde(default)]
    pub sampling_params: NativeSampling,
    /// Stream SSE chunks (cumulative text).
    #[serde(default)]
    pub stream: bool,
    /// Request id (for `/abort_request`).
    pub rid: Option<String>,
    /// Return per-token logprobs.
    #[serde(default)]
    pub return_logprob: bool,
    /// Alternatives per token with `return_logprob`.
    pub top_logprobs_num: Option<usize>,
    /// SGLang's images for `/generate`: not supported (refused with a 400, never ignored).
    pub image_data: Option<serde_json::Value>,
}

/// `POST /abort_request`.
#[derive(Debug, Clone, Deserialize)]
pub struct AbortBody {
    /// The request id.
    pub rid: String,
}
