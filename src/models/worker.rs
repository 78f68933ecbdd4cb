//! One OS thread per loaded model owns its ONNX Runtime session (`run` takes `&mut`) and
//! serves jobs from a bounded channel, so inference never blocks the async runtime.
//!
//! Each round takes the first job plus whatever else is already queued (never waiting for
//! more), orders the inputs by length and runs them in chunks bounded by `max_batch_size`
//! inputs and `max_batch_tokens` padded tokens. Requests that arrive together therefore share
//! ONNX Runtime runs, and a large request never pads its short inputs to its longest one.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::session::Engine;
use super::tokenize::Encoded;
use crate::metrics::Metrics;

/// Vectors for one job, in input order, full width and not normalised.
pub type JobResult = Result<Vec<Vec<f32>>, String>;

/// Work for one request: its tokenized inputs and where to send the vectors.
pub struct Job {
    pub inputs: Vec<Encoded>,
    pub reply: oneshot::Sender<JobResult>,
}

#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
}

/// Starts the model's thread. It finishes the queued jobs and stops when every sender is
/// dropped, releasing the session; join the handle to know the memory is free.
pub fn spawn(
    model: String,
    engine: Engine,
    limits: BatchLimits,
    queue_capacity: usize,
    metrics: Arc<Metrics>,
) -> std::io::Result<(mpsc::Sender<Job>, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel(queue_capacity);
    let handle = std::thread::Builder::new()
        .name(format!("infer-{model}"))
        .spawn(move || serve(model, engine, limits, rx, &metrics))?;
    Ok((tx, handle))
}

fn serve(
    model: String,
    mut engine: Engine,
    limits: BatchLimits,
    mut rx: mpsc::Receiver<Job>,
    metrics: &Metrics,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        let mut queued = jobs[0].inputs.len();
        while queued < limits.max_batch_size {
            match rx.try_recv() {
                Ok(job) => {
                    queued += job.inputs.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        // A client that went away while queued costs nothing more.
        jobs.retain(|job| !job.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let results = run_round(&mut engine, &jobs, limits, &model, metrics);
        for (job, result) in jobs.into_iter().zip(results) {
            let _ = job.reply.send(result);
        }
    }
    tracing::debug!(model, "inference worker stopped");
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
