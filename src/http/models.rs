//! `GET /v1/models`: the caller's models, and only theirs, in OpenAI's list shape, with their
//! dimensions and token limits.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::auth::Authed;
use crate::AppState;

pub async fn list(State(state): State<Arc<AppState>>, Authed(tenant): Authed) -> Json<Value> {
    let data: Vec<Value> = tenant
        .models()
        .filter_map(|(name, id)| state.models.spec(id).map(|spec| (name, spec)))
        .map(|(name, spec)| {
            json!({
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": tenant.id,
                "dimensions": spec.dimensions,
                "max_tokens": spec.max_tokens,
            })
        })
        .collect();
    Json(json!({ "object": "list", "data": data }))
}
