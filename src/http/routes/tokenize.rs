//! `POST /v1/tokenize`: the tokens each input becomes for a model, prompt and truncation applied
//! exactly as `/v1/embed` would, so clients can budget tokens and check prompts.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::core::embed::TextParams;
use crate::http::ApiState;
use crate::http::auth::Authed;
use crate::http::extract::JsonBody;
use crate::http::layers::respond;
use crate::models::engine::tokenize::Direction;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenizeRequest {
    input: Option<Value>,
    model: Option<String>,
    input_type: Option<String>,
    prompt_name: Option<String>,
    #[serde(alias = "truncation")]
    truncate: Option<bool>,
    truncation_direction: Option<Direction>,
}

#[derive(Debug, Serialize)]
struct TokenizeResponse {
    model: String,
    /// The model's limit, special tokens included.
    max_tokens: usize,
    data: Vec<TokenizedInput>,
}

#[derive(Debug, Serialize)]
struct TokenizedInput {
    index: usize,
    /// Tokens the model sees, the prompt's and the special ones included (what usage counts).
    count: usize,
    truncated: bool,
    ids: Vec<u32>,
    tokens: Vec<String>,
    /// Which tokens the tokenizer added rather than took from the text.
    special: Vec<bool>,
}

pub(crate) async fn tokenize(
    State(state): State<Arc<ApiState>>,
    Authed(tenant): Authed,
    JsonBody(req): JsonBody<TokenizeRequest>,
) -> Response {
    let text = TextParams {
        input_type: req.input_type.as_deref(),
        prompt_name: req.prompt_name.as_deref(),
        truncate: req.truncate,
        truncation_direction: req.truncation_direction,
        max_tokens: None,
    };
    let outcome = state.embedder.tokenize(&tenant, req.input.as_ref(), req.model.as_deref(), text).await;
    respond(&tenant, outcome, |out| {
        let data = out
            .inputs
            .into_iter()
            .enumerate()
            .map(|(index, t)| TokenizedInput {
                index,
                count: t.ids.len(),
                truncated: t.truncated,
                ids: t.ids,
                tokens: t.tokens,
                special: t.special,
            })
            .collect();
        Json(TokenizeResponse { model: out.model, max_tokens: out.max_tokens, data }).into_response()
    })
}
