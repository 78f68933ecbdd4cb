//! Liveness (`/health`: the process answers), readiness (`/ready`: the preloaded models have
//! loaded and each served one warm-up run), both without a key and naming nothing, and
//! `/metrics` (Prometheus text): on the metrics listener, or on the public one only to the
//! bearer of `server.metrics_key`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::config::keys::{hash_key_bytes, parse_key_hash};
use crate::http::ApiState;
use crate::http::error::ApiError;

pub(crate) async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub(crate) async fn ready(State(state): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
    if state.is_ready() { Ok(Json(json!({ "status": "ready" }))) } else { Err(ApiError::NotReady) }
}

pub(crate) async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

/// `/metrics` on the public listener: only with the metrics key.
pub(crate) async fn protected_metrics(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    let expected = state.server.metrics_key.as_deref().and_then(parse_key_hash);
    let given = crate::http::auth::bearer_or_api_key(&headers).map(|k| hash_key_bytes(k.trim()));
    match (expected, given) {
        (Some(expected), Some(given)) if bool::from(expected.ct_eq(&given)) => metrics(State(state)).await,
        _ => ApiError::Unauthorized.into_response(),
    }
}
