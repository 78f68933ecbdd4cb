//! `POST /v1/embed`, the native API: the request and response shapes around the core. A sparse
//! model's vectors come as `[{indices, values}]`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::core::embed::{
    EmbedError, EmbedParams, EmbeddingType, Embeddings, EncodingFormat, Output, TextParams, Usage,
};
use crate::http::ApiState;
use crate::http::auth::Authed;
use crate::http::error::ApiError;
use crate::http::extract::JsonBody;
use crate::http::layers::{respond, respond_plain};
use crate::models::engine::tokenize::Direction;
use crate::models::spec::Task;

/// Unknown fields are refused (422), on this route as on `/v1/embeddings`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EmbedRequest {
    input: Option<Value>,
    model: Option<String>,
    normalize: Option<bool>,
    dimensions: Option<usize>,
    #[serde(default)]
    encoding_format: EncodingFormat,
    /// Several output types at once, answered as `{"embeddings": {"float": [...], "int8": [...]}}`.
    embedding_types: Option<Vec<EmbeddingType>>,
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
struct EmbedResponse {
    model: String,
    dimensions: usize,
    embeddings: Embeddings,
    usage: Usage,
}

pub(crate) async fn embed(
    State(state): State<Arc<ApiState>>,
    Authed(tenant): Authed,
    JsonBody(req): JsonBody<EmbedRequest>,
) -> Response {
    let output = match req.embedding_types {
        Some(_) if req.encoding_format == EncodingFormat::Base64 => {
            let message = "embedding_types and encoding_format \"base64\" cannot be combined: \
                           embedding_types answers JSON arrays";
            let e = EmbedError::Invalid { message: message.into(), param: "embedding_types" };
            return respond_plain(&tenant, Err(ApiError::from(e)));
        }
        Some(types) => Output::Types(types),
        None => Output::Format(req.encoding_format),
    };
    let params = EmbedParams {
        input: req.input.as_ref(),
        model: req.model.as_deref(),
        normalize: req.normalize,
        dimensions: req.dimensions,
        output,
        text: TextParams {
            input_type: req.input_type.as_deref(),
            prompt_name: req.prompt_name.as_deref(),
            truncate: req.truncate,
            truncation_direction: req.truncation_direction,
            max_tokens: None,
        },
        tasks: &[Task::Embed, Task::Sparse],
        token_ids: false,
    };
    let outcome = state.embedder.embed(&tenant, params).await;
    respond(&tenant, outcome, |out| {
        let response = EmbedResponse {
            model: out.model,
            dimensions: out.dimensions,
            embeddings: out.vectors,
            usage: out.usage,
        };
        Json(response).into_response()
    })
}
