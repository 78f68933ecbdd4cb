//! `POST /v1/embeddings`, OpenAI's embeddings API: the request and response shapes around the
//! core. The official SDKs ask for base64 unless told otherwise; both encodings are served.
//! Unknown fields are refused (422), as OpenAI refuses unrecognised arguments.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::core::embed::{EmbedParams, EncodingFormat, Output, TextParams, Usage, Vector};
use crate::http::ApiState;
use crate::http::auth::Authed;
use crate::http::extract::JsonBody;
use crate::http::layers::respond;
use crate::models::engine::tokenize::Direction;
use crate::models::spec::Task;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EmbeddingsRequest {
    input: Option<Value>,
    model: Option<String>,
    #[serde(default)]
    encoding_format: EncodingFormat,
    dimensions: Option<usize>,
    /// Accepted for compatibility; OpenAI uses it for abuse monitoring.
    #[serde(rename = "user")]
    _user: Option<String>,
    /// The model's prompt to put before each input (`"query"`, `"document"`, ...).
    input_type: Option<String>,
    /// The same, by Text Embeddings Inference's name.
    prompt_name: Option<String>,
    /// `false`: an input over the model's token limit is refused (413) instead of cut.
    /// `truncation` is Voyage's name for it.
    #[serde(alias = "truncation")]
    truncate: Option<bool>,
    truncation_direction: Option<Direction>,
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

pub(crate) async fn embeddings(
    State(state): State<Arc<ApiState>>,
    Authed(tenant): Authed,
    JsonBody(req): JsonBody<EmbeddingsRequest>,
) -> Response {
    let params = EmbedParams {
        input: req.input.as_ref(),
        model: req.model.as_deref(),
        normalize: None,
        dimensions: req.dimensions,
        output: Output::Format(req.encoding_format),
        text: TextParams {
            input_type: req.input_type.as_deref(),
            prompt_name: req.prompt_name.as_deref(),
            truncate: req.truncate,
            truncation_direction: req.truncation_direction,
            max_tokens: None,
        },
        // OpenAI's shape is dense vectors only.
        tasks: &[Task::Embed],
        token_ids: true,
    };
    let outcome = state.embedder.embed(&tenant, params).await;
    respond(&tenant, outcome, |out| {
        let data = out
            .vectors
            .into_list()
            // One format for a dense model (the only task this route takes): always a list.
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(index, embedding)| EmbeddingObject { object: "embedding", index, embedding })
            .collect();
        Json(EmbeddingsResponse { object: "list", data, model: out.model, usage: out.usage }).into_response()
    })
}
