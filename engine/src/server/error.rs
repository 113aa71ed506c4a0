//! [`ApiError`]: every failure a handler reports, with one status mapping and the OpenAI error
//! body `{"error": {"message", "type", "param", "code"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::orchestrator::tokenizer_stage::TokenizeError;
use crate::orchestrator::EngineError;

/// An error answered to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable message.
    pub message: String,
    /// The request field at fault, if any.
    pub param: Option<String>,
    /// A stable machine label (`invalid_value`, `model_not_found`, ...).
    pub code: &'static str,
    /// Seconds for a `Retry-After` header (busy or draining servers).
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// 400 about `param`.
    ///
    /// ```
    /// use mllm_engine::server::ApiError;
    /// let e = ApiError::invalid("n", "n must be at least 1");
    /// assert_eq!(e.status.as_u16(), 400);
    /// assert_eq!(e.body()["error"]["param"], "n");
    /// ```
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: Some(param.to_string()),
            code: "invalid_value",
            retry_after: None,
        }
    }

    /// A 400 not tied to one field (malformed body).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: None,
            code: "invalid_request",
            retry_after: None,
        }
    }

    /// Any status with a code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
            code,
            retry_after: None,
        }
    }

    /// The OpenAI `type` of this error.
    pub fn error_type(&self) -> &'static str {
        match self.status.as_u16() {
            400 | 404 | 413 | 422 => "invalid_request_error",
            401 => "authentication_error",
            429 => "rate_limit_error",
            503 => "service_unavailable",
            _ => "server_error",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.error_type(),
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::QueueFull { .. } => Self {
                retry_after: Some(1),
                ..Self::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", e.to_string())
            },
            // A router retries elsewhere at once; a direct client may come back after restart.
            EngineError::Draining => Self {
                retry_after: Some(5),
                ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "draining", e.to_string())
            },
            EngineError::SchedulerGone => Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
            _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", e.to_string()),
        }
    }
}

impl From<TokenizeError> for ApiError {
    fn from(e: TokenizeError) -> Self {
        Self::invalid(&e.param, e.message)
    }
}
