//! `POST /v1/rerank` and `POST /v2/rerank`: the shape Cohere's v2 API and Jina share (Voyage's
//! `top_k` and `truncation` accepted as aliases), around the core's reranking. Scores are what
//! sentence-transformers' `CrossEncoder.predict` returns by default (docs/api.md).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::core::embed::RerankParams;
use crate::http::ApiState;
use crate::http::auth::Authed;
use crate::http::extract::JsonBody;
use crate::http::layers::respond;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RerankRequest {
    model: Option<String>,
    query: Option<Value>,
    documents: Option<Value>,
    #[serde(alias = "top_k")]
    top_n: Option<i64>,
    #[serde(default)]
    return_documents: bool,
    max_tokens_per_doc: Option<i64>,
    /// `false`: a pair over the model's limit is refused (413). Voyage calls it `truncation`.
    #[serde(alias = "truncation")]
    truncate: Option<bool>,
}

#[derive(Debug, Serialize)]
struct RerankResponse {
    id: String,
    model: String,
    results: Vec<RerankResult>,
    usage: RerankUsage,
    meta: Meta,
}

#[derive(Debug, Serialize)]
struct RerankResult {
    index: usize,
    relevance_score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    document: Option<Document>,
}

#[derive(Debug, Serialize)]
struct Document {
    text: String,
}

#[derive(Debug, Serialize)]
struct RerankUsage {
    total_tokens: usize,
}

#[derive(Debug, Serialize)]
struct Meta {
    billed_units: BilledUnits,
}

#[derive(Debug, Serialize)]
struct BilledUnits {
    search_units: usize,
}

pub(crate) async fn rerank(
    State(state): State<Arc<ApiState>>,
    Authed(tenant): Authed,
    JsonBody(req): JsonBody<RerankRequest>,
) -> Response {
    let params = RerankParams {
        model: req.model.as_deref(),
        query: req.query.as_ref(),
        documents: req.documents.as_ref(),
        documents_field: "documents",
        top_n: req.top_n,
        max_tokens_per_doc: req.max_tokens_per_doc,
        truncate: req.truncate,
        truncation_direction: None,
        raw_scores: false,
    };
    let outcome = state.embedder.rerank(&tenant, params).await;
    respond(&tenant, outcome, |out| {
        let results = out
            .results
            .iter()
            .map(|r| RerankResult {
                index: r.index,
                relevance_score: r.score,
                document: req.return_documents.then(|| Document { text: out.documents[r.index].clone() }),
            })
            .collect();
        Json(RerankResponse {
            id: uuid::Uuid::new_v4().to_string(),
            model: out.model,
            results,
            usage: RerankUsage { total_tokens: out.usage.total_tokens },
            meta: Meta { billed_units: BilledUnits { search_units: out.search_units } },
        })
        .into_response()
    })
}
