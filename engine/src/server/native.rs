//! SGLang's native endpoints: `/generate`, `/abort_request`, `/flush_cache`, health, info and
//! metrics, plus `/v1/models`.

use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::error::ApiError;
use super::json::{body_bytes, parse_body};
use super::protocol::{AbortBody, GenerateBody, NativeSampling, SamplingFields};
use super::stream::{collect, launch, Collected};
use super::validate::SamplingSpec;
use super::{new_rid, unix_time, AppState};
use crate::executor::sampler::SampleOutput;
use crate::io_struct::Finish;
use crate::orchestrator::tokenizer_stage::{tokenize, PromptInput};

/// `POST /generate`.
pub async fn generate(State(app): State<AppState>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let req: GenerateBody = parse_body(&body)?;
    if req.image_data.is_some() {
        return Err(ApiError::invalid(
            "image_data",
            "`image_data` is not supported on /generate; send images as image_url parts to /v1/chat/completions",
        ));
    }
    let top = req.return_logprob.then(|| req.top_logprobs_num.unwrap_or(0));
    let spec = SamplingSpec::from_native(&req.sampling_params, top);
    let n = spec.check("sampling_params.")?;
    let permit = app.engine.reserve(n)?;
    let ids = match (req.input_ids, req.text) {
        (Some(ids), None) => ids,
        (None, Some(text)) => tokenize(app.engine.tokenizer().cloned(), PromptInput::Text(text))
            .await
            .map_err(|e| ApiError::invalid("text", e.message))?,
        (Some(_), Some(_)) => return Err(ApiError::invalid("text", "give either `text` or `input_ids`, not both")),
        (None, None) => return Err(ApiError::invalid("text", "`text` or `input_ids` is required")),
    };
    app.check_no_image_tokens(&ids, "input_ids")?;
    let prompt_tokens = ids.len();
    let rid = req.rid.unwrap_or_else(|| new_rid(""));
    let reqs = spec.build(&app.engine, &rid, ids, None, "input_ids")?;
    let rx = launch(&app.engine, reqs, &spec.text, permit)?;
    let meta = Meta {
        rid,
        prompt_tokens,
        logprobs: top.is_some(),
    };
    if req.stream {
        return Ok(stream(rx, n, meta));
    }
    let out = collect(rx, n).await?;
    let mut items: Vec<Value> = out.iter().map(|c| meta.item(c)).collect();
    Ok(Json(if n == 1 { items.remove(0) } else { Value::Array(items) }).into_response())
}

struct Meta {
    rid: String,
    prompt_tokens: usize,
    logprobs: bool,
}

impl Meta {
    fn item(&self, c: &Collected) -> Value {
        let ids: Vec<u32> = c.samples.iter().map(|s| s.token).collect();
        let finish = match &c.finish {
            None => Value::Null,
            Some(Finish::Length) => json!({"type": "length", "length": ids.len()}),
            Some(Finish::StopToken(t)) => json!({"type": "stop", "matched": t}),
            Some(Finish::StopString(s)) => json!({"type": "stop", "matched": s}),
            Some(Finish::Abort) => json!({"type": "abort", "message": "aborted"}),
        };
        let mut meta = json!({"id": self.rid, "finish_reason": finish, "prompt_tokens": self.prompt_tokens,
                              "completion_tokens": ids.len()});
        if self.logprobs {
            meta["output_token_logprobs"] = c.samples.iter().map(|s| json!([s.logprob, s.token, null])).collect();
            meta["output_top_logprobs"] = c
                .samples
                .iter()
                .map(|s| {
                    s.top_logprobs
                        .iter()
                        .flatten()
                        .map(|&(id, lp)| json!([lp, id, null]))
                        .collect::<Vec<_>>()
                })
                .collect();
        }
        json!({"text": c.text, "output_ids": ids, "meta_info": meta})
    }
}

/// SSE of cumulative text and ids per choice, then `[DONE]`.
fn stream(mut rx: mpsc::Receiver<super::stream::Tagged>, n: usize, meta: Meta) -> Response {
    let (tx, out) = mpsc::channel::<Result<Event, Infallible>>(64);
    tokio::spawn(async move {
        let mut acc = vec![Collected::default(); n];
        while let Some((i, c)) = rx.recv().await {
            let v = match c {
                Ok(c) => {
                    let a = &mut acc[i];
                    a.text.push_str(&c.text);
                    a.samples.extend(c.sample.into_iter().collect::<Vec<SampleOutput>>());
                    a.finish = c.finish;
                    let mut v = meta.item(a);
                    v["index"] = json!(i);
                    v
                }
                Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", e).body(),
            };
            if tx.send(Ok(Event::default().data(v.to_string()))).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Ok(Event::default().data("[DONE]"))).await;
    });
    Sse::new(ReceiverStream::new(out)).into_response()
}

/// `POST /abort_request` `{"rid": ...}`.
pub async fn abort_request(
    State(app): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let req: AbortBody = parse_body(&body)?;
    app.engine.abort(&req.rid)?;
    Ok(StatusCode::OK.into_response())
}

/// `POST /flush_cache`: drops the prefix cache; 400 while requests are in flight.
pub async fn flush_cache(State(app): State<AppState>) -> Result<Response, ApiError> {
    if app.engine.flush_cache().await? {
        Ok((StatusCode::OK, "Cache flushed.\n").into_response())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "not_idle",
            "cannot flush the cache while requests are in flight",
        ))
    }
}

/// `GET /health`: 200 while the scheduler runs and the server admits requests; 503 once it
/// drains for shutdown or when the scheduler has died. It never touches the model.
pub async fn health(State(app): State<AppState>) -> Response {
    if app.engine.is_draining() {
        ApiError::from(crate::orchestrator::EngineError::Draining).into_response()
    } else if app.engine.is_alive() {
        StatusCode::OK.into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the scheduler is not running",
        )
        .into_response()
    }
}

/// How long `/health_generate` waits for its token.
const HEALTH_GENERATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// `GET /health_generate`: generates one token (503 when that takes longer than 20 s).
pub async fn health_generate(State(app): State<AppState>) -> Result<Response, ApiError> {
    let spec = SamplingSpec::from_native(
        &NativeSampling {
            max_new_tokens: Some(1),
            fields: SamplingFields {
                temperature: Some(0.0),
                ..Default::default()
            },
        },
        None,
    );
    let permit = app.engine.reserve(1)?;
    let reqs = spec.build(&app.engine, &new_rid("health-"), vec![0], None, "input_ids")?;
    let rx = launch(&app.engine, reqs, &Default::default(), permit)?;
    match tokio::time::timeout(HEALTH_GENERATE_TIMEOUT, collect(rx, 1)).await {
        Ok(done) => done.map(|_| StatusCode::OK.into_response()),
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("no token within {HEALTH_GENERATE_TIMEOUT:?}"),
        )),
    }
}

/// `GET /v1/models`.
pub async fn models(State(app): State<AppState>) -> Json<Value> {
    Json(json!({"object": "list", "data": [{
        "id": app.served_model_name, "object": "model", "created": app.created, "owned_by": "mllm",
        "root": app.served_model_name, "max_model_len": app.engine.context_len(),
    }]}))
}

/// `GET /model_info`: what a router reads when a worker registers.
pub async fn model_info(State(app): State<AppState>) -> Json<Value> {
    let info = app.engine.info();
    Json(json!({
        "model_path": app.model_path, "tokenizer_path": app.model_path,
        "served_model_name": app.served_model_name, "architectures": app.engine.architectures(),
        "is_generation": true, "format": info.format, "quant": info.quant, "weight_dtype": info.weight_dtype_name(),
        "context_length": app.engine.context_len(), "vocab_size": app.engine.vocab_size(),
        "has_tokenizer": app.engine.tokenizer().is_some(),
    }))
}

/// `GET /server_info`: the effective configuration and live counters.
pub async fn server_info(State(app): State<AppState>) -> Json<Value> {
    let c = app.engine.config();
    let m = app.engine.metrics();
    let count = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let (prompt, cached) = (count(&m.prompt_tokens_total), count(&m.cached_tokens_total));
    let capacity = app.engine.kv_capacity();
    let info = app.engine.info();
    let cuda = c.device.is_cuda();
    Json(json!({
        "version": crate::version(), "served_model_name": app.served_model_name, "model_path": app.model_path,
        "max_running_requests": c.max_running_requests, "max_total_tokens": capacity,
        "max_prefill_tokens": c.max_prefill_tokens, "max_queued_requests": c.max_queued_requests,
        "context_length": app.engine.context_len(), "disable_radix_cache": c.disable_radix_cache,
        "disable_overlap_schedule": c.disable_overlap_schedule,
        // What a benchmark record needs to say what ran (SGLang's names where it has them).
        "device": &*app.device, "load_format": info.format, "quantization": info.quant,
        "weight_dtype": info.weight_dtype_name(),
        "kv_cache_dtype": app.engine.kv_cache_dtype(),
        "cuda_graph_max_bs": cuda.then_some(c.cuda_graph_max_bs),
        "disable_cuda_graph": cuda && c.cuda_graph_max_bs == 0,
        "mem_fraction_static": c.mem_fraction_static.filter(|_| cuda),
        "enable_deterministic_inference": crate::layers::linear::batch_invariant(),
        "reasoning_parser": app.parsers.reasoning.map(|p| p.name()),
        "tool_call_parser": app.parsers.tools.map(|p| p.name()),
        "uptime_s": unix_time().saturating_sub(app.created), "draining": app.engine.is_draining(),
        "num_running_reqs": m.running(), "num_queued_reqs": m.queued(),
        "kv_used_tokens": m.kv_used(), "kv_usage": m.kv_used() as f64 / capacity.max(1) as f64,
        "requests_total": count(&m.requests_total), "prompt_tokens_total": prompt,
        "cached_tokens_total": cached, "generation_tokens_total": count(&m.generation_tokens_total),
        "cache_hit_rate": if prompt == 0 { 0.0 } else { cached as f64 / prompt as f64 },
    }))
}

/// `GET /get_load`: load per data-parallel rank (one here), as SGLang reports it; routers
/// poll it to balance.
pub async fn get_load(State(app): State<AppState>) -> Json<Value> {
    let m = app.engine.metrics();
    Json(json!([{
        "dp_rank": 0, "num_reqs": m.running() + m.queued(), "num_waiting_reqs": m.queued(),
        "num_tokens": m.kv_used(),
    }]))
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.engine.metrics().render(),
    )
        .into_response()
}
