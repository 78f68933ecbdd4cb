//! Text Embeddings Inference's routes, in its shapes, for the clients written against it:
//! `POST /rerank` (`{query, texts}` → `[{index, score, text?}]`, best first) and
//! `POST /embed_sparse` (`{inputs}` → `[[{index, value}]]`). TEI serves one model, so its
//! requests name none: the tenant's default model is used, or where that does not fit the route,
//! the tenant's one model that does; `model` may be sent to choose. Unlike TEI's default,
//! over-long inputs are truncated unless `truncate` is `false` (TEI's `--auto-truncate`).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::core::embed::{EmbedParams, Embeddings, EncodingFormat, Output, RerankParams, TextParams};
use crate::http::ApiState;
use crate::http::auth::Authed;
use crate::http::extract::JsonBody;
use crate::http::layers::respond;
use crate::models::engine::tokenize::Direction;
use crate::models::spec::Task;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TeiRerankRequest {
    model: Option<String>,
    query: Option<Value>,
    texts: Option<Value>,
    /// The model's logits instead of its scores.
    #[serde(default)]
    raw_scores: bool,
    #[serde(default)]
    return_text: bool,
    truncate: Option<bool>,
    truncation_direction: Option<Direction>,
}

#[derive(Debug, Serialize)]
struct TeiRank {
    index: usize,
    score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
}

pub(crate) async fn rerank(
    State(state): State<Arc<ApiState>>,
    Authed(tenant): Authed,
    JsonBody(req): JsonBody<TeiRerankRequest>,
) -> Response {
    let params = RerankParams {
        model: req.model.as_deref(),
        query: req.query.as_ref(),
        documents: req.texts.as_ref(),
        documents_field: "texts",
        top_n: None,
        max_tokens_per_doc: None,
        truncate: req.truncate,
        truncation_direction: req.truncation_direction,
        raw_scores: req.raw_scores,
    };
    let outcome = state.embedder.rerank(&tenant, params).await;
    respond(&tenant, outcome, |out| {
        let ranks: Vec<TeiRank> = out
            .results
            .iter()
            .map(|r| TeiRank {
                index: r.index,
                score: r.score,
                text: req.return_text.then(|| out.documents[r.index].clone()),
            })
            .collect();
        Json(ranks).into_response()
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EmbedSparseRequest {
    model: Option<String>,
    inputs: Option<Value>,
    truncate: Option<bool>,
    truncation_direction: Option<Direction>,
    prompt_name: Option<String>,
}

#[derive(Debug, Serialize)]
struct SparseValue {
    index: u32,
    value: f32,
}

pub(crate) async fn embed_sparse(
    State(state): State<Arc<ApiState>>,
    Authed(tenant): Authed,
    JsonBody(req): JsonBody<EmbedSparseRequest>,
) -> Response {
    let params = EmbedParams {
        input: req.inputs.as_ref(),
        model: req.model.as_deref(),
        normalize: None,
        dimensions: None,
        output: Output::Format(EncodingFormat::Float),
        text: TextParams {
            input_type: None,
            prompt_name: req.prompt_name.as_deref(),
            truncate: req.truncate,
            truncation_direction: req.truncation_direction,
        },
        tasks: &[Task::Sparse],
    };
    let outcome = state.embedder.embed(&tenant, params).await;
    respond(&tenant, outcome, |out| {
        let vectors: Vec<Vec<SparseValue>> = match out.vectors {
            Embeddings::Sparse(vectors) => vectors
                .into_iter()
                .map(|v| {
                    v.indices
                        .into_iter()
                        .zip(v.values)
                        .map(|(index, value)| SparseValue { index, value })
                        .collect()
                })
                .collect(),
            // Only sparse models are served here.
            Embeddings::List(_) | Embeddings::ByType(_) => Vec::new(),
        };
        Json(vectors).into_response()
    })
}
