//! What can go wrong between a model id and its vectors, in the model layer's own terms.
//! `http::error` decides what each case means to a client.

/// A failure of the model layer: the cache, the queue or the backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// No model with this id (or the caller may not use it).
    #[error("no model `{0}`")]
    NotFound(String),
    /// The model could not be loaded; `cause` is for the log, not the client.
    #[error("model `{model}` could not be loaded: {cause}")]
    Unavailable { model: String, cause: String, detail: Option<String>, retry_after: u64 },
    /// The model's queue is full.
    #[error("the model's queue is full")]
    QueueFull,
    /// The tenant already holds its share of the model's queue.
    #[error("the tenant holds its share of the model's queue")]
    TenantQueueFull,
    /// With truncation off, an input over the model's token limit (the message says which, and
    /// `param` the request field it was in).
    #[error("{message}")]
    InputTooLong { message: String, param: &'static str },
    /// These inputs (indices into the request's `param` field, ascending) failed in runs of
    /// their own: the model cannot process them. The request's other inputs, and every other
    /// request, were not affected. `cause` is for the log.
    #[error("the model could not process input {indices:?}: {cause}")]
    InputsFailed { indices: Vec<usize>, param: &'static str, cause: String },
    /// Tokenizing or inference failed; the cause is for the log.
    #[error("{0}")]
    Failed(String),
}

impl From<super::engine::tokenize::EncodeError> for ModelError {
    fn from(e: super::engine::tokenize::EncodeError) -> Self {
        use super::engine::tokenize::EncodeError;
        match e {
            EncodeError::Failed(cause) => ModelError::Failed(cause),
            too_long => ModelError::InputTooLong { param: too_long.param(), message: too_long.to_string() },
        }
    }
}

impl ModelError {
    pub fn failed(cause: impl std::fmt::Display) -> Self {
        ModelError::Failed(cause.to_string())
    }

    /// The same error, naming the model as the client knows it rather than by its cache id
    /// (`tenant/name` for private models).
    pub fn for_model(self, name: &str) -> Self {
        match self {
            ModelError::Unavailable { cause, detail, retry_after, .. } => {
                ModelError::Unavailable { model: name.to_owned(), cause, detail, retry_after }
            }
            ModelError::NotFound(_) => ModelError::NotFound(name.to_owned()),
            other => other,
        }
    }

    /// The same error, with failed inputs' indices (into the inputs run) mapped to the
    /// request's: `run_to_request[i]` is the request index of run input `i`.
    pub fn at_indices(self, run_to_request: &[usize]) -> Self {
        match self {
            ModelError::InputsFailed { indices, param, cause } => ModelError::InputsFailed {
                indices: indices.into_iter().map(|i| run_to_request.get(i).copied().unwrap_or(i)).collect(),
                param,
                cause,
            },
            other => other,
        }
    }

    /// The same error, with failed inputs counted in the request field `param` (`documents`
    /// for a rerank request's pairs).
    pub fn in_field(self, param: &'static str) -> Self {
        match self {
            ModelError::InputsFailed { indices, cause, .. } => {
                ModelError::InputsFailed { indices, param, cause }
            }
            other => other,
        }
    }
}
