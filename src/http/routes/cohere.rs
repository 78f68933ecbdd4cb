//! `POST /v2/embed`, Cohere's embed API v2 (where `cohere.ClientV2.embed` posts), on the same
//! core as `/v1/embed`: `texts` → `embeddings: {float: [...], int8: [...], ...}`, `input_type`
//! picks the model's prompt (`search_query` → `query`, `search_document` → `document`),
//! `truncate` is `"END"` (the default), `"START"` or `"NONE"` (refuse over-long texts),
//! `output_dimension` shortens vectors, `max_tokens` lowers the token limit. Text only: `images`
//! and the multimodal `inputs` form are refused (422).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::core::embed::{EmbedError, EmbedParams, EmbeddingType, Embeddings, Output, TextParams};
use crate::http::ApiState;
use crate::http::auth::Authed;
use crate::http::error::ApiError;
use crate::http::extract::JsonBody;
use crate::http::layers::{respond, respond_plain};
use crate::models::engine::tokenize::Direction;
use crate::models::spec::Task;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CohereEmbedRequest {
    model: Option<String>,
    texts: Option<Value>,
    images: Option<Value>,
    inputs: Option<Value>,
    input_type: Option<String>,
    embedding_types: Option<Vec<EmbeddingType>>,
    truncate: Option<CohereTruncate>,
    output_dimension: Option<usize>,
    max_tokens: Option<usize>,
    /// Cohere's scheduling hint; accepted, every request is scheduled alike.
    #[serde(rename = "priority")]
    _priority: Option<i64>,
}

/// Cohere's truncation: cut the end (the default), cut the start, or refuse.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
enum CohereTruncate {
    None,
    Start,
    End,
}

#[derive(Debug, Serialize)]
struct CohereEmbedResponse {
    id: String,
    embeddings: Embeddings,
    texts: Vec<String>,
    meta: Meta,
    response_type: &'static str,
}

#[derive(Debug, Serialize)]
struct Meta {
    api_version: ApiVersion,
    billed_units: BilledUnits,
}

#[derive(Debug, Serialize)]
struct ApiVersion {
    version: &'static str,
}

#[derive(Debug, Serialize)]
struct BilledUnits {
    input_tokens: usize,
}

pub(crate) async fn embed(
    State(state): State<Arc<ApiState>>,
    Authed(tenant): Authed,
    JsonBody(req): JsonBody<CohereEmbedRequest>,
) -> Response {
    let refuse = |param: &'static str, message: &str| {
        let e = EmbedError::Invalid { message: message.to_owned(), param };
        respond_plain(&tenant, Err(ApiError::from(e)))
    };
    if req.images.is_some() {
        return refuse("images", "this server embeds text only: send texts, not images");
    }
    if req.inputs.is_some() {
        return refuse("inputs", "this server embeds text only: send texts (a list of strings), not inputs");
    }
    if req.input_type.as_deref() == Some("image") {
        return refuse("input_type", "input_type \"image\" is for images; this server embeds text only");
    }
    if req.texts.is_none() {
        return refuse("texts", "texts is required");
    }
    let (truncate, direction) = match req.truncate {
        None | Some(CohereTruncate::End) => (true, Direction::Right),
        Some(CohereTruncate::Start) => (true, Direction::Left),
        Some(CohereTruncate::None) => (false, Direction::Right),
    };
    let types = req.embedding_types.unwrap_or_else(|| vec![EmbeddingType::Float]);
    let params = EmbedParams {
        input: req.texts.as_ref(),
        model: req.model.as_deref(),
        normalize: None,
        dimensions: req.output_dimension,
        output: Output::Types(types),
        text: TextParams {
            input_type: req.input_type.as_deref(),
            prompt_name: None,
            truncate: Some(truncate),
            truncation_direction: Some(direction),
            max_tokens: req.max_tokens,
        },
        tasks: &[Task::Embed],
        token_ids: false,
    };
    let texts: Vec<String> = match &req.texts {
        Some(Value::Array(items)) => items.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    };
    let outcome = state.embedder.embed(&tenant, params).await;
    respond(&tenant, outcome, |out| {
        let response = CohereEmbedResponse {
            id: uuid::Uuid::new_v4().to_string(),
            embeddings: out.vectors,
            texts,
            meta: Meta {
                api_version: ApiVersion { version: "2" },
                billed_units: BilledUnits { input_tokens: out.usage.total_tokens },
            },
            response_type: "embeddings_by_type",
        };
        Json(response).into_response()
    })
}
