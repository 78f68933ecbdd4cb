//! The embedding core both APIs share: check the tenant's limits, validate the request against
//! the model's spec, embed through the model cache, shape and encode the vectors, count usage.
//! Nothing here knows HTTP: `http/embed.rs` and `http/openai.rs` translate wire formats to
//! [`EmbedParams`] and [`EmbedOutput`] back, and `http::error` maps [`EmbedError`] to statuses.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::echo::clip;
use crate::metrics::{Labels, Metrics};
use crate::models::ModelError;
use crate::models::cache::ModelCache;
use crate::models::pooling::shape_vector;
use crate::models::spec::ModelSpec;
use crate::models::tokenize::{Direction, EncodeOptions, Tokens};
use crate::store::LimitStore;
use crate::tenants::{Bucket, LimitError, Tenant};
use crate::usage::UsageLedger;

/// Why a request produced no vectors.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// A field's value is wrong; `param` names the field.
    #[error("{message}")]
    Invalid { message: String, param: &'static str },
    /// More inputs than the tenant may send at once.
    #[error("{0}")]
    TooManyInputs(String),
    /// No such model for this tenant (whether it exists for another is not said).
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// The model layer failed or refused; model names are the client's.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Unanswered within the request timeout (in ms).
    #[error("The request took longer than {0} ms and was abandoned.")]
    Timeout(u64),
}

impl EmbedError {
    fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        EmbedError::Invalid { message: message.into(), param }
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
    Int8(Vec<i8>),
    Uint8(Vec<u8>),
}

/// An output type of `/v1/embed`'s `embedding_types`, as Cohere and sentence-transformers
/// define them, computed from the final vector (after `dimensions` and normalisation):
/// - `int8`: `round(127 x)`, clamped to -127..=127 (a normalised vector's values are in -1..=1);
/// - `uint8`: that plus 128 (1..=255);
/// - `ubinary`: one bit per value, 1 where the value is positive, eight to a byte, first value
///   in the highest bit;
/// - `binary`: those bytes minus 128, as int8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingType {
    Float,
    Int8,
    Uint8,
    Binary,
    Ubinary,
}

impl EmbeddingType {
    fn packs_bits(self) -> bool {
        matches!(self, EmbeddingType::Binary | EmbeddingType::Ubinary)
    }

    fn encode(self, v: &[f32]) -> Vector {
        let int8 = |x: f32| (x * 127.0).round().clamp(-127.0, 127.0) as i8;
        let signs = || -> Vec<u8> {
            v.chunks(8)
                .map(|c| {
                    c.iter().enumerate().fold(0u8, |byte, (i, &x)| byte | (u8::from(x > 0.0) << (7 - i)))
                })
                .collect()
        };
        match self {
            EmbeddingType::Float => Vector::Float(v.to_vec()),
            EmbeddingType::Int8 => Vector::Int8(v.iter().map(|&x| int8(x)).collect()),
            EmbeddingType::Uint8 => {
                Vector::Uint8(v.iter().map(|&x| (i16::from(int8(x)) + 128) as u8).collect())
            }
            EmbeddingType::Ubinary => Vector::Uint8(signs()),
            EmbeddingType::Binary => {
                Vector::Int8(signs().into_iter().map(|b| (i16::from(b) - 128) as i8).collect())
            }
        }
    }
}

/// How the client wants its vectors.
#[derive(Debug, Clone)]
pub enum Output {
    /// One list in one encoding (both routes).
    Format(EncodingFormat),
    /// One list per type (`/v1/embed`'s `embedding_types`).
    Types(Vec<EmbeddingType>),
}

/// A response's vectors: one list, or one per requested type (Cohere's shape).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Embeddings {
    List(Vec<Vector>),
    ByType(BTreeMap<EmbeddingType, Vec<Vector>>),
}

impl Embeddings {
    fn new(vectors: Vec<Vec<f32>>, output: &Output) -> Self {
        match output {
            Output::Format(format) => {
                Embeddings::List(vectors.into_iter().map(|v| Vector::encode(v, *format)).collect())
            }
            Output::Types(types) => Embeddings::ByType(
                types.iter().map(|&t| (t, vectors.iter().map(|v| t.encode(v)).collect())).collect(),
            ),
        }
    }

    /// The one list of an [`Output::Format`] request.
    pub fn into_list(self) -> Vec<Vector> {
        match self {
            Embeddings::List(list) => list,
            Embeddings::ByType(_) => unreachable!("asked for one format, answered with types"),
        }
    }
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

/// How texts become tokens, as a request may choose: the model's prompt and truncation.
#[derive(Debug, Clone, Copy, Default)]
pub struct TextParams<'a> {
    /// Cohere's and Voyage's name for the prompt (`"query"`, `"document"`, `"search_query"`...).
    pub input_type: Option<&'a str>,
    /// Text Embeddings Inference's name for it.
    pub prompt_name: Option<&'a str>,
    /// Cut over-long inputs (the default) or refuse them with 413.
    pub truncate: Option<bool>,
    pub truncation_direction: Option<Direction>,
}

/// Input types that mean nothing to a model without prompts: it embeds them all alike.
const GENERIC_INPUT_TYPES: [&str; 7] =
    ["query", "document", "passage", "search_query", "search_document", "classification", "clustering"];

impl TextParams<'_> {
    /// The model's prompt and truncation for this request, or why they cannot be had.
    pub fn options(&self, spec: &ModelSpec, name: &str) -> Result<EncodeOptions, EmbedError> {
        let (param, asked) = match (self.prompt_name, self.input_type) {
            (Some(p), Some(t)) if p != t => {
                return Err(EmbedError::invalid(
                    "prompt_name",
                    "prompt_name and input_type name the prompt twice; send one of them",
                ));
            }
            (Some(p), _) => ("prompt_name", Some(p)),
            (None, t) => ("input_type", t),
        };
        let prompt = match asked {
            None => spec.default_prompt.as_ref().map_or("", |d| spec.prompts[d].as_str()),
            Some(asked) => {
                // Cohere's names for the two usual prompts.
                let alias = match asked {
                    "search_query" => "query",
                    "search_document" => "document",
                    other => other,
                };
                match spec.prompts.get(asked).or_else(|| spec.prompts.get(alias)) {
                    Some(prompt) => prompt.as_str(),
                    None if spec.prompts.is_empty() && GENERIC_INPUT_TYPES.contains(&asked) => "",
                    None => {
                        let valid: Vec<&str> = spec.prompts.keys().map(String::as_str).collect();
                        let valid = if valid.is_empty() {
                            format!("it has none, so only {} are accepted", GENERIC_INPUT_TYPES.join(", "))
                        } else {
                            format!("valid: {}", valid.join(", "))
                        };
                        return Err(EmbedError::invalid(
                            param,
                            format!("model `{}` has no prompt `{}`; {valid}", clip(name), clip(asked)),
                        ));
                    }
                }
            }
        };
        Ok(EncodeOptions {
            prompt: prompt.to_owned(),
            truncate: self.truncate.unwrap_or(true),
            direction: self.truncation_direction.unwrap_or_default(),
        })
    }
}

/// What both embedding routes ask of the core.
pub struct EmbedParams<'a> {
    /// A string or an array of strings, as the JSON body had it.
    pub input: Option<&'a Value>,
    pub model: Option<&'a str>,
    pub normalize: Option<bool>,
    pub dimensions: Option<usize>,
    pub output: Output,
    pub text: TextParams<'a>,
}

pub struct EmbedOutput {
    /// The model as the client named it.
    pub model: String,
    pub dimensions: usize,
    pub vectors: Embeddings,
    pub usage: Usage,
}

/// What `/v1/tokenize` answers.
pub struct TokenizeOutput {
    /// The model as the client named it.
    pub model: String,
    pub max_tokens: usize,
    pub inputs: Vec<Tokens>,
}

/// Tokens billed, in OpenAI's shape.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

/// Embeds for tenants through the shared model cache, within their limits, counting usage.
pub struct Embedder {
    pub models: ModelCache,
    pub limits: LimitStore,
    pub usage: Arc<UsageLedger>,
    metrics: Arc<Metrics>,
    timeout: Duration,
}

impl Embedder {
    /// `timeout` bounds each request from the model's queue to its vectors.
    pub fn new(
        models: ModelCache,
        limits: LimitStore,
        usage: Arc<UsageLedger>,
        metrics: Arc<Metrics>,
        timeout: Duration,
    ) -> Self {
        Self { models, limits, usage, metrics, timeout }
    }

    /// Checks `tenant`'s limits, validates, embeds and shapes. `labels.model` is set as soon as
    /// the model is known, `labels.tokens` once counted, and `labels.limits` always: the state
    /// of the tenant's buckets after this request, succeeded or not.
    pub async fn embed(
        &self,
        tenant: &Tenant,
        params: EmbedParams<'_>,
        labels: &mut Labels,
    ) -> Result<EmbedOutput, EmbedError> {
        let result = self.embed_checked(tenant, params, labels).await;
        self.limits.peek(tenant, &mut labels.limits);
        result
    }

    async fn embed_checked(
        &self,
        tenant: &Tenant,
        params: EmbedParams<'_>,
        labels: &mut Labels,
    ) -> Result<EmbedOutput, EmbedError> {
        // A tenant with no request left is refused before it costs a model load or tokenizing.
        self.limits
            .refuse_early(tenant, &mut labels.limits)
            .inspect_err(|e| self.count_limited(tenant, e))?;
        let texts = parse_input(params.input, tenant.max_inputs())?;
        let inputs_count = texts.len();
        let (name, model_id) =
            tenant.resolve(params.model).map_err(|n| EmbedError::ModelNotFound(n.to_owned()))?;
        labels.model = model_id.to_owned();
        // Validate against the spec before loading: a bad request must not cost a model load.
        let spec = self.complete_spec(model_id, name).await?;
        let dimensions = match params.dimensions {
            None => spec.dimensions,
            Some(d) if (1..=spec.dimensions).contains(&d) => d,
            Some(d) => {
                return Err(EmbedError::invalid(
                    "dimensions",
                    format!(
                        "dimensions must be between 1 and {} for model `{name}`, got {d}",
                        spec.dimensions
                    ),
                ));
            }
        };
        if let Output::Types(types) = &params.output {
            if types.is_empty() {
                return Err(EmbedError::invalid(
                    "embedding_types",
                    "embedding_types must list at least one of float, int8, uint8, binary, ubinary",
                ));
            }
            if types.iter().any(|t| t.packs_bits()) && dimensions % 8 != 0 {
                return Err(EmbedError::invalid(
                    "embedding_types",
                    format!(
                        "binary and ubinary pack eight values to a byte: they need dimensions that are a \
                         multiple of 8, got {dimensions}"
                    ),
                ));
            }
        }
        let options = params.text.options(&spec, name)?;
        let normalize = params.normalize.unwrap_or(spec.normalize());
        let model = self.models.get(model_id).await.map_err(|e| e.for_model(name))?;

        let count_refusal = |e: &ModelError| {
            let reason = match e {
                ModelError::QueueFull => "queue_full",
                ModelError::TenantQueueFull => "tenant_queue_share",
                _ => return,
            };
            self.metrics.refusals.with_label_values(&[model_id, reason]).inc();
        };
        let limits = &mut labels.limits;
        let work = async {
            model.admits(&tenant.id).inspect_err(count_refusal)?;
            let inputs = model.tokenize(texts, options).await?;
            let tokens: usize = inputs.iter().map(|e| e.len()).sum();
            let truncated = inputs.iter().filter(|e| e.truncated).count();
            // Both limits at once, now that the tokens are known: one round trip to a shared store.
            self.limits.admit(tenant, tokens, limits).await.inspect_err(|e| self.count_limited(tenant, e))?;
            let vectors = model.infer(&tenant.id, inputs).await.inspect_err(count_refusal)?;
            Ok::<_, EmbedError>((vectors, tokens, truncated))
        };
        let (vectors, tokens, truncated) =
            tokio::time::timeout(self.timeout, work).await.map_err(|_| {
                self.metrics.refusals.with_label_values(&[model_id, "timeout"]).inc();
                EmbedError::Timeout(self.timeout.as_millis() as u64)
            })??;

        labels.tokens = tokens;
        let m = &self.metrics;
        m.tokens.with_label_values(&[&tenant.id, model_id]).inc_by(tokens as u64);
        m.embeddings.with_label_values(&[&tenant.id, model_id]).inc_by(vectors.len() as u64);
        m.truncated_inputs.with_label_values(&[model_id]).inc_by(truncated as u64);
        self.usage.record(&tenant.id, name, inputs_count, tokens);

        let shaped = vectors.into_iter().map(|v| shape_vector(v, dimensions, normalize)).collect();
        let vectors = Embeddings::new(shaped, &params.output);
        let usage = Usage { prompt_tokens: tokens, total_tokens: tokens };
        Ok(EmbedOutput { model: name.to_owned(), dimensions, vectors, usage })
    }

    /// The tokens each input becomes for a model, prompt and truncation applied, as
    /// [`Embedder::embed`] would feed them. Counts as one request against the tenant's request
    /// limit (no tokens: nothing is embedded) and loads the model if it is not loaded.
    pub async fn tokenize(
        &self,
        tenant: &Tenant,
        input: Option<&Value>,
        model: Option<&str>,
        text: TextParams<'_>,
        labels: &mut Labels,
    ) -> Result<TokenizeOutput, EmbedError> {
        let result = async {
            self.limits
                .refuse_early(tenant, &mut labels.limits)
                .inspect_err(|e| self.count_limited(tenant, e))?;
            let texts = parse_input(input, tenant.max_inputs())?;
            let (name, model_id) =
                tenant.resolve(model).map_err(|n| EmbedError::ModelNotFound(n.to_owned()))?;
            labels.model = model_id.to_owned();
            let spec = self.complete_spec(model_id, name).await?;
            let options = text.options(&spec, name)?;
            self.limits
                .admit(tenant, 0, &mut labels.limits)
                .await
                .inspect_err(|e| self.count_limited(tenant, e))?;
            let model = self.models.get(model_id).await.map_err(|e| e.for_model(name))?;
            let tokens = tokio::time::timeout(self.timeout, model.tokens(texts, options))
                .await
                .map_err(|_| EmbedError::Timeout(self.timeout.as_millis() as u64))??;
            Ok(TokenizeOutput { model: name.to_owned(), max_tokens: spec.max_tokens, inputs: tokens })
        }
        .await;
        self.limits.peek(tenant, &mut labels.limits);
        result
    }

    /// The model's spec with every setting known: validation needs its dimension, limit and
    /// prompts, which a hub model has only once its files are fetched (by loading it).
    async fn complete_spec(&self, model_id: &str, name: &str) -> Result<Arc<ModelSpec>, EmbedError> {
        let spec = self.models.spec(model_id).ok_or_else(|| EmbedError::ModelNotFound(name.to_owned()))?;
        if spec.is_complete() {
            return Ok(spec);
        }
        self.models.get(model_id).await.map_err(|e| e.for_model(name))?;
        self.models.spec(model_id).ok_or_else(|| EmbedError::ModelNotFound(name.to_owned()))
    }

    fn count_limited(&self, tenant: &Tenant, e: &LimitError) {
        let limit = match e.limit() {
            Bucket::Requests => "requests",
            Bucket::Tokens => "tokens",
        };
        self.metrics.rate_limited.with_label_values(&[&tenant.id, limit]).inc();
    }
}

/// `input` is a non-empty string or a non-empty array of at most `max_inputs` non-empty strings.
fn parse_input(input: Option<&Value>, max_inputs: usize) -> Result<Vec<String>, EmbedError> {
    let texts = match input {
        None | Some(Value::Null) => return Err(EmbedError::invalid("input", "input is required")),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return Err(EmbedError::invalid("input", "input must not be an empty array"));
            }
            if items.len() > max_inputs {
                return Err(EmbedError::TooManyInputs(format!(
                    "input has {} items; this server accepts at most {max_inputs} per request",
                    items.len()
                )));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(EmbedError::invalid(
                        "input",
                        format!("input[{i}] must be a string, got {}", json_kind(other)),
                    )),
                })
                .collect::<Result<_, _>>()?
        }
        Some(other) => {
            return Err(EmbedError::invalid(
                "input",
                format!("input must be a string or an array of strings, got {}", json_kind(other)),
            ));
        }
    };
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        let at = if texts.len() == 1 { "input".to_owned() } else { format!("input[{i}]") };
        return Err(EmbedError::invalid("input", format!("{at} is empty")));
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(input: Value) -> EmbedError {
        parse_input(Some(&input), 2).unwrap_err()
    }

    #[test]
    fn input_is_a_non_empty_string_or_array_of_them() {
        assert_eq!(parse_input(Some(&json!("hi")), 2).unwrap(), vec!["hi"]);
        assert_eq!(parse_input(Some(&json!(["a", "b"])), 2).unwrap(), vec!["a", "b"]);
        for bad in [json!([]), json!(""), json!(["a", "  "]), json!(["a", 3]), json!(7)] {
            assert!(matches!(refused(bad.clone()), EmbedError::Invalid { param: "input", .. }), "{bad}");
        }
        assert!(matches!(refused(json!(["a", "b", "c"])), EmbedError::TooManyInputs(_)));
        assert!(matches!(parse_input(None, 2), Err(EmbedError::Invalid { .. })));
    }

    #[test]
    fn base64_is_little_endian_f32() {
        let Vector::Base64(s) = Vector::encode(vec![1.0, -2.5], EncodingFormat::Base64) else { panic!() };
        let bytes = STANDARD.decode(s).unwrap();
        assert_eq!(bytes, [1.0f32.to_le_bytes(), (-2.5f32).to_le_bytes()].concat());
    }

    #[test]
    fn output_types_are_cohere_s_and_sentence_transformers_quantizations() {
        let v = [1.0, -1.0, 0.5, 0.0, 2.0, -0.004, 0.004, -3.0];
        let encode = |t: EmbeddingType| serde_json::to_value(t.encode(&v)).unwrap();
        assert_eq!(encode(EmbeddingType::Float), json!(v));
        assert_eq!(encode(EmbeddingType::Int8), json!([127, -127, 64, 0, 127, -1, 1, -127]));
        assert_eq!(encode(EmbeddingType::Uint8), json!([255, 1, 192, 128, 255, 127, 129, 1]));
        // Positive values: the 1st, 3rd, 5th and 7th, first value in the highest bit.
        assert_eq!(encode(EmbeddingType::Ubinary), json!([0b1010_1010]));
        assert_eq!(encode(EmbeddingType::Binary), json!([0b1010_1010 - 128]));
        // Nine values: the last byte holds one bit, in its highest place.
        let nine = [1.0; 9];
        assert_eq!(serde_json::to_value(EmbeddingType::Ubinary.encode(&nine)).unwrap(), json!([255, 128]));
    }

    #[test]
    fn several_types_answer_one_list_each() {
        let out = Embeddings::new(
            vec![vec![0.6, -0.8], vec![-0.6, 0.8]],
            &Output::Types(vec![EmbeddingType::Int8, EmbeddingType::Float]),
        );
        assert_eq!(
            serde_json::to_value(out).unwrap(),
            json!({ "float": [[0.6f32, -0.8f32], [-0.6f32, 0.8f32]], "int8": [[76, -102], [-76, 102]] })
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// int8 and uint8 round a value in -1..=1 to within half a step of 1/127.
            #[test]
            fn int8_and_uint8_are_within_half_a_step(x in -1.0f32..=1.0) {
                let Vector::Int8(i) = EmbeddingType::Int8.encode(&[x]) else { panic!() };
                let Vector::Uint8(u) = EmbeddingType::Uint8.encode(&[x]) else { panic!() };
                prop_assert!((f32::from(i[0]) / 127.0 - x).abs() <= 0.5 / 127.0 + 1e-6);
                prop_assert_eq!(i16::from(u[0]) - 128, i16::from(i[0]));
            }
        }

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(|n| json!(n)),
                ".{0,12}".prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 24, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::btree_map(".{0,4}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            /// Any JSON is either refused with a named reason or accepted as 1..=max non-empty
            /// strings, in order.
            #[test]
            fn any_json_input_is_refused_or_gives_non_empty_texts(input in json_value(), max in 1usize..5) {
                match parse_input(Some(&input), max) {
                    Ok(texts) => {
                        prop_assert!(!texts.is_empty() && texts.len() <= max);
                        prop_assert!(texts.iter().all(|t| !t.trim().is_empty()));
                        let expected = match &input {
                            Value::String(s) => vec![s.clone()],
                            Value::Array(items) => items.iter().map(|i| i.as_str().unwrap().to_owned()).collect(),
                            other => return Err(TestCaseError::fail(format!("accepted {other}"))),
                        };
                        prop_assert_eq!(texts, expected);
                    }
                    Err(EmbedError::Invalid { param, .. }) => prop_assert_eq!(param, "input"),
                    Err(EmbedError::TooManyInputs(_)) => prop_assert!(input.as_array().is_some_and(|a| a.len() > max)),
                    Err(other) => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
                }
            }
        }
    }
}
