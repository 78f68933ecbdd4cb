//! Text Embeddings Inference's routes, in its shapes, for the clients written against it:
//! `POST /embed` (and `POST /`, where `huggingface_hub`'s `InferenceClient` posts) (`{inputs}` →
//! `[[f32]]`), `POST /rerank` (`{query, texts}` → `[{index, score, text?}]`, best first),
//! `POST /embed_sparse` (`{inputs}` → `[[{index, value}]]`), `POST /tokenize`, `POST /decode`
//! and `GET /info`. TEI serves one model, so its
//! requests name none: the tenant's default model is used, or where that does not fit the route,
//! the tenant's one model that does; `model` may be sent to choose. Unlike TEI's default,
//! over-long inputs are truncated unless `truncate` is `false` (TEI's `--auto-truncate`).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::core::embed::{EmbedParams, Embeddings, EncodingFormat, Output, RerankParams, TextParams, Vector};
use crate::http::ApiState;
use crate::http::auth::Authed;
use crate::http::error::ApiError;
use crate::http::extract::JsonBody;
use crate::http::layers::{respond, respond_plain};
use crate::models::engine::tokenize::Direction;
use crate::models::spec::{Pooling, Task};

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
    let text = tei_text(req.prompt_name.as_deref(), req.truncate, req.truncation_direction);
    let params = tei_params(req.inputs.as_ref(), req.model.as_deref(), text, &[Task::Sparse]);
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TeiEmbedRequest {
    model: Option<String>,
    inputs: Option<Value>,
    /// TEI's default: `true`.
    normalize: Option<bool>,
    truncate: Option<bool>,
    truncation_direction: Option<Direction>,
    prompt_name: Option<String>,
    dimensions: Option<usize>,
}

/// `POST /embed` (and `POST /`): the tenant's dense model, one `[f32]` per input.
pub(crate) async fn embed(
    State(state): State<Arc<ApiState>>,
    Authed(tenant): Authed,
    JsonBody(req): JsonBody<TeiEmbedRequest>,
) -> Response {
    let text = tei_text(req.prompt_name.as_deref(), req.truncate, req.truncation_direction);
    let params = EmbedParams {
        normalize: Some(req.normalize.unwrap_or(true)),
        dimensions: req.dimensions,
        ..tei_params(req.inputs.as_ref(), req.model.as_deref(), text, &[Task::Embed])
    };
    let outcome = state.embedder.embed(&tenant, params).await;
    respond(&tenant, outcome, |out| {
        let vectors: Vec<Vec<f32>> = out
            .vectors
            .into_list()
            .unwrap_or_default()
            .into_iter()
            .map(|v| match v {
                Vector::Float(v) => v,
                // Float is the only format asked for.
                Vector::Base64(_) | Vector::Int8(_) | Vector::Uint8(_) => Vec::new(),
            })
            .collect();
        Json(vectors).into_response()
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TeiTokenizeRequest {
    model: Option<String>,
    inputs: Option<Value>,
    /// TEI's default: `true`.
    add_special_tokens: Option<bool>,
    prompt_name: Option<String>,
}

#[derive(Debug, Serialize)]
struct SimpleToken {
    id: u32,
    text: String,
    special: bool,
    start: Option<usize>,
    stop: Option<usize>,
}

/// `POST /tokenize`: each input's tokens as TEI lists them.
pub(crate) async fn tokenize(
    State(state): State<Arc<ApiState>>,
    Authed(tenant): Authed,
    JsonBody(req): JsonBody<TeiTokenizeRequest>,
) -> Response {
    let text = tei_text(req.prompt_name.as_deref(), Some(true), None);
    let special_too = req.add_special_tokens.unwrap_or(true);
    let outcome = state.embedder.tokenize(&tenant, req.inputs.as_ref(), req.model.as_deref(), text).await;
    respond(&tenant, outcome, |out| {
        let lists: Vec<Vec<SimpleToken>> = out
            .inputs
            .into_iter()
            .map(|t| {
                (0..t.ids.len())
                    .filter(|&i| special_too || !t.special[i])
                    .map(|i| {
                        let (start, stop) = t.offsets[i];
                        let special = t.special[i];
                        SimpleToken {
                            id: t.ids[i],
                            text: t.tokens[i].clone(),
                            special,
                            start: (!special).then_some(start),
                            stop: (!special).then_some(stop),
                        }
                    })
                    .collect()
            })
            .collect();
        Json(lists).into_response()
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TeiDecodeRequest {
    model: Option<String>,
    ids: Option<Value>,
    /// TEI's default: `true`.
    skip_special_tokens: Option<bool>,
}

/// `POST /decode`: token ids of the model's own tokenizer back to text, one string per input.
pub(crate) async fn decode(
    State(state): State<Arc<ApiState>>,
    Authed(tenant): Authed,
    JsonBody(req): JsonBody<TeiDecodeRequest>,
) -> Response {
    let skip = req.skip_special_tokens.unwrap_or(true);
    let outcome = state.embedder.decode(&tenant, req.ids.as_ref(), req.model.as_deref(), skip).await;
    respond(&tenant, outcome, |out| Json(out.texts).into_response())
}

/// `GET /info`: the tenant's default model as TEI describes the one model it serves.
pub(crate) async fn info(State(state): State<Arc<ApiState>>, Authed(tenant): Authed) -> Response {
    let tasks = [Task::Embed, Task::Sparse, Task::Rerank];
    let result =
        state.embedder.default_model(&tenant, &tasks).await.map_err(ApiError::from).map(|(name, spec)| {
            let model_type = match spec.task() {
                Task::Embed => json!({ "embedding": { "pooling": pooling_name(spec.pooling) } }),
                Task::Sparse => json!({ "embedding": { "pooling": "splade" } }),
                Task::Rerank => {
                    json!({ "reranker": { "id2label": { "0": "LABEL_0" }, "label2id": { "LABEL_0": 0 } } })
                }
            };
            let server = &state.server;
            let workers = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
            Json(json!({
                "model_id": name,
                "model_sha": null,
                "model_dtype": "float32",
                "model_type": model_type,
                "prompts": spec.prompts,
                "default_prompt": spec.default_prompt.as_ref().and_then(|d| spec.prompts.get(d)),
                "max_concurrent_requests": server.max_connections,
                "max_input_length": spec.max_tokens,
                "max_batch_tokens": server.max_batch_tokens,
                "max_batch_requests": server.max_batch_size,
                "max_client_batch_size": tenant.max_inputs(),
                "auto_truncate": true,
                "tokenization_workers": workers,
                "version": env!("CARGO_PKG_VERSION"),
                "sha": null,
                "docker_label": null,
            }))
            .into_response()
        });
    respond_plain(&tenant, result)
}

/// A TEI request's prompt and truncation (TEI names prompts `prompt_name`).
fn tei_text(
    prompt_name: Option<&str>,
    truncate: Option<bool>,
    direction: Option<Direction>,
) -> TextParams<'_> {
    TextParams { prompt_name, truncate, truncation_direction: direction, ..TextParams::default() }
}

/// A TEI embedding request: float vectors of a model of `tasks`, no token ids.
fn tei_params<'a>(
    input: Option<&'a Value>,
    model: Option<&'a str>,
    text: TextParams<'a>,
    tasks: &'a [Task],
) -> EmbedParams<'a> {
    EmbedParams {
        input,
        model,
        normalize: None,
        dimensions: None,
        output: Output::Format(EncodingFormat::Float),
        text,
        tasks,
        token_ids: false,
    }
}

fn pooling_name(pooling: Option<Pooling>) -> &'static str {
    match pooling {
        Some(Pooling::Mean) | None => "mean",
        Some(Pooling::Cls) => "cls",
        Some(Pooling::LastToken) => "last_token",
        Some(Pooling::Max) => "max",
        Some(Pooling::Splade) => "splade",
        Some(Pooling::None) => "none",
    }
}
