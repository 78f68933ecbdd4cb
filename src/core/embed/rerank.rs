//! Reranking: one relevance score per (query, document) pair from a cross-encoder, sorted. The
//! pairs go through the same limits, queue and fair batching as embeddings: a pair counts its
//! tokens against the tenant's token limit and in usage, a rerank request is one request, and
//! a long document list is split into runs and put back in order.

use serde_json::Value;

use super::{EmbedError, Embedder, Outcome, Progress, Usage};
use crate::core::clip::clip;
use crate::core::tenants::Tenant;
use crate::models::engine::tokenize::{Direction, PairOptions};
use crate::models::spec::Task;

/// What the rerank routes ask of the core.
pub struct RerankParams<'a> {
    pub model: Option<&'a str>,
    /// A non-empty string.
    pub query: Option<&'a Value>,
    /// A non-empty array of non-empty strings or `{"text": ...}` objects.
    pub documents: Option<&'a Value>,
    /// The name the route gives `documents` in messages (`documents`, or `texts` on TEI's).
    pub documents_field: &'static str,
    /// Answer the best `top_n` (at least 1); all when not set.
    pub top_n: Option<i64>,
    /// Cut each document to this many tokens before pairing.
    pub max_tokens_per_doc: Option<i64>,
    /// Cut over-long pairs (the default) or refuse them with 413.
    pub truncate: Option<bool>,
    pub truncation_direction: Option<Direction>,
    /// The model's logits instead of its scores (TEI's `raw_scores`).
    pub raw_scores: bool,
}

/// A ranked document: its index in the request and its score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranked {
    pub index: usize,
    pub score: f32,
}

pub struct RerankOutput {
    /// The model as the client named it.
    pub model: String,
    /// The best documents, highest score first (ties in request order), at most `top_n`.
    pub results: Vec<Ranked>,
    /// The documents' texts, in request order (for `return_documents`).
    pub documents: Vec<String>,
    pub usage: Usage,
    /// Cohere's billing unit: one query with up to 100 documents.
    pub search_units: usize,
}

impl Embedder {
    /// Scores each document against the query with the tenant's rerank model, within its
    /// limits, and sorts them.
    pub async fn rerank(&self, tenant: &Tenant, params: RerankParams<'_>) -> Outcome<RerankOutput> {
        let mut progress = Progress::default();
        let result = self.rerank_checked(tenant, params, &mut progress).await;
        self.limiter.peek(tenant, &mut progress.limits);
        progress.finish(result)
    }

    async fn rerank_checked(
        &self,
        tenant: &Tenant,
        params: RerankParams<'_>,
        progress: &mut Progress,
    ) -> Result<RerankOutput, EmbedError> {
        self.limiter.refuse_early(tenant, &mut progress.limits)?;
        let query = match params.query {
            Some(Value::String(q)) if !q.trim().is_empty() => q.clone(),
            Some(Value::String(_)) => return Err(EmbedError::invalid("query", "query is empty")),
            None | Some(Value::Null) => return Err(EmbedError::invalid("query", "query is required")),
            Some(_) => return Err(EmbedError::invalid("query", "query must be a string")),
        };
        let documents = parse_documents(params.documents, params.documents_field, self.max_documents)?;
        let top_n = match params.top_n {
            None => documents.len(),
            Some(n) if n >= 1 => usize::try_from(n).unwrap_or(usize::MAX).min(documents.len()),
            Some(n) => {
                return Err(EmbedError::invalid("top_n", format!("top_n must be at least 1, got {n}")));
            }
        };
        let max_tokens_per_doc = match params.max_tokens_per_doc {
            None => None,
            Some(n) if n >= 1 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            Some(n) => {
                return Err(EmbedError::invalid(
                    "max_tokens_per_doc",
                    format!("max_tokens_per_doc must be at least 1, got {n}"),
                ));
            }
        };
        let (name, model_id) = self.resolve(tenant, params.model, &[Task::Rerank])?;
        progress.model = Some(model_id.to_owned());
        let spec = self.complete_spec(model_id, name).await?;
        let task = spec.task();
        if task != Task::Rerank {
            return Err(EmbedError::WrongTask { model: name.to_owned(), task });
        }
        let activation = spec.activation();
        let model = self.models.get(model_id).await.map_err(|e| e.for_model(name))?;

        let options = PairOptions {
            truncate: params.truncate.unwrap_or(true),
            max_tokens_per_doc,
            direction: params.truncation_direction.unwrap_or_default(),
        };
        let limits = &mut progress.limits;
        let count = documents.len();
        let work = async {
            let estimate = model.encoder.estimate_pairs(&query, &documents);
            let reservation =
                model.reserve(&tenant.id, estimate).inspect_err(|e| self.count_refusal(model_id, e))?;
            let pairs = model.tokenize_pairs(query, documents.clone(), options).await?;
            let tokens: usize = pairs.iter().map(|e| e.len()).sum();
            let truncated = pairs.iter().filter(|e| e.truncated).count();
            self.limiter.admit(tenant, tokens, limits).await?;
            // A pair the model cannot score is named by its document's index.
            let logits = model
                .infer(reservation, pairs)
                .await
                .inspect_err(|e| self.count_refusal(model_id, e))
                .map_err(|e| e.for_model(name).in_field("documents"))?;
            Ok::<_, EmbedError>((logits, tokens, truncated))
        };
        let (logits, tokens, truncated) =
            tokio::time::timeout(self.timeout, work).await.map_err(|_| {
                self.metrics.refusals.with_label_values(&[model_id, "timeout"]).inc();
                EmbedError::Timeout(self.timeout.as_millis() as u64)
            })??;

        progress.tokens = tokens;
        let m = &self.metrics;
        m.tokens.with_label_values(&[&tenant.id, model_id]).inc_by(tokens as u64);
        m.rerank_pairs.with_label_values(&[&tenant.id, model_id]).inc_by(count as u64);
        m.truncated_inputs.with_label_values(&[model_id]).inc_by(truncated as u64);
        self.usage.record(&tenant.id, name, count, tokens);

        let mut results: Vec<Ranked> = logits
            .iter()
            .enumerate()
            .map(|(index, logit)| {
                let logit = logit.first().copied().unwrap_or(f32::NAN);
                Ranked { index, score: if params.raw_scores { logit } else { activation.apply(logit) } }
            })
            .collect();
        results.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
        results.truncate(top_n);
        Ok(RerankOutput {
            model: name.to_owned(),
            results,
            documents,
            usage: Usage { prompt_tokens: tokens, total_tokens: tokens, cached_tokens: 0 },
            search_units: count.div_ceil(100),
        })
    }
}

/// `documents` is a non-empty array of at most `max` non-empty strings or `{"text": string}`
/// objects (the shapes Cohere, Jina and Voyage accept).
fn parse_documents(
    documents: Option<&Value>,
    field: &'static str,
    max: usize,
) -> Result<Vec<String>, EmbedError> {
    let items = match documents {
        None | Some(Value::Null) => return Err(EmbedError::invalid(field, format!("{field} is required"))),
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(EmbedError::invalid(field, format!("{field} must not be an empty array")));
        }
        Some(Value::Array(items)) => items,
        Some(_) => return Err(EmbedError::invalid(field, format!("{field} must be an array of strings"))),
    };
    if items.len() > max {
        return Err(EmbedError::TooMany {
            message: format!(
                "{field} has {} items; this server accepts at most {max} per request",
                items.len()
            ),
            param: field,
        });
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let text = match item {
                Value::String(s) => s,
                Value::Object(o) => match o.get("text") {
                    Some(Value::String(s)) => s,
                    _ => {
                        return Err(EmbedError::invalid(
                            field,
                            format!("{field}[{i}] must be a string or an object with a string `text`"),
                        ));
                    }
                },
                other => {
                    let kind = clip(&other.to_string());
                    return Err(EmbedError::invalid(
                        field,
                        format!("{field}[{i}] must be a string, got {kind}"),
                    ));
                }
            };
            if text.trim().is_empty() {
                return Err(EmbedError::invalid(field, format!("{field}[{i}] is empty")));
            }
            Ok(text.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn documents_are_strings_or_text_objects_and_never_empty() {
        let parse = |v: Value| parse_documents(Some(&v), "documents", 3);
        assert_eq!(parse(json!(["a", { "text": "b" }])).unwrap(), ["a", "b"]);
        for bad in
            [json!([]), json!("a"), json!([1]), json!([{ "title": "x" }]), json!(["a", " "]), json!(null)]
        {
            assert!(
                matches!(parse(bad.clone()), Err(EmbedError::Invalid { param: "documents", .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            parse(json!(["a", "b", "c", "d"])),
            Err(EmbedError::TooMany { param: "documents", .. })
        ));
    }
}
