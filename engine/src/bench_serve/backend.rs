//! The wire formats of the three endpoints a benchmark can drive: the request body of a
//! [`WorkItem`] and what one streamed event says (a token arrived, token counts).

use clap::ValueEnum;
use serde::Serialize;
use serde_json::{json, Value};

use super::workload::{Prompt, WorkItem};

/// Which endpoint to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// `POST /v1/completions` (streamed; token-id or text prompts).
    #[default]
    Openai,
    /// `POST /v1/chat/completions` (streamed; text prompts only).
    OpenaiChat,
    /// SGLang's native `POST /generate` (streamed; token-id or text prompts).
    Native,
}

/// What one streamed event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventInfo {
    /// New output arrived (text, or for `/generate` a new token id).
    pub token: bool,
    /// The server's prompt token count, when the event carries it.
    pub prompt_tokens: Option<usize>,
    /// The server's output token count so far, when the event carries it.
    pub completion_tokens: Option<usize>,
}

impl Backend {
    /// The endpoint path.
    ///
    /// ```
    /// use mllm_engine::bench_serve::Backend;
    /// assert_eq!(Backend::default().path(), "/v1/completions");
    /// ```
    pub fn path(self) -> &'static str {
        match self {
            Self::Openai => "/v1/completions",
            Self::OpenaiChat => "/v1/chat/completions",
            Self::Native => "/generate",
        }
    }

    /// Whether prompts of token ids can be sent.
    pub fn takes_token_ids(self) -> bool {
        self != Self::OpenaiChat
    }

    /// The streamed, greedy request body; EOS is ignored so exactly `output_len` tokens come.
    /// `None` when the backend cannot carry the prompt (token ids to the chat endpoint).
    ///
    /// ```
    /// use mllm_engine::bench_serve::{Backend, Prompt, WorkItem};
    /// let item = WorkItem { prompt: Prompt::Ids(vec![5, 6]), input_len: 2, output_len: 3 };
    /// let body = Backend::Native.body(&item, "m").unwrap();
    /// assert_eq!(body["input_ids"], serde_json::json!([5, 6]));
    /// assert_eq!(body["sampling_params"]["max_new_tokens"], 3);
    /// assert!(Backend::OpenaiChat.body(&item, "m").is_none());
    /// ```
    pub fn body(self, item: &WorkItem, model: &str) -> Option<Value> {
        let prompt = match &item.prompt {
            Prompt::Ids(ids) => json!(ids),
            Prompt::Text(t) => json!(t),
        };
        let n = item.output_len;
        Some(match self {
            Self::Openai => json!({
                "model": model, "prompt": prompt, "max_tokens": n, "temperature": 0.0, "ignore_eos": true,
                "stream": true, "stream_options": {"include_usage": true},
            }),
            Self::OpenaiChat => {
                let Prompt::Text(text) = &item.prompt else {
                    return None;
                };
                json!({
                    "model": model, "messages": [{"role": "user", "content": text}], "max_tokens": n,
                    "temperature": 0.0, "ignore_eos": true, "stream": true,
                    "stream_options": {"include_usage": true},
                })
            }
            Self::Native => {
                let key = if matches!(item.prompt, Prompt::Ids(_)) {
                    "input_ids"
                } else {
                    "text"
                };
                json!({
                    key: prompt, "stream": true,
                    "sampling_params": {"max_new_tokens": n, "temperature": 0.0, "ignore_eos": true},
                })
            }
        })
    }

    /// Reads one event's JSON. `seen` is the output token count so far (for `/generate`, whose
    /// events are cumulative). An `error` object in the stream is returned as the error.
    ///
    /// ```
    /// use mllm_engine::bench_serve::Backend;
    /// let ev = serde_json::json!({"choices": [{"index": 0, "text": "Hi", "finish_reason": null}]});
    /// assert!(Backend::Openai.read_event(&ev, 0).unwrap().token);
    /// let err = serde_json::json!({"error": {"message": "boom"}});
    /// assert_eq!(Backend::Openai.read_event(&err, 0).unwrap_err(), "boom");
    /// ```
    pub fn read_event(self, event: &Value, seen: usize) -> Result<EventInfo, String> {
        if let Some(err) = event.get("error") {
            let msg = err.get("message").and_then(Value::as_str).map(str::to_string);
            return Err(msg.unwrap_or_else(|| err.to_string()));
        }
        let count = |v: &Value, key: &str| v.get(key).and_then(Value::as_u64).map(|n| n as usize);
        match self {
            Self::Openai | Self::OpenaiChat => {
                let usage = event.get("usage").filter(|u| !u.is_null());
                let choice = event.get("choices").and_then(|c| c.get(0));
                let text = choice.and_then(|c| match self {
                    Self::OpenaiChat => c.pointer("/delta/content"),
                    _ => c.get("text"),
                });
                let has_text = text.and_then(Value::as_str).is_some_and(|t| !t.is_empty());
                // The last token may decode to no new text; its chunk still ends the choice.
                let finished = choice
                    .and_then(|c| c.get("finish_reason"))
                    .is_some_and(|f| !f.is_null());
                Ok(EventInfo {
                    token: has_text || finished,
                    prompt_tokens: usage.and_then(|u| count(u, "prompt_tokens")),
                    completion_tokens: usage.and_then(|u| count(u, "completion_tokens")),
                })
            }
            Self::Native => {
                let meta = event.get("meta_info");
                let done = meta.and_then(|m| count(m, "completion_tokens"));
                Ok(EventInfo {
                    token: done.is_some_and(|d| d > seen),
                    prompt_tokens: meta.and_then(|m| count(m, "prompt_tokens")),
                    completion_tokens: done,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_ask_for_exact_greedy_streams() {
        let ids = WorkItem {
            prompt: Prompt::Ids(vec![1, 2, 3]),
            input_len: 3,
            output_len: 7,
        };
        let b = Backend::Openai.body(&ids, "m").unwrap();
        assert_eq!(b["prompt"], json!([1, 2, 3]));
        assert_eq!(
            (b["max_tokens"].clone(), b["ignore_eos"].clone()),
            (json!(7), json!(true))
        );
        assert_eq!(b["stream_options"]["include_usage"], json!(true));
        let text = WorkItem {
            prompt: Prompt::Text("hi".into()),
            input_len: 1,
            output_len: 2,
        };
        let b = Backend::OpenaiChat.body(&text, "m").unwrap();
        assert_eq!(b["messages"][0]["content"], json!("hi"));
        assert_eq!(Backend::Native.body(&text, "m").unwrap()["text"], json!("hi"));
    }

    #[test]
    fn events_of_each_backend() {
        let chat_role =
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]});
        assert!(!Backend::OpenaiChat.read_event(&chat_role, 0).unwrap().token);
        let chat_tok = json!({"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": null}]});
        assert!(Backend::OpenaiChat.read_event(&chat_tok, 0).unwrap().token);
        let last = json!({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]});
        assert!(Backend::Openai.read_event(&last, 0).unwrap().token);
        let usage = json!({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9}});
        let info = Backend::Openai.read_event(&usage, 0).unwrap();
        assert_eq!(
            (info.token, info.prompt_tokens, info.completion_tokens),
            (false, Some(5), Some(9))
        );
        let native =
            json!({"text": "", "output_ids": [4, 4], "meta_info": {"prompt_tokens": 3, "completion_tokens": 2}});
        assert!(Backend::Native.read_event(&native, 1).unwrap().token);
        assert!(!Backend::Native.read_event(&native, 2).unwrap().token);
    }
}
