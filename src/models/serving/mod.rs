//! How a model is served: the cache that loads each model once within a memory budget
//! (`cache`, measuring with `memory`), one inference thread per loaded model (`worker`) forming
//! fair batches across tenants (`batcher`) from a queue bounded in tokens (`queue`), and the
//! handle requests use ([`LoadedModel`]).

pub(crate) mod batcher;
pub(crate) mod cache;
pub(crate) mod memory;
pub(crate) mod queue;
pub(crate) mod worker;

use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Instant;

use tokio::sync::oneshot;

use queue::QueuedTokens;
use worker::{Health, Job, JobError};

use crate::models::ModelError;
use crate::models::engine::tokenize::{
    DecodeError, EncodeOptions, Encoded, PairOptions, TextEncoder, Tokens,
};

/// A model ready to serve: its tokenizer and the queue of its inference thread.
pub(crate) struct LoadedModel {
    pub id: String,
    pub(crate) encoder: Arc<TextEncoder>,
    pub(crate) queue: SyncSender<Job>,
    pub(crate) queued: Arc<QueuedTokens>,
    pub(crate) worker: std::thread::JoinHandle<()>,
    /// Whether the inference thread still serves (see `worker::Health`).
    pub(crate) health: Arc<Health>,
}

impl LoadedModel {
    /// Closes the queue and waits for the inference thread to drop the backend. Blocking.
    pub(crate) fn shut_down(self) {
        let LoadedModel { queue, worker, .. } = self;
        drop(queue);
        let _ = worker.join();
    }

    /// Tokenizes on the blocking pool, prompt and truncation as `options` say, not padded.
    pub(crate) async fn tokenize(
        &self,
        texts: Vec<String>,
        options: EncodeOptions,
    ) -> Result<Vec<Encoded>, ModelError> {
        let encoder = Arc::clone(&self.encoder);
        Ok(tokio::task::spawn_blocking(move || encoder.encode(&texts, &options))
            .await
            .map_err(ModelError::failed)??)
    }

    /// Tokenizes each document paired with `query`, on the blocking pool (see
    /// [`TextEncoder::encode_pairs`]).
    pub(crate) async fn tokenize_pairs(
        &self,
        query: String,
        documents: Vec<String>,
        options: PairOptions,
    ) -> Result<Vec<Encoded>, ModelError> {
        let encoder = Arc::clone(&self.encoder);
        Ok(tokio::task::spawn_blocking(move || encoder.encode_pairs(&query, &documents, &options))
            .await
            .map_err(ModelError::failed)??)
    }

    /// [`Self::tokenize`] with each token's text, for `/v1/tokenize`.
    pub(crate) async fn tokens(
        &self,
        texts: Vec<String>,
        options: EncodeOptions,
    ) -> Result<Vec<Tokens>, ModelError> {
        let encoder = Arc::clone(&self.encoder);
        Ok(tokio::task::spawn_blocking(move || encoder.tokens(&texts, &options))
            .await
            .map_err(ModelError::failed)??)
    }

    /// Token ids back to text with the model's tokenizer, on the blocking pool.
    pub(crate) async fn decode(
        &self,
        ids: Vec<Vec<u32>>,
        skip_special_tokens: bool,
    ) -> Result<Result<Vec<String>, DecodeError>, ModelError> {
        let encoder = Arc::clone(&self.encoder);
        tokio::task::spawn_blocking(move || encoder.decode(&ids, skip_special_tokens))
            .await
            .map_err(ModelError::failed)
    }

    /// Refuses at once when the queue, or `tenant`'s share of it, is already full: a flood's
    /// refusals then cost no tokenizing.
    pub(crate) fn admits(&self, tenant: &str) -> Result<(), ModelError> {
        Ok(self.queued.check(tenant)?)
    }

    /// Queues tokenized inputs for the model's thread, in `tenant`'s lane, and waits for their
    /// vectors (in input order, full width, not normalised). A queue that cannot take the
    /// request's tokens refuses it at once: [`ModelError::QueueFull`] when the queue is full,
    /// [`ModelError::TenantQueueFull`] when the tenant already holds its share of it. Inputs the
    /// model cannot process alone are [`ModelError::InputsFailed`]; a model that stopped
    /// serving is [`ModelError::Unavailable`] until the cache has reloaded it.
    pub(crate) async fn infer(
        &self,
        tenant: &str,
        inputs: Vec<Encoded>,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let tokens: usize = inputs.iter().map(Encoded::len).sum();
        let tenant: Arc<str> = Arc::from(tenant);
        let reservation = self.queued.hold(&tenant, tokens)?;
        let (reply, done) = oneshot::channel();
        let job = Job { tenant, inputs, enqueued: Instant::now(), reservation, reply };
        // A job that is not sent, or that the thread drops, gives its tokens back as it drops.
        if let Err(e) = self.queue.try_send(job) {
            return Err(match e {
                TrySendError::Full(_) => ModelError::QueueFull,
                TrySendError::Disconnected(_) => self.stopped(None),
            });
        }
        match done.await {
            Ok(Ok(vectors)) => Ok(vectors),
            Ok(Err(JobError::Inputs { indices, cause })) => Err(ModelError::InputsFailed {
                indices,
                param: "input",
                cause: format!("inference failed on {}: {cause}", self.id),
            }),
            Ok(Err(JobError::Stopped(cause))) => Err(self.stopped(Some(cause))),
            Err(_) => Err(self.stopped(None)),
        }
    }

    /// The error for a request the model's thread will not answer: it stopped, and the cache
    /// reloads the model at the next lookup after a backoff.
    fn stopped(&self, cause: Option<String>) -> ModelError {
        let cause = cause
            .or_else(|| self.health.stopped().map(str::to_owned))
            .unwrap_or_else(|| "the inference thread stopped".to_owned());
        ModelError::Unavailable { model: self.id.clone(), cause, detail: None, retry_after: 1 }
    }
}
