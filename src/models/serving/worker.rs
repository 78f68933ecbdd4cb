//! One OS thread per loaded model owns its ONNX Runtime session (`run` takes `&mut`) and
//! serves jobs from a bounded channel, so inference never blocks the async runtime.
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
//! The queue is bounded in tokens ([`QueuedTokens`], checked before a job is sent here); a job
//! whose client went away is dropped before it runs.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::batcher::{FairQueue, Weighed};
use super::memory;
use super::queue::QueuedTokens;
use crate::metrics::Metrics;
use crate::models::engine::Backend;
use crate::models::engine::tokenize::Encoded;

/// Vectors for one job, in input order, full width and not normalised.
pub(crate) type JobResult = Result<Vec<Vec<f32>>, String>;

/// Work for one request: its tokenized inputs and where to send the vectors.
pub(crate) struct Job {
    pub tenant: Arc<str>,
    pub inputs: Vec<Encoded>,
    pub enqueued: Instant,
    pub reply: oneshot::Sender<JobResult>,
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

/// Starts the model's thread. It finishes the queued jobs and stops when every sender is
/// dropped, releasing the session; join the handle to know the memory is free.
pub(crate) fn spawn(
    model: String,
    engine: Box<dyn Backend>,
    sizes: BatchSizes,
    queue_capacity: usize,
    queued: Arc<QueuedTokens>,
    metrics: Arc<Metrics>,
) -> std::io::Result<(SyncSender<Job>, JoinHandle<()>)> {
    let (tx, rx) = sync_channel(queue_capacity);
    let handle = std::thread::Builder::new().name(format!("infer-{model}")).spawn(move || {
        let queue = FairQueue::new(sizes.fair_quantum_tokens);
        Worker {
            model,
            engine,
            sizes,
            queued,
            metrics,
            queue,
            recent: HashMap::new(),
            circulating: 0,
            padded_since_trim: 0,
        }
        .serve(rx)
    })?;
    Ok((tx, handle))
}

/// A tenant that sent work this recently counts as active when batches are sized.
const CONTENTION_WINDOW: Duration = Duration::from_secs(1);

/// A request as the worker holds it while its pieces run.
struct JobState {
    enqueued: Instant,
    reply: Option<oneshot::Sender<JobResult>>,
    out: Vec<Vec<f32>>,
    failure: Option<String>,
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
    sizes: BatchSizes,
    queued: Arc<QueuedTokens>,
    metrics: Arc<Metrics>,
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
                self.queued.release(&piece.tenant, piece.tokens);
                let mut job = piece.job.borrow_mut();
                if !job.started {
                    job.started = true;
                    self.metrics
                        .queue_wait_seconds
                        .with_label_values(&[&self.model])
                        .observe((now - job.enqueued).as_secs_f64());
                }
            }
            self.metrics.queue_tokens.with_label_values(&[&self.model]).set(self.queued.queued() as i64);
            self.padded_since_trim +=
                run_round(self.engine.as_mut(), &pieces, self.sizes, &self.model, &self.metrics);
        }
        tracing::debug!(model = self.model, "inference worker stopped");
    }

    /// Splits a request into pieces in its tenant's lane.
    fn push(&mut self, job: Job) {
        let Job { tenant, inputs, enqueued, reply } = job;
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
            out: vec![Vec::new(); inputs.len()],
            failure: None,
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
            self.queued.release(&piece.tenant, piece.tokens);
            let mut job = piece.job.borrow_mut();
            if !job.forgotten {
                job.forgotten = true;
                self.metrics.refusals.with_label_values(&[&self.model, "client_gone"]).inc();
            }
        }
    }
}

/// Runs every input of `pieces`, shortest first, in chunks of similar lengths, and answers
/// each request as soon as its last piece has run. Returns the padded tokens run.
fn run_round(
    engine: &mut dyn Backend,
    pieces: &[Piece],
    sizes: BatchSizes,
    model: &str,
    metrics: &Metrics,
) -> usize {
    let mut padded = 0;
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
        // Sorted shortest first, so the chunk's last input sets its padded width.
        let width = lengths[end - 1].max(1);
        start = end;

        let batch: Vec<&Encoded> = chunk.iter().map(input).collect();
        let timer = Instant::now();
        let result = engine.run(&batch);
        metrics.inference_seconds.with_label_values(&[model]).observe(timer.elapsed().as_secs_f64());
        metrics.batch_size.with_label_values(&[model]).observe(batch.len() as f64);
        metrics.batch_tokens.with_label_values(&[model]).observe((width * batch.len()) as f64);
        padded += width * batch.len();
        match result {
            Ok(vectors) => {
                for (&(p, i), v) in chunk.iter().zip(vectors) {
                    pieces[p].job.borrow_mut().out[i] = v;
                }
            }
            Err(e) => {
                let message = format!("{e:#}");
                for &(p, _) in chunk {
                    pieces[p].job.borrow_mut().failure = Some(message.clone());
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
    padded
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
    let result = match job.failure.take() {
        Some(message) => Err(message),
        None => Ok(std::mem::take(&mut job.out)),
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
