//! The in-process ceiling: a model's backend driven directly, with no HTTP, no queue and no
//! other work, built as the server builds it. Benchmarks and load tests measure the server
//! against it in the same run, since this machine's speed drifts from hour to hour.
//! Shared by `benches/serve.rs` and `load-tests/` (each includes this file as a module).

use std::time::{Duration, Instant};

use embedserve::Settings;
use embedserve::models::engine::ModelLoader;
use embedserve::models::engine::onnx::{OrtLoader, SessionOptions};
use embedserve::models::engine::tokenize::EncodeOptions;

/// Short sentences, like most requests in production: what the benchmarks and load tests send.
pub const SENTENCES: [&str; 8] = [
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings turn sentences into vectors of numbers.",
    "A short sentence, like most requests in production.",
    "The train to the airport leaves every fifteen minutes.",
    "She opened the window and let the cool air in.",
    "Search results improve when queries and documents share a space.",
    "Our service answers many tenants from one process.",
    "Rust makes the fast path safe to change.",
];

/// Embeddings/s of `model` for each batch size in `batches` with `sessions` sessions, each with
/// the intra-op threads the server would give it and driven by a thread of its own
/// (`settings.sessions_per_model()`: as the server runs a busy model; 1: one session on every
/// CPU), tokenizing and running `texts` (cycled to fill the batch) for `each` per batch size,
/// after one warm-up run per session.
pub fn embeddings_per_second(
    settings: &Settings,
    model: &str,
    texts: &[&str],
    batches: &[usize],
    each: Duration,
    sessions: usize,
) -> anyhow::Result<Vec<f64>> {
    let spec = settings.models.get(model).ok_or_else(|| anyhow::anyhow!("no model `{model}` in config"))?;
    // A model with variants runs the one it pins; `auto` is the server's choice, not a graph.
    let spec = match spec.variant_policy() {
        Some(name) => spec.with_variant(name).ok_or_else(|| {
            anyhow::anyhow!(
                "model `{model}` has variant {name:?}: pin one of its variants to drive it in-process"
            )
        })?,
        None => spec.clone(),
    };
    let options = SessionOptions {
        intra_threads: settings.intra_threads_for(sessions),
        cpu_arena: settings.runtime.cpu_arena,
        spinning: settings.runtime.intra_op_spinning,
    };
    let runtime = OrtLoader::new(settings.onnxruntime_path().as_deref(), options)?;
    let (encoder, first) = runtime.load(&spec)?;
    let mut backends = vec![first];
    for _ in 1..sessions {
        backends.push(runtime.load_session(&spec)?);
    }
    let encoder = &encoder;
    batches
        .iter()
        .map(|&batch| {
            let inputs: Vec<String> = texts.iter().cycle().take(batch).map(|s| s.to_string()).collect();
            let inputs = &inputs;
            let per_session: Vec<anyhow::Result<f64>> = std::thread::scope(|scope| {
                let threads: Vec<_> = backends
                    .iter_mut()
                    .map(|backend| {
                        scope.spawn(move || {
                            let run = || -> anyhow::Result<()> {
                                let encoded = encoder.encode(inputs, &EncodeOptions::truncating())?;
                                backend.run(&encoded.iter().collect::<Vec<_>>())?;
                                Ok(())
                            };
                            per_second(run, batch, each)
                        })
                    })
                    .collect();
                threads.into_iter().map(|t| t.join().expect("a ceiling thread panicked")).collect()
            });
            per_session.into_iter().sum()
        })
        .collect()
}

/// Pairs/s of the rerank `model` at `batch` pairs per run, tokenizing (pair template, longest
/// side cut first) and running `requests`' (query, passage) pairs in order, cycled, for `each`.
pub fn pairs_per_second(
    settings: &Settings,
    model: &str,
    requests: &[(String, Vec<String>)],
    batch: usize,
    each: Duration,
) -> anyhow::Result<f64> {
    use embedserve::models::engine::tokenize::PairOptions;
    let spec = settings.models.get(model).ok_or_else(|| anyhow::anyhow!("no model `{model}` in config"))?;
    let options = SessionOptions {
        intra_threads: settings.intra_threads_for(1),
        cpu_arena: settings.runtime.cpu_arena,
        spinning: settings.runtime.intra_op_spinning,
    };
    let runtime = OrtLoader::new(settings.onnxruntime_path().as_deref(), options)?;
    let (encoder, mut backend) = runtime.load(spec)?;
    let pairs: Vec<(&str, &str)> =
        requests.iter().flat_map(|(q, ps)| ps.iter().map(move |p| (q.as_str(), p.as_str()))).collect();
    let pair_options = PairOptions { truncate: true, ..PairOptions::default() };
    let mut at = 0;
    let run = || -> anyhow::Result<()> {
        let mut encoded = Vec::with_capacity(batch);
        let chunk: Vec<(&str, &str)> = pairs.iter().cycle().skip(at).take(batch).copied().collect();
        at = (at + batch) % pairs.len();
        // Consecutive pairs of one query are encoded together, as a request's are.
        for group in chunk.chunk_by(|a, b| a.0 == b.0) {
            let documents: Vec<String> = group.iter().map(|(_, p)| p.to_string()).collect();
            encoded.extend(encoder.encode_pairs(group[0].0, &documents, &pair_options)?);
        }
        backend.run(&encoded.iter().collect::<Vec<_>>())?;
        Ok(())
    };
    per_second(run, batch, each)
}

/// Items per second of `run`, which handles `batch` items a call: one warm-up call, then as
/// many as fit in `each`.
fn per_second(
    mut run: impl FnMut() -> anyhow::Result<()>,
    batch: usize,
    each: Duration,
) -> anyhow::Result<f64> {
    run()?;
    let started = Instant::now();
    let mut done = 0;
    while started.elapsed() < each {
        run()?;
        done += batch;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}
