//! Liveness (`/health`: the process answers), readiness (`/ready`: the preloaded models have
//! loaded and each served one warm-up run) and `/metrics` (Prometheus text).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::error::ApiError;
use crate::app::AppState;

pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn ready(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    if state.is_ready() {
        Ok(Json(json!({ "status": "ready", "loaded_models": state.embedder.models.loaded() })))
    } else {
        Err(ApiError::NotReady)
    }
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}
