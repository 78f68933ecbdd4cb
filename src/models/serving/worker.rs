//! One OS thread per session of a loaded model owns that ONNX Runtime session (`run` takes
//! `&mut`) and serves jobs from a bounded channel, so inference never blocks the async runtime.
//!
//! A request is split into pieces of at most `shared_batch_size` inputs, which wait in a
//! [`FairQueue`]: each round forms a batch by deficit round-robin over tenants, so concurrent
//! requests share ONNX Runtime runs and a flooding tenant cannot starve a quiet one. A round
//! holds at most `max_batch_size` inputs while one tenant uses the model, and at most
//! `shared_batch_size` while several sent work within the last second: a tenant arriving
//! behind a flood then waits for one short run, not a long one. Before a round, the thread
//! waits up to `max_batch_wait_ms` for the clients of the last round to send again, never for
//! a lone client. The round's inputs run shortest first, in chunks of similar lengths bounded
//! by `max_batch_size` inputs and `max_batch_tokens` padded tokens (longest × count); each
//! request is answered, in input order, as soon as its last piece has run.
//!
//! A run that fails (an error or a panic, caught) is retried in halves, down to single inputs,
//! so only the inputs that fail alone get an error and every other input gets its vector from
//! exactly one successful run. Before the first input of a round is blamed, the thread runs its
//! warm-up input again (it succeeded at load): if that fails too, the model is broken rather than
//! the inputs, and the thread stops ([`Health`]), answering the round's unanswered requests and
//! everything queued with [`JobError::Stopped`]; the cache then reloads the model after a backoff.
//!
//! The queue is bounded in tokens ([`QueuedTokens`], checked before a job is sent here, held
//! by the job's [`Reservation`]); a job whose client went away is dropped before it runs.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, sync_channel};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::batcher::{FairQueue, Weighed};
use super::memory;
use super::queue::{QueuedTokens, Reservation};
use crate::metrics::Metrics;
use crate::models::engine::Backend;
use crate::models::engine::tokenize::Encoded;

/// Vectors for one job, in input order, full width and not normalised.
pub(crate) type JobResult = Result<Vec<Vec<f32>>, JobError>;

/// Why a job got no vectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JobError {
    /// These inputs (indices into the job's, ascending) failed in runs of their own; `cause` is
    /// the first one's error.
    Inputs { indices: Vec<usize>, cause: String },
    /// The model stopped serving before the job ran (see [`Health`]).
    Stopped(String),
}

/// Work for one request: its tokenized inputs, its room in the queue and where to send the
/// vectors.
pub(crate) struct Job {
    pub tenant: Arc<str>,
    pub inputs: Vec<Encoded>,
    pub enqueued: Instant,
    pub reservation: Reservation,
    pub reply: oneshot::Sender<JobResult>,
}

/// What a model's thread tells the cache about itself.
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// Why the thread stopped serving, once it has.
    stopped: OnceLock<String>,
    /// Whether a run for a request succeeded since the model loaded.
    served: AtomicBool,
}

impl Health {
    /// Why the model stopped serving, if it has: the cache then unloads it.
    pub(crate) fn stopped(&self) -> Option<&str> {
        self.stopped.get().map(String::as_str)
    }

    /// Whether the model answered a request since it loaded.
    pub(crate) fn served(&self) -> bool {
        self.served.load(Ordering::Relaxed)
    }

    /// Records why the model stopped; `true` for the first of its threads to stop.
    fn stop(&self, cause: String) -> bool {
        self.stopped.set(cause).is_ok()
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchSizes {
    pub max_batch_size: usize,
    /// Most inputs per run while more than one tenant is active; requests are split into
    /// pieces of this size.
    pub shared_batch_size: usize,
    pub max_batch_tokens: usize,
    /// How long a round may wait for more requests when its batch is not full.
    pub max_batch_wait: Duration,
    /// Tokens a tenant's lane gains per visit (the fairness quantum).
    pub fair_quantum_tokens: usize,
}

/// The model's thread as the cache holds it.
pub(crate) struct Spawned {
    pub queue: SyncSender<Job>,
    pub handle: JoinHandle<()>,
}

/// Starts one of the model's threads (`session` numbers them; each owns a session). It finishes
/// the queued jobs and stops when every sender is dropped, releasing the session; join the
/// handle to know the memory is free. `probe` is an input the model ran at load (its warm-up):
/// see [`Health`], which the model's threads share.
#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn(
    model: String,
    session: usize,
    engine: Box<dyn Backend>,
    probe: Encoded,
    sizes: BatchSizes,
    queue_capacity: usize,
    queued: Arc<QueuedTokens>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
) -> std::io::Result<Spawned> {
    let (tx, rx) = sync_channel(queue_capacity);
    let status = Arc::clone(&health);
    let thread = if session == 0 { format!("infer-{model}") } else { format!("infer-{model}-{session}") };
    let handle = std::thread::Builder::new().name(thread).spawn(move || {
        let queue = FairQueue::new(sizes.fair_quantum_tokens);
        let name = model.clone();
        let worker = Worker {
            model,
            engine,
            probe,
            sizes,
            queued,
            metrics,
            health: status,
            queue,
            recent: HashMap::new(),
            circulating: 0,
            padded_since_trim: 0,
        };
        // A panic outside a run (runs catch their own) ends the thread: the queued jobs' replies
        // and reservations are dropped with it, and the cache reloads the model.
        let health = Arc::clone(&worker.health);
        if let Err(panic) = catch_unwind(AssertUnwindSafe(move || worker.serve(rx))) {
            let cause = format!("the inference thread panicked: {}", panic_message(panic.as_ref()));
            tracing::error!(model = name, error = cause, "inference thread stopped");
            let _ = health.stop(cause);
        }
    })?;
    Ok(Spawned { queue: tx, handle })
}

/// A tenant that sent work this recently counts as active when batches are sized.
const CONTENTION_WINDOW: Duration = Duration::from_secs(1);

/// A request as the worker holds it while its pieces run.
struct JobState {
    enqueued: Instant,
    reply: Option<oneshot::Sender<JobResult>>,
    /// The job's queued tokens not yet taken into a round.
    reservation: Reservation,
    out: Vec<Vec<f32>>,
    /// Inputs that failed in runs of their own, and the first one's cause.
    failed: Vec<usize>,
    cause: Option<String>,
    /// Pieces not yet run.
    remaining: usize,
    /// Queue wait is observed when the first piece is taken.
    started: bool,
    forgotten: bool,
}

/// At most `shared_batch_size` consecutive inputs of one request: what batches are formed of,
/// so a large request never holds a round to itself while another tenant waits.
struct Piece {
    tenant: Arc<str>,
    inputs: Rc<Vec<Encoded>>,
    range: Range<usize>,
    tokens: usize,
    job: Rc<RefCell<JobState>>,
}

impl Weighed for Piece {
    fn tenant(&self) -> &Arc<str> {
        &self.tenant
    }
    fn tokens(&self) -> usize {
        self.tokens
    }
    fn inputs(&self) -> usize {
        self.range.len()
    }
}

struct Worker {
    model: String,
    engine: Box<dyn Backend>,
    /// An input that ran at load, to tell a broken model from bad inputs.
    probe: Encoded,
    sizes: BatchSizes,
    queued: Arc<QueuedTokens>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    queue: FairQueue<Piece>,
    /// When each tenant last sent work.
    recent: HashMap<Arc<str>, Instant>,
    /// Inputs in the last round plus those still queued then.
    circulating: usize,
    /// Padded tokens run since the heap was last trimmed.
    padded_since_trim: usize,
}

/// Padded tokens after which going idle trims the heap at once (about 64 inputs of 256 tokens).
const TRIM_AFTER_PADDED_TOKENS: usize = 16_384;
/// Idle time after which the heap is trimmed if anything ran since the last trim.
const IDLE_TRIM_AFTER: Duration = Duration::from_millis(250);

impl Worker {
    fn serve(mut self, rx: Receiver<Job>) {
        let mut open = true;
        while open || !self.queue.is_empty() {
            if self.queue.is_empty() {
                self.trim_after_heavy_runs();
                match self.wait_idle(&rx) {
                    Some(job) => self.push(job),
                    None => break,
                }
            }
            open = self.take_waiting(&rx);
            let gone = self
                .queue
                .remove_where(|piece| piece.job.borrow().reply.as_ref().is_none_or(|r| r.is_closed()));
            self.forget(gone);
            if self.queue.is_empty() {
                continue;
            }
            let size = self.batch_size();
            let pieces = self.queue.next_batch(size);
            self.circulating = pieces.iter().map(|p| p.range.len()).sum::<usize>() + self.queue.inputs();
            let now = Instant::now();
            for piece in &pieces {
                let mut job = piece.job.borrow_mut();
                job.reservation.release(piece.tokens);
                if !job.started {
                    job.started = true;
                    self.metrics
                        .queue_wait_seconds
                        .with_label_values(&[&self.model])
                        .observe((now - job.enqueued).as_secs_f64());
                }
            }
            self.metrics.queue_tokens.with_label_values(&[&self.model]).set(self.queued.queued() as i64);
            let mut runner = Runner {
                engine: self.engine.as_mut(),
                probe: &self.probe,
                model: &self.model,
                metrics: &self.metrics,
                round: Round::default(),
            };
            run_round(&mut runner, &pieces, self.sizes);
            let round = runner.round;
            self.padded_since_trim += round.padded;
            if round.succeeded > 0 {
                self.health.served.store(true, Ordering::Relaxed);
            }
            if let Some(Err(cause)) = round.probed {
                self.stop(&rx, cause);
                return;
            }
        }
        tracing::debug!(model = self.model, "inference worker stopped");
    }

    /// Stops serving: marks the model stopped, so the cache unloads it, and answers every
    /// queued job with [`JobError::Stopped`]; their reservations go back with them. Jobs sent
    /// after this are dropped with the channel, their reservations too.
    fn stop(&mut self, rx: &Receiver<Job>, cause: String) {
        tracing::error!(
            model = self.model,
            error = cause,
            "the model failed its warm-up input after an input failed alone: it stops and will be reloaded"
        );
        if self.health.stop(cause.clone()) {
            self.metrics.model_stops.with_label_values(&[&self.model]).inc();
        }
        while let Ok(job) = rx.try_recv() {
            self.push(job);
        }
        for piece in self.queue.remove_where(|_| true) {
            if let Some(reply) = piece.job.borrow_mut().reply.take() {
                let _ = reply.send(Err(JobError::Stopped(cause.clone())));
            }
        }
    }

    /// Splits a request into pieces in its tenant's lane.
    fn push(&mut self, job: Job) {
        let Job { tenant, inputs, enqueued, reservation, reply } = job;
        self.recent.insert(Arc::clone(&tenant), enqueued);
        let size = self.sizes.shared_batch_size.max(1);
        let count = inputs.len().div_ceil(size);
        if count == 0 {
            let _ = reply.send(Ok(Vec::new()));
            return;
        }
        let state = JobState {
            enqueued,
            reply: Some(reply),
            reservation,
            out: vec![Vec::new(); inputs.len()],
            failed: Vec::new(),
            cause: None,
            remaining: count,
            started: false,
            forgotten: false,
        };
        let (job, inputs) = (Rc::new(RefCell::new(state)), Rc::new(inputs));
        for start in (0..inputs.len()).step_by(size) {
            let range = start..(start + size).min(inputs.len());
            let tokens = inputs[range.clone()].iter().map(Encoded::len).sum();
            let (tenant, inputs, job) = (Arc::clone(&tenant), Rc::clone(&inputs), Rc::clone(&job));
            self.queue.push(Piece { tenant, inputs, range, tokens, job });
        }
    }

    /// `max_batch_size` while one tenant has the model to itself; `shared_batch_size` while
    /// several sent work within the last second, so a newcomer waits for a short run at most.
    fn batch_size(&mut self) -> usize {
        let now = Instant::now();
        self.recent.retain(|_, seen| now.duration_since(*seen) < CONTENTION_WINDOW);
        if self.recent.len() > 1 { self.sizes.shared_batch_size } else { self.sizes.max_batch_size }
    }

    /// Moves whatever is waiting in the channel into the fair queue. While fewer inputs are
    /// queued than were in circulation at the last round (the clients just answered usually
    /// send again within a millisecond), waits up to `max_batch_wait` for them, so closed-loop
    /// clients share full runs instead of splitting into two half-size groups. A lone client
    /// never waits: it was all the last round had. False once the channel closed.
    fn take_waiting(&mut self, rx: &Receiver<Job>) -> bool {
        let deadline = Instant::now() + self.sizes.max_batch_wait;
        let target = self.circulating.min(self.batch_size());
        loop {
            match rx.try_recv() {
                Ok(job) => self.push(job),
                Err(TryRecvError::Disconnected) => return false,
                Err(TryRecvError::Empty) => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    if wait.is_zero() || self.queue.inputs() >= target {
                        return true;
                    }
                    match rx.recv_timeout(wait) {
                        Ok(job) => self.push(job),
                        Err(RecvTimeoutError::Timeout) => return true,
                        Err(RecvTimeoutError::Disconnected) => return false,
                    }
                }
            }
        }
    }

    /// The next job, waiting as long as it takes; `None` once the queue is closed. Idle for
    /// [`IDLE_TRIM_AFTER`] after any run since the last trim, hands the freed heap back first:
    /// however a burst ends, the idle process does not stay at its peak (the one trim per idle
    /// period costs well under a millisecond on a small heap).
    fn wait_idle(&mut self, rx: &Receiver<Job>) -> Option<Job> {
        if self.padded_since_trim == 0 {
            return rx.recv().ok();
        }
        match rx.recv_timeout(IDLE_TRIM_AFTER) {
            Ok(job) => Some(job),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                self.padded_since_trim = 0;
                memory::release_free_memory();
                rx.recv().ok()
            }
        }
    }

    /// Going idle after long runs, hands the heap they freed back to the OS at once, so a burst
    /// of long inputs does not leave the process at its peak.
    fn trim_after_heavy_runs(&mut self) {
        if self.padded_since_trim >= TRIM_AFTER_PADDED_TOKENS {
            self.padded_since_trim = 0;
            memory::release_free_memory();
        }
    }

    /// Drops the pieces of requests whose clients went away, counting each request once.
    fn forget(&self, pieces: Vec<Piece>) {
        for piece in pieces {
            let mut job = piece.job.borrow_mut();
            job.reservation.release(piece.tokens);
            if !job.forgotten {
                job.forgotten = true;
                self.metrics.refusals.with_label_values(&[&self.model, "client_gone"]).inc();
            }
        }
    }
}

/// What a round did: padded tokens run, runs that succeeded, and the warm-up input's result if
/// an input failed alone.
#[derive(Debug, Default)]
struct Round {
    padded: usize,
    succeeded: usize,
    probed: Option<Result<(), String>>,
}

/// Runs every input of `pieces`, shortest first, in chunks of similar lengths, and answers
/// each request as soon as its last piece has run. When the model turns out broken, answers
/// the round's unanswered requests with [`JobError::Stopped`] and runs nothing more.
fn run_round(runner: &mut Runner<'_>, pieces: &[Piece], sizes: BatchSizes) {
    let mut order: Vec<(usize, usize)> =
        pieces.iter().enumerate().flat_map(|(p, piece)| piece.range.clone().map(move |i| (p, i))).collect();
    let input = |&(p, i): &(usize, usize)| &pieces[p].inputs[i];
    order.sort_by_key(|key| input(key).len());
    let lengths: Vec<usize> = order.iter().map(|key| input(key).len()).collect();
    let mut left: Vec<usize> = pieces.iter().map(|piece| piece.range.len()).collect();
    let mut start = 0;
    while start < order.len() {
        let end = start + chunk_len(&lengths[start..], sizes);
        let chunk = &order[start..end];
        start = end;

        let batch: Vec<&Encoded> = chunk.iter().map(input).collect();
        let results = match runner.run_isolating(&batch) {
            Ok(results) => results,
            Err(cause) => {
                for (piece, _) in pieces.iter().zip(&left).filter(|(_, left)| **left > 0) {
                    if let Some(reply) = piece.job.borrow_mut().reply.take() {
                        let _ = reply.send(Err(JobError::Stopped(cause.clone())));
                    }
                }
                return;
            }
        };
        for (&(p, i), result) in chunk.iter().zip(results) {
            let mut job = pieces[p].job.borrow_mut();
            match result {
                Ok(vector) => job.out[i] = vector,
                Err(cause) => {
                    job.failed.push(i);
                    job.cause.get_or_insert(cause);
                }
            }
        }
        for &(p, _) in chunk {
            left[p] -= 1;
            if left[p] == 0 {
                finish_piece(&pieces[p]);
            }
        }
    }
}

/// Runs batches on a model, counting what each run did.
struct Runner<'a> {
    engine: &'a mut dyn Backend,
    /// The warm-up input, which ran at load.
    probe: &'a Encoded,
    model: &'a str,
    metrics: &'a Metrics,
    round: Round,
}

impl Runner<'_> {
    /// One result per input of `batch`, in order. A failed run is retried as two halves, each
    /// alone, down to single inputs: only an input that fails by itself gets an error, and
    /// every other gets the vector of the one run of its that succeeded. `k` failing inputs in
    /// a run of `n` cost at most about `2k·log2(n)` more runs, all of them smaller. `Err` when
    /// the model itself is broken: the warm-up input failed too.
    fn run_isolating(&mut self, batch: &[&Encoded]) -> Result<Vec<Result<Vec<f32>, String>>, String> {
        match self.run(batch) {
            Ok(vectors) => Ok(vectors.into_iter().map(Ok).collect()),
            Err(cause) if batch.len() == 1 => {
                self.model_works()?;
                self.metrics.isolated_inputs.with_label_values(&[self.model]).inc();
                tracing::warn!(model = self.model, error = cause, "an input failed in a run of its own");
                Ok(vec![Err(cause)])
            }
            Err(_) => {
                let (first, second) = batch.split_at(batch.len() / 2);
                let mut results = self.run_isolating(first)?;
                results.extend(self.run_isolating(second)?);
                Ok(results)
            }
        }
    }

    /// Whether the warm-up input still runs, asked once a round: an input is blamed only if so.
    fn model_works(&mut self) -> Result<(), String> {
        let (engine, probe) = (&mut *self.engine, self.probe);
        self.round
            .probed
            .get_or_insert_with(|| run_caught(engine, &[probe]).map(drop).map_err(|(_, cause)| cause))
            .clone()
    }

    fn run(&mut self, batch: &[&Encoded]) -> Result<Vec<Vec<f32>>, String> {
        let width = batch.iter().map(|e| e.len()).max().unwrap_or(0).max(1);
        let timer = Instant::now();
        let result = run_caught(self.engine, batch);
        let (m, model) = (self.metrics, self.model);
        m.inference_seconds.with_label_values(&[model]).observe(timer.elapsed().as_secs_f64());
        m.batch_size.with_label_values(&[model]).observe(batch.len() as f64);
        m.batch_tokens.with_label_values(&[model]).observe((width * batch.len()) as f64);
        self.round.padded += width * batch.len();
        match result {
            Ok(vectors) => {
                self.round.succeeded += 1;
                Ok(vectors)
            }
            Err((kind, cause)) => {
                m.failed_runs.with_label_values(&[model, kind]).inc();
                Err(cause)
            }
        }
    }
}

/// One run with its panic caught. The error says what failed: `error` (the backend's error, or
/// a wrong number of vectors) or `panic`.
fn run_caught(engine: &mut dyn Backend, batch: &[&Encoded]) -> Result<Vec<Vec<f32>>, (&'static str, String)> {
    match catch_unwind(AssertUnwindSafe(|| engine.run(batch))) {
        Ok(Ok(vectors)) if vectors.len() == batch.len() => Ok(vectors),
        Ok(Ok(vectors)) => {
            Err(("error", format!("the model gave {} vectors for {} inputs", vectors.len(), batch.len())))
        }
        Ok(Err(e)) => Err(("error", format!("{e:#}"))),
        Err(panic) => Err(("panic", format!("the run panicked: {}", panic_message(panic.as_ref())))),
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// How many of `lengths` (sorted ascending) go in the next run: at most `max_batch_size`
/// inputs and `max_batch_tokens` padded tokens, and none longer than half again the first
/// plus 16 tokens, so short inputs are not padded to long ones. A long input gains almost
/// nothing from company (one 250-token input runs at 17/s alone, 18/s in a batch of 32),
/// while padding a short one to its width costs the whole difference; and the short run
/// first answers its requests first.
fn chunk_len(lengths: &[usize], sizes: BatchSizes) -> usize {
    let widest = lengths[0] + lengths[0] / 2 + 16;
    let mut n = 1;
    while n < lengths.len()
        && n < sizes.max_batch_size
        && lengths[n] <= widest
        && (n + 1) * lengths[n] <= sizes.max_batch_tokens
    {
        n += 1;
    }
    n
}

/// Counts a piece done; the request's last piece sends its answer.
fn finish_piece(piece: &Piece) {
    let mut job = piece.job.borrow_mut();
    job.remaining -= 1;
    if job.remaining > 0 {
        return;
    }
    let result = if job.failed.is_empty() {
        Ok(std::mem::take(&mut job.out))
    } else {
        let mut indices = std::mem::take(&mut job.failed);
        indices.sort_unstable();
        Err(JobError::Inputs { indices, cause: job.cause.take().unwrap_or_default() })
    };
    if let Some(reply) = job.reply.take() {
        let _ = reply.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_group_similar_lengths_within_the_batch_limits() {
        let sizes = BatchSizes {
            max_batch_size: 4,
            shared_batch_size: 4,
            max_batch_tokens: 600,
            max_batch_wait: Duration::ZERO,
            fair_quantum_tokens: 512,
        };
        assert_eq!(chunk_len(&[10, 12, 14, 20, 25], sizes), 4, "at most max_batch_size");
        assert_eq!(chunk_len(&[3, 30, 200], sizes), 1, "a short input is not padded to 30");
        assert_eq!(chunk_len(&[100, 120, 160, 170], sizes), 3, "166 is the widest after 100");
        assert_eq!(chunk_len(&[250, 250, 250], sizes), 2, "600 padded tokens hold two of 250");
        assert_eq!(chunk_len(&[900], sizes), 1, "a single input always runs");
    }
}
