//! `GET /v1/models`: the configured models in OpenAI's list shape, with their dimensions and
//! token limits.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::AppState;

pub async fn list(State(state): State<Arc<AppState>>) -> Json<Value> {
    let data: Vec<Value> = state
        .models
        .specs()
        .iter()
        .map(|(id, spec)| {
            json!({
                "id": id,
                "object": "model",
                "created": 0,
                "owned_by": "embedserve",
                "dimensions": spec.dimensions,
                "max_tokens": spec.max_tokens,
            })
        })
        .collect();
    Json(json!({ "object": "list", "data": data }))
}
