//! `/v1/chat/completions` and `/v1/completions`.

use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::error::ApiError;
use super::json::{body_bytes, parse_body};
use super::protocol::{ChatRequest, CompletionRequest, Content, OpenAiSampling, PromptField};
use super::stream::{collect, launch, Collected, Tagged};
use super::validate::SamplingSpec;
use super::{new_rid, unix_time, AppState};
use crate::executor::sampler::SampleOutput;
use crate::orchestrator::tokenizer_stage::{tokenize, PromptInput};
use crate::tokenizer::ChatMessage;

/// Which endpoint's response shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(app): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let req: ChatRequest = parse_body(&body)?;
    app.check_model(req.model.as_deref())?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must hold at least one message",
        ));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        let content = match &m.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => text.push_str(t),
                        (kind, _) => {
                            return Err(ApiError::invalid(
                                &format!("messages[{i}].content"),
                                format!("unsupported content part type `{kind}` (only text parts)"),
                            ))
                        }
                    }
                }
                text
            }
        };
        messages.push(ChatMessage::new(m.role.clone(), content));
    }
    let top = match (req.logprobs, req.top_logprobs) {
        (_, Some(k)) if k < 0 => return Err(ApiError::invalid("top_logprobs", "top_logprobs must be >= 0")),
        (Some(true), k) => Some(k.unwrap_or(0) as usize),
        _ => None,
    };
    let input = PromptInput::Chat {
        messages,
        extra: req.chat_template_kwargs.clone(),
    };
    run(app, Kind::Chat, input, None, &req.sampling, top).await
}

/// `POST /v1/completions`.
pub async fn completions(
    State(app): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let req: CompletionRequest = parse_body(&body)?;
    app.check_model(req.model.as_deref())?;
    let top = match req.logprobs {
        Some(k) if k < 0 => return Err(ApiError::invalid("logprobs", "logprobs must be >= 0")),
        k => k.map(|k| k as usize),
    };
    let (input, ids) = match req.prompt {
        PromptField::Text(t) => (PromptInput::Text(t), None),
        PromptField::Ids(ids) => (PromptInput::Text(String::new()), Some(ids)),
        PromptField::Texts(mut v) if v.len() == 1 => (PromptInput::Text(v.remove(0)), None),
        PromptField::Texts(v) => {
            return Err(ApiError::invalid(
                "prompt",
                format!("batched prompts are not supported (got {} prompts)", v.len()),
            ))
        }
    };
    run(app, Kind::Completion, input, ids, &req.sampling, top).await
}

async fn run(
    app: AppState,
    kind: Kind,
    input: PromptInput,
    ids: Option<Vec<u32>>,
    sampling: &OpenAiSampling,
    top: Option<usize>,
) -> Result<Response, ApiError> {
    let spec = SamplingSpec::from_openai(sampling, top);
    let n = spec.check("")?;
    let permit = app.engine.reserve(n)?;
    let prompt_param = if kind == Kind::Chat { "messages" } else { "prompt" };
    let ids = match ids {
        Some(ids) => ids,
        None => tokenize(app.engine.tokenizer().cloned(), input).await?,
    };
    let prompt_tokens = ids.len();
    let prefix = if kind == Kind::Chat { "chatcmpl-" } else { "cmpl-" };
    let rid = new_rid(prefix);
    let reqs = spec.build(&app.engine, &rid, ids, prompt_param)?;
    let rx = launch(&app.engine, reqs, &spec.stop, permit)?;
    let ctx = Ctx {
        app,
        kind,
        rid,
        created: unix_time(),
        logprobs: top.is_some(),
        prompt_tokens,
    };
    if sampling.stream.unwrap_or(false) {
        let usage = sampling
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        return Ok(ctx.stream(rx, n, usage));
    }
    let choices = collect(rx, n).await?;
    Ok(Json(ctx.full(&choices)).into_response())
}

/// What a response needs besides the choices.
struct Ctx {
    app: AppState,
    kind: Kind,
    rid: String,
    created: u64,
    logprobs: bool,
    prompt_tokens: usize,
}

impl Ctx {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }

    fn usage(&self, completion: usize) -> Value {
        json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
               "total_tokens": self.prompt_tokens + completion})
    }

    fn envelope(&self, chunk: bool, choices: Value) -> Value {
        json!({"id": self.rid, "object": self.object(chunk), "created": self.created,
               "model": self.app.served_model_name, "choices": choices})
    }

    fn logprobs_of(&self, samples: &[SampleOutput]) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        let tok = |id: u32| self.app.token_str(id);
        match self.kind {
            Kind::Chat => {
                let content: Vec<Value> = samples
                    .iter()
                    .map(|s| {
                        let t = tok(s.token);
                        let top: Vec<Value> = s
                            .top_logprobs
                            .iter()
                            .flatten()
                            .map(|&(id, lp)| {
                                let t = tok(id);
                                json!({"token": t, "logprob": lp, "bytes": t.as_bytes()})
                            })
                            .collect();
                        json!({"token": t, "logprob": s.logprob, "bytes": t.as_bytes(), "top_logprobs": top})
                    })
                    .collect();
                json!({ "content": content })
            }
            Kind::Completion => {
                let tokens: Vec<String> = samples.iter().map(|s| tok(s.token)).collect();
                let lps: Vec<Option<f32>> = samples.iter().map(|s| s.logprob).collect();
                let tops: Vec<Value> = samples
                    .iter()
                    .map(|s| {
                        let m: serde_json::Map<String, Value> = s
                            .top_logprobs
                            .iter()
                            .flatten()
                            .map(|&(id, lp)| (tok(id), json!(lp)))
                            .collect();
                        Value::Object(m)
                    })
                    .collect();
                json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops})
            }
        }
    }

    fn full(&self, choices: &[Collected]) -> Value {
        let completion: usize = choices.iter().map(|c| c.samples.len()).sum();
        let list: Vec<Value> = choices
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let reason = c.finish.as_ref().map(|f| f.openai_reason());
                let lp = self.logprobs_of(&c.samples);
                match self.kind {
                    Kind::Chat => json!({"index": i, "message": {"role": "assistant", "content": c.text},
                                         "logprobs": lp, "finish_reason": reason}),
                    Kind::Completion => json!({"index": i, "text": c.text, "logprobs": lp, "finish_reason": reason}),
                }
            })
            .collect();
        let mut v = self.envelope(false, Value::Array(list));
        v["usage"] = self.usage(completion);
        v
    }

    fn stream(self, mut rx: mpsc::Receiver<Tagged>, n: usize, include_usage: bool) -> Response {
        let (tx, out) = mpsc::channel::<Result<Event, Infallible>>(64);
        tokio::spawn(async move {
            let send = |v: Value| Ok(Event::default().data(v.to_string()));
            if self.kind == Kind::Chat {
                for i in 0..n {
                    let delta = json!([{"index": i, "delta": {"role": "assistant", "content": ""},
                                        "logprobs": null, "finish_reason": null}]);
                    if tx.send(send(self.envelope(true, delta))).await.is_err() {
                        return;
                    }
                }
            }
            let mut completion = 0;
            while let Some((i, c)) = rx.recv().await {
                let msg = match c {
                    Ok(c) => {
                        completion += usize::from(c.sample.is_some());
                        let samples: Vec<SampleOutput> = c.sample.into_iter().collect();
                        let lp = self.logprobs_of(&samples);
                        let reason = c.finish.as_ref().map(|f| f.openai_reason());
                        if c.text.is_empty() && reason.is_none() && !self.logprobs {
                            continue;
                        }
                        let choice = match self.kind {
                            Kind::Chat => json!({"index": i, "delta": {"content": c.text}, "logprobs": lp,
                                                 "finish_reason": reason}),
                            Kind::Completion => json!({"index": i, "text": c.text, "logprobs": lp,
                                                       "finish_reason": reason}),
                        };
                        self.envelope(true, json!([choice]))
                    }
                    Err(e) => ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal_error", e).body(),
                };
                if tx.send(send(msg)).await.is_err() {
                    return;
                }
            }
            if include_usage {
                let mut v = self.envelope(true, json!([]));
                v["usage"] = self.usage(completion);
                if tx.send(send(v)).await.is_err() {
                    return;
                }
            }
            let _ = tx.send(Ok(Event::default().data("[DONE]"))).await;
        });
        Sse::new(ReceiverStream::new(out)).into_response()
    }
}
