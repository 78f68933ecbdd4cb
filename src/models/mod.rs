//! Models: what a model is (`spec`), how text becomes token ids (`tokenize`), how ids become
//! vectors (`session`, `pooling`), the thread that runs them (`worker`), and the cache that
//! loads each model once and hands out shared handles (`cache`).

pub mod cache;
pub mod pooling;
pub mod session;
pub mod spec;
pub mod tokenize;
pub mod worker;

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use spec::ModelSpec;
use tokenize::TextEncoder;
use worker::Job;

/// A model ready to serve: its tokenizer and the queue of its inference thread.
pub struct LoadedModel {
    pub id: String,
    pub spec: Arc<ModelSpec>,
    encoder: Arc<TextEncoder>,
    queue: mpsc::Sender<Job>,
}

/// What one call to [`LoadedModel::embed`] produced.
#[derive(Debug)]
pub struct Embedded {
    /// One vector per input, in input order, full width and not normalised.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens processed, after truncation, special tokens included.
    pub tokens: usize,
    /// Inputs that were longer than the model's limit.
    pub truncated: usize,
}

impl LoadedModel {
    /// Tokenizes on the blocking pool, queues the job for the model's thread and waits.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Embedded, Error> {
        let encoder = Arc::clone(&self.encoder);
        let inputs = tokio::task::spawn_blocking(move || encoder.encode(&texts))
            .await
            .map_err(Error::internal)?
            .map_err(|e| Error::internal(format!("{e:#}")))?;
        let tokens = inputs.iter().map(|e| e.len()).sum();
        let truncated = inputs.iter().filter(|e| e.truncated).count();

        let (reply, done) = oneshot::channel();
        self.queue
            .try_send(Job { inputs, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Error::Overloaded,
                mpsc::error::TrySendError::Closed(_) => {
                    Error::internal(format!("inference worker of {} stopped", self.id))
                }
            })?;
        let vectors = done
            .await
            .map_err(|_| Error::internal(format!("inference worker of {} dropped a job", self.id)))?
            .map_err(|cause| {
                Error::internal(format!("inference failed on {}: {cause}", self.id))
            })?;
        Ok(Embedded {
            vectors,
            tokens,
            truncated,
        })
    }
}
