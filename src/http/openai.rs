//! `POST /v1/embeddings`, OpenAI's embeddings API. The official SDKs ask for base64 unless
//! told otherwise; both encodings are served. Unknown fields are ignored, as OpenAI does.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::embed::{EmbedParams, EncodingFormat, ModelLabel, Usage, Vector, embed_core};
use super::extract::JsonBody;
use crate::AppState;
use crate::error::Error;

#[derive(Debug, Deserialize)]
pub struct EmbeddingsRequest {
    input: Option<Value>,
    model: Option<String>,
    #[serde(default)]
    encoding_format: EncodingFormat,
    dimensions: Option<usize>,
    /// Accepted for compatibility; OpenAI uses it for abuse monitoring.
    #[allow(dead_code)]
    user: Option<String>,
}

#[derive(Debug, Serialize)]
struct EmbeddingsResponse {
    object: &'static str,
    data: Vec<EmbeddingObject>,
    model: String,
    usage: Usage,
}

#[derive(Debug, Serialize)]
struct EmbeddingObject {
    object: &'static str,
    index: usize,
    embedding: Vector,
}

pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<EmbeddingsRequest>,
) -> Result<Response, Error> {
    let out = embed_core(
        &state,
        EmbedParams {
            input: req.input.as_ref(),
            model: req.model.as_deref(),
            normalize: None,
            dimensions: req.dimensions,
            format: req.encoding_format,
        },
    )
    .await?;
    let data = out
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, embedding)| EmbeddingObject {
            object: "embedding",
            index,
            embedding,
        })
        .collect();
    let label = ModelLabel(out.model.clone());
    let body = EmbeddingsResponse {
        object: "list",
        data,
        model: out.model,
        usage: Usage::new(out.tokens),
    };
    Ok((Extension(label), Json(body)).into_response())
}
