//! `GET /v1/models`: the caller's models, and only theirs, in OpenAI's list shape, with their
//! dimensions and token limits.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::auth::Authed;
use crate::app::AppState;
use crate::metrics::Labels;

pub async fn list(State(state): State<Arc<AppState>>, Authed(tenant): Authed) -> Response {
    let data: Vec<Value> = tenant
        .models()
        .filter_map(|(name, id)| state.embedder.models.spec(id).map(|spec| (name, spec)))
        .map(|(name, spec)| {
            json!({
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": tenant.id,
                // A hub model's are known once its files are fetched (null before).
                "dimensions": spec.is_complete().then_some(spec.dimensions),
                "max_tokens": spec.is_complete().then_some(spec.max_tokens),
            })
        })
        .collect();
    let labels = Labels { tenant: tenant.id.clone(), ..Labels::default() };
    super::with_labels(labels, Ok(Json(json!({ "object": "list", "data": data })).into_response()))
}
