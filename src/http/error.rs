//! The one table from error to HTTP status, and the one JSON shape for every error on every
//! route: OpenAI's `{"error": {"message", "type", "param", "code"}}`. Domain errors
//! ([`EmbedError`], and through it `ModelError` and `LimitError`) become [`ApiError`]s here.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::core::embed::EmbedError;
use crate::core::limits::LimitError;
use crate::models::ModelError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// The body is not JSON at all.
    #[error("{0}")]
    MalformedJson(String),
    /// Well-formed JSON whose content is wrong.
    #[error("{message}")]
    Invalid { message: String, param: Option<&'static str> },
    #[error("{0}")]
    TooLarge(String),
    /// More inputs or documents than one request may carry; `param` names the field.
    #[error("{message}")]
    TooMany { message: String, param: &'static str },
    /// The model computes something this route does not serve.
    #[error("{0}")]
    WrongTask(String),
    /// With truncation off, an input over the model's token limit; `param` names its field.
    #[error("{message}")]
    InputTooLong { message: String, param: &'static str },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("Missing or invalid API key. Send it as `Authorization: Bearer <key>` or `x-api-key: <key>`.")]
    Unauthorized,
    #[error("{message}")]
    RateLimited { message: String, retry_after: u64 },
    #[error("The model `{}` does not exist or you do not have access to it.", clip(.0))]
    ModelNotFound(String),
    #[error("No route for {0}.")]
    RouteNotFound(String),
    #[error("Method {0} is not allowed here.")]
    MethodNotAllowed(String),
    /// The model could not be loaded; the cause goes to the log, not the client.
    #[error(
        "The model `{model}` could not be loaded{}; retry in {retry_after} s.",
        .detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default()
    )]
    ModelUnavailable { model: String, cause: String, detail: Option<String>, retry_after: u64 },
    /// Inputs the model failed on in runs of their own; the cause goes to the log.
    #[error(
        "The model could not process {} of `{param}`; the request's other inputs were not at fault. \
         Change or remove {} and retry.",
        inputs_named(.indices), if .indices.len() == 1 { "it" } else { "them" }
    )]
    ModelFailed { indices: Vec<usize>, param: &'static str, cause: String },
    #[error("The model's queue is full; retry shortly.")]
    Overloaded,
    /// The tenant already holds its share of the model's queue.
    #[error("Too many of your inputs are queued for this model; retry shortly.")]
    TenantQueueFull,
    #[error("{0}")]
    Timeout(String),
    #[error("The service is not ready yet.")]
    NotReady,
    /// The shared store could not answer a read (limits never fail on it: they fall back).
    #[error("The usage store is unreachable; retry shortly.")]
    StoreUnavailable(String),
    /// Anything else; the client sees a generic message.
    #[error("The server had an error while processing your request.")]
    Internal(String),
}

pub(crate) use crate::core::clip::{MAX_CLIPPED, clip, clip_to};

/// The cause of a 5xx, attached to the response for the logging middleware to record.
#[derive(Debug, Clone)]
pub(crate) struct ErrorCause(pub String);

impl ApiError {
    pub(crate) fn internal(cause: impl std::fmt::Display) -> Self {
        ApiError::Internal(cause.to_string())
    }

    /// The status table.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) => StatusCode::BAD_REQUEST,
            ApiError::Invalid { .. } | ApiError::WrongTask(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooLarge(_) | ApiError::TooMany { .. } | ApiError::InputTooLong { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::RateLimited { .. } | ApiError::TenantQueueFull => StatusCode::TOO_MANY_REQUESTS,
            ApiError::ModelNotFound(_) | ApiError::RouteNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::ModelUnavailable { .. }
            | ApiError::Overloaded
            | ApiError::NotReady
            | ApiError::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) | ApiError::ModelFailed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind_and_code(&self) -> (&'static str, &'static str) {
        match self {
            ApiError::MalformedJson(_) => ("invalid_request_error", "malformed_json"),
            ApiError::Invalid { .. } => ("invalid_request_error", "invalid_value"),
            ApiError::TooLarge(_) | ApiError::TooMany { .. } => {
                ("invalid_request_error", "request_too_large")
            }
            ApiError::WrongTask(_) => ("invalid_request_error", "wrong_task"),
            ApiError::InputTooLong { .. } => ("invalid_request_error", "input_too_long"),
            ApiError::UnsupportedMediaType(_) => ("invalid_request_error", "unsupported_media_type"),
            ApiError::Unauthorized => ("authentication_error", "invalid_api_key"),
            ApiError::RateLimited { .. } => ("rate_limit_error", "rate_limit_exceeded"),
            ApiError::ModelNotFound(_) => ("invalid_request_error", "model_not_found"),
            ApiError::RouteNotFound(_) => ("invalid_request_error", "unknown_url"),
            ApiError::MethodNotAllowed(_) => ("invalid_request_error", "method_not_allowed"),
            ApiError::ModelUnavailable { .. } => ("server_error", "model_unavailable"),
            ApiError::Overloaded => ("server_error", "overloaded"),
            ApiError::TenantQueueFull => ("rate_limit_error", "tenant_queue_full"),
            ApiError::Timeout(_) => ("server_error", "timeout"),
            ApiError::NotReady => ("server_error", "not_ready"),
            ApiError::StoreUnavailable(_) => ("server_error", "store_unavailable"),
            ApiError::Internal(_) => ("server_error", "internal_error"),
            ApiError::ModelFailed { .. } => ("server_error", "model_error"),
        }
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            ApiError::Invalid { param, .. } => *param,
            ApiError::ModelNotFound(_) => Some("model"),
            ApiError::InputTooLong { param, .. } => Some(param),
            ApiError::TooLarge(_) => Some("input"),
            ApiError::TooMany { param, .. } => Some(param),
            ApiError::WrongTask(_) => Some("model"),
            ApiError::ModelFailed { param, .. } => Some(param),
            _ => None,
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited { retry_after, .. } | ApiError::ModelUnavailable { retry_after, .. } => {
                Some(*retry_after)
            }
            ApiError::Overloaded | ApiError::TenantQueueFull | ApiError::NotReady => Some(1),
            ApiError::StoreUnavailable(_) => Some(1),
            _ => None,
        }
    }

    fn cause(&self) -> Option<String> {
        match self {
            ApiError::ModelUnavailable { cause, .. }
            | ApiError::ModelFailed { cause, .. }
            | ApiError::Internal(cause)
            | ApiError::StoreUnavailable(cause) => Some(cause.clone()),
            _ => None,
        }
    }
}

impl From<EmbedError> for ApiError {
    fn from(e: EmbedError) -> Self {
        match e {
            EmbedError::Invalid { message, param } => ApiError::Invalid { message, param: Some(param) },
            EmbedError::TooMany { message, param } => ApiError::TooMany { message, param },
            wrong @ EmbedError::WrongTask { .. } => ApiError::WrongTask(wrong.to_string()),
            EmbedError::ModelNotFound(name) => ApiError::ModelNotFound(name),
            EmbedError::Limit(e) => e.into(),
            EmbedError::Model(e) => e.into(),
            timeout @ EmbedError::Timeout(_) => ApiError::Timeout(timeout.to_string()),
        }
    }
}

impl From<LimitError> for ApiError {
    fn from(e: LimitError) -> Self {
        match e {
            LimitError::RateLimited { message, retry_after, .. } => {
                ApiError::RateLimited { message, retry_after }
            }
            LimitError::OverBudget(message) => ApiError::TooLarge(message),
        }
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::NotFound(name) => ApiError::ModelNotFound(name),
            ModelError::Unavailable { model, cause, detail, retry_after } => {
                ApiError::ModelUnavailable { model, cause, detail, retry_after }
            }
            ModelError::QueueFull => ApiError::Overloaded,
            ModelError::TenantQueueFull => ApiError::TenantQueueFull,
            ModelError::InputTooLong { message, param } => ApiError::InputTooLong { message, param },
            ModelError::InputsFailed { indices, param, cause } => {
                ApiError::ModelFailed { indices, param, cause }
            }
            ModelError::Failed(cause) => ApiError::Internal(cause),
        }
    }
}

/// `input 3`, `inputs 1 and 4`, `inputs 0, 2, 5 and 7 more`: at most three indices are listed.
fn inputs_named(indices: &[usize]) -> String {
    const LISTED: usize = 3;
    let shown: Vec<String> = indices.iter().take(LISTED).map(ToString::to_string).collect();
    match indices.len() {
        1 => format!("input {}", shown[0]),
        n if n <= LISTED => format!("inputs {} and {}", shown[..n - 1].join(", "), shown[n - 1]),
        n => format!("inputs {} and {} more", shown.join(", "), n - LISTED),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (kind, code) = self.kind_and_code();
        let body = json!({
            "error": { "message": self.to_string(), "type": kind, "param": self.param(), "code": code }
        });
        let mut response = (self.status(), Json(body)).into_response();
        if let Some(seconds) = self.retry_after() {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        if let Some(cause) = self.cause() {
            response.extensions_mut().insert(ErrorCause(cause));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoed_text_is_cut_and_escaped() {
        assert_eq!(clip("minilm"), "minilm");
        assert_eq!(clip(&"x".repeat(100_000)), format!("{}…", "x".repeat(MAX_CLIPPED)));
        assert_eq!(clip("a\u{202e}b\nc"), "a\\u{202e}b\\u{a}c");
        let message = ApiError::ModelNotFound("m".repeat(500)).to_string();
        assert!(message.len() < 200, "{message}");
    }

    #[test]
    fn failed_inputs_are_named_by_index_and_capped() {
        let named = |indices: &[usize]| {
            ApiError::ModelFailed { indices: indices.to_vec(), param: "input", cause: String::new() }
                .to_string()
        };
        assert!(
            named(&[3]).starts_with("The model could not process input 3 of `input`;"),
            "{}",
            named(&[3])
        );
        assert!(named(&[3]).ends_with("Change or remove it and retry."));
        assert!(named(&[1, 4]).contains("inputs 1 and 4 of"), "{}", named(&[1, 4]));
        assert!(named(&[0, 2, 5]).contains("inputs 0, 2 and 5 of"), "{}", named(&[0, 2, 5]));
        let many: Vec<usize> = (0..1000).collect();
        assert!(named(&many).contains("inputs 0, 1, 2 and 997 more of"), "{}", named(&many));
    }
}
