//! Goose glue: one transaction that posts what a scenario's [`Workload`] picks (to `/v1/embed`
//! or another route),
//! and a [`Recorder`] that keeps every response's phase, status and latency, so the summary can
//! give percentiles of the served requests apart from the refusals (goose's own tables mix
//! them) and per phase of a run.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use goose::prelude::*;

/// One request: whose key, where, what body, and the name it is reported under.
pub struct Embed {
    pub key: String,
    /// The route posted to.
    pub path: &'static str,
    /// The JSON body, serialised.
    pub body: Arc<str>,
    /// Units of work it carries: inputs embedded, or documents reranked.
    pub inputs: usize,
    pub name: String,
}

/// What a scenario sends; `elapsed` is the time since the run started.
pub trait Workload: Send + Sync {
    fn next(&self, elapsed: Duration) -> Embed;
}

impl<F: Fn(Duration) -> Embed + Send + Sync> Workload for F {
    fn next(&self, elapsed: Duration) -> Embed {
        self(elapsed)
    }
}

#[derive(Clone)]
pub struct Sample {
    pub name: String,
    pub status: u16,
    pub latency: Duration,
    pub inputs: usize,
    /// When the response came, since the run started.
    pub at: Duration,
}

pub struct Recorder {
    started: Mutex<Option<Instant>>,
    samples: Mutex<Vec<Sample>>,
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder { started: Mutex::new(None), samples: Mutex::new(Vec::new()) })
    }

    /// Time since the first request of the run.
    fn elapsed(&self) -> Duration {
        self.started.lock().unwrap().get_or_insert_with(Instant::now).elapsed()
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }
}

/// A goose scenario of users posting `workload`'s requests, pausing `pause` between them
/// and for the `Retry-After` of a refusal.
pub fn scenario(
    name: &str,
    workload: Arc<dyn Workload>,
    recorder: Arc<Recorder>,
    pause: Duration,
) -> Result<Scenario, GooseError> {
    let send: TransactionFunction = Arc::new(move |user| {
        let workload = Arc::clone(&workload);
        let recorder = Arc::clone(&recorder);
        Box::pin(async move {
            let embed = workload.next(recorder.elapsed());
            let builder = user
                .get_request_builder(&GooseMethod::Post, embed.path)?
                .bearer_auth(&embed.key)
                .header("content-type", "application/json")
                .body(embed.body.to_string());
            let request =
                GooseRequest::builder().set_request_builder(builder).name(embed.name.as_str()).build();
            let sent = Instant::now();
            let goose = user.request(request).await?;
            let (status, retry_after) = match goose.response {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                        .map(Duration::from_secs);
                    // The latency includes reading the vectors, as a client's does.
                    if response.bytes().await.is_err() { (0, None) } else { (status, retry_after) }
                }
                Err(_) => (0, None),
            };
            let sample = Sample {
                status,
                latency: sent.elapsed(),
                inputs: embed.inputs,
                at: recorder.elapsed(),
                name: embed.name,
            };
            recorder.samples.lock().unwrap().push(sample);
            // A refused client waits as told, as the SDKs do, before its next request.
            if let Some(wait) = retry_after {
                tokio::time::sleep(wait).await;
            }
            Ok(())
        })
    });
    Ok(scenario!(name)
        .set_wait_time(pause, pause)?
        .register_transaction(Transaction::new(send).set_name("embed")))
}

/// Figures for a set of samples over `seconds`.
pub struct Figures {
    pub served: usize,
    pub per_second: f64,
    pub embeddings_per_second: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// 429 and 503: the documented refusals, each with `Retry-After`.
    pub refused: usize,
    /// Anything else that is not a 200, including no response at all (status 0).
    pub errors: usize,
    pub error_statuses: Vec<u16>,
}

impl Figures {
    pub fn of<'a>(samples: impl IntoIterator<Item = &'a Sample>, seconds: f64) -> Figures {
        let mut ms = Vec::new();
        let (mut embeddings, mut refused, mut errors, mut error_statuses) = (0, 0, 0, Vec::new());
        for s in samples {
            match s.status {
                200 => {
                    ms.push(s.latency.as_secs_f64() * 1e3);
                    embeddings += s.inputs;
                }
                429 | 503 => refused += 1,
                other => {
                    errors += 1;
                    if !error_statuses.contains(&other) {
                        error_statuses.push(other);
                    }
                }
            }
        }
        ms.sort_by(f64::total_cmp);
        let pct =
            |q: f64| if ms.is_empty() { f64::NAN } else { ms[((ms.len() - 1) as f64 * q).round() as usize] };
        Figures {
            served: ms.len(),
            per_second: ms.len() as f64 / seconds,
            embeddings_per_second: embeddings as f64 / seconds,
            p50_ms: pct(0.50),
            p95_ms: pct(0.95),
            p99_ms: pct(0.99),
            refused,
            errors,
            error_statuses,
        }
    }

    /// One Markdown table row: served, /s, embeddings/s, p50, p95, p99, refused, errors.
    pub fn row(&self) -> String {
        let errors = if self.errors == 0 {
            "0".to_owned()
        } else {
            format!("{} (status {:?})", self.errors, self.error_statuses)
        };
        format!(
            "{} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {}",
            self.served,
            self.per_second,
            self.embeddings_per_second,
            self.p50_ms,
            self.p95_ms,
            self.p99_ms,
            self.refused,
            errors
        )
    }

    pub const HEADER: &str =
        "served | req/s | embeddings/s | p50 ms | p95 ms | p99 ms | refused (429/503) | errors";
}
