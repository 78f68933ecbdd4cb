//! One OS thread per loaded model owns its ONNX Runtime session (`run` takes `&mut`) and
//! serves jobs from a bounded channel, so inference never blocks the async runtime.
//!
//! Jobs wait in a [`FairQueue`]: each round forms a batch by deficit round-robin over tenants
//! (at most `max_batch_size` inputs), so concurrent requests share ONNX Runtime runs and a
//! flooding tenant cannot starve a quiet one. A round never waits for more work unless
//! `max_batch_wait_ms` says so, and then only while the batch is not full. The round's inputs
//! are ordered by length and run in chunks bounded by `max_batch_size` inputs and
//! `max_batch_tokens` padded tokens (longest × count), then split back per request, in order.
//!
//! The queue is bounded in tokens ([`QueueBudget`]): a request that would overfill it is
//! refused at once. A job whose client went away is dropped before it runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::batcher::{FairQueue, Weighed};
use super::session::Engine;
use super::tokenize::Encoded;
use crate::metrics::Metrics;

/// Vectors for one job, in input order, full width and not normalised.
pub type JobResult = Result<Vec<Vec<f32>>, String>;

/// Work for one request: its tokenized inputs and where to send the vectors.
pub struct Job {
    pub tenant: Arc<str>,
    pub inputs: Vec<Encoded>,
    pub tokens: usize,
    pub enqueued: Instant,
    pub reply: oneshot::Sender<JobResult>,
}

impl Weighed for Job {
    fn tenant(&self) -> &Arc<str> {
        &self.tenant
    }
    fn tokens(&self) -> usize {
        self.tokens
    }
    fn inputs(&self) -> usize {
        self.inputs.len()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
    /// How long a round may wait for more requests when its batch is not full.
    pub max_batch_wait: Duration,
    /// Tokens a tenant's lane gains per visit (the fairness quantum).
    pub fair_quantum_tokens: usize,
}

/// Tokens queued for a model, against its bound.
pub struct QueueBudget {
    queued: AtomicUsize,
    max: usize,
}

impl QueueBudget {
    pub fn new(max: usize) -> Self {
        Self { queued: AtomicUsize::new(0), max }
    }

    /// Reserves `tokens`, or refuses if they would overfill the queue. A request larger than
    /// the whole bound is admitted when the queue is empty, so it can still run.
    pub fn reserve(&self, tokens: usize) -> bool {
        let mut current = self.queued.load(Ordering::Relaxed);
        loop {
            if current > 0 && current + tokens > self.max {
                return false;
            }
            match self.queued.compare_exchange_weak(
                current,
                current + tokens,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => current = now,
            }
        }
    }

    pub fn release(&self, tokens: usize) {
        self.queued.fetch_sub(tokens, Ordering::AcqRel);
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

/// Starts the model's thread. It finishes the queued jobs and stops when every sender is
/// dropped, releasing the session; join the handle to know the memory is free.
pub fn spawn(
    model: String,
    engine: Engine,
    limits: BatchLimits,
    queue_capacity: usize,
    budget: Arc<QueueBudget>,
    metrics: Arc<Metrics>,
) -> std::io::Result<(SyncSender<Job>, JoinHandle<()>)> {
    let (tx, rx) = sync_channel(queue_capacity);
    let handle = std::thread::Builder::new().name(format!("infer-{model}")).spawn(move || {
        Worker { model, engine, limits, budget, metrics, queue: FairQueue::new(limits.fair_quantum_tokens) }
            .serve(rx)
    })?;
    Ok((tx, handle))
}

struct Worker {
    model: String,
    engine: Engine,
    limits: BatchLimits,
    budget: Arc<QueueBudget>,
    metrics: Arc<Metrics>,
    queue: FairQueue<Job>,
}

impl Worker {
    fn serve(mut self, rx: Receiver<Job>) {
        let mut open = true;
        while open || !self.queue.is_empty() {
            if self.queue.is_empty() {
                match rx.recv() {
                    Ok(job) => self.queue.push(job),
                    Err(_) => break,
                }
            }
            open = self.take_waiting(&rx);
            let gone = self.queue.remove_where(|job| job.reply.is_closed());
            self.forget(gone, "client_gone");
            if self.queue.is_empty() {
                continue;
            }
            let jobs = self.queue.next_batch(self.limits.max_batch_size);
            let now = Instant::now();
            for job in &jobs {
                self.budget.release(job.tokens);
                self.metrics
                    .queue_wait_seconds
                    .with_label_values(&[&self.model])
                    .observe((now - job.enqueued).as_secs_f64());
            }
            self.metrics.queue_tokens.with_label_values(&[&self.model]).set(self.budget.queued() as i64);
            let results = run_round(&mut self.engine, &jobs, self.limits, &self.model, &self.metrics);
            for (job, result) in jobs.into_iter().zip(results) {
                let _ = job.reply.send(result);
            }
        }
        tracing::debug!(model = self.model, "inference worker stopped");
    }

    /// Moves whatever is waiting in the channel into the fair queue, waiting up to
    /// `max_batch_wait` for more while a batch would not be full. False once the channel closed.
    fn take_waiting(&mut self, rx: &Receiver<Job>) -> bool {
        let deadline = Instant::now() + self.limits.max_batch_wait;
        loop {
            match rx.try_recv() {
                Ok(job) => self.queue.push(job),
                Err(TryRecvError::Disconnected) => return false,
                Err(TryRecvError::Empty) => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    if wait.is_zero() || self.queue.inputs() >= self.limits.max_batch_size {
                        return true;
                    }
                    match rx.recv_timeout(wait) {
                        Ok(job) => self.queue.push(job),
                        Err(RecvTimeoutError::Timeout) => return true,
                        Err(RecvTimeoutError::Disconnected) => return false,
                    }
                }
            }
        }
    }

    fn forget(&self, jobs: Vec<Job>, reason: &str) {
        for job in jobs {
            self.budget.release(job.tokens);
            self.metrics.refusals.with_label_values(&[&self.model, reason]).inc();
        }
    }
}

/// Runs every input of `jobs`, length-sorted and chunked; returns one result per job.
fn run_round(
    engine: &mut Engine,
    jobs: &[Job],
    limits: BatchLimits,
    model: &str,
    metrics: &Metrics,
) -> Vec<JobResult> {
    let mut order: Vec<(usize, usize)> =
        jobs.iter().enumerate().flat_map(|(j, job)| (0..job.inputs.len()).map(move |i| (j, i))).collect();
    let input = |&(j, i): &(usize, usize)| &jobs[j].inputs[i];
    order.sort_by_key(|key| std::cmp::Reverse(input(key).len()));

    let mut out: Vec<Vec<Vec<f32>>> = jobs.iter().map(|job| vec![Vec::new(); job.inputs.len()]).collect();
    let mut failed: Vec<Option<String>> = vec![None; jobs.len()];
    let mut start = 0;
    while start < order.len() {
        // Sorted longest first, so the chunk's first input sets its padded width.
        let width = input(&order[start]).len().max(1);
        let fit = (limits.max_batch_tokens / width).clamp(1, limits.max_batch_size);
        let chunk = &order[start..(start + fit).min(order.len())];
        start += chunk.len();

        let batch: Vec<&Encoded> = chunk.iter().map(input).collect();
        let timer = Instant::now();
        let result = engine.run(&batch);
        metrics.inference_seconds.with_label_values(&[model]).observe(timer.elapsed().as_secs_f64());
        metrics.batch_size.with_label_values(&[model]).observe(batch.len() as f64);
        metrics.batch_tokens.with_label_values(&[model]).observe((width * batch.len()) as f64);
        match result {
            Ok(vectors) => {
                for (&(j, i), v) in chunk.iter().zip(vectors) {
                    out[j][i] = v;
                }
            }
            Err(e) => {
                let message = format!("{e:#}");
                for &(j, _) in chunk {
                    failed[j] = Some(message.clone());
                }
            }
        }
    }
    out.into_iter()
        .zip(failed)
        .map(|(vectors, failure)| match failure {
            Some(message) => Err(message),
            None => Ok(vectors),
        })
        .collect()
}
