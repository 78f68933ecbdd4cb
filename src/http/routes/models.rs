//! `GET /v1/models`: the caller's models, and only theirs, in OpenAI's list shape, with their
//! dimensions and token limits.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::http::ApiState;
use crate::http::auth::Authed;
use crate::http::layers::respond_plain;

pub(crate) async fn list(State(state): State<Arc<ApiState>>, Authed(tenant): Authed) -> Response {
    let data: Vec<Value> = state
        .embedder
        .models_of(&tenant)
        .into_iter()
        .map(|model| {
            let mut entry = json!({
                "id": model.name,
                "object": "model",
                "created": 0,
                "owned_by": tenant.id,
                "task": model.task.as_str(),
                // A hub model's are known once its files are fetched (null before).
                "dimensions": model.dimensions,
                "max_tokens": model.max_tokens,
            });
            if let Some((variant, reason)) = model.variant {
                entry["variant"] = json!(variant);
                entry["variant_reason"] = json!(reason);
            }
            entry
        })
        .collect();
    respond_plain(&tenant, Ok(Json(json!({ "object": "list", "data": data })).into_response()))
}
