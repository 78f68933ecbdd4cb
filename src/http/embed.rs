//! `POST /v1/embed`, the native API, and the request core both embedding routes share:
//! validate, resolve the model, embed, shape vectors, count usage.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::extract::JsonBody;
use crate::AppState;
use crate::error::Error;
use crate::models::pooling::shape_vector;

/// The model that served a request, for the metrics middleware's `model` label.
#[derive(Debug, Clone)]
pub struct ModelLabel(pub String);

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
        Self {
            prompt_tokens: tokens,
            total_tokens: tokens,
        }
    }
}

/// Validates, embeds and shapes; every failure is an [`Error`] with its status.
pub async fn embed_core(state: &AppState, params: EmbedParams<'_>) -> Result<EmbedOutput, Error> {
    let texts = parse_input(params.input, state.settings.server.max_inputs)?;
    let model_id = params.model.unwrap_or(&state.settings.default_model);
    let model = state.models.get(model_id).await?;
    let spec = &model.spec;
    let dimensions = match params.dimensions {
        None => spec.dimensions,
        Some(d) if (1..=spec.dimensions).contains(&d) => d,
        Some(d) => {
            return Err(Error::invalid(
                "dimensions",
                format!(
                    "dimensions must be between 1 and {} for model `{model_id}`, got {d}",
                    spec.dimensions
                ),
            ));
        }
    };
    let normalize = params.normalize.unwrap_or(spec.normalize);

    let timeout = state.settings.server.request_timeout();
    let embedded = tokio::time::timeout(timeout, model.embed(texts))
        .await
        .map_err(|_| Error::Timeout(state.settings.server.request_timeout_ms))??;

    let m = &state.metrics;
    m.tokens
        .with_label_values(&[model_id])
        .inc_by(embedded.tokens as u64);
    m.embeddings
        .with_label_values(&[model_id])
        .inc_by(embedded.vectors.len() as u64);
    m.truncated_inputs
        .with_label_values(&[model_id])
        .inc_by(embedded.truncated as u64);

    let vectors = embedded
        .vectors
        .into_iter()
        .map(|v| Vector::encode(shape_vector(v, dimensions, normalize), params.format))
        .collect();
    Ok(EmbedOutput {
        model: model_id.to_owned(),
        dimensions,
        vectors,
        tokens: embedded.tokens,
    })
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
                format!(
                    "input must be a string or an array of strings, got {}",
                    json_kind(other)
                ),
            ));
        }
    };
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        let at = if texts.len() == 1 {
            "input".to_owned()
        } else {
            format!("input[{i}]")
        };
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
    State(state): State<std::sync::Arc<AppState>>,
    JsonBody(req): JsonBody<EmbedRequest>,
) -> Result<Response, Error> {
    let out = embed_core(
        &state,
        EmbedParams {
            input: req.input.as_ref(),
            model: req.model.as_deref(),
            normalize: req.normalize,
            dimensions: req.dimensions,
            format: req.encoding_format,
        },
    )
    .await?;
    let label = ModelLabel(out.model.clone());
    let body = EmbedResponse {
        model: out.model,
        dimensions: out.dimensions,
        embeddings: out.vectors,
        usage: Usage::new(out.tokens),
    };
    Ok((Extension(label), Json(body)).into_response())
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
        assert_eq!(
            parse_input(Some(&json!(["a", "b"])), 2).unwrap(),
            vec!["a", "b"]
        );
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
        let Vector::Base64(s) = Vector::encode(vec![1.0, -2.5], EncodingFormat::Base64) else {
            panic!()
        };
        let bytes = STANDARD.decode(s).unwrap();
        assert_eq!(
            bytes,
            [1.0f32.to_le_bytes(), (-2.5f32).to_le_bytes()].concat()
        );
    }
}
