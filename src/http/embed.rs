//! `POST /v1/embed`, the native API: the request and response shapes around the core.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::auth::Authed;
use super::error::ApiError;
use super::extract::JsonBody;
use crate::app::AppState;
use crate::embed::{EmbedParams, EncodingFormat, Usage, Vector};
use crate::metrics::Labels;

/// Unknown fields are refused (422), on this route as on `/v1/embeddings`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedRequest {
    input: Option<Value>,
    model: Option<String>,
    normalize: Option<bool>,
    dimensions: Option<usize>,
    #[serde(default)]
    encoding_format: EncodingFormat,
}

#[derive(Debug, Serialize)]
struct EmbedResponse {
    model: String,
    dimensions: usize,
    embeddings: Vec<Vector>,
    usage: Usage,
}

pub async fn embed(
    State(state): State<Arc<AppState>>,
    Authed(tenant): Authed,
    JsonBody(req): JsonBody<EmbedRequest>,
) -> Response {
    let mut labels = Labels { tenant: tenant.id.clone(), ..Labels::default() };
    let params = EmbedParams {
        input: req.input.as_ref(),
        model: req.model.as_deref(),
        normalize: req.normalize,
        dimensions: req.dimensions,
        format: req.encoding_format,
    };
    let result = state.embedder.embed(&tenant, params, &mut labels).await.map(|out| {
        let response = EmbedResponse {
            model: out.model,
            dimensions: out.dimensions,
            embeddings: out.vectors,
            usage: out.usage,
        };
        Json(response).into_response()
    });
    super::with_labels(labels, result.map_err(ApiError::from))
}
