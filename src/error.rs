//! One error type for the service, one table from error to HTTP status, and one JSON shape
//! for every error on every route: OpenAI's `{"error": {"message", "type", "param", "code"}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The body is not JSON at all.
    #[error("{0}")]
    MalformedJson(String),
    /// Well-formed JSON whose content is wrong.
    #[error("{message}")]
    Invalid { message: String, param: Option<&'static str> },
    #[error("{0}")]
    TooLarge(String),
    #[error("Missing or invalid API key. Send it as `Authorization: Bearer <key>` or `x-api-key: <key>`.")]
    Unauthorized,
    #[error("{message}")]
    RateLimited { message: String, retry_after: u64 },
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    #[error("No route for {0}.")]
    RouteNotFound(String),
    #[error("Method {0} is not allowed here.")]
    MethodNotAllowed(String),
    /// The model could not be loaded; the cause goes to the log, not the client.
    #[error("The model `{model}` could not be loaded; retry in {retry_after} s.")]
    ModelUnavailable { model: String, cause: String, retry_after: u64 },
    #[error("The model's queue is full; retry shortly.")]
    Overloaded,
    /// The tenant already holds its share of the model's queue.
    #[error("Too many of your inputs are queued for this model; retry shortly.")]
    TenantQueueFull,
    #[error("The request took longer than {0} ms and was abandoned.")]
    Timeout(u64),
    #[error("The service is not ready yet.")]
    NotReady,
    /// Anything else; the client sees a generic message.
    #[error("The server had an error while processing your request.")]
    Internal(String),
}

/// The cause of a 5xx, attached to the response for the logging middleware to record.
#[derive(Debug, Clone)]
pub struct ErrorCause(pub String);

impl Error {
    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Error::Invalid { message: message.into(), param: Some(param) }
    }

    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Error::Internal(cause.to_string())
    }

    /// The same error, naming the model as the client knows it rather than by its cache id
    /// (`tenant/name` for private models).
    pub fn for_model(self, name: &str) -> Self {
        match self {
            Error::ModelUnavailable { cause, retry_after, .. } => {
                Error::ModelUnavailable { model: name.to_owned(), cause, retry_after }
            }
            Error::ModelNotFound(_) => Error::ModelNotFound(name.to_owned()),
            other => other,
        }
    }

    /// The status table.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::MalformedJson(_) => StatusCode::BAD_REQUEST,
            Error::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::RateLimited { .. } | Error::TenantQueueFull => StatusCode::TOO_MANY_REQUESTS,
            Error::ModelNotFound(_) | Error::RouteNotFound(_) => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::ModelUnavailable { .. } | Error::Overloaded | Error::NotReady => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind_and_code(&self) -> (&'static str, &'static str) {
        match self {
            Error::MalformedJson(_) => ("invalid_request_error", "malformed_json"),
            Error::Invalid { .. } => ("invalid_request_error", "invalid_value"),
            Error::TooLarge(_) => ("invalid_request_error", "request_too_large"),
            Error::Unauthorized => ("authentication_error", "invalid_api_key"),
            Error::RateLimited { .. } => ("rate_limit_error", "rate_limit_exceeded"),
            Error::ModelNotFound(_) => ("invalid_request_error", "model_not_found"),
            Error::RouteNotFound(_) => ("invalid_request_error", "unknown_url"),
            Error::MethodNotAllowed(_) => ("invalid_request_error", "method_not_allowed"),
            Error::ModelUnavailable { .. } => ("server_error", "model_unavailable"),
            Error::Overloaded => ("server_error", "overloaded"),
            Error::TenantQueueFull => ("rate_limit_error", "tenant_queue_full"),
            Error::Timeout(_) => ("server_error", "timeout"),
            Error::NotReady => ("server_error", "not_ready"),
            Error::Internal(_) => ("server_error", "internal_error"),
        }
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            Error::Invalid { param, .. } => *param,
            Error::ModelNotFound(_) => Some("model"),
            Error::TooLarge(_) => Some("input"),
            _ => None,
        }
    }

    fn cause(&self) -> Option<String> {
        match self {
            Error::ModelUnavailable { cause, .. } | Error::Internal(cause) => Some(cause.clone()),
            _ => None,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (kind, code) = self.kind_and_code();
        let body = json!({
            "error": { "message": self.to_string(), "type": kind, "param": self.param(), "code": code }
        });
        let mut response = (self.status(), Json(body)).into_response();
        let retry_after = match &self {
            Error::RateLimited { retry_after, .. } | Error::ModelUnavailable { retry_after, .. } => {
                Some(*retry_after)
            }
            Error::Overloaded | Error::TenantQueueFull | Error::NotReady => Some(1),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        if let Some(cause) = self.cause() {
            response.extensions_mut().insert(ErrorCause(cause));
        }
        response
    }
}
