//! The HTTP server (axum): OpenAI-compatible endpoints ([`openai`]), SGLang's native ones
//! ([`native`]), Bearer auth, a body size limit and graceful shutdown. Handlers validate
//! ([`validate`]), tokenize off the runtime, and hand sequences to the [`Engine`].

pub mod chat_output;
pub mod error;
pub mod json;
pub mod native;
pub mod openai;
pub mod protocol;
pub mod stream;
pub mod validate;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

pub use error::ApiError;

use crate::executor::device::DeviceInfo;
use crate::multimodal::VisionSetup;
use crate::orchestrator::Engine;

/// Shared state of the handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The pipeline.
    pub engine: Arc<Engine>,
    /// The name in responses and `/v1/models` (never empty).
    pub served_model_name: String,
    /// What `--model` pointed at, for `/model_info`.
    pub model_path: String,
    /// Required Bearer token, if any.
    pub api_key: Option<Arc<str>>,
    /// Unix time the server started.
    pub created: u64,
    /// `--reasoning-parser` / `--tool-call-parser`.
    pub parsers: ServerParsers,
    /// Image input, for a model with a vision tower (`None`: requests with images get 400).
    pub vision: Option<Arc<VisionSetup>>,
    /// The device the model runs on, for `/server_info` (and so `bench-serve`'s records).
    pub device: Arc<DeviceInfo>,
}

/// The output parsers the server was started with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerParsers {
    /// Splits reasoning into `reasoning_content` (unless a request sends
    /// `separate_reasoning: false`).
    pub reasoning: Option<crate::parsers::ReasoningParserKind>,
    /// Reads tool calls when a request sends `tools`.
    pub tools: Option<crate::parsers::ToolParserKind>,
}

impl AppState {
    /// State for `engine`; the served name is `served_model_name`, else the model's name.
    pub fn new(
        engine: Arc<Engine>,
        served_model_name: Option<String>,
        model_path: String,
        api_key: Option<String>,
    ) -> Self {
        let name = served_model_name
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| engine.info().name.clone());
        Self {
            served_model_name: name,
            model_path,
            api_key: api_key.filter(|k| !k.is_empty()).map(Into::into),
            created: unix_time(),
            parsers: ServerParsers::default(),
            vision: None,
            device: Arc::new(DeviceInfo::of(engine.config().device)),
            engine,
        }
    }

    /// This state accepting images as `vision` says.
    pub fn with_vision(mut self, vision: Option<VisionSetup>) -> Self {
        self.vision = vision.map(Arc::new);
        self
    }

    /// The image setup, or the 400 for a model without a vision tower.
    pub fn vision_or_400(&self, param: &str) -> Result<Arc<VisionSetup>, ApiError> {
        self.vision.clone().ok_or_else(|| {
            ApiError::invalid(
                param,
                format!("model `{}` does not accept images", self.served_model_name),
            )
        })
    }

    /// For a vision model, refuses prompts (text or ids) that hold `<|image_pad|>` tokens
    /// without images: the model would find no image for them.
    pub fn check_no_image_tokens(&self, ids: &[u32], param: &str) -> Result<(), ApiError> {
        let Some(v) = &self.vision else { return Ok(()) };
        let n = ids.iter().filter(|&&t| t == v.tokens.image_pad).count();
        if n > 0 {
            return Err(ApiError::invalid(
                param,
                format!(
                    "the prompt holds {n} image placeholder token(s) (id {}) but no images; send images as \
                     image_url parts of /v1/chat/completions",
                    v.tokens.image_pad
                ),
            ));
        }
        Ok(())
    }

    /// This state with output parsers.
    pub fn with_parsers(mut self, parsers: ServerParsers) -> Self {
        self.parsers = parsers;
        self
    }

    /// Accepts a missing `model` or the served name (or the loaded model's own name).
    pub fn check_model(&self, model: Option<&str>) -> Result<(), ApiError> {
        match model {
            None => Ok(()),
            Some(m) if m == self.served_model_name || m == self.engine.info().name => Ok(()),
            Some(m) => Err(ApiError {
                code: "model_not_found",
                ..ApiError::invalid(
                    "model",
                    format!(
                        "the model `{m}` does not exist; this server serves `{}`",
                        self.served_model_name
                    ),
                )
            }),
        }
    }

    /// The text of one token, for logprobs (`<id>` without a tokenizer).
    pub fn token_str(&self, id: u32) -> String {
        self.engine
            .tokenizer()
            .and_then(|t| t.decode(&[id], false).ok())
            .unwrap_or_else(|| format!("<{id}>"))
    }
}

/// Seconds since the Unix epoch.
pub fn unix_time() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A fresh request id with `prefix`.
///
/// ```
/// let a = mllm_engine::server::new_rid("cmpl-");
/// assert!(a.starts_with("cmpl-") && a != mllm_engine::server::new_rid("cmpl-"));
/// ```
pub fn new_rid(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}{:08x}{:08x}", nanos, NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Compares in time independent of where the inputs differ.
///
/// ```
/// use mllm_engine::server::constant_time_eq;
/// assert!(constant_time_eq(b"secret", b"secret"));
/// assert!(!constant_time_eq(b"secret", b"secreT") && !constant_time_eq(b"a", b"ab"));
/// ```
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

async fn auth(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(key) = &app.api_key
        && req.uri().path() != "/health"
    {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), key.as_bytes()) {
            return ApiError::new(StatusCode::UNAUTHORIZED, "invalid_api_key", "missing or wrong API key")
                .into_response();
        }
    }
    next.run(req).await
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// The router with every endpoint, auth and a `max_body_bytes` body limit.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/health", get(native::health))
        .route("/health_generate", get(native::health_generate))
        .route("/v1/models", get(native::models))
        .route("/model_info", get(native::model_info))
        .route("/get_model_info", get(native::model_info))
        .route("/server_info", get(native::server_info))
        .route("/get_server_info", get(native::server_info))
        .route("/metrics", get(native::metrics))
        .route("/get_load", get(native::get_load))
        .route("/generate", post(native::generate).put(native::generate))
        .route("/abort_request", post(native::abort_request))
        .route("/flush_cache", post(native::flush_cache).get(native::flush_cache))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// The router while the model loads: every path answers 503 `loading` with `Retry-After`, so
/// health probes and routers wait instead of failing on a refused connection.
pub fn loading_router() -> Router {
    Router::new().fallback(|| async {
        ApiError {
            retry_after: Some(5),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "loading", "the model is still loading")
        }
    })
}

/// How long [`serve`] lets in-flight requests run after the shutdown signal.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// [`serve_with`] with [`DEFAULT_SHUTDOWN_TIMEOUT`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    engine: Arc<Engine>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, router, engine, shutdown, DEFAULT_SHUTDOWN_TIMEOUT).await
}

/// Serves `router` on `listener`. When `shutdown` resolves the server drains: `/health`
/// turns 503 and new generation requests get 503 with `Retry-After` (a router sends them
/// elsewhere) while in-flight requests run on for up to `shutdown_timeout`; what is still
/// running then is aborted, so every stream ends with `finish_reason: "abort"` rather than
/// being cut. Then the listener closes and the scheduler stops.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    router: Router,
    engine: Arc<Engine>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    shutdown_timeout: Duration,
) -> std::io::Result<()> {
    let drainer = engine.clone();
    let drain = async move {
        shutdown.await;
        drainer.begin_drain();
        let deadline = tokio::time::Instant::now() + shutdown_timeout;
        while drainer.inflight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if drainer.inflight() > 0 {
            tracing::warn!(
                "shutdown timeout ({shutdown_timeout:?}) reached: aborting {} sequences",
                drainer.inflight()
            );
            let _ = drainer.abort_all();
        }
    };
    let result = axum::serve(listener, router).with_graceful_shutdown(drain).await;
    let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
    result
}

/// SIGINT and SIGTERM listeners, registered when made: a signal that arrives while nothing
/// awaits [`ShutdownSignals::recv`] (e.g. between loading and serving) is kept, not lost.
pub struct ShutdownSignals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// Registers the listeners (inside a tokio runtime).
    pub fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Resolves on the next SIGINT or SIGTERM (or one that arrived since the last call).
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! { _ = self.int.recv() => {}, _ = self.term.recv() => {} }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown signal: draining in-flight requests");
    }
}
