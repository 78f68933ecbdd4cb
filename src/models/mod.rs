//! Models: what a model is (`spec`), how text becomes token ids (`tokenize`), the seam to what
//! computes vectors (`backend`, implemented by `onnx` and by the tests' `fake`), pooling and
//! shaping (`pooling`), the per-model inference thread (`worker`) with its fair batch
//! formation (`batcher`) and bounded queue (`queue_budget`), and the cache that loads each
//! model once and hands out shared handles (`cache`, sized with `memory`). Failures are
//! [`ModelError`]s; what they mean to a client is decided in `http`.

pub mod backend;
pub mod batcher;
pub mod cache;
pub mod error;
pub mod fake;
pub mod folder;
pub mod hub;
pub mod inspect;
pub mod int8;
pub mod memory;
pub mod onnx;
pub mod pooling;
pub mod queue_budget;
pub mod spec;
pub mod tokenize;
pub mod worker;

use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Instant;

use tokio::sync::oneshot;

pub use error::ModelError;
use queue_budget::QueueBudget;
use tokenize::{EncodeOptions, Encoded, TextEncoder, Tokens};
use worker::Job;

/// A model ready to serve: its tokenizer and the queue of its inference thread.
pub struct LoadedModel {
    pub id: String,
    pub(crate) encoder: Arc<TextEncoder>,
    pub(crate) queue: SyncSender<Job>,
    pub(crate) budget: Arc<QueueBudget>,
    pub(crate) worker: std::thread::JoinHandle<()>,
}

impl LoadedModel {
    /// Closes the queue and waits for the inference thread to drop the backend. Blocking.
    pub(crate) fn shut_down(self) {
        let LoadedModel { queue, worker, .. } = self;
        drop(queue);
        let _ = worker.join();
    }

    /// Tokenizes on the blocking pool, prompt and truncation as `options` say, not padded.
    pub async fn tokenize(
        &self,
        texts: Vec<String>,
        options: EncodeOptions,
    ) -> Result<Vec<Encoded>, ModelError> {
        let encoder = Arc::clone(&self.encoder);
        Ok(tokio::task::spawn_blocking(move || encoder.encode(&texts, &options))
            .await
            .map_err(ModelError::failed)??)
    }

    /// [`Self::tokenize`] with each token's text, for `/v1/tokenize`.
    pub async fn tokens(
        &self,
        texts: Vec<String>,
        options: EncodeOptions,
    ) -> Result<Vec<Tokens>, ModelError> {
        let encoder = Arc::clone(&self.encoder);
        Ok(tokio::task::spawn_blocking(move || encoder.tokens(&texts, &options))
            .await
            .map_err(ModelError::failed)??)
    }

    /// Refuses at once when the queue, or `tenant`'s share of it, is already full: a flood's
    /// refusals then cost no tokenizing.
    pub fn admits(&self, tenant: &str) -> Result<(), ModelError> {
        Ok(self.budget.check(tenant)?)
    }

    /// Queues tokenized inputs for the model's thread, in `tenant`'s lane, and waits for their
    /// vectors (in input order, full width, not normalised). A queue that cannot take the
    /// request's tokens refuses it at once: [`ModelError::QueueFull`] when the queue is full,
    /// [`ModelError::TenantQueueFull`] when the tenant already holds its share of it.
    pub async fn infer(&self, tenant: &str, inputs: Vec<Encoded>) -> Result<Vec<Vec<f32>>, ModelError> {
        let tokens: usize = inputs.iter().map(Encoded::len).sum();
        let tenant: Arc<str> = Arc::from(tenant);
        self.budget.reserve(&tenant, tokens)?;
        let (reply, done) = oneshot::channel();
        let job = Job { tenant: Arc::clone(&tenant), inputs, enqueued: Instant::now(), reply };
        if let Err(e) = self.queue.try_send(job) {
            self.budget.release(&tenant, tokens);
            return Err(match e {
                TrySendError::Full(_) => ModelError::QueueFull,
                TrySendError::Disconnected(_) => {
                    ModelError::failed(format!("inference worker of {} stopped", self.id))
                }
            });
        }
        done.await
            .map_err(|_| ModelError::failed(format!("inference worker of {} dropped a job", self.id)))?
            .map_err(|cause| ModelError::failed(format!("inference failed on {}: {cause}", self.id)))
    }
}
