//! The embedding service both APIs share: check the tenant's limits, validate the request
//! against the model's spec (`input`, `prompts`), embed through the model cache, shape and
//! encode the vectors (`output`), count usage. Nothing here knows a transport: each call returns
//! an [`Outcome`] (the result, the model, the tokens, the tenant's limit snapshot), which the
//! HTTP adapter turns into a response, headers, metrics and a log line.

mod input;
mod output;
mod prompts;
mod recall;
mod rerank;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use time::Date;

pub(crate) use output::{EmbeddingType, Embeddings, EncodingFormat, Output, SparseVector, Vector};
pub(crate) use prompts::TextParams;
pub(crate) use rerank::RerankParams;

pub(crate) use recall::{Key as VectorKey, Recalled, SharedVectors, VectorCache};

use super::limits::{LimitError, LimitSnapshot, Limiter};
use super::tenants::Tenant;
use super::usage::{Counts, UsageLedger, UsageUnavailable};
use crate::core::clip::clip;
use crate::metrics::Metrics;
use crate::models::ModelError;
use crate::models::engine::pooling::shape_vector;
use crate::models::engine::token_ids::{TokenIdsEncoding, TokenIdsError};
use crate::models::engine::tokenize::{DecodeError, Tokens};
use crate::models::serving::cache::ModelCache;
use crate::models::spec::{ModelSpec, Task};
use input::{Inputs, parse_input, parse_inputs, token_ids_of};

/// Why a request produced no vectors.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// A field's value is wrong; `param` names the field.
    #[error("{message}")]
    Invalid { message: String, param: &'static str },
    /// More inputs (or documents) than may be sent at once; `param` names the field.
    #[error("{message}")]
    TooMany { message: String, param: &'static str },
    /// No such model for this tenant (whether it exists for another is not said).
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    /// The model exists but computes something this route does not serve.
    #[error("The model `{model}` is a{} {} model: it is served by {}.", if matches!(task, Task::Embed) { "n" } else { "" }, task.as_str(), task.routes())]
    WrongTask { model: String, task: Task },
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

/// What both embedding routes ask of the core.
pub struct EmbedParams<'a> {
    /// A string or an array of strings, as the JSON body had it.
    pub input: Option<&'a Value>,
    pub model: Option<&'a str>,
    pub normalize: Option<bool>,
    pub dimensions: Option<usize>,
    pub output: Output,
    pub text: TextParams<'a>,
    /// The tasks the route serves: dense only for OpenAI's route, dense or sparse for
    /// `/v1/embed`, sparse only for `/embed_sparse`.
    pub tasks: &'a [Task],
    /// Whether `input` may be token ids (OpenAI's route), decoded by the model's
    /// `token_ids_encoding`.
    pub token_ids: bool,
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

/// What TEI's `/decode` answers.
pub struct DecodeOutput {
    /// The model as the client named it.
    pub model: String,
    pub texts: Vec<String>,
}

/// Tokens billed, in OpenAI's shape.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
    /// Tokens of inputs served from the embedding cache, not billed (absent when none).
    #[serde(skip_serializing_if = "is_zero")]
    pub cached_tokens: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// What a call did, whatever its result: for the adapters' headers, metrics and logs.
#[derive(Debug)]
pub struct Outcome<T> {
    pub result: Result<T, EmbedError>,
    /// The model's cache id, once the request named one the tenant may use.
    pub model: Option<String>,
    /// Tokens processed (after truncation): 0 unless vectors were computed.
    pub tokens: usize,
    /// The tenant's buckets after this request, succeeded or not.
    pub limits: LimitSnapshot,
}

/// A model as `/v1/models` shows it: the tenant's name for it, and what is known of it (a hub
/// model's dimension and token limit once its files are fetched).
pub struct ModelInfo {
    pub name: String,
    pub task: Task,
    pub dimensions: Option<usize>,
    pub max_tokens: Option<usize>,
    /// For a model with variants, the one serving (or last served) and why.
    pub variant: Option<(String, String)>,
}

/// Embeds for tenants through the shared model cache, within their limits, counting usage.
pub struct Embedder {
    models: Arc<ModelCache>,
    /// Vectors of recent inputs (see `recall`).
    recall: VectorCache,
    limiter: Limiter,
    usage: Arc<UsageLedger>,
    metrics: Arc<Metrics>,
    timeout: Duration,
    /// Most documents one rerank request may send.
    max_documents: usize,
}

/// What one call learns as it goes, before its result.
#[derive(Default)]
struct Progress {
    model: Option<String>,
    tokens: usize,
    limits: LimitSnapshot,
}

impl Progress {
    fn finish<T>(self, result: Result<T, EmbedError>) -> Outcome<T> {
        Outcome { result, model: self.model, tokens: self.tokens, limits: self.limits }
    }
}

impl Embedder {
    /// `timeout` bounds each request from the model's queue to its vectors.
    pub(crate) fn new(
        models: Arc<ModelCache>,
        recall: VectorCache,
        limiter: Limiter,
        usage: Arc<UsageLedger>,
        metrics: Arc<Metrics>,
        timeout: Duration,
        max_documents: usize,
    ) -> Self {
        Self { models, recall, limiter, usage, metrics, timeout, max_documents }
    }

    /// Checks `tenant`'s limits, validates, embeds and shapes.
    pub async fn embed(&self, tenant: &Tenant, params: EmbedParams<'_>) -> Outcome<EmbedOutput> {
        let mut progress = Progress::default();
        let result = self.embed_checked(tenant, params, &mut progress).await;
        self.limiter.peek(tenant, &mut progress.limits);
        progress.finish(result)
    }

    async fn embed_checked(
        &self,
        tenant: &Tenant,
        params: EmbedParams<'_>,
        progress: &mut Progress,
    ) -> Result<EmbedOutput, EmbedError> {
        // A tenant with no request left is refused before it costs a model load or tokenizing.
        self.limiter.refuse_early(tenant, &mut progress.limits)?;
        let inputs = parse_inputs(params.input, tenant.max_inputs(), params.token_ids)?;
        let inputs_count = inputs.len();
        let (name, model_id) = self.resolve(tenant, params.model, params.tasks)?;
        progress.model = Some(model_id.to_owned());
        // Validate against the spec before loading: a bad request must not cost a model load.
        let spec = self.complete_spec(model_id, name).await?;
        let task = spec.task();
        if !params.tasks.contains(&task) {
            return Err(EmbedError::WrongTask { model: name.to_owned(), task });
        }
        if task == Task::Sparse {
            sparse_options_apply(&params)?;
        }
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
                    "embedding_types must list at least one of float, int8, uint8, binary, ubinary, base64",
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
        let texts = match inputs {
            Inputs::Texts(texts) => texts,
            Inputs::TokenIds(ids) => decode_token_ids(spec.token_ids_encoding, ids, name).await?,
        };
        // Repeated inputs come from the embedding cache (see `recall`), computed ones go in.
        // A model with variants is cached per variant: their vectors differ.
        let variant = self.models.variant(model_id).map(|c| c.name).unwrap_or_default();
        let scope = (task == Task::Embed)
            .then(|| self.recall.scope(&tenant.cache_scope, model_id, &variant, &spec, &options))
            .flatten();
        let keys: Vec<recall::Key> =
            scope.as_ref().map_or_else(Vec::new, |s| texts.iter().map(|t| s.key(t)).collect());
        let mut found = match &scope {
            Some(scope) => self.recall.get(scope, &keys).await,
            None => vec![None; texts.len()],
        };
        // Refusal messages of `truncate: false` name an input by its place among those run:
        // run them all rather than some.
        if !options.truncate && found.iter().any(Option::is_some) && found.iter().any(Option::is_none) {
            found.iter_mut().for_each(|f| *f = None);
        }
        let missing: Vec<usize> = (0..texts.len()).filter(|&i| found[i].is_none()).collect();
        let cached_tokens: usize = found.iter().flatten().map(|r| r.tokens as usize).sum();
        let to_run: Vec<String> =
            texts.into_iter().zip(&found).filter(|(_, f)| f.is_none()).map(|(t, _)| t).collect();

        let limits = &mut progress.limits;
        let (computed, tokens, truncated) = if to_run.is_empty() {
            // All from the cache: no model, no tokens; the request still counts.
            self.limiter.admit(tenant, 0, limits).await?;
            (Vec::new(), 0, 0)
        } else {
            let model = self.models.get(model_id).await.map_err(|e| e.for_model(name))?;
            let count_refusal = |e: &ModelError| self.count_refusal(model_id, e);
            let work = async {
                let estimate = model.encoder.estimate(&to_run, &options);
                let reservation = model.reserve(&tenant.id, estimate).inspect_err(count_refusal)?;
                let inputs = model.tokenize(to_run, options).await?;
                let each: Vec<usize> = inputs.iter().map(|e| e.len()).collect();
                let tokens: usize = each.iter().sum();
                let truncated = inputs.iter().filter(|e| e.truncated).count();
                // Both limits at once, now that the tokens are known: one round trip to a shared store.
                self.limiter.admit(tenant, tokens, limits).await?;
                let vectors = model
                    .infer(reservation, inputs)
                    .await
                    .inspect_err(count_refusal)
                    .map_err(|e| e.for_model(name).at_indices(&missing))?;
                Ok::<_, EmbedError>((vectors.into_iter().zip(each).collect::<Vec<_>>(), tokens, truncated))
            };
            tokio::time::timeout(self.timeout, work).await.map_err(|_| {
                self.metrics.refusals.with_label_values(&[model_id, "timeout"]).inc();
                EmbedError::Timeout(self.timeout.as_millis() as u64)
            })??
        };

        progress.tokens = tokens;
        let m = &self.metrics;
        m.tokens.with_label_values(&[&tenant.id, model_id]).inc_by(tokens as u64);
        m.embeddings.with_label_values(&[&tenant.id, model_id]).inc_by(inputs_count as u64);
        m.truncated_inputs.with_label_values(&[model_id]).inc_by(truncated as u64);
        self.usage.record(&tenant.id, name, inputs_count, tokens);

        let vectors: Vec<Vec<f32>> = if scope.is_some() {
            let computed: Vec<Recalled> = computed
                .into_iter()
                .map(|(v, t)| Recalled { vector: Arc::from(v), tokens: u32::try_from(t).unwrap_or(u32::MAX) })
                .collect();
            self.recall.put(missing.iter().map(|&i| keys[i]), &computed).await;
            let mut computed = computed.into_iter();
            found
                .into_iter()
                .map(|f| f.or_else(|| computed.next()).map_or_else(Vec::new, |r| r.vector.to_vec()))
                .collect()
        } else {
            computed.into_iter().map(|(v, _)| v).collect()
        };
        let vectors = if task == Task::Sparse {
            Embeddings::Sparse(vectors.iter().map(|v| SparseVector::of(v)).collect())
        } else {
            let shaped = vectors.into_iter().map(|v| shape_vector(v, dimensions, normalize)).collect();
            Embeddings::new(shaped, &params.output)
        };
        let usage = Usage { prompt_tokens: tokens, total_tokens: tokens, cached_tokens };
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
    ) -> Outcome<TokenizeOutput> {
        let mut progress = Progress::default();
        let result = async {
            self.limiter.refuse_early(tenant, &mut progress.limits)?;
            let texts = parse_input(input, tenant.max_inputs())?;
            let (name, model_id) = self.resolve(tenant, model, &[Task::Embed, Task::Sparse])?;
            progress.model = Some(model_id.to_owned());
            let spec = self.complete_spec(model_id, name).await?;
            let options = text.options(&spec, name)?;
            self.limiter.admit(tenant, 0, &mut progress.limits).await?;
            let model = self.models.get(model_id).await.map_err(|e| e.for_model(name))?;
            let tokens = tokio::time::timeout(self.timeout, model.tokens(texts, options))
                .await
                .map_err(|_| EmbedError::Timeout(self.timeout.as_millis() as u64))??;
            Ok(TokenizeOutput { model: name.to_owned(), max_tokens: spec.max_tokens, inputs: tokens })
        }
        .await;
        self.limiter.peek(tenant, &mut progress.limits);
        progress.finish(result)
    }

    /// Token ids back to text with a model's own tokenizer (TEI's `/decode`): `ids` is one array
    /// of ids or an array of them. Counts as one request; loads the model if it is not loaded.
    pub async fn decode(
        &self,
        tenant: &Tenant,
        ids: Option<&Value>,
        model: Option<&str>,
        skip_special_tokens: bool,
    ) -> Outcome<DecodeOutput> {
        let mut progress = Progress::default();
        let result = async {
            self.limiter.refuse_early(tenant, &mut progress.limits)?;
            let ids = match ids {
                None | Some(Value::Null) => return Err(EmbedError::invalid("ids", "ids is required")),
                Some(Value::Array(items)) => token_ids_of(items, "ids", tenant.max_inputs()),
                Some(_) => None,
            }
            .unwrap_or_else(|| {
                Err(EmbedError::invalid(
                    "ids",
                    "ids must be an array of token ids (integers from 0) or an array of such arrays",
                ))
            })?;
            let (name, model_id) = self.resolve(tenant, model, &[Task::Embed, Task::Sparse, Task::Rerank])?;
            progress.model = Some(model_id.to_owned());
            self.complete_spec(model_id, name).await?;
            self.limiter.admit(tenant, 0, &mut progress.limits).await?;
            let model = self.models.get(model_id).await.map_err(|e| e.for_model(name))?;
            let texts = tokio::time::timeout(self.timeout, model.decode(ids, skip_special_tokens))
                .await
                .map_err(|_| EmbedError::Timeout(self.timeout.as_millis() as u64))??
                .map_err(|e| match e {
                    DecodeError::Unknown { .. } => EmbedError::invalid("ids", e.to_string()),
                    DecodeError::Failed(cause) => EmbedError::Model(ModelError::Failed(cause)),
                })?;
            Ok(DecodeOutput { model: name.to_owned(), texts })
        }
        .await;
        self.limiter.peek(tenant, &mut progress.limits);
        progress.finish(result)
    }

    /// The model a route that names none would use for `tasks` (the tenant's default, or its
    /// one model that fits), with its spec once complete (loading a hub model's files).
    pub async fn default_model(
        &self,
        tenant: &Tenant,
        tasks: &[Task],
    ) -> Result<(String, Arc<ModelSpec>), EmbedError> {
        let (name, model_id) = self.resolve(tenant, None, tasks)?;
        let spec = self.complete_spec(model_id, name).await?;
        Ok((name.to_owned(), spec))
    }

    /// The models `tenant` may use, in its names, with what is known of each.
    pub fn models_of(&self, tenant: &Tenant) -> Vec<ModelInfo> {
        tenant
            .models()
            .filter_map(|(name, id)| self.models.spec(id).map(|spec| (name, id, spec)))
            .map(|(name, id, spec)| ModelInfo {
                name: name.to_owned(),
                task: spec.task(),
                dimensions: spec.is_complete().then_some(spec.dimensions),
                max_tokens: spec.is_complete().then_some(spec.max_tokens),
                variant: self.models.variant(id).map(|c| (c.name, c.reason)),
            })
            .collect()
    }

    /// `tenant`'s usage per (day, model) from `start` to `end` inclusive.
    pub async fn usage_of(
        &self,
        tenant: &Tenant,
        start: Date,
        end: Date,
    ) -> Result<BTreeMap<(Date, String), Counts>, UsageUnavailable> {
        self.usage.read(&tenant.id, start, end).await
    }

    /// At start: says where limits are decided (asking a shared store), then loads `preload`.
    pub(crate) async fn warm_up(&self, preload: &[String]) -> anyhow::Result<()> {
        self.limiter.announce().await;
        for id in preload {
            self.models.get(id).await.map_err(|e| anyhow::anyhow!("preloading {id}: {e}"))?;
        }
        Ok(())
    }

    /// New model specs from a reloaded configuration (see `ModelCache::replace_specs`).
    pub(crate) fn replace_specs(&self, specs: BTreeMap<String, ModelSpec>) {
        self.models.replace_specs(specs);
    }

    /// Before the process exits: writes the usage it holds to a shared store (bounded).
    pub(crate) async fn flush_usage_before_exit(&self) {
        self.usage.flush_before_exit().await;
    }

    /// Counts a request the model's queue refused.
    fn count_refusal(&self, model_id: &str, e: &ModelError) {
        let reason = match e {
            ModelError::QueueFull => "queue_full",
            ModelError::TenantQueueFull => "tenant_queue_share",
            _ => return,
        };
        self.metrics.refusals.with_label_values(&[model_id, reason]).inc();
    }

    /// The model a request names, as `(name, cache id)`; with none, the tenant's default model,
    /// or where that does not fit the route (`tasks`), the tenant's one model that does (a
    /// Text Embeddings Inference route names no model).
    fn resolve<'t>(
        &self,
        tenant: &'t Tenant,
        requested: Option<&'t str>,
        tasks: &[Task],
    ) -> Result<(&'t str, &'t str), EmbedError> {
        let found = tenant.resolve(requested).map_err(|n| EmbedError::ModelNotFound(n.to_owned()))?;
        if requested.is_some() {
            return Ok(found);
        }
        let task_of = |id: &str| self.models.spec(id).map(|s| s.task());
        if task_of(found.1).is_some_and(|t| tasks.contains(&t)) {
            return Ok(found);
        }
        let fitting: Vec<(&str, &str)> =
            tenant.models().filter(|(_, id)| task_of(id).is_some_and(|t| tasks.contains(&t))).collect();
        match fitting.as_slice() {
            [one] => Ok(*one),
            _ => Ok(found),
        }
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
}

/// Token-id inputs as text, on a blocking thread (an encoding's tables are built on first use).
/// A text that decodes to nothing but whitespace is refused as an empty text is.
async fn decode_token_ids(
    encoding: TokenIdsEncoding,
    ids: Vec<Vec<u32>>,
    name: &str,
) -> Result<Vec<String>, EmbedError> {
    let texts = tokio::task::spawn_blocking(move || encoding.decode(&ids))
        .await
        .map_err(|e| EmbedError::Model(ModelError::failed(format!("decoding token ids: {e}"))))?
        .map_err(|e| match e {
            TokenIdsError::Off => EmbedError::invalid("input", format!("model `{}` {e}", clip(name))),
            TokenIdsError::Unknown { .. } => EmbedError::invalid("input", e.to_string()),
        })?;
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        return Err(EmbedError::invalid("input", format!("input[{i}] decodes to an empty text")));
    }
    Ok(texts)
}

/// A sparse model's vectors are its vocabulary weights as they are: no `dimensions`, no
/// normalisation, no other encoding than JSON numbers.
fn sparse_options_apply(params: &EmbedParams<'_>) -> Result<(), EmbedError> {
    let refuse = |param: &'static str, what: &str| {
        Err(EmbedError::invalid(param, format!("{what} does not apply to a sparse model's vectors")))
    };
    if params.dimensions.is_some() {
        return refuse("dimensions", "dimensions");
    }
    if params.normalize == Some(true) {
        return refuse("normalize", "normalize: true");
    }
    match &params.output {
        Output::Format(EncodingFormat::Float) => Ok(()),
        Output::Format(EncodingFormat::Base64) => refuse("encoding_format", "encoding_format \"base64\""),
        Output::Types(_) => refuse("embedding_types", "embedding_types"),
    }
}
