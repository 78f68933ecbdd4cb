//! Liveness (`/health`: the process answers), readiness (`/ready`: the default model has
//! loaded and served one warm-up request) and `/metrics` (Prometheus text).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::Error;

pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn ready(State(state): State<Arc<AppState>>) -> Result<Json<Value>, Error> {
    if state.is_ready() {
        Ok(Json(json!({ "status": "ready", "loaded_models": state.models.loaded() })))
    } else {
        Err(Error::NotReady)
    }
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}
