//! `POST /v1/embed`, the native API, and the request core both embedding routes share:
//! validate, resolve the model, embed, shape vectors, count usage.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::auth::Authed;
use super::extract::JsonBody;
use crate::AppState;
use crate::error::Error;
use crate::models::pooling::shape_vector;
use crate::tenants::Tenant;

/// Who a request was for, for the metrics middleware's `tenant` and `model` labels.
#[derive(Debug, Clone, Default)]
pub struct Labels {
    pub tenant: String,
    pub model: String,
    /// Tokens processed, for per-request metric lines.
    pub tokens: usize,
}

impl Labels {
    /// Attaches the labels to a response, success or error.
    pub fn attach(self, result: Result<Response, Error>) -> Response {
        let mut response = result.unwrap_or_else(IntoResponse::into_response);
        response.extensions_mut().insert(self);
        response
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    #[default]
    Float,
    /// Little-endian f32 bytes, base64-encoded.
    Base64,
}

/// One vector as the client asked for it.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

impl Vector {
    fn encode(v: Vec<f32>, format: EncodingFormat) -> Self {
        match format {
            EncodingFormat::Float => Vector::Float(v),
            EncodingFormat::Base64 => {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Vector::Base64(STANDARD.encode(bytes))
            }
        }
    }
}

/// What both embedding routes ask of the core.
pub struct EmbedParams<'a> {
    pub input: Option<&'a Value>,
    pub model: Option<&'a str>,
    pub normalize: Option<bool>,
    pub dimensions: Option<usize>,
    pub format: EncodingFormat,
}

pub struct EmbedOutput {
    pub model: String,
    pub dimensions: usize,
    pub vectors: Vec<Vector>,
    pub tokens: usize,
}

#[derive(Debug, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(tokens: usize) -> Self {
        Self { prompt_tokens: tokens, total_tokens: tokens }
    }
}

/// Checks the tenant's limits, validates, embeds and shapes; every failure is an [`Error`]
/// with its status. `labels.model` is set as soon as the model is known.
pub async fn embed_core(
    state: &AppState,
    tenant: &Tenant,
    params: EmbedParams<'_>,
    labels: &mut Labels,
) -> Result<EmbedOutput, Error> {
    tenant.check_request().inspect_err(|_| count_refusal(state, tenant, "requests"))?;
    let texts = parse_input(params.input, tenant.max_inputs())?;
    let (name, model_id) = tenant.resolve(params.model)?;
    labels.model = model_id.to_owned();
    // Validate against the spec before loading: a bad request must not cost a model load.
    let spec = state.models.spec(model_id).ok_or_else(|| Error::ModelNotFound(name.to_owned()))?;
    let dimensions = match params.dimensions {
        None => spec.dimensions,
        Some(d) if (1..=spec.dimensions).contains(&d) => d,
        Some(d) => {
            return Err(Error::invalid(
                "dimensions",
                format!("dimensions must be between 1 and {} for model `{name}`, got {d}", spec.dimensions),
            ));
        }
    };
    let normalize = params.normalize.unwrap_or(spec.normalize);
    let model = state.models.get(model_id).await.map_err(|e| e.for_model(name))?;

    let count_queue_refusal = |e: &Error| {
        let reason = match e {
            Error::Overloaded => "queue_full",
            Error::TenantQueueFull => "tenant_queue_share",
            _ => return,
        };
        state.metrics.refusals.with_label_values(&[model_id, reason]).inc();
    };
    let work = async {
        model.admits(&tenant.id).inspect_err(count_queue_refusal)?;
        let inputs = model.tokenize(texts).await?;
        let tokens: usize = inputs.iter().map(|e| e.len()).sum();
        let truncated = inputs.iter().filter(|e| e.truncated).count();
        tenant.check_tokens(tokens).inspect_err(|_| count_refusal(state, tenant, "tokens"))?;
        let vectors = model.infer(&tenant.id, inputs).await.inspect_err(count_queue_refusal)?;
        Ok::<_, Error>((vectors, tokens, truncated))
    };
    let (vectors, tokens, truncated) =
        tokio::time::timeout(state.server.request_timeout(), work).await.map_err(|_| {
            state.metrics.refusals.with_label_values(&[model_id, "timeout"]).inc();
            Error::Timeout(state.server.request_timeout_ms)
        })??;

    labels.tokens = tokens;
    let m = &state.metrics;
    m.tokens.with_label_values(&[&tenant.id, model_id]).inc_by(tokens as u64);
    m.embeddings.with_label_values(&[&tenant.id, model_id]).inc_by(vectors.len() as u64);
    m.truncated_inputs.with_label_values(&[model_id]).inc_by(truncated as u64);

    let vectors = vectors
        .into_iter()
        .map(|v| Vector::encode(shape_vector(v, dimensions, normalize), params.format))
        .collect();
    Ok(EmbedOutput { model: name.to_owned(), dimensions, vectors, tokens })
}

fn count_refusal(state: &AppState, tenant: &Tenant, limit: &str) {
    state.metrics.rate_limited.with_label_values(&[&tenant.id, limit]).inc();
}

/// `input` is a non-empty string or a non-empty array of non-empty strings.
fn parse_input(input: Option<&Value>, max_inputs: usize) -> Result<Vec<String>, Error> {
    let texts = match input {
        None | Some(Value::Null) => return Err(Error::invalid("input", "input is required")),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return Err(Error::invalid("input", "input must not be an empty array"));
            }
            if items.len() > max_inputs {
                return Err(Error::TooLarge(format!(
                    "input has {} items; this server accepts at most {max_inputs} per request",
                    items.len()
                )));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(Error::invalid(
                        "input",
                        format!("input[{i}] must be a string, got {}", json_kind(other)),
                    )),
                })
                .collect::<Result<_, _>>()?
        }
        Some(other) => {
            return Err(Error::invalid(
                "input",
                format!("input must be a string or an array of strings, got {}", json_kind(other)),
            ));
        }
    };
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        let at = if texts.len() == 1 { "input".to_owned() } else { format!("input[{i}]") };
        return Err(Error::invalid("input", format!("{at} is empty")));
    }
    Ok(texts)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

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
pub struct EmbedResponse {
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
    let result = embed_core(&state, &tenant, params, &mut labels).await.map(|out| {
        let usage = Usage::new(out.tokens);
        Json(EmbedResponse { model: out.model, dimensions: out.dimensions, embeddings: out.vectors, usage })
            .into_response()
    });
    labels.attach(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(input: Value) -> u16 {
        parse_input(Some(&input), 2).unwrap_err().status().as_u16()
    }

    #[test]
    fn input_validation_has_the_documented_statuses() {
        assert_eq!(parse_input(Some(&json!("hi")), 2).unwrap(), vec!["hi"]);
        assert_eq!(parse_input(Some(&json!(["a", "b"])), 2).unwrap(), vec!["a", "b"]);
        assert_eq!(status(json!([])), 422);
        assert_eq!(status(json!("")), 422);
        assert_eq!(status(json!(["a", "  "])), 422);
        assert_eq!(status(json!(["a", 3])), 422);
        assert_eq!(status(json!(7)), 422);
        assert_eq!(status(json!(["a", "b", "c"])), 413);
        assert_eq!(parse_input(None, 2).unwrap_err().status().as_u16(), 422);
    }

    #[test]
    fn base64_is_little_endian_f32() {
        let Vector::Base64(s) = Vector::encode(vec![1.0, -2.5], EncodingFormat::Base64) else { panic!() };
        let bytes = STANDARD.decode(s).unwrap();
        assert_eq!(bytes, [1.0f32.to_le_bytes(), (-2.5f32).to_le_bytes()].concat());
    }
}
