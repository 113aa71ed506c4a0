//! Request body parsing whose errors name the offending field.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::ApiError;

/// Parses a JSON object body into `T`. On a type error the field at fault is found by parsing
/// again without each top-level key in turn, so the 400 names it.
///
/// ```
/// use mllm_engine::server::json::parse_body;
/// #[derive(serde::Deserialize)]
/// struct Req { n: Option<u32> }
/// assert_eq!(parse_body::<Req>(br#"{"n": 2}"#).unwrap().n, Some(2));
/// let e = parse_body::<Req>(br#"{"n": "two"}"#).err().unwrap();
/// assert_eq!(e.param.as_deref(), Some("n"));
/// assert!(parse_body::<Req>(b"{oops").is_err());
/// ```
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?;
    let Value::Object(map) = &value else {
        return Err(ApiError::bad_request("the request body must be a JSON object"));
    };
    let err = match serde_json::from_value::<T>(value.clone()) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let msg = err.to_string();
    if let Some(field) = msg.strip_prefix("missing field `").and_then(|r| r.split('`').next()) {
        return Err(ApiError::invalid(field, format!("`{field}` is required")));
    }
    // First a field whose removal fixes the body, then a required one whose removal only
    // turns the error into "missing".
    let without = |key: &String| {
        let mut m = map.clone();
        m.remove(key);
        serde_json::from_value::<T>(Value::Object(m))
    };
    let culprit = map.keys().find(|k| without(k).is_ok()).or_else(|| {
        map.keys()
            .find(|k| without(k).is_err_and(|e| e.to_string().contains(&format!("missing field `{k}`"))))
    });
    if let Some(key) = culprit {
        return Err(ApiError::invalid(key, format!("invalid `{key}`: {msg}")));
    }
    Err(ApiError::bad_request(format!("invalid request: {msg}")))
}

/// The body, or the reason it could not be read (e.g. 413 over the size limit) as an
/// [`ApiError`] with the OpenAI error body.
pub fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| ApiError::new(r.status(), "invalid_body", r.body_text()))
}
