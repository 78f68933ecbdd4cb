//! Models: what a model is (`spec`), how text becomes token ids (`tokenize`), how ids become
//! vectors (`session`, `pooling`), the thread that runs them (`worker`), and the cache that
//! loads each model once and hands out shared handles (`cache`).

pub mod batcher;
pub mod cache;
pub mod ceiling;
pub mod pooling;
pub mod session;
pub mod spec;
pub mod tokenize;
pub mod worker;

use std::sync::Arc;

use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Instant;

use tokio::sync::oneshot;

use crate::error::Error;
use spec::ModelSpec;
use tokenize::{Encoded, TextEncoder};
use worker::{Job, QueueBudget, QueueRefusal};

/// A model ready to serve: its tokenizer and the queue of its inference thread.
pub struct LoadedModel {
    pub id: String,
    pub spec: Arc<ModelSpec>,
    pub(crate) encoder: Arc<TextEncoder>,
    pub(crate) queue: SyncSender<Job>,
    pub(crate) budget: Arc<QueueBudget>,
    pub(crate) worker: std::thread::JoinHandle<()>,
}

impl LoadedModel {
    /// Closes the queue and waits for the inference thread to drop the session. Blocking.
    pub(crate) fn shut_down(self) {
        let LoadedModel { queue, worker, .. } = self;
        drop(queue);
        let _ = worker.join();
    }

    /// Tokenizes on the blocking pool: truncated to the model's limit, not padded.
    pub async fn tokenize(&self, texts: Vec<String>) -> Result<Vec<Encoded>, Error> {
        let encoder = Arc::clone(&self.encoder);
        tokio::task::spawn_blocking(move || encoder.encode(&texts))
            .await
            .map_err(Error::internal)?
            .map_err(|e| Error::internal(format!("{e:#}")))
    }

    /// Refuses at once when the queue, or `tenant`'s share of it, is already full: a flood's
    /// refusals then cost no tokenizing.
    pub fn admits(&self, tenant: &str) -> Result<(), Error> {
        self.budget.check(tenant).map_err(refusal_error)
    }

    /// Queues tokenized inputs for the model's thread, in `tenant`'s lane, and waits for their
    /// vectors (in input order, full width, not normalised). A queue that cannot take the
    /// request's tokens refuses it at once: 503 when the queue is full, 429 when the tenant
    /// already holds its share of it.
    pub async fn infer(&self, tenant: &str, inputs: Vec<Encoded>) -> Result<Vec<Vec<f32>>, Error> {
        let tokens: usize = inputs.iter().map(Encoded::len).sum();
        let tenant: Arc<str> = Arc::from(tenant);
        self.budget.reserve(&tenant, tokens).map_err(refusal_error)?;
        let (reply, done) = oneshot::channel();
        let job = Job { tenant: Arc::clone(&tenant), inputs, enqueued: Instant::now(), reply };
        if let Err(e) = self.queue.try_send(job) {
            self.budget.release(&tenant, tokens);
            return Err(match e {
                TrySendError::Full(_) => Error::Overloaded,
                TrySendError::Disconnected(_) => {
                    Error::internal(format!("inference worker of {} stopped", self.id))
                }
            });
        }
        done.await
            .map_err(|_| Error::internal(format!("inference worker of {} dropped a job", self.id)))?
            .map_err(|cause| Error::internal(format!("inference failed on {}: {cause}", self.id)))
    }
}

fn refusal_error(refusal: QueueRefusal) -> Error {
    match refusal {
        QueueRefusal::Full => Error::Overloaded,
        QueueRefusal::TenantShare => Error::TenantQueueFull,
    }
}
