//! How a model is served: the cache that loads each model once within a memory budget
//! (`cache`, measuring with `memory`), one inference thread per session of a model (`worker`)
//! forming fair batches across tenants (`batcher`) from a queue bounded in tokens (`queue`), and
//! the handle requests use ([`LoadedModel`]).

pub(crate) mod batcher;
pub(crate) mod cache;
pub(crate) mod memory;
pub(crate) mod queue;
pub(crate) mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Instant;

use parking_lot::RwLock;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use queue::{QueuedTokens, Reservation};
use worker::{BatchSizes, Health, Job, JobError};

use crate::models::ModelError;
use crate::models::engine::tokenize::{
    DecodeError, EncodeOptions, Encoded, PairOptions, TextEncoder, Tokens,
};
use crate::models::spec::ModelSpec;

/// A model ready to serve: its tokenizer and the queues of its sessions' inference threads.
pub(crate) struct LoadedModel {
    pub id: String,
    pub(crate) encoder: Arc<TextEncoder>,
    /// One per session, each served by its own inference thread; the cache adds sessions while
    /// every one holds a backlog (see `ModelCache::grow_if_busy`).
    pub(crate) sessions: RwLock<Vec<Session>>,
    /// What another session is built from: the spec as loaded (its variant chosen), the warm-up
    /// input and the batch sizes.
    pub(crate) spec: Arc<ModelSpec>,
    pub(crate) probe: Encoded,
    pub(crate) batching: BatchSizes,
    /// A session is being added (or adding one failed: no more are tried until a reload).
    pub(crate) growing: AtomicBool,
    pub(crate) queued: Arc<QueuedTokens>,
    /// Whether the inference threads still serve (see `worker::Health`).
    pub(crate) health: Arc<Health>,
    /// The process's tokenizing pool (see [`TokenizePool`]).
    pub(crate) tokenizers: TokenizePool,
}

/// Texts this short in all (a sentence or two, tens of microseconds to tokenize) are tokenized on
/// the request's own thread: handing them to the pool and back costs more than the work.
pub(crate) const INLINE_TOKENIZE_BYTES: usize = 512;

/// Tokenizing runs on the blocking pool, at most one text batch per CPU at a time for all
/// models together: a burst of requests waits for a slot (holding its queue reservation) rather
/// than starting a thread each.
#[derive(Debug, Clone)]
pub(crate) struct TokenizePool(Arc<Semaphore>);

impl TokenizePool {
    /// One slot per CPU available to the process.
    pub(crate) fn per_cpu() -> Self {
        Self::with_slots(std::thread::available_parallelism().map_or(1, usize::from))
    }

    pub(crate) fn with_slots(slots: usize) -> Self {
        Self(Arc::new(Semaphore::new(slots.max(1))))
    }

    /// Runs `work` on the blocking pool once a slot is free; the slot is held until `work` ends,
    /// even if the caller stops waiting.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ModelError> {
        let slot: OwnedSemaphorePermit =
            Arc::clone(&self.0).acquire_owned().await.map_err(ModelError::failed)?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            work()
        })
        .await
        .map_err(ModelError::failed)
    }
}

/// One of a model's sessions as requests see it: the queue of the thread that owns it, and how
/// many requests it holds.
pub(crate) struct Session {
    pub(crate) queue: SyncSender<Job>,
    pub(crate) worker: std::thread::JoinHandle<()>,
    /// Requests sent to this session and not yet answered (or given up).
    pub(crate) outstanding: Arc<AtomicUsize>,
}

/// Counts a request against its session until it is answered or dropped.
struct Outstanding(Arc<AtomicUsize>);

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LoadedModel {
    /// Closes the queues and waits for the inference threads to drop their backends. Blocking.
    pub(crate) fn shut_down(self) {
        let (queues, workers): (Vec<_>, Vec<_>) =
            self.sessions.into_inner().into_iter().map(|s| (s.queue, s.worker)).unzip();
        drop(queues);
        for worker in workers {
            let _ = worker.join();
        }
    }

    /// Tokenizes, prompt and truncation as `options` say, not padded: texts of at most
    /// [`INLINE_TOKENIZE_BYTES`] in all on the calling thread, larger ones on the tokenizing pool.
    pub(crate) async fn tokenize(
        &self,
        texts: Vec<String>,
        options: EncodeOptions,
    ) -> Result<Vec<Encoded>, ModelError> {
        if texts.iter().map(String::len).sum::<usize>() <= INLINE_TOKENIZE_BYTES {
            return Ok(self.encoder.encode(&texts, &options)?);
        }
        let encoder = Arc::clone(&self.encoder);
        Ok(self.tokenizers.run(move || encoder.encode(&texts, &options)).await??)
    }

    /// Tokenizes each document paired with `query`, on the tokenizing pool (see
    /// [`TextEncoder::encode_pairs`]).
    pub(crate) async fn tokenize_pairs(
        &self,
        query: String,
        documents: Vec<String>,
        options: PairOptions,
    ) -> Result<Vec<Encoded>, ModelError> {
        let encoder = Arc::clone(&self.encoder);
        Ok(self.tokenizers.run(move || encoder.encode_pairs(&query, &documents, &options)).await??)
    }

    /// [`Self::tokenize`] with each token's text, for `/v1/tokenize`.
    pub(crate) async fn tokens(
        &self,
        texts: Vec<String>,
        options: EncodeOptions,
    ) -> Result<Vec<Tokens>, ModelError> {
        let encoder = Arc::clone(&self.encoder);
        Ok(self.tokenizers.run(move || encoder.tokens(&texts, &options)).await??)
    }

    /// Token ids back to text with the model's tokenizer, on the tokenizing pool.
    pub(crate) async fn decode(
        &self,
        ids: Vec<Vec<u32>>,
        skip_special_tokens: bool,
    ) -> Result<Result<Vec<String>, DecodeError>, ModelError> {
        let encoder = Arc::clone(&self.encoder);
        self.tokenizers.run(move || encoder.decode(&ids, skip_special_tokens)).await
    }

    /// Reserves room in the queue for `tenant`'s request of about `estimate` tokens (see
    /// [`TextEncoder::estimate`]) before it is tokenized, or refuses at once when the queue, or
    /// the tenant's share of it, cannot take it: a flood's refusals cost no tokenizing. The
    /// room comes back when the reservation is dropped, however the request ends.
    pub(crate) fn reserve(&self, tenant: &str, estimate: usize) -> Result<Reservation, ModelError> {
        Ok(self.queued.hold(&Arc::from(tenant), estimate)?)
    }

    /// Queues tokenized inputs for the model's thread, in the lane of the reservation's tenant,
    /// and waits for their vectors (in input order, full width, not normalised). The
    /// reservation is first set to the inputs' exact tokens; a queue that cannot take them
    /// refuses at once: [`ModelError::QueueFull`] when the queue is full,
    /// [`ModelError::TenantQueueFull`] when the tenant already holds its share of it. Inputs the
    /// model cannot process alone are [`ModelError::InputsFailed`]; a model that stopped
    /// serving is [`ModelError::Unavailable`] until the cache has reloaded it.
    pub(crate) async fn infer(
        &self,
        mut reservation: Reservation,
        inputs: Vec<Encoded>,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        reservation.resize(inputs.iter().map(Encoded::len).sum())?;
        let tenant = Arc::clone(reservation.tenant());
        let (reply, done) = oneshot::channel();
        let job = Job { tenant, inputs, enqueued: Instant::now(), reservation, reply };
        // The session holding the fewest requests takes it (the first of equals: a lone client
        // keeps one session warm).
        let (queue, outstanding) = {
            let sessions = self.sessions.read();
            let session = sessions
                .iter()
                .min_by_key(|s| s.outstanding.load(Ordering::Relaxed))
                .ok_or_else(|| self.stopped(None))?;
            (session.queue.clone(), Arc::clone(&session.outstanding))
        };
        outstanding.fetch_add(1, Ordering::Relaxed);
        let _counted = Outstanding(outstanding);
        // A job that is not sent, or that the thread drops, gives its tokens back as it drops.
        if let Err(e) = queue.try_send(job) {
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

    /// Whether another session would serve sooner: fewer than `max`, none being added, and
    /// every one holding a backlog (a request running and another waiting).
    pub(crate) fn wants_session(&self, max: usize) -> bool {
        let sessions = self.sessions.read();
        !self.growing.load(Ordering::Relaxed)
            && sessions.len() < max
            && sessions.iter().all(|s| s.outstanding.load(Ordering::Relaxed) >= 2)
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
