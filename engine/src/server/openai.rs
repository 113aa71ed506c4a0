//! `/v1/chat/completions` and `/v1/completions`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::chat_output::{ChatParsers, ChoiceStream};
use super::error::ApiError;
use super::json::{body_bytes, parse_body};
use super::protocol::{ChatRequest, CompletionRequest, Content, Message, OpenAiSampling, PromptField};
use super::stream::{collect, launch, Collected, Tagged};
use super::validate::SamplingSpec;
use super::{new_rid, unix_time, AppState};
use crate::executor::sampler::SampleOutput;
use crate::multimodal::VisionSetup;
use crate::orchestrator::tokenizer_stage::{tokenize, tokenize_with_images, ImageRef, PromptInput};
use crate::orchestrator::Chunk;
use crate::parsers::{CallIdGenerator, ReasoningParserKind, ToolParserKind};
use crate::tokenizer::{ChatMessage, ContentPart};

/// Which endpoint's response shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

/// Most sequences (prompts × `n`) one `/v1/completions` request may ask for.
pub const MAX_BATCH_SEQUENCES: usize = 256;

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(app): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let req: ChatRequest = parse_body(&body)?;
    app.check_model(req.model.as_deref())?;
    check_response_format(req.response_format.as_ref())?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must hold at least one message",
        ));
    }
    let mut images = Vec::new();
    let messages = req
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| chat_message(i, m, &mut images))
        .collect::<Result<Vec<_>, _>>()?;
    let vision = match images.first() {
        None => None,
        Some(first) => {
            let vision = app.vision_or_400(&first.param)?;
            vision
                .limits
                .check_count(images.len())
                .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
            Some(vision)
        }
    };
    let top = match (req.logprobs, req.top_logprobs) {
        (_, Some(k)) if k < 0 => return Err(ApiError::invalid("top_logprobs", "top_logprobs must be >= 0")),
        (Some(true), k) => Some(k.unwrap_or(0) as usize),
        _ => None,
    };
    let tools = tool_setup(&app, &req)?;
    let mut extra = match req.chat_template_kwargs.clone() {
        None => serde_json::Map::new(),
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(ApiError::invalid(
                "chat_template_kwargs",
                format!("must be a JSON object, got {other}"),
            ))
        }
    };
    if let Some(t) = tools.rendered {
        extra.insert("tools".into(), Value::Array(t));
    }
    let input = PromptInput::Chat {
        messages,
        extra: Some(Value::Object(extra)),
        add_generation_prompt: req.add_generation_prompt.unwrap_or(true),
        continue_final_message: req.continue_final_message,
    };
    let chat = ChatSetup {
        reasoning: app.parsers.reasoning.filter(|_| req.separate_reasoning.unwrap_or(true)),
        tools: tools.parser,
    };
    let prompt = match vision {
        Some(vision) => Prompt::WithImages(input, images, vision),
        None => Prompt::Input(input),
    };
    run(app, Kind::Chat, vec![prompt], &req.sampling, top, chat).await
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
    let prompts: Vec<Prompt> = match req.prompt {
        PromptField::Text(t) => vec![Prompt::Input(PromptInput::Text(t))],
        PromptField::Ids(ids) => vec![Prompt::Ids(ids)],
        PromptField::Texts(v) => v.into_iter().map(|t| Prompt::Input(PromptInput::Text(t))).collect(),
        PromptField::IdLists(v) => v.into_iter().map(Prompt::Ids).collect(),
    };
    if prompts.is_empty() {
        return Err(ApiError::invalid("prompt", "`prompt` must hold at least one prompt"));
    }
    run(app, Kind::Completion, prompts, &req.sampling, top, ChatSetup::default()).await
}

/// A chat message for the template, with the fields templates read. Image parts are appended
/// to `images` (in prompt order) and become `{"type": "image"}` parts for the template.
fn chat_message(i: usize, m: &Message, images: &mut Vec<ImageRef>) -> Result<ChatMessage, ApiError> {
    let mut msg = match &m.content {
        None => ChatMessage::new(m.role.clone(), String::new()),
        Some(Content::Text(t)) => ChatMessage::new(m.role.clone(), t.clone()),
        Some(Content::Parts(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            let mut has_image = false;
            for (j, p) in parts.iter().enumerate() {
                let param = format!("messages[{i}].content[{j}]");
                let url = match (p.kind.as_str(), &p.text, &p.image_url, &p.image) {
                    ("text", Some(t), _, _) => {
                        out.push(ContentPart::Text { text: t.clone() });
                        continue;
                    }
                    ("image_url", _, Some(u), _) => u.url.clone(),
                    ("image", _, _, Some(u)) => u.clone(),
                    ("text" | "image_url" | "image", ..) => {
                        return Err(ApiError::invalid(
                            &param,
                            format!(
                                "a `{}` part needs its `{}` field",
                                p.kind,
                                if p.kind == "image_url" {
                                    "image_url.url"
                                } else {
                                    &p.kind
                                }
                            ),
                        ))
                    }
                    (kind, ..) => {
                        return Err(ApiError::invalid(
                            &param,
                            format!("unsupported content part type `{kind}` (text, image_url and image parts only)"),
                        ))
                    }
                };
                has_image = true;
                images.push(ImageRef { url, param });
                out.push(ContentPart::Image);
            }
            let mut msg = ChatMessage::with_parts(m.role.clone(), out);
            if !has_image {
                // Text-only parts stay one string, as every (text) template expects.
                msg.parts = None;
            }
            msg
        }
    };
    if let Some(calls) = &m.tool_calls {
        msg = msg.with("tool_calls", calls.clone());
    }
    for (key, value) in [
        ("tool_call_id", &m.tool_call_id),
        ("name", &m.name),
        ("reasoning_content", &m.reasoning_content),
    ] {
        if let Some(v) = value {
            msg = msg.with(key, Value::String(v.clone()));
        }
    }
    Ok(msg)
}

/// Only plain text output exists here: no constrained decoding.
fn check_response_format(format: Option<&Value>) -> Result<(), ApiError> {
    match format.and_then(|f| f.get("type")).and_then(Value::as_str) {
        None | Some("text") if format.is_none_or(|f| f.get("type").is_some()) => Ok(()),
        None => Err(ApiError::invalid("response_format", "`response_format` needs a `type`")),
        Some(kind) => Err(ApiError::invalid(
            "response_format",
            format!("response_format `{kind}` is not supported: this server has no constrained decoding (only `text`)"),
        )),
    }
}

/// What the request's `tools` / `tool_choice` mean here.
struct ToolSetup {
    /// Tools for the chat template.
    rendered: Option<Vec<Value>>,
    /// The parser reading calls out of the output.
    parser: Option<ToolParserKind>,
}

fn tool_setup(app: &AppState, req: &ChatRequest) -> Result<ToolSetup, ApiError> {
    let choice = match &req.tool_choice {
        None => "auto",
        Some(Value::String(s)) if matches!(s.as_str(), "none" | "auto") => s.as_str(),
        Some(Value::String(s)) if s == "required" => {
            return Err(ApiError::invalid(
                "tool_choice",
                "tool_choice `required` needs constrained decoding, which this server does not have; use `auto`",
            ))
        }
        Some(Value::Object(_)) => {
            return Err(ApiError::invalid(
                "tool_choice",
                "a named tool_choice needs constrained decoding, which this server does not have; use `auto`",
            ))
        }
        Some(other) => {
            return Err(ApiError::invalid(
                "tool_choice",
                format!("tool_choice must be `none`, `auto`, `required` or an object, got {other}"),
            ))
        }
    };
    let tools = match &req.tools {
        Some(t) if !t.is_empty() => t,
        _ if req.tool_choice.is_some() && choice != "none" => {
            return Err(ApiError::invalid("tool_choice", "tool_choice needs `tools`"))
        }
        _ => {
            return Ok(ToolSetup {
                rendered: None,
                parser: None,
            })
        }
    };
    for (i, t) in tools.iter().enumerate() {
        let name = t.get("function").and_then(|f| f.get("name")).and_then(Value::as_str);
        if t.get("type").and_then(Value::as_str) != Some("function") || name.is_none_or(str::is_empty) {
            return Err(ApiError::invalid(
                &format!("tools[{i}]"),
                "each tool must be {\"type\": \"function\", \"function\": {\"name\": ..., \"parameters\": ...}}",
            ));
        }
    }
    if choice == "none" {
        return Ok(ToolSetup {
            rendered: None,
            parser: None,
        });
    }
    let Some(parser) = app.parsers.tools else {
        return Err(ApiError::invalid(
            "tools",
            format!(
                "tool calls need the server started with --tool-call-parser ({}); or send tool_choice `none`",
                ToolParserKind::NAMES.join(", ")
            ),
        ));
    };
    Ok(ToolSetup {
        rendered: Some(tools.clone()),
        parser: Some(parser),
    })
}

/// One prompt of a request: to tokenize, token ids already, or a chat with images.
enum Prompt {
    Input(PromptInput),
    Ids(Vec<u32>),
    WithImages(PromptInput, Vec<ImageRef>, Arc<VisionSetup>),
}

/// The output parsers a chat request asked for (none for completions).
#[derive(Debug, Clone, Copy, Default)]
struct ChatSetup {
    reasoning: Option<ReasoningParserKind>,
    tools: Option<ToolParserKind>,
}

impl ChatSetup {
    /// The parsers for a prompt of `ids`: a qwen3 prompt that already opened `<think>` (a
    /// thinking template) starts in reasoning.
    fn parsers(self, app: &AppState, ids: &[u32]) -> ChatParsers {
        let opened = || {
            let tail = &ids[ids.len().saturating_sub(4)..];
            app.engine
                .tokenizer()
                .and_then(|t| t.decode(tail, false).ok())
                .is_some_and(|t| t.trim_end().ends_with("<think>"))
        };
        ChatParsers {
            reasoning: self.reasoning.map(|k| k.parser(opened())),
            tools: self.tools,
        }
    }
}

async fn run(
    app: AppState,
    kind: Kind,
    prompts: Vec<Prompt>,
    sampling: &OpenAiSampling,
    top: Option<usize>,
    chat: ChatSetup,
) -> Result<Response, ApiError> {
    let spec = SamplingSpec::from_openai(sampling, top);
    let n = spec.check("")?;
    let total = n * prompts.len();
    if total > MAX_BATCH_SEQUENCES {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "{} prompts × n = {n} is {total} sequences; at most {MAX_BATCH_SEQUENCES} per request",
                prompts.len()
            ),
        ));
    }
    let permit = app.engine.reserve(total)?;
    let prompt_param = if kind == Kind::Chat { "messages" } else { "prompt" };
    let rid = new_rid(if kind == Kind::Chat { "chatcmpl-" } else { "cmpl-" });
    let mut reqs = Vec::with_capacity(total);
    let mut prompt_tokens = 0;
    let mut parsers = ChatParsers::default();
    for (p, prompt) in prompts.into_iter().enumerate() {
        let (ids, mm) = match prompt {
            Prompt::Ids(ids) => (ids, None),
            Prompt::Input(input) => (tokenize(app.engine.tokenizer().cloned(), input).await?, None),
            Prompt::WithImages(input, images, vision) => {
                let tok = app.engine.tokenizer().cloned();
                let max = app.engine.max_seq_len();
                let (ids, mm) = tokenize_with_images(tok, input, images, vision, max).await?;
                if !app.engine.accepts_images() {
                    return Err(ApiError::new(
                        StatusCode::NOT_IMPLEMENTED,
                        "images_not_supported",
                        format!(
                            "the request's {} image(s) ({} tokens) are valid, but this server's model runner \
                             cannot run images (only Qwen3VLForConditionalGeneration checkpoints run them)",
                            mm.images.len(),
                            mm.num_image_tokens()
                        ),
                    ));
                }
                (ids, Some(Arc::new(mm)))
            }
        };
        if mm.is_none() {
            app.check_no_image_tokens(&ids, prompt_param)?;
        }
        prompt_tokens += ids.len();
        if kind == Kind::Chat {
            parsers = chat.parsers(&app, &ids);
        }
        for mut r in spec.build(&app.engine, &rid, ids, mm, prompt_param)? {
            // Choice `index` of prompt `p` is choice p·n + index of the response.
            r.id.index += p * n;
            reqs.push(r);
        }
    }
    let rx = launch(&app.engine, reqs, &spec.text, permit)?;
    let ctx = Ctx {
        app,
        kind,
        rid,
        created: unix_time(),
        logprobs: top.is_some(),
        prompt_tokens,
        parsers,
    };
    if sampling.stream.unwrap_or(false) {
        let usage = sampling
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        return Ok(ctx.stream(rx, total, usage));
    }
    let choices = collect(rx, total).await?;
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
    /// Chat only: what the text of each choice goes through.
    parsers: ChatParsers,
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
                    Kind::Chat => {
                        let msg = self.parsers.parse(&c.text, CallIdGenerator::default());
                        let reason = tool_calls_reason(reason, !msg.tool_calls.is_empty());
                        json!({"index": i, "message": msg.to_json(), "logprobs": lp, "finish_reason": reason})
                    }
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
            let mut choices: Vec<ChoiceStream> = (0..n)
                .map(|_| self.parsers.stream(CallIdGenerator::default()))
                .collect();
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
                let msgs = match c {
                    Ok(c) => {
                        completion += usize::from(c.sample.is_some());
                        self.stream_chunk(i, c, &mut choices[i])
                    }
                    Err(e) => {
                        vec![ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", e).body()]
                    }
                };
                for msg in msgs {
                    if tx.send(send(msg)).await.is_err() {
                        return;
                    }
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

    /// The SSE messages for one chunk of choice `i`: one per delta, the logprobs on the first
    /// and the finish reason on the last.
    fn stream_chunk(&self, i: usize, c: Chunk, choice: &mut ChoiceStream) -> Vec<Value> {
        let samples: Vec<SampleOutput> = c.sample.into_iter().collect();
        let lp = self.logprobs_of(&samples);
        let reason = c.finish.as_ref().map(|f| f.openai_reason());
        if self.kind == Kind::Completion {
            if c.text.is_empty() && reason.is_none() && !self.logprobs {
                return Vec::new();
            }
            let choice = json!({"index": i, "text": c.text, "logprobs": lp, "finish_reason": reason});
            return vec![self.envelope(true, json!([choice]))];
        }
        let mut deltas = choice.push(&c.text);
        if reason.is_some() {
            deltas.extend(choice.finish());
        }
        if deltas.is_empty() && (reason.is_some() || self.logprobs) {
            deltas.push(json!({}));
        }
        let reason = tool_calls_reason(reason, choice.calls() > 0);
        let last = deltas.len().saturating_sub(1);
        deltas
            .into_iter()
            .enumerate()
            .map(|(k, delta)| {
                let lp = if k == 0 { lp.clone() } else { Value::Null };
                let reason = if k == last { reason } else { None };
                self.envelope(
                    true,
                    json!([{"index": i, "delta": delta, "logprobs": lp, "finish_reason": reason}]),
                )
            })
            .collect()
    }
}

/// OpenAI reports `tool_calls` when the model stopped after calling tools.
fn tool_calls_reason(reason: Option<&'static str>, called: bool) -> Option<&'static str> {
    match reason {
        Some("stop") if called => Some("tool_calls"),
        r => r,
    }
}
